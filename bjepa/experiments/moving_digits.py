"""Moving digits (E8): a digit bouncing on a canvas with pixel noise, convolutional (or ViT)
encoders on a two-frame context, and probes of the frozen representation for the digit's class,
position and velocity.

For each noise level σ and seed: generate training and test episodes
(:mod:`bjepa.data.moving_digits`; test episodes show digit images never seen in training),
standardise with the training frames' per-pixel mean and overall standard deviation, cut
``(context, target)`` stack pairs — the context the ``k = 2`` frames ending at ``t``, the target
the next ``k`` frames — train every model with mini-batch SVI, and probe the representation of
each test context:

- class: multinomial logistic regression (:func:`bjepa.metrics.logistic_probe`), accuracy;
- position ``p_t`` and velocity ``v_t = p_t − p_{t−1}``: least squares with intercept
  (:func:`bjepa.metrics.linear_probe_r2`), test R² averaged over the two axes.

The representation is ``model.encode(context)`` for every model: VJEPA/BJEPA/JEPA's context
encoder, the β-VAE's posterior mean (it reconstructs the context stack) and the CNN-RSSM's
filtered state ``[h_t, μ_q]`` (run over each episode's contexts in time order; the RSSM is
trained on the training contexts joined episode after episode).

A single frame shows the position but not the velocity; the two-frame context shows both.

Used by ``bjepa moving-digits``; see docs/moving_digits.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bjepa._util import torch_threads
from bjepa._validation import (
    check_choice,
    check_nonnegative,
    check_positive,
    check_positive_int,
)
from bjepa.data import moving_digits as md
from bjepa.data.digits import load_digit_images
from bjepa.experiments.grid import GridPoint, format_rows, grid_points, run_grid, summarise_rows
from bjepa.inference import fit
from bjepa.inference.checkpoint import save_checkpoint
from bjepa.inference.fit import set_seed
from bjepa.metrics import linear_probe_r2, logistic_probe
from bjepa.models import registry
from bjepa.models.conv import register_conv
from bjepa.models.rssm import RSSM
from bjepa.models.vit import register_vit
from bjepa.runs import RunFolder

__all__ = ["MODELS", "REFERENCE", "MovingDigitsConfig", "build_model", "format_table",
           "load_model", "make_data", "plot_frames", "plot_probes", "probe", "representation",
           "run", "summarise"]

logger = logging.getLogger(__name__)

#: the models a run trains by default ("vae" is a β-VAE, "rssm" the CNN-RSSM)
MODELS = ["vjepa", "bjepa", "jepa", "vae", "rssm"]
#: the reference implementation's printed numbers (one seed; 64×64 canvas, 28×28 MNIST digit,
#: one-frame context, its "VJEPA" trained with VICReg): σ → model → (class accuracy,
#: position R², velocity R²)
REFERENCE: dict[float, dict[str, tuple[float, float, float]]] = {
    0.0: {"vjepa": (0.228, 0.825, 0.031), "bjepa": (0.235, 0.821, 0.043),
          "jepa": (0.243, 0.787, 0.032), "vae": (0.373, 0.936, 0.024)},
    0.5: {"vjepa": (0.174, 0.682, -0.008), "bjepa": (0.200, 0.681, -0.011),
          "jepa": (0.153, 0.622, -0.042), "vae": (0.212, 0.834, -0.031)},
    1.0: {"vjepa": (0.159, 0.572, -0.049), "bjepa": (0.141, 0.646, -0.029),
          "jepa": (0.140, 0.481, -0.037), "vae": (0.188, 0.651, -0.017)},
}
METRICS = ["class_acc", "position_r2", "velocity_r2"]
LABELS = {"vjepa": "VJEPA", "bjepa": "BJEPA", "jepa": "JEPA", "vae": "β-VAE",
          "rssm": "CNN-RSSM", "ar": "AR"}


@dataclass
class MovingDigitsConfig:
    """Everything that defines a moving-digits run (dumped as ``config.json``).

    Data: a ``digit_size`` digit on a ``canvas`` (pixels), speeds up to ``max_speed`` px/frame,
    ``train_episodes``/``test_episodes`` of ``length`` frames, pixel noise σ in ``sigmas``.
    Encoder: ``"conv"`` (three convolutions of widths ``channels``) or ``"vit"`` (patches of
    ``vit_patch`` pixels, width ``vit_width``, ``vit_depth`` blocks, ``vit_heads`` heads), on
    ``context_frames`` stacked frames. Models: ``latent_dim``, ``hidden_dim`` (the encoder's
    read-out width), VJEPA/BJEPA ``beta``, ``tau``, ``init`` of the three predictive models,
    the β-VAE's ``vae_beta``, the CNN-RSSM's GRU width ``rssm_hidden``, BPTT ``rssm_window``
    and ``rssm_burn_in``. Training: ``steps`` of ``batch_size`` rows with Adam at ``lr``; the
    RSSM, whose loop over time makes a step dearer, takes ``rssm_steps`` of ``rssm_batch_size``
    frames (``rssm_batch_size / rssm_window`` windows). ``threads`` sets
    ``torch.set_num_threads`` for the run.
    """

    models: list[str] = field(default_factory=lambda: list(MODELS))
    sigmas: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    canvas: int = 32
    digit_size: int = 16
    max_speed: int = 3
    length: int = 24
    train_episodes: int = 1000
    test_episodes: int = 100
    context_frames: int = 2
    encoder: str = "conv"
    channels: list[int] = field(default_factory=lambda: [8, 16, 16])
    vit_patch: int = 4
    vit_width: int = 32
    vit_depth: int = 2
    vit_heads: int = 4
    latent_dim: int = 32
    hidden_dim: int = 128
    beta: float = 0.01
    tau: float | str = 0.99
    init: str = "cca"
    vae_beta: float = 4.0
    rssm_hidden: int = 64
    rssm_window: int = 16
    rssm_burn_in: int = 4
    steps: int = 1200
    rssm_steps: int = 100
    batch_size: int = 64
    rssm_batch_size: int = 128
    lr: float = 1e-3
    source: str = "sklearn"
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> MovingDigitsConfig:
        """σ ∈ {0, 1}, one seed, few episodes and steps: a smoke run (seconds, not a result)."""
        base: dict[str, Any] = dict(sigmas=[0.0, 1.0], seeds=[0], train_episodes=40,
                                    test_episodes=20, length=16, steps=40, rssm_steps=8,
                                    latent_dim=8, hidden_dim=32, rssm_hidden=16, rssm_window=8,
                                    rssm_burn_in=2)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def validate(self) -> MovingDigitsConfig:
        if not self.models:
            raise ValueError("models must name at least one of " + ", ".join(MODELS))
        for m in self.models:
            check_choice("model", m, registry.available_models())
        if not self.sigmas:
            raise ValueError("sigmas must list at least one noise level")
        for s in self.sigmas:
            check_nonnegative("sigma", s)
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        for name in ["canvas", "digit_size", "length", "train_episodes", "test_episodes",
                     "context_frames", "vit_patch", "vit_width", "vit_depth", "vit_heads",
                     "latent_dim", "hidden_dim", "rssm_hidden", "rssm_window", "steps",
                     "rssm_steps", "batch_size", "rssm_batch_size"]:
            check_positive_int(name, getattr(self, name))
        if self.digit_size >= self.canvas:
            raise ValueError(f"digit_size must be smaller than canvas, got digit_size="
                             f"{self.digit_size}, canvas={self.canvas}")
        if self.canvas < 16:
            raise ValueError(f"canvas must be at least 16 pixels for the image encoders, got "
                             f"{self.canvas}")
        if self.length < 2 * self.context_frames + 2:
            raise ValueError(f"length must be >= 2·context_frames + 2 = "
                             f"{2 * self.context_frames + 2}, got {self.length}")
        check_choice("encoder", self.encoder, ["conv", "vit"])
        if len(self.channels) != 3:
            raise ValueError(f"channels must list 3 conv widths, got {self.channels}")
        check_positive("lr", self.lr)
        check_choice("init", self.init, ["cca", "random"])
        check_nonnegative("beta", self.beta)
        check_nonnegative("vae_beta", self.vae_beta)
        if not isinstance(self.rssm_burn_in, int) or self.rssm_burn_in < 0:
            raise ValueError(f"rssm_burn_in must be an integer >= 0, got {self.rssm_burn_in!r}")
        if self.threads is not None:
            check_positive_int("threads", self.threads)
        self.encoder_name  # noqa: B018 - checks the ViT geometry (patch divides canvas)
        return self

    @property
    def encoder_name(self) -> str:
        """The registered encoder for this geometry (registering it on first use)."""
        if self.encoder == "vit":
            return register_vit(self.context_frames, self.canvas, patch=self.vit_patch,
                                dim=self.vit_width, depth=self.vit_depth, heads=self.vit_heads)
        return register_conv(self.context_frames, self.canvas, channels=self.channels)


# -- data ----------------------------------------------------------------------------------
@dataclass
class Split:
    """Standardised ``(context, target)`` stacks of one split, their ``(episode, t)`` rows and
    the labels at ``t``."""

    context: torch.Tensor
    target: torch.Tensor
    index: torch.Tensor
    labels: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.context.shape[0])


def make_data(cfg: MovingDigitsConfig, sigma: float, seed: int,
              images: Any = None) -> tuple[Split, Split, md.MovingDigits]:
    """Training and test stacks for one σ and seed (and the raw test episodes, for figures)."""
    train, test = md.make_moving_digits(
        sigma, seed, canvas=cfg.canvas, digit_size=cfg.digit_size, max_speed=cfg.max_speed,
        train_episodes=cfg.train_episodes, test_episodes=cfg.test_episodes, length=cfg.length,
        source=cfg.source, images=images)
    mean = train.frames.mean(dim=(0, 1))
    scale = max(float(train.frames.std()), 1e-6)
    out = []
    for data in (train, test):
        ctx, tgt, idx = data.pairs(cfg.context_frames, mean=mean, scale=scale)
        out.append(Split(ctx, tgt, idx, data.labels_at(idx)))
    return out[0], out[1], test


# -- models --------------------------------------------------------------------------------
def build_model(name: str, obs_dim: int, cfg: MovingDigitsConfig) -> torch.nn.Module:
    """Model ``name`` with the run's image encoder: ``"rssm"`` is the CNN-RSSM (the RSSM with
    the image encoder on its posterior and the matching decoder), ``"vae"``/``"ar"`` take
    ``vae_beta``; any other registered model gets the shared settings."""
    enc = cfg.encoder_name
    if name == "rssm":
        return RSSM(obs_dim, cfg.latent_dim, hidden_dim=cfg.rssm_hidden, net_dim=cfg.hidden_dim,
                    obs_encoder=enc, embed_dim=cfg.hidden_dim, window=cfg.rssm_window,
                    burn_in=cfg.rssm_burn_in)
    settings = dict(encoder=enc, hidden_dim=cfg.hidden_dim, beta=cfg.beta, tau=cfg.tau,
                    init=cfg.init)
    if name in ("vae", "ar"):
        return registry.build_model(name, obs_dim, cfg.latent_dim, settings=settings,
                                    beta=cfg.vae_beta)
    return registry.build_model(name, obs_dim, cfg.latent_dim, settings=settings)


def representation(model: Any, split: Split, chunk: int = 1024) -> torch.Tensor:
    """``model.encode`` of every context (CPU tensor). Sequence models (``stackable=False``,
    the RSSM) are run over each episode's contexts in time order."""
    model.eval()
    try:
        dev = next(model.parameters()).device
        if getattr(model, "stackable", True):
            return torch.cat([model.encode(split.context[i:i + chunk].to(dev)).cpu()
                              for i in range(0, len(split), chunk)])
        episodes = split.index[:, 0]
        return torch.cat([model.encode(split.context[episodes == e].to(dev)).cpu()
                          for e in torch.unique_consecutive(episodes).tolist()])
    finally:
        model.train()


