"""Adaptive β on Noisy TV (docs/adaptive_beta.md): train VJEPA with a β controller
(:mod:`bjepa.inference.adaptive_beta`) from a β far from the good value and measure where it
lands on the fixed-β sweep's curves (docs/beta_sweep.md) — final β, signal R², 90 % coverage of
target draws, KL per dimension — with the sweep's own evaluation
(:func:`bjepa.experiments.sweeps.evaluate`).

- :func:`make_controller` — a controller by name (``"rate"``, ``"calibrated"``, ``"fixed"``).
- :func:`run_noisy_tv` — one VJEPA per scheme × β₀ × σ × seed; rows (with the β trace) are
  appended to a JSON-lines file as they finish, so a long run can be read while it goes.
- :func:`summarise`, :func:`format_table`, :func:`plot_beta_traces`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bjepa._util import seeded
from bjepa._validation import check_positive, check_positive_int
from bjepa.data import noisy_tv
from bjepa.experiments.grid import summarise_rows
from bjepa.experiments.sweeps import evaluate
from bjepa.inference import CalibratedBeta, Callback, TargetRate, fit
from bjepa.inference.fit import set_seed
from bjepa.runs import append_jsonl

if TYPE_CHECKING:
    import torch

__all__ = [
    "SCHEMES",
    "AdaptiveBetaConfig",
    "format_table",
    "make_controller",
    "plot_beta_traces",
    "plot_on_sweep",
    "run_atari",
    "run_hallway",
    "run_noisy_tv",
    "summarise",
]

logger = logging.getLogger(__name__)

#: scheme names: a β controller, or ``"fixed"`` (β₀ kept, the baseline)
SCHEMES = ["rate", "calibrated", "fixed"]

#: columns of :func:`format_table`
TABLE = ["beta", "signal_r2", "coverage90", "kl_per_dim", "nll", "state_coverage90"]


def make_controller(scheme: str, **kwargs: Any) -> Callback | None:
    """The β controller called ``scheme`` (``None`` for ``"fixed"``)."""
    if scheme == "rate":
        return TargetRate(**kwargs)
    if scheme == "calibrated":
        return CalibratedBeta(**kwargs)
    if scheme == "fixed":
        if kwargs:
            raise ValueError("scheme 'fixed' takes no controller options")
        return None
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


@dataclass
class AdaptiveBetaConfig:
    """The Noisy TV comparison (dumped with every row)."""

    schemes: list[str] = field(default_factory=lambda: ["calibrated", "rate"])
    betas0: list[float] = field(default_factory=lambda: [1.0, 1e-4])
    sigmas: list[float] = field(default_factory=lambda: [8.0, 4.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    steps: int = 1000
    batch_size: int = 256
    lr: float = 3e-3
    latent_dim: int = 4
    encoder: str = "linear"
    tau: float = 0.99
    train_steps: int = 3000
    test_steps: int = 1000
    calibration_draws: int = 20
    #: options of every controller, per scheme (e.g. ``{"rate": {"nats_per_dim": 3.0}}``)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> AdaptiveBetaConfig:
        for s in self.schemes:
            make_controller(s, **self.options.get(s, {}))
        for b in self.betas0:
            check_positive("beta0", b)
        if not self.sigmas or not self.seeds or not self.schemes or not self.betas0:
            raise ValueError("schemes, betas0, sigmas and seeds must each list at least one value")
        check_positive_int("steps", self.steps)
        check_positive_int("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        return self


def run_noisy_tv(cfg: AdaptiveBetaConfig, out: str | Path | None = None, *,
                 skip_done: bool = True) -> list[dict[str, Any]]:
    """Train and evaluate one VJEPA per σ × seed × scheme × β₀; returns one row per run.

    With ``out`` (a ``.jsonl`` path) each row is appended when its run ends, and rows already
    there (same scheme, β₀, σ, seed) are kept instead of re-run when ``skip_done``.
    """
    from bjepa.models import VJEPA

    cfg.validate()
    path = None if out is None else Path(out)
    done: dict[tuple, dict[str, Any]] = {}
    if path is not None and path.exists() and skip_done:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            done[(row["scheme"], row["beta0"], row["sigma"], row["seed"])] = row
    rows: list[dict[str, Any]] = []
    for sigma in cfg.sigmas:
        for seed in cfg.seeds:
            train, test = noisy_tv.make_split(sigma, seed, train_steps=cfg.train_steps,
                                              test_steps=cfg.test_steps)
            for scheme in cfg.schemes:
                for beta0 in cfg.betas0:
                    key = (scheme, beta0, sigma, seed)
                    if key in done:
                        rows.append(done[key])
                        continue
                    set_seed(seed)
                    model = VJEPA(train.obs.shape[1], cfg.latent_dim, beta=beta0, tau=cfg.tau,
                                  encoder=cfg.encoder)
                    ctl = make_controller(scheme, **cfg.options.get(scheme, {}))
                    hist = fit(model, train.obs[:-1], train.obs[1:], steps=cfg.steps,
                               lr=cfg.lr, batch_size=cfg.batch_size, seed=seed,
                               progress=False, log_every=max(cfg.steps // 100, 1),
                               callbacks=[] if ctl is None else [ctl])
                    with seeded(seed):
                        metrics = evaluate(model, train, test,
                                           calibration_draws=cfg.calibration_draws)
                    row = {"scheme": scheme, "beta0": beta0, "sigma": sigma, "seed": seed,
                           "beta": float(model.beta), **metrics,
                           **_training_columns(hist, beta0)}
                    rows.append(_append_row(path, row))
                    logger.info("%s β₀=%g σ=%g seed=%d → β=%.3g R²=%.4f cov90=%.3f KL/dim=%.2f "
                                "(%.0fs)", scheme, beta0, sigma, seed, row["beta"],
                                row["signal_r2"], row["coverage90"], row["kl_per_dim"],
                                hist.seconds)
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over seeds per scheme × β₀ × σ (the final β is also given as a geometric
    mean, ``beta_gmean``)."""
    plain = [{k: v for k, v in r.items() if k != "trace"} | {"log_beta": math.log(r["beta"])}
             for r in rows]
    out = summarise_rows(plain, ["scheme", "beta0", "sigma"],
                         ["beta", "log_beta", "signal_r2", "coverage90", "kl_per_dim", "nll",
                          "state_coverage90", "train_seconds"])
    for s in out:
        s["beta_gmean"] = math.exp(s["log_beta_mean"])
    return out


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`summarise`'s rows."""
    head = ("| scheme | β₀ | σ | n | final β (geo. mean, range) | signal R² | cov90 z | KL/dim | "
            "NLL z | cov90 s |")
    lines = [head, "|" + "---|" * 10]
    for s in summary:
        lo, hi = s.get("log_beta_min"), s.get("log_beta_max")
        rng = "" if lo is None else f" ({math.exp(lo):.2g}–{math.exp(hi):.2g})"
        lines.append(
            f"| {s['scheme']} | {s['beta0']:g} | {s['sigma']:g} | {s['n']} | "
            f"{s['beta_gmean']:.3g}{rng} | {s['signal_r2_mean']:.4f} ± {s['signal_r2_sd']:.4f} | "
            f"{s['coverage90_mean']:.3f} ± {s['coverage90_sd']:.3f} | "
            f"{s['kl_per_dim_mean']:.2f} ± {s['kl_per_dim_sd']:.2f} | "
            f"{s['nll_mean']:.2f} ± {s['nll_sd']:.2f} | "
            f"{s['state_coverage90_mean']:.3f} ± {s['state_coverage90_sd']:.3f} |")
    return "\n".join(lines)


