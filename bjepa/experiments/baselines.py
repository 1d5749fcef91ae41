"""State-space baselines on Noisy TV: the Kalman filter with the true system (oracle), a
linear-Gaussian state-space model learned from the observations (``lgssm``) and a recurrent
state-space model (``rssm``), probed like the other models (linear probe of the representation
of ``x_t`` to ``s_{t+1}`` and to the distractor).

Used by ``bjepa baselines``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bjepa._validation import check_choice, check_nonnegative, check_positive_int
from bjepa.data import noisy_tv
from bjepa.inference import fit
from bjepa.inference.checkpoint import save_checkpoint
from bjepa.inference.fit import set_seed
from bjepa.metrics import linear_probe_r2, r2_score
from bjepa.runs import RunFolder

__all__ = ["BASELINES", "TRAINING", "BaselinesConfig", "build_baseline", "format_table", "run",
           "summarise"]

logger = logging.getLogger(__name__)

BASELINES = ["kalman", "lgssm", "rssm"]
#: per-model training budget (steps, Adam lr, mini-batch rows; None = every window each step)
TRAINING: dict[str, dict[str, Any]] = {
    "lgssm": dict(steps=300, lr=2e-2, batch_size=512),
    "rssm": dict(steps=400, lr=1e-2, batch_size=None),
}


@dataclass
class BaselinesConfig:
    """Everything that defines a baselines run (dumped as ``config.json``)."""

    models: list[str] = field(default_factory=lambda: list(BASELINES))
    sigmas: list[float] = field(default_factory=lambda: [0.0, 4.0, 8.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    latent_dim: int = 4
    #: override every trained model's steps (default: :data:`TRAINING`)
    steps: int | None = None
    lr: float | None = None
    train_steps: int = 6000
    test_steps: int = 2000
    device: str = "cpu"

    @classmethod
    def quick(cls, **overrides: Any) -> BaselinesConfig:
        """σ ∈ {0, 8}, one seed, short trajectories and budgets (about two minutes)."""
        base = dict(sigmas=[0.0, 8.0], seeds=[0], steps=60, train_steps=1000, test_steps=500)
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    def validate(self) -> BaselinesConfig:
        if not self.models:
            raise ValueError("models must name at least one of " + ", ".join(BASELINES))
        for m in self.models:
            check_choice("model", m, BASELINES)
        for s in self.sigmas:
            check_nonnegative("sigma", s)
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        check_positive_int("latent_dim", self.latent_dim)
        if self.steps is not None:
            check_positive_int("steps", self.steps)
        return self

    def training(self, name: str) -> dict[str, Any]:
        out = dict(TRAINING[name])
        if self.steps is not None:
            out["steps"] = self.steps
        if self.lr is not None:
            out["lr"] = self.lr
        return out


def build_baseline(name: str, obs_dim: int, latent_dim: int = 4,
                   train: noisy_tv.NoisyTV | None = None) -> Any:
    """Model ``name``: ``"kalman"`` needs the training split (its true system)."""
    from bjepa.models.rssm import RSSM
    from bjepa.models.state_space import KalmanOracle, LinearGaussianSSM

    check_choice("model", name, BASELINES)
    if name == "kalman":
        if train is None:
            raise ValueError("the Kalman oracle needs train= (the split whose system it knows)")
        return KalmanOracle.from_split(train)
    if name == "lgssm":
        return LinearGaussianSSM(obs_dim, latent_dim)
    return RSSM(obs_dim, latent_dim, window=16, burn_in=4)


def probe(model: Any, train: noisy_tv.NoisyTV, test: noisy_tv.NoisyTV) -> dict[str, float]:
    """Linear-probe R² of the representation of ``x_t`` for ``s_{t+1}`` and ``σ d_{t+1}``."""
    ztr, zte = model.encode(train.obs), model.encode(test.obs)
    n_tr, n_te = len(train) - 1, len(test) - 1
    return {
        "signal_r2": linear_probe_r2(ztr[:n_tr], train.signal[1:], zte[:n_te], test.signal[1:]),
        "noise_r2": linear_probe_r2(ztr[:n_tr], train.distractor[1:], zte[:n_te],
                                    test.distractor[1:]),
    }


def run(cfg: BaselinesConfig, folder: RunFolder | None = None) -> list[dict[str, Any]]:
    """Train (where there is anything to train) and probe every model × σ × seed."""
    cfg.validate()
    if folder is not None:
        folder.write_json("config.json", {**asdict(cfg),
                                          "training": {m: cfg.training(m) for m in cfg.models
                                                       if m in TRAINING}})
    rows = []
    for sigma in cfg.sigmas:
        for seed in cfg.seeds:
            train, test = noisy_tv.make_split(sigma, seed, train_steps=cfg.train_steps,
                                              test_steps=cfg.test_steps)
            for name in cfg.models:
                rows.append(_one(name, sigma, seed, cfg, train, test, folder))
                r = rows[-1]
                logger.info("%s σ=%g seed=%d signal R²=%.3f noise R²=%.3f (%.1fs)", name, sigma,
                            seed, r["signal_r2"], r["noise_r2"], r["train_seconds"])
    if folder is not None:
        folder.write_rows("results", rows)
        folder.write_json("summary.json", summarise(rows))
        plot_r2_vs_sigma(rows, folder.file("r2_vs_sigma.png"))
    return rows


def _one(name: str, sigma: float, seed: int, cfg: BaselinesConfig, train: noisy_tv.NoisyTV,
         test: noisy_tv.NoisyTV, folder: RunFolder | None) -> dict[str, Any]:
    set_seed(seed)
    model = build_baseline(name, train.obs.shape[1], cfg.latent_dim, train)
    row: dict[str, Any] = {"model": name, "sigma": sigma, "seed": seed}
    t0 = time.perf_counter()
    if name == "kalman":
        pred = model.predict_signal(test.obs)[:-1]
        row["direct_r2"] = float(r2_score(test.signal[1:], pred).mean())
        row["final_loss"] = float("nan")
    else:
        tr = cfg.training(name)
        hist = fit(model, train.obs[:-1].to(cfg.device), train.obs[1:].to(cfg.device),
                   steps=tr["steps"], lr=tr["lr"], batch_size=tr["batch_size"], seed=seed,
                   device=cfg.device, progress=False, log_every=max(tr["steps"] // 50, 1),
                   metrics_path=folder.metrics_path if folder else None,
                   metrics_tags={"model": name, "sigma": sigma, "seed": seed})
        model = model.cpu()
        row["final_loss"] = hist.final_loss
    row["train_seconds"] = round(time.perf_counter() - t0, 3)
    row.update(probe(model, train, test))
    if folder is not None and name != "kalman":
        save_checkpoint(folder.file(f"checkpoints/{name}-sigma{sigma:g}-seed{seed}.pt"), model,
                        meta={"data": "noisy_tv", "sigma": sigma, "seed": seed, "row": row})
    return row


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sd (over seeds), min of the signal R² and mean distractor R² per model and σ."""
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        for sigma in sorted({r["sigma"] for r in rows if r["model"] == name}):
            sel = [r for r in rows if r["model"] == name and r["sigma"] == sigma]
            sig = np.array([r["signal_r2"] for r in sel], dtype=float)
            noi = np.array([r["noise_r2"] for r in sel], dtype=float)
            out.append({"model": name, "sigma": sigma, "n": len(sel),
                        "signal_mean": float(sig.mean()),
                        "signal_sd": float(sig.std(ddof=1)) if len(sel) > 1 else 0.0,
                        "signal_min": float(sig.min()),
                        "noise_mean": float(np.nanmean(noi)) if np.isfinite(noi).any()
                        else float("nan"),
                        "train_seconds": float(np.mean([r["train_seconds"] for r in sel]))})
    return out


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'model':<7} {'sigma':>5} {'n':>3}  {'signal R2 (mean ± sd)':>22} {'min':>7}  "
             f"{'distractor R2':>13} {'seconds':>8}"]
    for s in summary:
        lines.append(f"{s['model']:<7} {s['sigma']:>5g} {s['n']:>3}  {s['signal_mean']:>13.3f}"
                     f" ± {s['signal_sd']:<6.3f} {s['signal_min']:>7.3f}  "
                     f"{s['noise_mean']:>13.3f} {s['train_seconds']:>8.1f}")
    return "\n".join(lines)


