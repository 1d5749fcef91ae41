"""The Noisy TV experiment: train each model on each (σ, seed), probe the frozen
representation for the signal and for the distractor, and summarise.

See docs/method.md#noisy-tv.

Used by ``bjepa noisy-tv`` and ``examples/noisy_tv.py``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from bjepa._util import nanmean
from bjepa._validation import check_choice, check_nonnegative, check_positive_int
from bjepa.data import noisy_tv
from bjepa.experiments.grid import GridPoint, format_rows, grid_points, run_grid, summarise_rows
from bjepa.inference import fit
from bjepa.inference.checkpoint import load_checkpoint, save_checkpoint
from bjepa.inference.fit import set_seed
from bjepa.inference.svi import COMPILED_ELBOS, ELBO_CHOICES
from bjepa.metrics import linear_probe_r2
from bjepa.models import registry
from bjepa.models.base import validated_init
from bjepa.models.encoders import parse_encoder_spec
from bjepa.runs import RunFolder

__all__ = ["MODEL_NAMES", "PAPER_SIGMA8", "NoisyTVConfig", "build_model", "run", "summarise"]

logger = logging.getLogger(__name__)

#: The paper's single-seed test signal R² at σ = 8, drawn as reference markers
#: (docs/method.md#noisy-tv).
PAPER_SIGMA8 = {"vae": 0.499, "ar": 0.578, "jepa": 0.930, "vjepa": 0.870, "bjepa": 0.841}
#: the models a Noisy TV run trains by default (any registered model may be asked for)
MODEL_NAMES = ["vjepa", "bjepa", "jepa", "vae", "ar"]


@dataclass
class NoisyTVConfig:
    """Everything that defines a Noisy TV run (dumped as ``config.json``)."""

    models: list[str] = field(default_factory=lambda: ["vjepa", "jepa", "vae", "ar"])
    sigmas: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    # the recommended budget (benchmarks/README.md); ``paper_budget()`` gives the paper's
    steps: int = 1000
    lr: float = 3e-3
    batch_size: int | None = 256
    beta: float = 0.01
    tau: float | str = 0.99
    #: network spec (:mod:`bjepa.models.encoders`): ``"linear"``, ``"mlp"`` (2 GELU layers) or
    #: an MLP with options, e.g. ``"mlp:depth=1,activation=tanh"``
    encoder: str = "linear"
    #: width of the MLP networks (``None``: the models' default, 64); needs an ``"mlp"`` encoder
    hidden_dim: int | None = None
    #: the start of JEPA/VJEPA/BJEPA's encoder: ``None`` (each model's own: VJEPA and BJEPA
    #: ``"cca"``, JEPA ``"random"``), ``"cca"`` (data-dependent) or ``"random"``. The CCA start
    #: can pick spurious directions for wide MLP encoders at low noise (docs/nonlinear.md)
    init: str | None = None
    latent_dim: int = 4
    train_steps: int = 6000
    test_steps: int = 2000
    device: str = "cpu"
    progress: bool = True
    #: steps between training checkpoints of each model run (default: steps // 10, >= 50);
    #: only when models train one at a time (``replicas=1``)
    checkpoint_every: int | None = None
    #: runs of one model trained as one batched program (:func:`bjepa.inference.fit` with a
    #: list of models): ``None`` = as many as fit in memory, ``1`` = one at a time
    replicas: int | None = None
    #: mini-batches of batched runs: ``"shared"`` (one draw per step for all runs; fastest)
    #: or ``"own"`` (each run draws its own rows and matches the run trained alone)
    replica_batches: str = "shared"
    #: how each step is computed (:func:`bjepa.inference.fit`'s ``elbo``): ``"auto"``
    #: (TorchScript for long runs of traceable models), ``"inductor"`` (the whole step
    #: compiled by TorchInductor: fastest per step, seconds to compile) or an eager ELBO
    elbo: str = "auto"

    @classmethod
    def paper_budget(cls, **overrides: Any) -> NoisyTVConfig:
        """The paper's protocol: 6000 full-batch Adam steps at lr 1e-3."""
        return cls(**{**dict(steps=6000, lr=1e-3, batch_size=None), **_given(overrides)})

    @classmethod
    def quick(cls, **overrides: Any) -> NoisyTVConfig:
        """A small configuration that finishes in about a minute on 2 CPU cores."""
        base = dict(sigmas=[0.0, 4.0, 8.0], seeds=[0, 1], steps=800, batch_size=None,
                    train_steps=2000, test_steps=1000)
        return cls(**{**base, **_given(overrides)})

    def validate(self) -> NoisyTVConfig:
        if not self.models:
            raise ValueError("models must name at least one model")
        for m in self.models:
            check_choice("model", m, registry.available_models())
        for s in self.sigmas:
            check_nonnegative("sigma", s)
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        check_positive_int("steps", self.steps)
        check_nonnegative("beta", self.beta)
        family, _ = parse_encoder_spec(self.encoder)
        if self.hidden_dim is not None:
            check_positive_int("hidden_dim", self.hidden_dim)
            if family == "linear":
                raise ValueError("hidden_dim sets the width of MLP networks, and "
                                 "encoder='linear' has none; use encoder='mlp' or drop hidden_dim")
        if self.init is not None:
            validated_init(self.init)
        if self.checkpoint_every is not None:
            check_positive_int("checkpoint_every", self.checkpoint_every)
        if self.replicas is not None:
            check_positive_int("replicas", self.replicas)
        check_choice("replica_batches", self.replica_batches, ["shared", "own"])
        check_choice("elbo", self.elbo, ELBO_CHOICES)
        return self


