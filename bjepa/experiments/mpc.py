"""Sampling-based MPC in the latent space of an action-conditioned VJEPA.

See docs/method.md#sampling-based-mpc.

Per seed: draw a control task seen through the Noisy TV (:mod:`bjepa.data.control`), explore
it with random actions, train :class:`~bjepa.models.action.ActionVJEPA` (or ``ActionBJEPA``)
on ``(x_t, u_t, x_{t+1})``, fit the latent-to-observation decoder that expresses the task's
cost and unsafe region on latents (no true state), then run every planner on the *same*
episodes (same starts, same noise: a paired comparison) in the true system and score cost,
safe-success and constraint violations there.

Planners (see :mod:`bjepa.planning`):

- ``random`` — i.i.d. Gaussian actions;
- ``lqr-ce`` — LQR on the true state, regulating onto the goal (certainty equivalence);
- ``oracle`` — LQR on the true state with the setpoint that minimises the stationary expected
  cost including the violation penalty (true model, true noise: the reference);
- ``mean`` — (a) CEM on the predictive-mean latent rollout;
- ``sampling`` — (b) CEM on the CVaR of sampled latent rollouts;
- ``goal-prior`` — (c) ``sampling`` started from the BJEPA goal-prior fusion proposal;
- ``sampling-small``, ``goal-prior-small`` — (b), (c) with a small search budget on the first
  step of an episode (``small_cold_iterations``), where the search has no previous plan.

Used by ``bjepa mpc`` and ``examples/mpc.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from bjepa._validation import (
    check_choice,
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_unit_interval,
)
from bjepa.data import control
from bjepa.inference import fit
from bjepa.inference.fit import set_seed
from bjepa.metrics import linear_probe_r2
from bjepa.planning import (
    GoalPriorPlanner,
    LatentTask,
    LQRController,
    MeanTrajectoryPlanner,
    RandomPolicy,
    SamplingPlanner,
    fit_decoder,
    risk_aware_setpoint,
)
from bjepa.runs import RunFolder

__all__ = [
    "BASELINES",
    "METRICS",
    "PLANNERS",
    "MPCConfig",
    "build_model",
    "build_policies",
    "check_bar",
    "format_table",
    "goal_latent",
    "make_params",
    "make_task",
    "run",
    "run_episodes",
    "run_seed",
    "summarise",
]

logger = logging.getLogger(__name__)

BASELINES = ["random", "lqr-ce", "oracle"]
LATENT_PLANNERS = ["mean", "sampling", "goal-prior", "sampling-small", "goal-prior-small"]
PLANNERS = BASELINES + LATENT_PLANNERS
#: one colour per planner in every figure
COLORS = {"random": "C7", "lqr-ce": "C8", "oracle": "C0", "mean": "C1", "sampling": "C2",
          "goal-prior": "C3", "sampling-small": "C4", "goal-prior-small": "C5"}

#: per-(seed, planner) metrics, averaged over the episodes of that seed
METRICS: dict[str, str] = {
    "cost": "episode cost J in the true system (lower = better)",
    "state_cost": "Σ ‖s_t − g‖² part of J",
    "control_cost": "Σ r ‖u_t‖² part of J",
    "violation_rate": "share of steps spent in the unsafe region",
    "violated_episodes": "share of episodes with at least one unsafe step",
    "success": "share of episodes ending within success_radius of the goal, never unsafe",
    "final_distance": "‖s_T − g‖",
    "backoff": "mean signed distance c − a·s over the last half of the episode",
}


@dataclass
class MPCConfig:
    """Everything that defines an MPC run (dumped as ``config.json``)."""

    planners: list[str] = field(default_factory=lambda: list(PLANNERS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    episodes: int = 50
    # task
    sigma: float = 4.0
    obs_dim: int = 20
    state_dim: int = 2
    distractor_dim: int = 4
    process_noise: float = 0.1
    goal_margin: float = 0.1
    violation_penalty: float = 1.0
    control_cost: float = 0.1
    episode_steps: int = 30
    # model and training
    model: str = "vjepa"
    head: str = "diag"
    explore_steps: int = 4000
    steps: int = 600
    lr: float = 3e-3
    beta: float = 0.01
    tau: float | str = 0.99
    target_scale_init: float = 0.01
    # planners
    horizon: int = 8
    candidates: int = 128
    elites: int = 16
    iterations: int = 4
    cold_iterations: int = 12
    small_cold_iterations: int = 4
    init_std: float = 1.0
    warm_std: float = 0.1
    samples: int = 16
    alpha: float = 0.5
    expected_violations: bool = True
    goal_scale: float = 0.1
    device: str = "cpu"
    progress: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> MPCConfig:
        """A small configuration that finishes in a minute or two on 2 CPU cores."""
        base: dict[str, Any] = dict(
            planners=["random", "oracle", "mean", "sampling", "goal-prior"], seeds=[0, 1],
            episodes=16, explore_steps=1500, steps=300, episode_steps=20, horizon=6,
            candidates=64, elites=8, iterations=3, cold_iterations=9, samples=8)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def validate(self) -> MPCConfig:
        if not self.planners:
            raise ValueError("planners must name at least one planner")
        for name in self.planners:
            check_choice("planner", name, PLANNERS)
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise ValueError(f"seeds must be non-negative ints, got {s!r}")
        for name in ["episodes", "obs_dim", "state_dim", "distractor_dim", "episode_steps",
                     "explore_steps", "steps", "horizon", "candidates", "elites", "iterations",
                     "cold_iterations", "small_cold_iterations", "samples"]:
            check_positive_int(name, getattr(self, name))
        if self.elites > self.candidates:
            raise ValueError(f"elites ({self.elites}) must be <= candidates ({self.candidates})")
        for name in ["process_noise", "goal_margin", "control_cost", "lr", "init_std",
                     "warm_std", "goal_scale", "target_scale_init"]:
            check_positive(name, getattr(self, name))
        for name in ["sigma", "violation_penalty", "beta"]:
            check_nonnegative(name, getattr(self, name))
        check_unit_interval("alpha", self.alpha)
        if self.alpha == 0:
            raise ValueError("alpha must be > 0")
        check_choice("model", self.model, ["vjepa", "bjepa"])
        return self


def make_params(cfg: MPCConfig, seed: int) -> control.ControlParams:
    """The system and task of ``seed`` with the run's settings."""
    return control.make_params(seed, cfg.sigma, obs_dim=cfg.obs_dim, state_dim=cfg.state_dim,
                               distractor_dim=cfg.distractor_dim,
                               process_noise=cfg.process_noise, goal_margin=cfg.goal_margin,
                               control_cost=cfg.control_cost,
                               violation_penalty=cfg.violation_penalty,
                               episode_steps=cfg.episode_steps)