def plot_beta_traces(rows: Sequence[dict[str, Any]], path: str | Path, *,
                     title: str = "Noisy TV") -> None:
    """β over training, one panel per scheme, one line per run (colour: β₀; style: σ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schemes = [s for s in dict.fromkeys(r["scheme"] for r in rows) if s != "fixed"]
    fig, axes = plt.subplots(1, max(len(schemes), 1), figsize=(5.2 * max(len(schemes), 1), 3.8),
                             squeeze=False)
    rows = [r for r in rows if r["scheme"] in schemes]
    betas0 = sorted({r["beta0"] for r in rows})
    colours = dict(zip(betas0, ["tab:blue", "tab:red", "tab:green", "tab:purple"], strict=False))
    styles = {s: ls for s, ls in zip(sorted({r["sigma"] for r in rows}), ["-", "--", ":"],
                                     strict=False)}
    for ax, scheme in zip(axes[0], schemes, strict=False):
        for r in rows:
            if r["scheme"] != scheme:
                continue
            steps = [t[0] for t in r["trace"]]
            betas = [t[1] for t in r["trace"]]
            ax.plot(steps, betas, color=colours.get(r["beta0"], "k"),
                    ls=styles.get(r["sigma"], "-"), lw=1, alpha=0.7)
        for b in betas0:
            ax.plot([], [], color=colours.get(b, "k"), label=f"β₀ = {b:g}")
        for s, ls in styles.items() if len(styles) > 1 else ():
            ax.plot([], [], color="grey", ls=ls, label=f"σ = {s:g}")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("β")
        ax.set_title(f"{title}: {scheme}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def config_dict(cfg: AdaptiveBetaConfig) -> dict[str, Any]:
    """The configuration as plain values."""
    return asdict(cfg)


def run_hallway(schemes: Sequence[tuple[str, float]], seeds: Sequence[int], *,
                out: str | Path | None = None, quick: bool = True,
                options: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The hallway fork (docs/hallway.md) with an MDN head, trained per ``(scheme, β₀)`` and
    seed; rows hold the hallway's metrics (:func:`bjepa.experiments.hallway.evaluate`), the
    final β, the 90 % coverage of target draws and the KL per dimension on the test pairs."""
    import torch

    from bjepa.data import hallway as hw
    from bjepa.experiments import hallway as hx

    options = options or {}
    cfg = hx.HallwayConfig.quick(heads=["mdn"]) if quick else hx.HallwayConfig(heads=["mdn"])
    cfg.validate()
    path = None if out is None else Path(out)
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        train, test = hw.make_split(seed, train_episodes=cfg.train_episodes,
                                    test_episodes=cfg.test_episodes, obs_dim=cfg.obs_dim,
                                    speed=cfg.speed, horizon=cfg.horizon)
        for scheme, beta0 in schemes:
            set_seed(seed)
            model = hx.build_model("mdn", train.context.shape[1], cfg)
            model.beta = float(beta0)
            ctl = make_controller(scheme, **options.get(scheme, {}))
            hist = fit(model, train.context, train.target, steps=cfg.steps, lr=cfg.lr,
                       batch_size=cfg.batch_size, seed=seed, progress=False,
                       log_every=max(cfg.steps // 100, 1),
                       callbacks=[] if ctl is None else [ctl])
            model = model.cpu().eval()
            torch.manual_seed(seed)
            probe = hx.fit_position_probe(model, train)
            metrics, _ = hx.evaluate(model, probe, test, cfg)
            row = {"scheme": scheme, "beta0": beta0, "seed": seed, "beta": float(model.beta),
                   **metrics, **_latent_calibration(model, test.context, test.target, None),
                   **_training_columns(hist, beta0)}
            rows.append(_append_row(path, row))
            logger.info("hallway %s β₀=%g seed=%d → β=%.3g NLL fork %.3f both modes %.2f "
                        "cov90 %.3f KL/dim %.2f (%.0fs)", scheme, beta0, seed, row["beta"],
                        row["nll_fork"], row["both_modes"], row["coverage90"],
                        row["kl_per_dim"], hist.seconds)
    return rows


def _latent_calibration(model: Any, context: torch.Tensor, target: torch.Tensor,
                        seed: int | None) -> dict[str, float]:
    """90 % coverage of target-posterior draws under the predictive (draws seeded with
    ``seed``; ``None``: the caller's stream) and the mean KL per latent dimension."""
    import torch

    from bjepa.diagnostics import calibrate, collapse_diagnostics

    with torch.no_grad(), seeded(seed):
        draws = model.target_dist(target).sample((4,))
        rep = calibrate(model.predict(context), draws,
                        target="the next latent z_T ~ q(z_T | x_T)")
    col = collapse_diagnostics(model, context, target)
    return {"coverage90": rep.coverage_at(0.9),
            "kl_per_dim": float(sum(col.kl_per_dim) / len(col.kl_per_dim))}


def _training_columns(hist: Any, beta0: float) -> dict[str, Any]:
    """Training time and the β trace ``[[step, β], ...]`` of a history."""
    return {"train_seconds": round(hist.seconds, 2),
            "trace": [[r["step"], r.get("beta", beta0)] for r in hist.records]}


def _append_row(path: Path | None, row: dict[str, Any]) -> dict[str, Any]:
    """:func:`bjepa.runs.append_jsonl` of one row; returns ``row``."""
    append_jsonl(path, [row])
    return row


def plot_on_sweep(rows: Sequence[dict[str, Any]], sweep: Sequence[dict[str, Any]],
                  path: str | Path, *, sigma: float = 8.0) -> None:
    """Where the adaptive runs land on the fixed-β sweep's curves: 90 % coverage and KL per
    dimension against β (the sweep's mean ± sd over seeds as lines, each adaptive run's final β
    and its metric as a marker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = sorted((s for s in sweep if s["sigma"] == sigma), key=lambda s: s["beta"])
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8))
    markers = {"calibrated": "o", "rate": "s", "fixed": "x"}
    colours = {1.0: "tab:red", 1e-4: "tab:blue"}
    for ax, metric, label in zip(axes, ["coverage90", "kl_per_dim"],
                                 ["90 % coverage of z_T draws", "KL per dimension (nats)"],
                                 strict=True):
        b = [s["beta"] for s in ref]
        m = [s[f"{metric}_mean"] for s in ref]
        sd = [s[f"{metric}_sd"] for s in ref]
        ax.errorbar(b, m, yerr=sd, color="k", lw=1, capsize=2,
                    label="fixed β sweep (1500 steps × 512)")
        for r in rows:
            if r["sigma"] != sigma:
                continue
            colour = colours.get(r["beta0"], "grey")
            hollow = r["scheme"] != "fixed"
            style = {"facecolors": "none", "edgecolors": colour} if hollow else {"c": colour}
            ax.scatter(r["beta"], r[metric], marker=markers.get(r["scheme"], "o"), s=30,
                       **style)
        for s, mk in markers.items():
            ax.scatter([], [], marker=mk, color="grey", label=f"{s} (1000 steps × 256)")
        for b0, c in colours.items():
            ax.plot([], [], color=c, label=f"β₀ = {b0:g}")
        if metric == "coverage90":
            ax.axhspan(0.87, 0.93, color="tab:green", alpha=0.1, label="0.90 ± 0.03")
        ax.set_xscale("log")
        ax.set_xlabel("final β")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Noisy TV σ = {sigma:g}: adaptive β on the fixed-β sweep's curves")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_atari(schemes: Sequence[tuple[str, float]], seeds: Sequence[int], *,
              sigma: float = 0.1, out: str | Path | None = None,
              options: dict[str, dict[str, Any]] | None = None,
              **overrides: Any) -> list[dict[str, Any]]:
    """Atari Pong with the TV distractor at strength ``sigma`` (docs/atari.md), VJEPA with the
    documented default configuration (``overrides`` change it), trained per ``(scheme, β₀)``
    and seed; rows hold the linear and MLP probe R² (:func:`bjepa.experiments.atari.probe`),
    the final β, the 90 % coverage of target draws and the KL per dimension on test pairs."""

    from bjepa.experiments import atari as ax

    options = options or {}
    cfg = ax.AtariConfig(models=["vjepa"], sigmas=[sigma], seeds=list(seeds), progress=False,
                         **overrides)
    cfg.validate()
    path = None if out is None else Path(out)
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        train, test = ax.make_splits(cfg, sigma, seed)
        for scheme, beta0 in schemes:
            set_seed(seed)
            model = ax.build_model("vjepa", train.context.shape[1], cfg)
            model.beta = float(beta0)
            ctl = make_controller(scheme, **options.get(scheme, {}))
            hist = fit(model, train.context, train.target, steps=cfg.steps, lr=cfg.lr,
                       batch_size=cfg.batch_size, seed=seed, progress=False,
                       log_every=max(cfg.steps // 100, 1),
                       callbacks=[] if ctl is None else [ctl])
            model.eval()
            scores = ax.probe(model, train, test, cfg, seed=seed)
            row = {"scheme": scheme, "beta0": beta0, "sigma": sigma, "seed": seed,
                   "beta": float(model.beta), "linear_r2": scores["linear_r2"],
                   "mlp_r2": scores["mlp_r2"],
                   **_latent_calibration(model, test.context, test.target, seed),
                   **_training_columns(hist, beta0)}
            rows.append(_append_row(path, row))
            logger.info("atari %s β₀=%g seed=%d → β=%.3g linear R² %.3f MLP R² %.3f cov90 %.3f "
                        "KL/dim %.2f (%.0fs)", scheme, beta0, seed, row["beta"],
                        row["linear_r2"], row["mlp_r2"], row["coverage90"], row["kl_per_dim"],
                        hist.seconds)
    return rows
