"""Digit sequences: which models' representations predict the *next* class, and a zero-shot
goal prior on the predicted latent.

Each model trains on pairs ``(x_t, x_{t+1})`` of a digit sequence (:mod:`bjepa.data.digits`);
a multinomial logistic probe maps its representation of ``x_t`` on the training sequence to the
next class ``c_{t+1}`` and is scored on a test sequence of unseen images. The representation is
the predicted next latent for the predictive models (VJEPA/BJEPA: the predictive mean; JEPA: the
predictor's output), the posterior mean for the VAE and AR models, and the filtered state for
the RSSM.

Goal prior (BJEPA only, without leakage): the goal latent of class ``y`` is the mean target
latent ``f_θ'(x)`` of the *goal pool's* images of ``y`` — images that are neither training nor
test frames, so the probe never saw them; the probe is fitted on training latents predicted
without any goal; on the test sequence the predictive distribution is fused (product of
experts) with ``N(goal, s² I)`` for the correct next class, a wrong class (``c_{t+1} + 5 mod
10``) or no goal, and the same probe reads the fused mean.

Used by ``bjepa digits``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from bjepa._validation import check_choice, check_nonnegative, check_positive_int
from bjepa.data import digits as digit_data
from bjepa.inference import fit
from bjepa.inference.checkpoint import save_checkpoint
from bjepa.inference.fit import set_seed
from bjepa.metrics import logistic_probe
from bjepa.runs import RunFolder

__all__ = ["DIGIT_MODELS", "REFERENCE", "DigitsConfig", "format_table", "goal_prior_accuracy",
           "representation", "run", "summarise"]

logger = logging.getLogger(__name__)

DIGIT_MODELS = ["jepa", "vjepa", "bjepa", "vae", "ar", "rssm"]
#: the reference code's printed next-class test accuracy (one seed, MNIST, σ = 0, 1, 2, 3, 4)
REFERENCE = {"jepa": [0.380, 0.139, 0.121, 0.112, 0.101],
             "vjepa": [0.616, 0.198, 0.135, 0.147, 0.137],
             "bjepa": [0.587, 0.194, 0.144, 0.140, 0.117]}
REFERENCE_SIGMAS = [0.0, 1.0, 2.0, 3.0, 4.0]
#: the reference's zero-shot goal accuracies (label-leaking goals) at s² = .1, .3, 1, 3, 10
REFERENCE_GOAL = {"none": 0.562, "correct": [1.0, 1.0, 0.917, 0.725, 0.618],
                  "wrong": [0.156, 0.083, 0.279, 0.505, 0.548]}


@dataclass
class DigitsConfig:
    """Everything that defines a digits run (dumped as ``config.json``)."""

    models: list[str] = field(default_factory=lambda: list(DIGIT_MODELS))
    sigmas: list[float] = field(default_factory=lambda: list(REFERENCE_SIGMAS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 400
    #: the RSSM's steps (it runs a Python loop over time: about 20× slower per step)
    rssm_steps: int = 100
    lr: float = 1e-3
    batch_size: int | None = 256
    latent_dim: int = 16
    #: the predictive/VAE models' networks: an encoder spec (``"mlp"``: two GELU layers of
    #: ``hidden_dim``; ``"mlp:depth=1,activation=tanh"``: one Tanh layer; see
    #: :func:`bjepa.models.encoders.parse_encoder_spec`)
    encoder: str = "mlp"
    hidden_dim: int = 256
    #: the start of JEPA/VJEPA/BJEPA's encoder: ``"random"`` (default here), ``"cca"``
    #: (data-dependent), or ``None`` for each model's own default (VJEPA and BJEPA ``"cca"``,
    #: JEPA ``"random"``). Random here because the CCA start's 1e-6 whitening ridge picks
    #: spurious directions on 64 pixels with 16 latents and a wide MLP: measured at σ = 0 (3
    #: seeds), VJEPA 0.517 ± 0.064 with the CCA start against 0.763 ± 0.023 with a random one,
    #: BJEPA 0.710 against 0.776 (docs/digits.md, "VJEPA's encoder start").
    init: str | None = "random"
    beta: float = 0.01
    tau: float = 0.99
    #: image side: scikit-learn's digits are 8×8 (larger sizes upsample them bilinearly)
    size: int = 8
    train_frames: int = 4000
    test_frames: int = 1000
    frames_per_class: int = 8
    source: str = "sklearn"
    #: goal-prior variances s² (the goal prior is N(goal, s² I))
    goal_variances: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0])
    #: σ values at which BJEPA's goal prior is evaluated
    goal_sigmas: list[float] = field(default_factory=lambda: [0.0])
    device: str = "cpu"

    @classmethod
    def quick(cls, **overrides: Any) -> DigitsConfig:
        """Two σ, one seed, short training (about two minutes on 2 shared CPU cores)."""
        base = dict(sigmas=[0.0, 1.0], seeds=[0], steps=150, rssm_steps=30,
                    train_frames=1500, test_frames=500, hidden_dim=64)
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    def validate(self) -> DigitsConfig:
        if not self.models:
            raise ValueError("models must name at least one of " + ", ".join(DIGIT_MODELS))
        for m in self.models:
            check_choice("model", m, DIGIT_MODELS)
        for s in [*self.sigmas, *self.goal_sigmas]:
            check_nonnegative("sigma", s)
        for s2 in self.goal_variances:
            if s2 <= 0:
                raise ValueError(f"goal_variances must be > 0, got {s2}")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        for name in ("steps", "rssm_steps", "latent_dim", "hidden_dim", "size", "train_frames",
                     "test_frames", "frames_per_class"):
            check_positive_int(name, getattr(self, name))
        from bjepa.models.base import validated_init
        from bjepa.models.encoders import parse_encoder_spec

        parse_encoder_spec(self.encoder)
        if self.init is not None:
            validated_init(self.init)
        return self


def build(name: str, obs_dim: int, cfg: DigitsConfig) -> Any:
    """Model ``name`` with ``cfg.encoder`` networks of width ``hidden_dim``, ``latent_dim``
    latents and the encoder start ``cfg.init`` (where the model takes one)."""
    from bjepa.models.registry import build_model

    if name == "rssm":
        return build_model("rssm", obs_dim, cfg.latent_dim)
    return build_model(name, obs_dim, cfg.latent_dim,
                       settings=dict(encoder=cfg.encoder, hidden_dim=cfg.hidden_dim,
                                     beta=cfg.beta, tau=cfg.tau, init=cfg.init))


@torch.no_grad()
def representation(model: Any, x: torch.Tensor) -> torch.Tensor:
    """What the probe reads: the predicted next latent where the model predicts one, else its
    representation of ``x_t`` (``encode``)."""
    if hasattr(model, "predict"):
        return model.predict(x).mean
    if hasattr(model, "predict_mean"):
        return model.predict_mean(x)
    return model.encode(x)


@torch.no_grad()
def goal_latents(model: Any, pools: digit_data.DigitPools) -> torch.Tensor:
    """``(10, latent_dim)``: the mean target latent of the goal pool's images of each class."""
    x = pools.goal.images.flatten(1)
    z = model.encode_target(x)
    return torch.stack([z[pools.goal.labels == c].mean(0) for c in range(10)])