def _given(overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides that were actually given (``None`` = not given on the command line)."""
    return {k: v for k, v in overrides.items() if v is not None}


def build_model(name: str, obs_dim: int, cfg: NoisyTVConfig) -> torch.nn.Module:
    """Construct model ``name`` (any registered model, :mod:`bjepa.models.registry`) with the
    run's shared settings (``init`` reaches the models that take a start)."""
    return registry.build_model(name, obs_dim, cfg.latent_dim,
                                settings=dict(encoder=cfg.encoder, hidden_dim=cfg.hidden_dim,
                                              beta=cfg.beta, tau=cfg.tau, init=cfg.init))


def probe(model: Any, train: noisy_tv.NoisyTV, test: noisy_tv.NoisyTV) -> dict[str, float]:
    """Linear-probe R² of the frozen representation for the signal and the distractor.

    A representation of ``x_t`` is probed against ``s_{t+k}`` with ``k = model.probe_offset``
    (0 for the VAE, 1 for the predictive models).
    """
    k = model.probe_offset
    ztr, zte = model.encode(train.obs), model.encode(test.obs)
    n_tr, n_te = len(train) - k, len(test) - k
    return {
        "signal_r2": linear_probe_r2(ztr[:n_tr], train.signal[k:], zte[:n_te], test.signal[k:]),
        "noise_r2": linear_probe_r2(ztr[:n_tr], train.distractor[k:], zte[:n_te],
                                    test.distractor[k:]),
    }


def finished_row(path: Any) -> dict[str, Any] | None:
    """The results row stored in a finished run's model checkpoint (``None`` if it has none)."""
    row = load_checkpoint(path).get("meta", {}).get("row")
    return dict(row) if isinstance(row, dict) else None


def run(cfg: NoisyTVConfig, folder: RunFolder | None = None, *,
        resume: bool = False) -> list[dict[str, Any]]:
    """Train and probe every model × σ × seed; returns one row per run.

    By default all (σ, seed) runs of a model train as one batched program (replicas; each
    ends where it would end trained alone, see :mod:`bjepa.inference.replicas`). With a
    ``folder``, each finished run is saved as the model checkpoint
    ``checkpoints/<model>-sigma<σ>-seed<seed>.pt`` holding its results row; ``resume=True``
    reads finished runs back and trains the rest. With ``cfg.replicas == 1`` models train one
    at a time and also keep periodic training checkpoints in
    ``checkpoints/<model>-sigma<σ>-seed<seed>/``, so an interrupted run continues from its
    newest step (bit for bit on CPU).
    """
    cfg.validate()
    if resume and folder is None:
        raise ValueError("resume=True needs a run folder")
    if folder is not None:
        folder.write_json("config.json", asdict(cfg))
    splits: dict[tuple[float, int], tuple[noisy_tv.NoisyTV, noisy_tv.NoisyTV]] = {}

    def split(sigma: float, seed: int) -> tuple[noisy_tv.NoisyTV, noisy_tv.NoisyTV]:
        if (sigma, seed) not in splits:
            train, test = noisy_tv.make_split(sigma, seed, train_steps=cfg.train_steps,
                                              test_steps=cfg.test_steps)
            splits[sigma, seed] = train.to(cfg.device), test.to(cfg.device)
        return splits[sigma, seed]

    def finished(p: GridPoint) -> dict[str, Any] | None:
        final = _final_path(folder, p.model, p.setting, p.seed)
        return finished_row(final) if resume and final.exists() else None

    def run_one(p: GridPoint) -> dict[str, Any]:
        return _train_one(p.model, p.setting, p.seed, cfg, *split(p.setting, p.seed), folder,
                          resume)

    def run_group(name: str, group: list[GridPoint]) -> list[dict[str, Any]]:
        obs_dim = split(group[0].setting, group[0].seed)[0].obs.shape[1]
        if not build_model(name, obs_dim, cfg).training_hints().stackable:
            return [run_one(p) for p in group]  # sequence models train one at a time
        return _train_batched(name, [(p.setting, p.seed) for p in group], cfg, split, folder)

    points = grid_points(cfg.models, cfg.sigmas, cfg.seeds)  # σ, then seed, then model
    rows = run_grid(points, finished=finished, progress=cfg.progress, desc="Noisy TV runs",
                    describe=lambda r: f"signal R²={r['signal_r2']:.3f} "
                                       f"noise R²={r['noise_r2']:.3f}",
                    **({"run_one": run_one} if cfg.replicas == 1 else {"run_group": run_group}))
    if folder is not None:
        folder.write_rows("results", rows)
        plot_r2_vs_sigma(rows, folder.file("r2_vs_sigma.png"))
    return rows


def _final_path(folder: RunFolder | None, name: str, sigma: float, seed: int) -> Any:
    return folder.file(f"checkpoints/{name}-sigma{sigma:g}-seed{seed}.pt") if folder else None


def _save_run(folder: RunFolder | None, model: Any, row: dict[str, Any],
              cfg: NoisyTVConfig) -> None:
    if folder is None:
        return
    save_checkpoint(_final_path(folder, row["model"], row["sigma"], row["seed"]), model,
                    meta={"model": row["model"], "sigma": row["sigma"], "seed": row["seed"],
                          "data": "noisy_tv", "train_steps": cfg.train_steps,
                          "test_steps": cfg.test_steps, "row": row})


def _elbo_for(name: str, cfg: NoisyTVConfig, model: Any) -> str:
    """``cfg.elbo``, except that a compiled ELBO asked for all models falls back to
    ``"auto"`` for a model that cannot be compiled (it says so in the log)."""
    if cfg.elbo not in COMPILED_ELBOS:
        return cfg.elbo
    if not model.training_hints().compilable_by_inductor:
        logger.info("%s cannot be compiled with elbo=%r; training it with elbo='auto'", name,
                    cfg.elbo)
        return "auto"
    return cfg.elbo


def _train_batched(name: str, runs: list[tuple[float, int]], cfg: NoisyTVConfig,
                   split: Any, folder: RunFolder | None) -> list[dict[str, Any]]:
    """Train the (σ, seed) ``runs`` of model ``name`` as replicas, chunk by chunk; returns
    their rows in order."""
    from bjepa.inference.replicas import auto_chunk

    obs = split(*runs[0])[0].obs
    chunk = cfg.replicas or auto_chunk(len(runs), obs.shape[0] - 1, obs.shape[1])
    rows = []
    for lo in range(0, len(runs), chunk):
        part = runs[lo:lo + chunk]
        models = []
        for sigma, seed in part:
            set_seed(seed)
            models.append(build_model(name, split(sigma, seed)[0].obs.shape[1], cfg))
        trains = [split(sigma, seed)[0] for sigma, seed in part]
        hists = fit(models, [t.obs[:-1] for t in trains], [t.obs[1:] for t in trains],
                    steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size,
                    seed=[seed for _, seed in part], device=cfg.device, progress=False,
                    log_every=max(cfg.steps // 100, 1),
                    metrics_path=folder.metrics_path if folder else None,
                    metrics_tags={"model": name}, replicas=chunk,
                    replica_batches=cfg.replica_batches,
                    elbo=_elbo_for(name, cfg, models[0]))
        for (sigma, seed), model, hist in zip(part, models, hists, strict=True):
            row = {"model": name, "sigma": sigma, "seed": seed,
                   **probe(model, *split(sigma, seed)), "final_loss": hist.final_loss,
                   "train_seconds": round(hist.seconds, 3), "replicas": len(part)}
            _save_run(folder, model, row, cfg)
            rows.append(row)
    return rows


def _train_one(name: str, sigma: float, seed: int, cfg: NoisyTVConfig,
               train: noisy_tv.NoisyTV, test: noisy_tv.NoisyTV, folder: RunFolder | None,
               resume: bool) -> dict[str, Any]:
    """Train, probe and (with a folder) checkpoint one model run; returns its results row."""
    every = cfg.checkpoint_every or max(cfg.steps // 10, 50)
    ckdir = folder.file(f"checkpoints/{name}-sigma{sigma:g}-seed{seed}") if folder else None
    if ckdir is not None and not resume:
        shutil.rmtree(ckdir, ignore_errors=True)
    set_seed(seed)
    model = build_model(name, train.obs.shape[1], cfg)
    hist = fit(model, train.obs[:-1], train.obs[1:], steps=cfg.steps, lr=cfg.lr,
               batch_size=cfg.batch_size, seed=seed, device=cfg.device,
               progress=False, log_every=max(cfg.steps // 100, 1),
               metrics_path=folder.metrics_path if folder else None,
               metrics_tags={"model": name, "sigma": sigma, "seed": seed},
               checkpoint_dir=ckdir, checkpoint_every=every, keep_last=2, resume=resume,
               elbo=_elbo_for(name, cfg, model))
    row = {"model": name, "sigma": sigma, "seed": seed, **probe(model, train, test),
           "final_loss": hist.final_loss, "train_seconds": round(hist.seconds, 3),
           "replicas": 1}
    _save_run(folder, model, row, cfg)
    if ckdir is not None:
        shutil.rmtree(ckdir, ignore_errors=True)  # the model checkpoint now stands for it
    return row


def _order(model: str) -> int:
    names = registry.available_models()
    return names.index(model) if model in names else len(names)


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sd, min and max over seeds of the signal and distractor R² per model and σ
    (``signal_mean``, ``signal_sd``, ``signal_min``, ``noise_mean``, ...)."""
    return summarise_rows(rows, ("model", "sigma"), ["signal_r2", "noise_r2"],
                          names={"signal_r2": "signal", "noise_r2": "noise"},
                          order=lambda k: (_order(k[0]), k[1]))


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`summarise`'s rows."""
    return format_rows(summary, [("model", "model", "<7"), ("sigma", "sigma", ">5g")],
                       [("signal", "signal R2", ".3f"), ("noise", "distractor R2", ".3f")],
                       worst=True)


def plot_r2_vs_sigma(rows: Sequence[dict[str, Any]], path: Any) -> None:
    """Signal and distractor probe R² against σ: mean ± sd over seeds per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for model in dict.fromkeys(s["model"] for s in summary):
        sel = [s for s in summary if s["model"] == model]
        x = [s["sigma"] for s in sel]
        c = registry.model_color(model)
        m = np.array([s["signal_mean"] for s in sel])
        sd = np.array([s["signal_sd"] for s in sel])
        axes[0].plot(x, m, "o-", color=c, label=model.upper())
        axes[0].fill_between(x, m - sd, m + sd, color=c, alpha=0.2)
        nm = [r for r in rows if r["model"] == model]
        xs = sorted({r["sigma"] for r in nm})
        noise = [nanmean([r["noise_r2"] for r in nm if r["sigma"] == s]) for s in xs]
        axes[1].plot(xs, noise, "o-", color=c, label=model.upper())
        if model in PAPER_SIGMA8:
            axes[0].scatter([8.0], [PAPER_SIGMA8[model]], marker="*", s=140, color=c,
                            edgecolor="k", zorder=5)
    axes[0].scatter([], [], marker="*", s=140, color="w", edgecolor="k",
                    label="paper, σ=8 (1 seed)")
    n_seeds = len({r["seed"] for r in rows})
    axes[0].set(title=f"Signal probe R² (mean ± sd over {n_seeds} seeds)",
                xlabel="distractor strength σ", ylabel="test R² to s_{t+k}  (higher = better)")
    axes[1].set(title="Distractor probe R² (lower = better filtering)",
                xlabel="distractor strength σ", ylabel="test R² to σ·d_{t+k}")
    axes[0].set_ylim(min(-0.1, axes[0].get_ylim()[0]), 1.05)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Noisy TV: linear probes of frozen representations")
    fig.savefig(path, dpi=120)
    plt.close(fig)