def plot_r2_vs_sigma(rows: Sequence[dict[str, Any]], path: Any) -> None:
    """Signal and distractor probe R² against σ (mean ± sd over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for i, name in enumerate(dict.fromkeys(s["model"] for s in summary)):
        sel = [s for s in summary if s["model"] == name]
        x = [s["sigma"] for s in sel]
        m = np.array([s["signal_mean"] for s in sel])
        sd = np.array([s["signal_sd"] for s in sel])
        axes[0].plot(x, m, "o-", color=f"C{i + 5}", label=name)
        axes[0].fill_between(x, m - sd, m + sd, color=f"C{i + 5}", alpha=0.2)
        axes[1].plot(x, [s["noise_mean"] for s in sel], "o-", color=f"C{i + 5}", label=name)
    n_seeds = len({r["seed"] for r in rows})
    axes[0].set(title=f"Signal probe R² (mean ± sd, {n_seeds} seeds)", xlabel="σ",
                ylabel="test R² to s_{t+1}")
    axes[1].set(title="Distractor probe R² (lower = filtered)", xlabel="σ",
                ylabel="test R² to σ·d_{t+1}")
    axes[0].set_ylim(min(-0.1, axes[0].get_ylim()[0]), 1.05)
    axes[1].set_xlim(axes[0].get_xlim())
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Noisy TV: state-space baselines")
    fig.savefig(path, dpi=120)
    plt.close(fig)