def build_model(cfg: MPCConfig) -> torch.nn.Module:
    """The action-conditioned world model of the run (latent size = state size)."""
    from bjepa.models.action import ActionBJEPA, ActionVJEPA

    cls = ActionVJEPA if cfg.model == "vjepa" else ActionBJEPA
    return cls(cfg.obs_dim, cfg.state_dim, action_dim=cfg.state_dim, head=cfg.head,
               beta=cfg.beta, tau=cfg.tau, target_scale_init=cfg.target_scale_init)


def goal_latent(model: Any, data: control.Exploration) -> torch.Tensor:
    """``μ_θ'(x_goal)``: the target encoder's latent of the clean goal observation."""
    x_goal = data.standardize(torch.as_tensor(data.params.goal_observation()).unsqueeze(0))
    with torch.no_grad():
        return model.encode_target(x_goal.to(model.device))[0].cpu()


def make_task(model: Any, data: control.Exploration, device: str = "cpu") -> LatentTask:
    """The task on latents (no true state): goal latent from the target encoder, decoder slope
    fitted from the target latents of the exploration frames to the raw frames, goal and
    unsafe half-space in raw observation coordinates."""
    p = data.params
    with torch.no_grad():
        z = model.encode_target(data.frames.to(model.device)).cpu()
    W, _ = fit_decoder(z, data.obs.float())
    normal, threshold = p.constraint_in_observation()
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return LatentTask(W, goal_latent(model, data), f(p.goal_observation()),
                      control_cost=p.control_cost, normal=f(normal), threshold=threshold,
                      penalty=p.violation_penalty, device=device)