def probe(z_train: torch.Tensor, train: Split, z_test: torch.Tensor, test: Split
          ) -> dict[str, float]:
    """Test accuracy of a logistic class probe and test R² (mean over both axes) of least
    squares position and velocity probes."""
    cls = logistic_probe(z_train, train.labels["class"], num_classes=10)
    out = {"class_acc": cls.accuracy(z_test, test.labels["class"]),
           "class_train_acc": cls.accuracy(z_train, train.labels["class"])}
    for key in ("position", "velocity"):
        out[f"{key}_r2"] = float(linear_probe_r2(z_train, train.labels[key].double(), z_test,
                                                 test.labels[key].double()))
    return out


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a model from a checkpoint written by :func:`run`, registering its encoder's
    geometry (stored in the checkpoint's ``meta``) first so a fresh process can load it."""
    from bjepa.inference.checkpoint import load_checkpoint
    from bjepa.inference.checkpoint import load_model as load

    meta = load_checkpoint(path, map_location)["meta"]
    if meta.get("data") != "moving-digits":
        raise ValueError(f"{path} is not a moving-digits checkpoint (meta data="
                         f"{meta.get('data')!r})")
    MovingDigitsConfig(**meta["config"]).encoder_name  # noqa: B018 - registers the encoder
    return load(path, map_location)


# -- the experiment ------------------------------------------------------------------------
def run(cfg: MovingDigitsConfig, folder: RunFolder | None = None) -> list[dict[str, Any]]:
    """Train and probe every model × σ × seed; returns one row per run.

    With a ``folder``: ``config.json``, ``metrics.jsonl``, ``checkpoints/*.pt``,
    ``results.csv/json``, ``summary.json``, ``probes_vs_sigma.png`` and ``frames.png``.
    """
    cfg.validate()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available; use 'cpu'")
    with torch_threads(cfg.threads):
        return _run(cfg, folder)


def _run(cfg: MovingDigitsConfig, folder: RunFolder | None) -> list[dict[str, Any]]:
    if folder is not None:
        folder.write_json("config.json", {**asdict(cfg), "encoder_name": cfg.encoder_name})
    images = load_digit_images(cfg.source, size=cfg.digit_size)
    held: dict[str, Any] = {}

    def run_one(p: GridPoint) -> dict[str, Any]:
        if held.get("key") != (p.setting, p.seed):
            held.clear()
            held.update(key=(p.setting, p.seed), data=make_data(cfg, p.setting, p.seed, images))
        train, test, _ = held["data"]
        return _train_one(cfg, p.model, p.setting, p.seed, train, test, folder)

    rows = run_grid(grid_points(cfg.models, cfg.sigmas, cfg.seeds, order="setting"),
                    run_one=run_one, progress=cfg.progress, desc="moving-digits runs",
                    describe=lambda r: f"class {r['class_acc']:.3f} pos {r['position_r2']:.3f} "
                                       f"vel {r['velocity_r2']:.3f}")
    held.clear()
    if folder is not None:
        folder.write_rows("results", rows)
        folder.write_json("summary.json", summarise(rows))
        plot_probes(rows, folder.file("probes_vs_sigma.png"))
        plot_frames(cfg, images, folder.file("frames.png"))
    return rows


def _train_one(cfg: MovingDigitsConfig, name: str, sigma: float, seed: int, train: Split,
               test: Split, folder: RunFolder | None) -> dict[str, Any]:
    set_seed(seed)
    model = build_model(name, train.context.shape[1], cfg)
    steps = cfg.rssm_steps if name == "rssm" else cfg.steps
    # the RSSM reads its training contexts as one series; the others read (context, target)
    target = None if name == "rssm" else train.target
    batch = cfg.rssm_batch_size if name == "rssm" else cfg.batch_size
    wall, cpu = time.perf_counter(), time.process_time()
    hist = fit(model, train.context, target, steps=steps, lr=cfg.lr, batch_size=batch,
               seed=seed, device=cfg.device, progress=False, log_every=max(steps // 50, 1),
               metrics_path=folder.metrics_path if folder else None,
               metrics_tags={"model": name, "sigma": sigma, "seed": seed})
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model = model.cpu()
    scores = probe(representation(model, train), train, representation(model, test), test)
    row = {"model": name, "sigma": sigma, "seed": seed, **scores,
           "final_loss": hist.final_loss, "train_seconds": round(wall, 2),
           "train_cpu_seconds": round(cpu, 2)}
    if folder is not None:
        save_checkpoint(folder.file(f"checkpoints/{name}-sigma{sigma:g}-seed{seed}.pt"), model,
                        meta={"data": "moving-digits", "model": name, "sigma": sigma,
                              "seed": seed, "config": asdict(cfg),
                              **{k: row[k] for k in METRICS}})
    return row


# -- summaries -----------------------------------------------------------------------------
def _order(model: str) -> int:
    return MODELS.index(model) if model in MODELS else len(MODELS)


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sd, min and max over seeds of the three probes, per model × σ."""
    return summarise_rows(rows, ("model", "sigma"), [*METRICS, "train_seconds"],
                          names={"class_acc": "class", "position_r2": "position",
                                 "velocity_r2": "velocity", "train_seconds": "seconds"},
                          order=lambda k: (_order(k[0]), k[1]))


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`summarise`'s entries."""
    return format_rows(summary, [("model", "model", "<6"), ("sigma", "sigma", ">5g")],
                       [("class", "class acc", ".3f"), ("position", "position R2", ".3f"),
                        ("velocity", "velocity R2", ".3f")])


# -- figures -------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_probes(rows: Sequence[dict[str, Any]], path: Any) -> None:
    """Class accuracy, position R² and velocity R² against σ (mean ± sd over seeds), with the
    reference implementation's numbers as stars."""
    plt = _pyplot()
    summary = summarise(rows)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    titles = [("class", "class accuracy (logistic)", 0.1),
              ("position", "position R² (linear)", None),
              ("velocity", "velocity R² (linear)", None)]
    for j, (ax, (key, title, chance)) in enumerate(zip(axes, titles, strict=True)):
        for name in dict.fromkeys(s["model"] for s in summary):
            sel = [s for s in summary if s["model"] == name]
            x = np.array([s["sigma"] for s in sel])
            m = np.array([s[f"{key}_mean"] for s in sel])
            sd = np.array([s[f"{key}_sd"] for s in sel])
            c = registry.model_color(name)
            ax.plot(x, m, "o-", color=c, label=LABELS.get(name, name))
            ax.fill_between(x, m - sd, m + sd, color=c, alpha=0.15)
            ref = [(s, REFERENCE[s][name][j]) for s in REFERENCE if name in REFERENCE[s]]
            if ref:
                ax.plot(*zip(*ref, strict=True), "*", ms=10, color=c, mec="k")
        if chance is not None:
            ax.axhline(chance, color="k", lw=0.8, ls=":", label="chance")
        ax.set(xlabel="pixel noise σ", title=title)
        ax.grid(alpha=0.3)
    axes[0].plot([], [], "*", color="w", mec="k", ms=10, label="reference (1 seed)")
    axes[0].legend(fontsize=7)
    n = len({r["seed"] for r in rows})
    fig.suptitle(f"Moving digits: probes of the frozen representation ({n} seed"
                 f"{'s' if n > 1 else ''})")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_frames(cfg: MovingDigitsConfig, images: Any, path: Any, frames: int = 10) -> None:
    """The first ``frames`` frames of the first test episode at each σ of the run."""
    plt = _pyplot()
    frames = min(frames, cfg.length)
    fig, axes = plt.subplots(len(cfg.sigmas), frames, squeeze=False,
                             figsize=(frames * 0.9, len(cfg.sigmas) * 1.0),
                             constrained_layout=True)
    for i, sigma in enumerate(cfg.sigmas):
        _, test = md.make_moving_digits(sigma, cfg.seeds[0], canvas=cfg.canvas,
                                        digit_size=cfg.digit_size, max_speed=cfg.max_speed,
                                        train_episodes=1, test_episodes=1, length=cfg.length,
                                        images=images)
        for t in range(frames):
            ax = axes[i, t]
            ax.imshow(test.frames[0, t].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                v = test.velocity[0, t].int().tolist()
                ax.set_title(f"t={t} v={v}", fontsize=6)
        axes[i, 0].set_ylabel(f"σ={sigma:g}", fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
