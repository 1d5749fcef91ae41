"""The forking-hallway experiment: a Gaussian predictor head against a mixture
density head when the future is bimodal.

See docs/method.md#multimodal-hallway.

For every seed and head, VJEPA is trained on ``(x_t, x_{t+h})`` pairs of the hallway in
:mod:`bjepa.data.hallway` (no ground truth enters training). Evaluation happens in position
space through a *position probe*: an ordinary-least-squares affine map from the target
encoder's latent ``μ_θ'(x)`` to the true 2-D position, fitted on the training frames after
training. The encoder is linear and the observation is a linear embedding of the position,
so with ``latent_dim = 2`` the probe is an invertible affine map and the predictive
distribution pushes forward to position space exactly: mixture weights are unchanged,
component means map through the probe, and densities change by the constant Jacobian
``|det A|``. The predictor head is an MLP (the fork makes the dynamics non-linear even though
the encoder is linear); that pairing is registered as the encoder family
:data:`HALLWAY_ENCODER`.

Used by ``bjepa hallway`` and ``examples/hallway.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from bjepa._util import progress_bar
from bjepa._validation import (
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_unit_interval,
)
from bjepa.data import hallway as hw
from bjepa.experiments.grid import summarise_rows
from bjepa.inference import fit
from bjepa.inference.fit import set_seed
from bjepa.metrics import r2_score
from bjepa.models.encoders import ENCODERS, register_encoder
from bjepa.models.heads import HEADS
from bjepa.models.mixture import register_mdn
from bjepa.runs import RunFolder

__all__ = [
    "HALLWAY_ENCODER",
    "METRICS",
    "HallwayConfig",
    "PositionProbe",
    "build_model",
    "evaluate",
    "fit_position_probe",
    "format_table",
    "head_name",
    "rollouts",
    "run",
    "run_one",
    "summarise",
]

logger = logging.getLogger(__name__)

#: a bias-free linear encoder whose predictor heads are MLPs
HALLWAY_ENCODER = "linear-mlphead"


def _linear_encoder(in_dim: int, out_dim: int, *, hidden_dim: int = 64,
                    bias: bool = False) -> nn.Module:
    return nn.Linear(in_dim, out_dim, bias=bias)


if HALLWAY_ENCODER not in ENCODERS:
    register_encoder(HALLWAY_ENCODER, _linear_encoder, decoder="mlp", head_net="mlp")

#: the metrics reported per (head, seed), in table order, with a short description
METRICS: dict[str, str] = {
    "nll_fork": "NLL of the true future position at fork contexts (nats, lower = better)",
    "nll_all": "NLL of the true future position over all test pairs (nats)",
    "mean_in_wall": "share of fork contexts whose predictive mean lies in the wall",
    "mean_wall_dist": "distance of the predictive mean to the nearest centre line (fork)",
    "mass_left": "mixture mass on components whose mean lies on the left branch (fork)",
    "mass_right": "mixture mass on components whose mean lies on the right branch (fork)",
    "both_modes": "share of fork contexts with >= mode_mass of the mass on each branch",
    "mode_coverage": "share of fork contexts with >= 0.1 of the mass on each branch",
    "mass_lateral_corr": "correlation of the left-branch mass with the context's lateral "
                         "offset y at fork contexts (truth: 0)",
    "sample_left": "share of predictive samples on the left branch (fork)",
    "sample_right": "share of predictive samples on the right branch (fork)",
    "sample_in_corridor_fork": "share of predictive samples inside the hallway (fork)",
    "sample_in_corridor_all": "share of predictive samples inside the hallway (all pairs)",
    "rollout_in_corridor": "share of sampled rollout positions inside the hallway",
    "rollout_left": "share of rollouts that end on the left branch",
    "rollout_right": "share of rollouts that end on the right branch",
    "probe_r2": "test R² of the latent-to-position probe",
}


@dataclass
class HallwayConfig:
    """Everything that defines a hallway run (dumped as ``config.json``)."""

    heads: list[str] = field(default_factory=lambda: ["diag", "mdn"])
    n_components: int = 5
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    steps: int = 1500
    lr: float = 3e-3
    batch_size: int | None = None
    beta: float = 0.01
    tau: float | str = 0.99
    latent_dim: int = 2
    hidden_dim: int = 64
    obs_dim: int = 8
    train_episodes: int = 120
    test_episodes: int = 100
    speed: float = 0.25
    horizon: int = 3
    n_samples: int = 200
    n_rollouts: int = 20
    n_rollout_starts: int = 20
    rollout_steps: int | None = None
    mode_mass: float = 0.35
    device: str = "cpu"
    progress: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> HallwayConfig:
        """A small configuration that finishes in about a minute on 2 CPU cores."""
        base: dict[str, Any] = dict(seeds=[0, 1], steps=600, train_episodes=80,
                                    test_episodes=60, n_samples=100, n_rollouts=10,
                                    n_rollout_starts=10)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def validate(self) -> HallwayConfig:
        if not self.heads:
            raise ValueError("heads must name at least one head, e.g. diag,mdn")
        check_positive_int("n_components", self.n_components)
        for h in self.heads:
            if h not in HEADS and h != "mdn":
                raise ValueError(f"unknown head {h!r}; choose from {sorted(HEADS)}")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise ValueError(f"seeds must be non-negative ints, got {s!r}")
        for name in ["steps", "latent_dim", "hidden_dim", "train_episodes", "test_episodes",
                     "horizon", "n_samples", "n_rollouts", "n_rollout_starts"]:
            check_positive_int(name, getattr(self, name))
        if self.latent_dim != 2:
            raise ValueError("latent_dim must be 2: the position probe is inverted to map "
                             f"densities to position space, got {self.latent_dim}")
        if self.obs_dim < 2:
            raise ValueError(f"obs_dim must be >= 2, got {self.obs_dim}")
        if self.rollout_steps is not None:
            check_positive_int("rollout_steps", self.rollout_steps)
        check_positive("lr", self.lr)
        check_positive("speed", self.speed)
        check_nonnegative("beta", self.beta)
        check_unit_interval("mode_mass", self.mode_mass)
        return self


def head_name(head: str, n_components: int) -> str:
    """The registered head to build: ``"mdn"`` means an MDN with ``n_components``."""
    return register_mdn(n_components) if head == "mdn" else head


def build_model(head: str, obs_dim: int, cfg: HallwayConfig) -> Any:
    """VJEPA with a linear encoder and an MLP predictor head of kind ``head``."""
    from bjepa.models import VJEPA

    return VJEPA(obs_dim, cfg.latent_dim, encoder=HALLWAY_ENCODER,
                 head=head_name(head, cfg.n_components), hidden_dim=cfg.hidden_dim,
                 beta=cfg.beta, tau=cfg.tau)


@dataclass
class PositionProbe:
    """Affine map ``p = A z + c`` from the 2-D latent to the 2-D position (and back)."""

    A: torch.Tensor
    c: torch.Tensor

    def to_position(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.A.T + self.c

    def to_latent(self, p: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(self.A, (p - self.c).T).T

    @property
    def log_abs_det(self) -> float:
        """``log |det A|``: position-space log-density = latent log-density − this."""
        return float(torch.linalg.slogdet(self.A.double()).logabsdet)


def fit_position_probe(model: Any, pairs: hw.HallwayPairs) -> PositionProbe:
    """OLS (with intercept) from the target encoder's latent of every frame in ``pairs``
    (contexts and targets) to the true position. Evaluation only: fitted after training."""
    x = torch.cat([pairs.context, pairs.target])
    p = torch.cat([pairs.context_pos, pairs.target_pos]).double()
    with torch.no_grad():
        z = model.encode_target(x).double()
    design = torch.cat([z, torch.ones_like(z[:, :1])], dim=1)
    coef = torch.linalg.lstsq(design, p).solution
    A, c = coef[:-1].T.float(), coef[-1].float()
    if abs(float(torch.linalg.det(A.double()))) < 1e-10:
        raise FloatingPointError("the latent-to-position probe is singular: the 2-D latent "
                                 "has collapsed onto a line or a point")
    return PositionProbe(A, c)


def _position_nll(pred: Any, probe: PositionProbe, pos: torch.Tensor) -> torch.Tensor:
    """``−log p(pos)`` under the predictive distribution pushed through the probe."""
    return -(pred.log_prob(probe.to_latent(pos)) - probe.log_abs_det)


def _component_means(model: Any, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights (N, K), means (N, K, D))`` of the predictive; ``K = 1`` for a Gaussian."""
    head = model.predictor
    if hasattr(head, "mixture_params"):
        log_w, loc, _ = head.mixture_params(z)
        return log_w.exp(), loc
    mean = head(z).mean
    return torch.ones(mean.shape[0], 1), mean.unsqueeze(1)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation; NaN when either side is constant."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 1e-12 else float("nan")