def _oracle_setpoint(p: control.ControlParams) -> torch.Tensor:
    f = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    noise = p.process_noise**2 * torch.eye(p.state_dim, dtype=torch.float64)
    return risk_aware_setpoint(f(p.A), f(p.B), f(p.Q), f(p.R), noise, f(p.goal), f(p.normal),
                               p.threshold, p.violation_penalty)


def build_policies(names: Sequence[str], cfg: MPCConfig, model: Any, task: LatentTask,
                   data: control.Exploration, seed: int) -> dict[str, Any]:
    """Every requested policy for one seed's system and trained model."""
    p = data.params
    f = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    cem = dict(horizon=cfg.horizon, num_candidates=cfg.candidates, num_elites=cfg.elites,
               iterations=cfg.iterations, cold_iterations=cfg.cold_iterations,
               init_std=cfg.init_std, warm_std=cfg.warm_std, device=cfg.device, seed=seed)
    sampling = dict(cem, num_samples=cfg.samples, risk="cvar", alpha=cfg.alpha,
                    expected_violations=cfg.expected_violations)
    small = dict(sampling, cold_iterations=cfg.small_cold_iterations)
    goal = task.goal_latent()
    out: dict[str, Any] = {}
    for name in names:
        if name == "random":
            out[name] = RandomPolicy(p.action_dim, device=cfg.device, seed=seed)
        elif name == "lqr-ce":
            out[name] = LQRController(f(p.A), f(p.B), f(p.Q), f(p.R), f(p.goal))
        elif name == "oracle":
            out[name] = LQRController(f(p.A), f(p.B), f(p.Q), f(p.R), _oracle_setpoint(p))
        elif name == "mean":
            out[name] = MeanTrajectoryPlanner(model, task, **cem)
        elif name == "sampling":
            out[name] = SamplingPlanner(model, task, **sampling)
        elif name == "sampling-small":
            out[name] = SamplingPlanner(model, task, **small)
        elif name == "goal-prior":
            out[name] = GoalPriorPlanner(model, task, goal, goal_scale=cfg.goal_scale,
                                         **sampling)
        elif name == "goal-prior-small":
            out[name] = GoalPriorPlanner(model, task, goal, goal_scale=cfg.goal_scale,
                                         **small)
        else:
            raise ValueError(f"unknown planner {name!r}; choose from {PLANNERS}")
    return out