@torch.no_grad()
def goal_prior_accuracy(model: Any, train: digit_data.DigitSequence,
                        test: digit_data.DigitSequence, pools: digit_data.DigitPools,
                        variances: Sequence[float]) -> list[dict[str, Any]]:
    """Next-class accuracy on goal-fused predictions (see the module docstring): one row per
    (probe, goal, s²). Two probes, both fitted on the training sequence without any goal:

    - ``"prediction"``: on the predicted next latents, to the next class;
    - ``"target"``: on the target latents ``f_θ'(x_t)``, to the frame's own class — a read-out
      of the space that goals and fused predictions live in.
    """
    from bjepa.priors import GoalPrior

    probes = {
        "prediction": logistic_probe(representation(model, train.obs), train.next_label,
                                     num_classes=10),
        "target": logistic_probe(model.encode_target(train.obs), train.label, num_classes=10),
    }
    goals = goal_latents(model, pools)
    right, wrong = goals[test.next_label], goals[(test.next_label + 5) % 10]
    plain = representation(model, test.obs)
    fused = {(kind, s2): model.predict(test.obs, prior=GoalPrior(g, scale=float(np.sqrt(s2)))
                                       ).mean
             for s2 in variances for kind, g in (("correct", right), ("wrong", wrong))}
    rows = []
    for space, probe in probes.items():
        rows.append({"probe": space, "goal": "none", "goal_variance": None,
                     "accuracy": probe.accuracy(plain, test.next_label)})
        for (kind, s2), z in fused.items():
            rows.append({"probe": space, "goal": kind, "goal_variance": s2,
                         "accuracy": probe.accuracy(z, test.next_label)})
    return rows