def rollouts(model: Any, probe: PositionProbe, context: torch.Tensor, n_rollouts: int,
             steps: int) -> torch.Tensor:
    """Sampled latent rollouts ``z_{k+1} ~ p_φ(· | z_k)`` from ``z_0 = f_θ(x)`` for each row of
    ``context``, mapped to positions: ``(n_rollouts, N, steps + 1, 2)``.

    Predicted target latents are fed back as context latents (the EMA target encoder tracks
    the context encoder, so the two share one latent space).
    """
    check_positive_int("n_rollouts", n_rollouts)
    check_positive_int("steps", steps)
    with torch.no_grad():
        z = model.encode(context).unsqueeze(0).expand(n_rollouts, -1, -1)
        path = [z]
        for _ in range(steps):
            z = model.predictor(z).sample()
            path.append(z)
        return probe.to_position(torch.stack(path, dim=2))


def evaluate(model: Any, probe: PositionProbe, test: hw.HallwayPairs, cfg: HallwayConfig
             ) -> tuple[dict[str, float], dict[str, Any]]:
    """All :data:`METRICS` for one trained model; also returns arrays for the figures."""
    g = test.geometry
    fork = test.fork_mask()
    if int(fork.sum()) == 0:
        raise ValueError("the test set has no fork contexts; use more test_episodes")
    out: dict[str, float] = {}
    with torch.no_grad():
        z_all = model.encode(test.context)
        pred_all = model.predictor(z_all)
        nll = _position_nll(pred_all, probe, test.target_pos)
        out["nll_fork"] = float(nll[fork].mean())
        out["nll_all"] = float(nll.mean())

        z_fork = z_all[fork]
        pred_fork = model.predictor(z_fork)
        mean_pos = probe.to_position(pred_fork.mean)
        out["mean_in_wall"] = float((g.region(mean_pos) == hw.REGION_WALL).float().mean())
        out["mean_wall_dist"] = float(g.distances(mean_pos).amin(-1).mean())

        weights, means = _component_means(model, z_fork)
        comp_region = g.region(probe.to_position(means))
        left = (weights * (comp_region == hw.REGION_LEFT)).sum(-1)
        right = (weights * (comp_region == hw.REGION_RIGHT)).sum(-1)
        out["mass_left"], out["mass_right"] = float(left.mean()), float(right.mean())
        out["both_modes"] = float(((left >= cfg.mode_mass) & (right >= cfg.mode_mass))
                                  .float().mean())
        out["mode_coverage"] = float(((left >= 0.1) & (right >= 0.1)).float().mean())
        out["mass_lateral_corr"] = _corr(left, test.context_pos[fork][:, 1])

        samples = probe.to_position(pred_fork.sample((cfg.n_samples,)))
        region = g.region(samples)
        out["sample_left"] = float((region == hw.REGION_LEFT).float().mean())
        out["sample_right"] = float((region == hw.REGION_RIGHT).float().mean())
        out["sample_in_corridor_fork"] = float((region != hw.REGION_WALL).float().mean())
        all_samples = probe.to_position(pred_all.sample((max(cfg.n_samples // 10, 1),)))
        out["sample_in_corridor_all"] = float(g.in_corridor(all_samples).float().mean())

        starts = torch.nonzero(test.context_arc <= -g.trunk_length + test.speed).squeeze(1)
        starts = starts[: cfg.n_rollout_starts]
        steps = cfg.rollout_steps or int((g.trunk_length + 0.8 * g.branch_length)
                                         // test.look_ahead)
        paths = rollouts(model, probe, test.context[starts], cfg.n_rollouts, steps)
        out["rollout_in_corridor"] = float(g.in_corridor(paths[:, :, 1:]).float().mean())
        end = g.region(paths[:, :, -1])
        out["rollout_left"] = float((end == hw.REGION_LEFT).float().mean())
        out["rollout_right"] = float((end == hw.REGION_RIGHT).float().mean())

        z_tgt = model.encode_target(test.target)
        out["probe_r2"] = float(r2_score(test.target_pos, probe.to_position(z_tgt)).mean())
    arrays = {"fork_samples": samples[:, :8], "fork_means": mean_pos[:8],
              "fork_weights": weights[:8], "fork_components": probe.to_position(means[:8]),
              "fork_targets": test.target_pos[fork], "fork_contexts": test.context_pos[fork][:8],
              "rollouts": paths[:, :5]}
    return out, arrays


def run_one(head: str, seed: int, cfg: HallwayConfig, train: hw.HallwayPairs,
            test: hw.HallwayPairs, metrics_path: Any = None
            ) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Train one VJEPA with ``head`` on ``train`` and evaluate it on ``test``.

    Returns ``(row, arrays, model)``.
    """
    set_seed(seed)
    model = build_model(head, train.context.shape[1], cfg)
    start = time.perf_counter()
    hist = fit(model, train.context, train.target, steps=cfg.steps, lr=cfg.lr,
               batch_size=cfg.batch_size, seed=seed, device=cfg.device, progress=False,
               log_every=max(cfg.steps // 100, 1), metrics_path=metrics_path,
               metrics_tags={"head": head, "seed": seed})
    seconds = time.perf_counter() - start
    model = model.cpu().eval()
    torch.manual_seed(seed)  # evaluation samples: reproducible per seed
    probe = fit_position_probe(model, train)
    metrics, arrays = evaluate(model, probe, test, cfg)
    row = {"head": head, "seed": seed, **metrics, "final_loss": hist.final_loss,
           "train_seconds": round(seconds, 3)}
    return row, arrays, model


def run(cfg: HallwayConfig, folder: RunFolder | None = None) -> list[dict[str, Any]]:
    """Train and evaluate every head × seed; returns one row per run."""
    cfg.validate()
    if folder is not None:
        folder.write_json("config.json", asdict(cfg))
    rows: list[dict[str, Any]] = []
    examples: dict[str, dict[str, Any]] = {}
    geometry = None
    total = len(cfg.heads) * len(cfg.seeds)
    bar = progress_bar(total, cfg.progress, "hallway runs", unit="run")
    for seed in cfg.seeds:
        train, test = hw.make_split(seed, train_episodes=cfg.train_episodes,
                                    test_episodes=cfg.test_episodes, obs_dim=cfg.obs_dim,
                                    speed=cfg.speed, horizon=cfg.horizon)
        geometry = train.geometry
        for head in cfg.heads:
            row, arrays, _ = run_one(head, seed, cfg, train, test,
                                     folder.metrics_path if folder else None)
            rows.append(row)
            if seed == cfg.seeds[0]:
                examples[head] = arrays
            if bar is not None:
                bar.set_postfix_str(f"{head} seed={seed} NLL(fork)={row['nll_fork']:.2f} "
                                    f"in-corridor={row['sample_in_corridor_fork']:.2f}")
                bar.update(1)
            logger.info("[%d/%d] %s seed=%d NLL fork %.3f, mean in wall %.2f, masses %.2f/%.2f"
                        " (%.1fs)", len(rows), total, head, seed, row["nll_fork"],
                        row["mean_in_wall"], row["mass_left"], row["mass_right"],
                        row["train_seconds"])
    if bar is not None:
        bar.close()
    if folder is not None:
        folder.write_rows("results", rows)
        folder.write_json("summary.json", summarise(rows))
        plot_predictions(examples, geometry, folder.file("hallway_predictions.png"),
                         seed=cfg.seeds[0])
        plot_summary(rows, folder.file("hallway_summary.png"))
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per head: number of seeds and mean / sd (ddof = 1) / min / max of every metric."""
    return summarise_rows(rows, ("head",), [*METRICS, "train_seconds"])


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table (metrics as rows, heads as columns) of :func:`summarise`'s output."""
    heads = [s["head"] for s in summary]
    lines = [f"{'metric':<24}" + "".join(f"{h + ' (n=' + str(s['n']) + ')':>22}"
                                         for h, s in zip(heads, summary, strict=True))]
    for key in [*METRICS, "train_seconds"]:
        cells = "".join(f"{s[key + '_mean']:>14.3f} ± {s[key + '_sd']:<5.3f}" for s in summary)
        lines.append(f"{key:<24}{cells}")
    return "\n".join(lines)


def _hallway_background(ax: Any, geometry: hw.HallwayGeometry) -> None:
    """Grey walls, white corridor, over the axes' current limits (call after plotting)."""
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    xs, ys, free = geometry.mask_grid(xlim=xlim, ylim=ylim)
    ax.contourf(xs, ys, free.astype(float), levels=[-0.5, 0.5, 1.5],
                colors=["0.35", "0.97"], zorder=0)
    ax.contour(xs, ys, free.astype(float), levels=[0.5], colors="k", linewidths=0.8, zorder=1)
    ax.set(xlim=xlim, ylim=ylim, aspect="equal")


def plot_predictions(examples: dict[str, dict[str, Any]], geometry: hw.HallwayGeometry | None,
                     path: Any, *, seed: int = 0) -> None:
    """Predictive samples at fork contexts (top) and sampled rollouts (bottom), per head,
    drawn over the hallway (grey = wall)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if geometry is None or not examples:
        raise ValueError("examples must hold at least one head's arrays")
    heads = list(examples)
    fig, axes = plt.subplots(2, len(heads), figsize=(5.5 * len(heads), 8.5),
                             constrained_layout=True, squeeze=False)
    for j, head in enumerate(heads):
        a = examples[head]
        ax = axes[0, j]
        ax.set(xlim=(-1.2, 1.6), ylim=(-1.4, 1.4))
        _hallway_background(ax, geometry)
        s = a["fork_samples"].reshape(-1, 2).numpy()
        ax.scatter(s[:, 0], s[:, 1], s=3, alpha=0.25, color="C0",
                   label="predicted samples (probe-mapped)", zorder=2)
        t = a["fork_targets"].numpy()
        ax.scatter(t[:, 0], t[:, 1], s=10, marker="o", facecolor="none", edgecolor="C2",
                   label="true futures (all fork contexts)", zorder=3)
        c = a["fork_contexts"].numpy()
        ax.scatter(c[:, 0], c[:, 1], s=20, marker="s", color="k", label="contexts", zorder=4)
        m = a["fork_means"].numpy()
        ax.scatter(m[:, 0], m[:, 1], s=70, marker="X", color="C3", edgecolor="w",
                   label="predictive mean", zorder=5)
        if a["fork_weights"].shape[1] > 1:
            comp = a["fork_components"].reshape(-1, 2).numpy()
            w = a["fork_weights"].reshape(-1).numpy()
            keep = w > 0.02
            ax.scatter(comp[keep, 0], comp[keep, 1], s=300 * w[keep], marker="o",
                       color="C1", edgecolor="k", label="component means (size = weight)",
                       zorder=5)
        ax.set(xlabel="x", ylabel="y", title=f"{head}: predictions at the fork (seed {seed})")
        ax.legend(fontsize=7, loc="lower left")

        ax = axes[1, j]
        paths = a["rollouts"].reshape(-1, *a["rollouts"].shape[2:]).numpy()
        for k, p in enumerate(paths):
            ax.plot(p[:, 0], p[:, 1], "-", lw=0.6, alpha=0.5, color="C0",
                    label="sampled rollouts" if k == 0 else None)
        ends = paths[:, -1]
        ax.scatter(ends[:, 0], ends[:, 1], s=8, color="C3", zorder=3, label="rollout ends")
        dx, dy = geometry.direction(1)
        ax.update_datalim([(-geometry.trunk_length - 0.3, -geometry.branch_length * dy - 0.3),
                           (geometry.branch_length * dx + 0.3, geometry.branch_length * dy + 0.3)])
        ax.autoscale_view()
        _hallway_background(ax, geometry)
        ax.set(xlabel="x", ylabel="y", title=f"{head}: sampled latent rollouts (probe-mapped)")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Forking hallway: VJEPA predictive samples (grey = wall)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_summary(rows: Sequence[dict[str, Any]], path: Any) -> None:
    """Bar chart, mean ± sd over seeds per head, of the headline metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows)
    keys = ["mean_in_wall", "mass_left", "mass_right", "mode_coverage", "both_modes",
            "sample_in_corridor_fork", "rollout_in_corridor"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True,
                             gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(len(summary), 1)
    x = np.arange(len(keys))
    for i, s in enumerate(summary):
        axes[0].bar(x + i * width, [s[k + "_mean"] for k in keys], width,
                    yerr=[s[k + "_sd"] for k in keys], capsize=3, label=s["head"])
        axes[1].bar(i, s["nll_fork_mean"], yerr=s["nll_fork_sd"], capsize=3,
                    color=f"C{i}", label=s["head"])
    axes[0].axhline(0.35, color="k", ls=":", lw=1, label="0.35 mass bar")
    axes[0].set_xticks(x + width * (len(summary) - 1) / 2, keys, rotation=20, fontsize=8)
    n = len({r["seed"] for r in rows})
    axes[0].set(ylabel="fraction", ylim=(0, 1.05),
                title=f"Fork and rollout metrics (mean ± sd over seeds, n = {n})")
    axes[1].set_xticks(range(len(summary)), [s["head"] for s in summary])
    axes[1].set(ylabel="nats per pair", title="NLL of true future at the fork")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Forking hallway: Gaussian vs mixture-density predictor head")
    fig.savefig(path, dpi=110)
    plt.close(fig)