def run_episodes(policy: Any, params: control.ControlParams, data: control.Exploration,
                 n_episodes: int, seed: int, *, progress: bool = False,
                 desc: str = "") -> dict[str, Any]:
    """Run ``n_episodes`` episodes of the true system in parallel under ``policy``.

    A policy with ``observes == "state"`` reads the true state, any other reads the
    standardised observation. Returns per-episode arrays and the true state paths.
    """
    check_positive_int("n_episodes", n_episodes)
    env = control.ControlEnv(params, n_episodes, seed=seed)
    x = env.reset()
    policy.reset(n_episodes)
    T = params.episode_steps
    totals = {k: torch.zeros(n_episodes, dtype=torch.float64)
              for k in ("cost", "state_cost", "control_cost")}
    unsafe = torch.zeros(n_episodes, dtype=torch.float64)
    margins, path = [], [env.state.clone()]
    bar = _bar(T, progress, desc, leave=False, unit="step")
    start = time.perf_counter()
    for _ in range(T):
        obs = env.state if policy.observes == "state" else data.standardize(x)
        u = policy.act(obs).cpu()
        x, info = env.step(u)
        for k in totals:
            totals[k] += info[k]
        unsafe += info["violation"].double()
        margins.append(params.threshold - env.state @ env.normal)
        path.append(env.state.clone())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    dist = (env.state - env.goal).norm(dim=1)
    late = torch.stack(margins[T // 2:], dim=1)
    return {
        **{k: v.numpy() for k, v in totals.items()},
        "violation_rate": (unsafe / T).numpy(),
        "violated_episodes": (unsafe > 0).double().numpy(),
        "success": ((dist < params.success_radius) & (unsafe == 0)).double().numpy(),
        "final_distance": dist.numpy(),
        "backoff": late.mean(1).numpy(),
        "paths": torch.stack(path, dim=1).numpy(),
        "late_margins": late.reshape(-1).numpy(),
        "seconds": time.perf_counter() - start,
    }


def _model_diagnostics(model: Any, task: LatentTask, data: control.Exploration,
                       test: control.Exploration) -> dict[str, float]:
    """Evaluation only (uses the true state): probe R² of the latent to the state on a held-out
    trajectory, and the calibration of the predicted spread of the boundary margin
    (realised / predicted standard deviation; 1 = calibrated)."""
    dev = model.device
    x, u, y = (t.to(dev) for t in test.pairs)
    with torch.no_grad():
        z_tr = model.encode(data.frames.to(dev)).cpu()
        z_te = model.encode(test.frames.to(dev)).cpu()
        pred = model.predict(model.pack(x, u))
        z_next = model.encode_target(y)
        draws = pred.sample((64,))
    r2 = linear_probe_r2(z_tr, data.states.float(), z_te, test.states.float())
    t = task.to(dev)
    realised = (t.margin(z_next) - t.margin(pred.mean)).std()
    predicted = t.margin(draws).std(0).pow(2).mean().sqrt()
    inside = ((z_next - pred.mean).abs() <= 1.645 * pred.stddev).float().mean()
    return {"state_r2": float(r2), "margin_std_ratio": float(realised / predicted),
            "coverage90": float(inside)}


def run_seed(cfg: MPCConfig, seed: int, *, metrics_path: Any = None,
             progress: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train the model for one seed and run every planner; returns ``(rows, arrays)`` (one row
    per planner; arrays hold the state paths and late margins for the figures)."""
    params = make_params(cfg, seed)
    data = control.explore(params, cfg.explore_steps, seed)
    test = control.explore(params, max(cfg.explore_steps // 4, 200), seed + 50_000, stats=data)
    set_seed(seed)
    model = build_model(cfg)
    x, u, y = data.pairs
    start = time.perf_counter()
    hist = fit(model, model.pack(x, u), y, steps=cfg.steps, lr=cfg.lr, seed=seed,
               device=cfg.device, progress=progress, log_every=max(cfg.steps // 100, 1),
               metrics_path=metrics_path, metrics_tags={"seed": seed})
    train_seconds = time.perf_counter() - start
    model.eval()
    task = make_task(model, data, cfg.device)
    diag = _model_diagnostics(model, task, data, test)
    torch.manual_seed(seed)
    policies = build_policies(cfg.planners, cfg, model, task, data, seed)
    rows, arrays = [], {}
    for name, policy in policies.items():
        out = run_episodes(policy, params, data, cfg.episodes, 10_000 + seed,
                           progress=progress, desc=f"seed {seed} {name}")
        row = {"planner": name, "seed": seed, "episodes": cfg.episodes}
        row.update({k: float(np.mean(out[k])) for k in METRICS})
        row["cost_episode_sd"] = float(np.std(out["cost"], ddof=1)) if cfg.episodes > 1 \
            else 0.0
        row.update(diag)
        row.update(final_loss=hist.final_loss, train_seconds=round(train_seconds, 3),
                   plan_seconds=round(out["seconds"], 3))
        rows.append(row)
        arrays[name] = {"paths": out["paths"], "late_margins": out["late_margins"]}
        logger.info("seed %d %-16s cost %.3f violations %.3f success %.2f (%.1fs)", seed, name,
                    row["cost"], row["violation_rate"], row["success"], out["seconds"])
    arrays["_task"] = {"goal": params.goal, "normal": params.normal,
                       "threshold": params.threshold}
    return rows, arrays


def run(cfg: MPCConfig, folder: RunFolder | None = None, *,
        resume: bool = False) -> list[dict[str, Any]]:
    """Every seed × planner; returns one row per (seed, planner).

    With a ``folder``, each finished seed's rows go to ``seeds/seed-<k>.json`` (and its state
    paths to ``seeds/seed-<k>.npz``); with ``resume=True`` those seeds are read back instead of
    re-run.
    """
    cfg.validate()
    if resume and folder is None:
        raise ValueError("resume=True needs a run folder")
    if folder is not None:
        folder.write_json("config.json", asdict(cfg))
        folder.file("seeds").mkdir(exist_ok=True)
    rows: list[dict[str, Any]] = []
    first_arrays: dict[str, Any] | None = None
    bar = _bar(len(cfg.seeds), cfg.progress, "MPC seeds", unit="seed")
    for seed in cfg.seeds:
        name = f"seeds/seed-{seed}"
        if resume and folder.file(f"{name}.json").exists() \
                and folder.file(f"{name}.npz").exists():
            logger.info("resume: seed %d already finished, keeping its results", seed)
            seed_rows = folder.read_json(f"{name}.json")
            arrays = _load_arrays(folder.file(f"{name}.npz"))
        else:
            seed_rows, arrays = run_seed(cfg, seed, progress=cfg.progress,
                                         metrics_path=folder.metrics_path if folder else None)
            if folder is not None:
                _save_arrays(folder.file(f"{name}.npz"), arrays)
                folder.write_json(f"{name}.json", seed_rows)
        if first_arrays is None:
            first_arrays = arrays
        rows += seed_rows
        if bar is not None:
            best = {r["planner"]: r["cost"] for r in seed_rows}
            bar.set_postfix_str(" ".join(f"{k}={v:.2f}" for k, v in best.items()))
            bar.update(1)
    if bar is not None:
        bar.close()
    if folder is not None:
        folder.write_rows("results", rows)
        summary = summarise(rows)
        folder.write_json("summary.json", {"planners": summary, "bar": check_bar(rows)})
        plot_summary(rows, folder.file("mpc_summary.png"))
        if first_arrays is not None:
            plot_trajectories(first_arrays, folder.file("mpc_trajectories.png"),
                              seed=cfg.seeds[0])
    return rows


def _save_arrays(path: Any, arrays: dict[str, Any]) -> None:
    flat = {f"{planner}/{key}": np.asarray(value) for planner, values in arrays.items()
            for key, value in values.items()}
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **flat)
    tmp.replace(path)


def _load_arrays(path: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with np.load(path) as data:
        for key in data.files:
            planner, name = key.split("/", 1)
            value = data[key]
            out.setdefault(planner, {})[name] = value.item() if value.ndim == 0 else value
    return out


def _bar(total: int, enabled: bool, desc: str, **kw: Any):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True, **kw)


# ----------------------------------------------------------------------------- summaries
def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per planner: number of seeds, mean and sd (ddof = 1, over seeds of the per-seed
    episode means) of every metric, and the cost relative to the oracle's on the same seed."""
    oracle = {r["seed"]: r["cost"] for r in rows if r["planner"] == "oracle"}
    out = []
    for name in dict.fromkeys(r["planner"] for r in rows):
        sel = [r for r in rows if r["planner"] == name]
        entry: dict[str, Any] = {"planner": name, "n": len(sel)}
        keys = list(METRICS) + ["plan_seconds"]
        for key in keys:
            vals = np.array([r[key] for r in sel], dtype=float)
            entry[f"{key}_mean"] = float(vals.mean())
            entry[f"{key}_sd"] = float(vals.std(ddof=1)) if len(sel) > 1 else 0.0
        ratios = np.array([r["cost"] / oracle[r["seed"]] for r in sel if r["seed"] in oracle])
        if len(ratios):
            entry["cost_vs_oracle_mean"] = float(ratios.mean())
            entry["cost_vs_oracle_sd"] = float(ratios.std(ddof=1)) if len(ratios) > 1 else 0.0
        out.append(entry)
    return out


def check_bar(rows: Sequence[dict[str, Any]], planner: str = "sampling",
              against: str = "mean", tolerance: float = 0.2) -> dict[str, Any]:
    """The issue's bar for ``planner`` (default the sampling planner):

    - it beats ``against`` (mean planning) on violation rate *or* cost by a margin (difference
      of the seed means) larger than the seed spread (the larger of the two seed sds);
    - its mean cost is within ``tolerance`` (20 %) of the oracle's mean cost.

    Missing planners give ``None`` for the parts they are needed for.
    """
    summary = {s["planner"]: s for s in summarise(rows)}
    out: dict[str, Any] = {"planner": planner, "against": against}
    if planner in summary and against in summary:
        a, b = summary[planner], summary[against]
        for key in ("violation_rate", "cost"):
            margin = b[f"{key}_mean"] - a[f"{key}_mean"]
            spread = max(a[f"{key}_sd"], b[f"{key}_sd"])
            out[f"{key}_margin"] = margin
            out[f"{key}_spread"] = spread
            out[f"beats_on_{key}"] = bool(margin > spread)
        out["beats_mean_planning"] = out["beats_on_violation_rate"] or out["beats_on_cost"]
    if planner in summary and "oracle" in summary:
        ratio = summary[planner]["cost_mean"] / summary["oracle"]["cost_mean"]
        out["cost_ratio_to_oracle"] = ratio
        out["within_tolerance_of_oracle"] = bool(ratio <= 1.0 + tolerance)
    return out


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`summarise`'s rows (mean ± sd over seeds)."""
    cols = [("cost", 8, 3), ("violation_rate", 6, 3), ("violated_episodes", 5, 2),
            ("success", 5, 2), ("final_distance", 5, 3), ("backoff", 6, 3)]
    head = f"{'planner':<17}{'n':>2}  " + "  ".join(f"{c:>{w + 8}}" for c, w, _ in cols)
    head += f"  {'cost/oracle':>14}"
    lines = [head]
    for s in summary:
        cells = "  ".join(f"{s[c + '_mean']:>{w}.{d}f} ± {s[c + '_sd']:<{5}.{d}f}"
                          for c, w, d in cols)
        ratio = (f"{s['cost_vs_oracle_mean']:>6.3f} ± {s['cost_vs_oracle_sd']:<5.3f}"
                 if "cost_vs_oracle_mean" in s else f"{'':>14}")
        lines.append(f"{s['planner']:<17}{s['n']:>2}  {cells}  {ratio}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- figures
def plot_summary(rows: Sequence[dict[str, Any]], path: Any) -> None:
    """Cost, violation rate and success per planner: mean ± sd over seeds, seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows)
    names = [s["planner"] for s in summary if s["planner"] != "random"] or \
        [s["planner"] for s in summary]
    by = {s["planner"]: s for s in summary}
    panels = [("cost", "episode cost J (true system)"),
              ("violation_rate", "share of unsafe steps"),
              ("success", "safe success rate")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), constrained_layout=True)
    x = np.arange(len(names))
    for ax, (key, label) in zip(axes, panels, strict=True):
        means = [by[n][f"{key}_mean"] for n in names]
        sds = [by[n][f"{key}_sd"] for n in names]
        ax.bar(x, means, yerr=sds, capsize=4, color=[COLORS.get(n, "C9") for n in names],
               alpha=0.75, label="mean ± sd over seeds")
        for i, n in enumerate(names):
            vals = [r[key] for r in rows if r["planner"] == n]
            ax.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals,
                       s=12, color="k", zorder=3, label="one seed" if i == 0 else None)
        if key == "cost" and "oracle" in by:
            ref = by["oracle"]["cost_mean"]
            ax.axhline(1.2 * ref, color="k", ls=":", lw=1, label="1.2 × oracle")
        ax.set_xticks(x, names, rotation=25, fontsize=8)
        ax.set(ylabel=label, title=label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    n_seeds = len({r["seed"] for r in rows})
    n_eps = rows[0]["episodes"] if rows else 0
    fig.suptitle(f"Latent MPC on the Noisy-TV control task ({n_seeds} seeds × {n_eps} "
                 "episodes; random actions omitted)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trajectories(arrays: dict[str, Any], path: Any, *, seed: int = 0,
                      n_paths: int = 8) -> None:
    """True-state paths of a few episodes per planner (unsafe region shaded) and the
    distribution of the late-episode distance to the unsafe boundary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = arrays["_task"]
    names = [n for n in ("oracle", "mean", "sampling", "goal-prior") if n in arrays]
    if not names:
        names = [n for n in arrays if n != "_task"][:4]
    goal, normal, c = task["goal"], task["normal"], task["threshold"]
    if len(goal) != 2:
        logger.warning("trajectory figure drawn for the first two state coordinates only")
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4.2 * (len(names) + 1), 4.4),
                             constrained_layout=True, squeeze=False)
    axes = axes[0]
    for ax, name in zip(axes, names, strict=False):
        paths = arrays[name]["paths"][:n_paths]
        lo = paths[..., :2].reshape(-1, 2).min(0) - 0.3
        hi = paths[..., :2].reshape(-1, 2).max(0) + 0.3
        xs, ys = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        unsafe = normal[0] * xs + normal[1] * ys > c
        ax.contourf(xs, ys, unsafe.astype(float), levels=[0.5, 1.5], colors=["C3"],
                    alpha=0.2)
        ax.contour(xs, ys, unsafe.astype(float), levels=[0.5], colors="C3", linewidths=1)
        for k, p in enumerate(paths):
            ax.plot(p[:, 0], p[:, 1], "-", lw=0.8, alpha=0.8, color="C0",
                    label="true state path" if k == 0 else None)
            ax.scatter(p[0, 0], p[0, 1], s=12, color="k", label="start" if k == 0 else None)
        ax.scatter(goal[0], goal[1], marker="*", s=160, color="C2", edgecolor="k",
                   zorder=4, label="goal")
        ax.plot([], [], color="C3", label="unsafe region")
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel="s[0]", ylabel="s[1]",
               title=f"{name} (seed {seed})")
        ax.set_aspect("equal")
        ax.legend(fontsize=7, loc="best")
    ax = axes[-1]
    for name in names:
        m = arrays[name]["late_margins"]
        ax.hist(m, bins=40, histtype="step", lw=1.5, color=COLORS.get(name, "C9"), label=name,
                density=True)
    ax.axvline(0.0, color="C3", lw=1.5, label="unsafe boundary")
    ax.axvline(c - normal @ goal, color="C2", ls="--", lw=1, label="goal")
    ax.set(xlabel="c − a·s (distance to the unsafe side; < 0 = unsafe)", ylabel="density",
           title="second half of the episodes")
    ax.legend(fontsize=7)
    fig.suptitle("Latent MPC: true-state trajectories and how far each planner keeps from "
                 "the edge")
    fig.savefig(path, dpi=110)
    plt.close(fig)