def run(cfg: DigitsConfig, folder: RunFolder | None = None) -> dict[str, list[dict[str, Any]]]:
    """Train and probe every model × σ × seed, then BJEPA's goal prior; returns
    ``{"results": rows, "goal": rows}``."""
    cfg.validate()
    if folder is not None:
        folder.write_json("config.json", asdict(cfg))
    images = digit_data.load_digit_images(cfg.source, size=cfg.size)
    rows: list[dict[str, Any]] = []
    goal_rows: list[dict[str, Any]] = []
    for sigma in cfg.sigmas:
        for seed in cfg.seeds:
            train, test, pools = digit_data.make_digit_split(
                sigma, seed, train_frames=cfg.train_frames, test_frames=cfg.test_frames,
                frames_per_class=cfg.frames_per_class, images=images)
            for name in cfg.models:
                model, row = _train_one(name, sigma, seed, cfg, train, test, folder)
                rows.append(row)
                logger.info("%s σ=%g seed=%d next-class acc %.3f (train %.3f, %.1fs)", name,
                            sigma, seed, row["test_acc"], row["train_acc"],
                            row["train_seconds"])
                if name == "bjepa" and sigma in cfg.goal_sigmas:
                    for g in goal_prior_accuracy(model, train, test, pools, cfg.goal_variances):
                        goal_rows.append({"model": name, "sigma": sigma, "seed": seed, **g})
    if folder is not None:
        folder.write_rows("results", rows)
        if goal_rows:
            folder.write_rows("goal_prior", goal_rows)
        folder.write_json("summary.json", {"results": summarise(rows),
                                           "goal": summarise_goal(goal_rows)})
        plot_accuracy(rows, folder.file("accuracy_vs_sigma.png"))
        if goal_rows:
            plot_goal(goal_rows, folder.file("goal_prior.png"))
        plot_frames(images, cfg, folder.file("frames.png"))
    return {"results": rows, "goal": goal_rows}


def _train_one(name: str, sigma: float, seed: int, cfg: DigitsConfig,
               train: digit_data.DigitSequence, test: digit_data.DigitSequence,
               folder: RunFolder | None) -> tuple[Any, dict[str, Any]]:
    set_seed(seed)
    model = build(name, train.obs.shape[1], cfg)
    steps = cfg.rssm_steps if name == "rssm" else cfg.steps
    t0 = time.perf_counter()
    hist = fit(model, train.obs[:-1], train.obs[1:], steps=steps, lr=cfg.lr,
               batch_size=cfg.batch_size, seed=seed, device=cfg.device, progress=False,
               log_every=max(steps // 50, 1),
               metrics_path=folder.metrics_path if folder else None,
               metrics_tags={"model": name, "sigma": sigma, "seed": seed})
    seconds = time.perf_counter() - t0
    model = model.cpu()
    ztr, zte = representation(model, train.obs), representation(model, test.obs)
    probe = logistic_probe(ztr, train.next_label, num_classes=10)
    row = {"model": name, "sigma": sigma, "seed": seed,
           "test_acc": probe.accuracy(zte, test.next_label),
           "train_acc": probe.accuracy(ztr, train.next_label),
           "current_class_acc": logistic_probe(ztr, train.label, num_classes=10)
           .accuracy(zte, test.label),
           "final_loss": hist.final_loss, "train_seconds": round(seconds, 2)}
    if folder is not None:
        save_checkpoint(folder.file(f"checkpoints/{name}-sigma{sigma:g}-seed{seed}.pt"), model,
                        meta={"data": "digits", "sigma": sigma, "seed": seed, "row": row})
    return model, row


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over seeds of the test (and train) next-class accuracy per model and σ."""
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        for sigma in sorted({r["sigma"] for r in rows if r["model"] == name}):
            sel = [r for r in rows if r["model"] == name and r["sigma"] == sigma]
            acc = np.array([r["test_acc"] for r in sel])
            out.append({"model": name, "sigma": sigma, "n": len(sel),
                        "test_mean": float(acc.mean()),
                        "test_sd": float(acc.std(ddof=1)) if len(sel) > 1 else 0.0,
                        "train_mean": float(np.mean([r["train_acc"] for r in sel])),
                        "current_mean": float(np.mean([r["current_class_acc"] for r in sel])),
                        "train_seconds": float(np.mean([r["train_seconds"] for r in sel]))})
    return out


def summarise_goal(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over seeds of the goal-prior accuracy per (σ, goal, s²)."""
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["sigma"], r.get("probe", "prediction"), r["goal"], r["goal_variance"]

    out = []
    for k in dict.fromkeys(key(r) for r in rows):
        sigma, probe, goal, s2 = k
        acc = np.array([r["accuracy"] for r in rows if key(r) == k])
        out.append({"sigma": sigma, "probe": probe, "goal": goal, "goal_variance": s2,
                    "n": len(acc),
                    "mean": float(acc.mean()),
                    "sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0})
    return out


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'model':<6} {'sigma':>5} {'n':>2}  {'next-class acc (mean ± sd)':>27} "
             f"{'train':>6} {'current':>8} {'seconds':>8}"]
    for s in summary:
        lines.append(f"{s['model']:<6} {s['sigma']:>5g} {s['n']:>2}  {s['test_mean']:>18.3f} ± "
                     f"{s['test_sd']:<6.3f} {s['train_mean']:>6.3f} {s['current_mean']:>8.3f} "
                     f"{s['train_seconds']:>8.1f}")
    return "\n".join(lines)


def format_goal_table(summary: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'sigma':>5} {'probe':<10} {'goal':<8} {'s2':>5}  {'acc (mean ± sd)':>17}"]
    for s in summary:
        s2 = "-" if s["goal_variance"] is None else f"{s['goal_variance']:g}"
        lines.append(f"{s['sigma']:>5g} {s['probe']:<10} {s['goal']:<8} {s2:>5}  "
                     f"{s['mean']:>8.3f} ± {s['sd']:.3f}")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(rows: Sequence[dict[str, Any]], path: Any) -> None:
    """Next-class test accuracy against σ (mean ± sd over seeds), reference marks as stars."""
    plot_accuracy_summary(summarise(rows), path, seeds=len({r["seed"] for r in rows}))


def plot_accuracy_summary(summary: Sequence[dict[str, Any]], path: Any, *, seeds: int,
                          note: str = "") -> None:
    """:func:`plot_accuracy` from a :func:`summarise` summary (e.g. ``summary.json``'s
    ``results``, or rows of several runs merged), ``note`` appended to the title."""
    from bjepa.models.registry import model_color

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    for name in dict.fromkeys(s["model"] for s in summary):
        sel = [s for s in summary if s["model"] == name]
        x = [s["sigma"] for s in sel]
        m = np.array([s["test_mean"] for s in sel])
        sd = np.array([s["test_sd"] for s in sel])
        c = model_color(name)
        ax.plot(x, m, "o-", color=c, label=name.upper())
        ax.fill_between(x, m - sd, m + sd, color=c, alpha=0.15)
        if name in REFERENCE:
            ax.plot(REFERENCE_SIGMAS, REFERENCE[name], "*", ms=10, color=c, mec="k")
    ax.plot([], [], "*", color="w", mec="k", ms=10, label="reference (1 seed, MNIST)")
    ax.axhline(0.1, color="k", lw=0.8, ls=":", label="chance")
    ax.set(xlabel="distractor weight σ", ylabel="next-class test accuracy",
           title=f"Digit sequences: logistic probe of the next class ({seeds} seeds){note}",
           ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_goal(rows: Sequence[dict[str, Any]], path: Any) -> None:
    """Goal-prior accuracy against s² for the correct goal, a wrong goal and none."""
    plt = _plt()
    summary = summarise_goal(rows)
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    for sigma in dict.fromkeys(s["sigma"] for s in summary):
        for probe, ls in (("prediction", "-"), ("target", "--")):
            for goal, c in (("correct", "C2"), ("wrong", "C3")):
                sel = [s for s in summary if s["sigma"] == sigma and s["goal"] == goal
                       and s["probe"] == probe]
                ax.errorbar([s["goal_variance"] for s in sel], [s["mean"] for s in sel],
                            [s["sd"] for s in sel], fmt="o" + ls, color=c, capsize=3,
                            label=f"{goal} goal, {probe} probe (σ={sigma:g})")
            none = [s for s in summary if s["sigma"] == sigma and s["goal"] == "none"
                    and s["probe"] == probe]
            if none:
                ax.axhline(none[0]["mean"], color="k", ls=ls,
                           label=f"no goal, {probe} probe (σ={sigma:g})")
    ax.plot([0.1, 0.3, 1, 3, 10], REFERENCE_GOAL["correct"], "*", color="C2", mec="k", ms=10,
            label="reference correct (leaks labels)")
    ax.plot([0.1, 0.3, 1, 3, 10], REFERENCE_GOAL["wrong"], "*", color="C3", mec="k", ms=10,
            label="reference wrong")
    ax.set(xscale="log", xlabel="goal prior variance s²", ylabel="next-class test accuracy",
           title="BJEPA zero-shot goal prior (goals from unseen images)", ylim=(0, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_frames(images: digit_data.DigitImages, cfg: DigitsConfig, path: Any) -> None:
    """The first 16 test frames at each σ of the run (same images, distractors and order)."""
    plt = _plt()
    fig, axes = plt.subplots(len(cfg.sigmas), 16, figsize=(16 * 0.7, len(cfg.sigmas) * 0.8),
                             squeeze=False, constrained_layout=True)
    for i, sigma in enumerate(cfg.sigmas):
        _, test, _ = digit_data.make_digit_split(sigma, cfg.seeds[0], train_frames=16,
                                                 test_frames=16,
                                                 frames_per_class=cfg.frames_per_class,
                                                 images=images)
        for j in range(16):
            ax = axes[i, j]
            ax.imshow(test.obs[j].reshape(test.size, test.size).numpy(), cmap="gray", vmin=0,
                      vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(str(int(test.label[j])), fontsize=8)
        axes[i, 0].set_ylabel(f"σ={sigma:g}", fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
