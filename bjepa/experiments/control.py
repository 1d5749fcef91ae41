"""Online control in DeepMind Control with latent world models (docs/control.md).

One run (:func:`run_seed`) is the usual model-based loop:

1. collect ``seed_episodes`` episodes with uniform random actions;
2. repeat for ``episodes`` episodes: train the world model on sequences from the replay buffer
   (``train_steps`` SVI steps with :func:`bjepa.inference.fit`), collect one episode with the
   CEM planner (:class:`bjepa.planning.reward.RewardCEM`) plus exploration noise, and every
   ``eval_every`` episodes evaluate the planner without noise on ``eval_episodes`` episodes.

After every episode the run's state (model, replay buffer, RNG streams, rows so far) is saved in
its checkpoint folder, so an interrupted run resumes where it stopped. :func:`run` runs a grid of
(model, distractor dimensions, seed) and writes the run folder (``config.json``,
``results.csv``/``.json``, ``curves.png``, ``metrics.jsonl``, ``checkpoints/``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bjepa._io import atomic_write
from bjepa._validation import (
    check_choice,
    check_nonnegative,
    check_nonnegative_int,
    check_positive,
    check_positive_int,
)
from bjepa.data.dmc import DISTRACTORS, DMCEnv, Episode, ReplayBuffer
from bjepa.inference.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_model_state,
    restore_rng_state,
    save_checkpoint,
)
from bjepa.inference.fit import fit, set_seed
from bjepa.models.control import ControlRecon, ControlVJEPA, ControlWorldModel
from bjepa.planning.reward import RewardCEM
from bjepa.runs import append_jsonl

__all__ = ["CONTROL_MODELS", "ControlConfig", "build_model", "collect", "format_table",
           "make_env", "play", "plot_curves", "run", "run_seed", "summarise"]

logger = logging.getLogger(__name__)

#: model names of the control experiment
CONTROL_MODELS = ("vjepa", "recon")


@dataclass
class ControlConfig:
    """One control experiment (dumped to config.json and with every row)."""

    task: str = "cartpole-swingup"
    models: list[str] = field(default_factory=lambda: ["vjepa"])
    distractor_dims: list[int] = field(default_factory=lambda: [0])
    distractor: str = "tv"
    sigma: float = 1.0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    action_repeat: int = 8
    seed_episodes: int = 5
    episodes: int = 20
    train_steps: int = 100
    batch_size: int = 256
    horizon: int = 5
    latent_dim: int = 32
    hidden_dim: int = 128
    lr: float = 1e-3
    beta: float = 0.01
    tau: float = 0.99
    # 20 agent steps (160 control steps, 1.6 s of cartpole) and the predictive mean: on one
    # trained model 12 steps scored 607, 20 sampled steps 747, 20 mean steps 814 (docs/control.md)
    plan_horizon: int = 20
    population: int = 300
    elites: int = 30
    iterations: int = 5
    particles: int = 1
    sample: bool = False
    explore: float = 0.3
    eval_every: int = 4
    eval_episodes: int = 1
    final_eval_episodes: int = 5
    max_episode_steps: int | None = None
    pixels: bool = False
    size: int = 64
    frames: int = 2

    @classmethod
    def quick(cls, **overrides: Any) -> ControlConfig:
        """A smoke-test configuration (well under two minutes on a 2-core CPU)."""
        base = dict(seeds=[0], seed_episodes=1, episodes=2, train_steps=20, batch_size=64,
                    latent_dim=16, hidden_dim=64, population=64, elites=8, iterations=2,
                    plan_horizon=6, eval_every=2, max_episode_steps=40, final_eval_episodes=1)
        base.update(overrides)
        return cls(**base).validate()

    def validate(self) -> ControlConfig:
        if not self.models:
            raise ValueError("models must name at least one model")
        for m in self.models:
            check_choice("models", m, CONTROL_MODELS)
        if not self.seeds:
            raise ValueError("seeds must hold at least one seed")
        for s in self.seeds:
            check_nonnegative_int("seeds", s)
        if not self.distractor_dims:
            raise ValueError("distractor_dims must hold at least one value (0: none)")
        for d in self.distractor_dims:
            check_nonnegative_int("distractor_dims", d)
        check_choice("distractor", self.distractor, DISTRACTORS)
        check_nonnegative("sigma", self.sigma)
        for name in ("action_repeat", "seed_episodes", "episodes", "train_steps", "batch_size",
                     "horizon", "latent_dim", "hidden_dim", "plan_horizon", "population",
                     "elites", "iterations", "particles", "eval_every", "eval_episodes",
                     "final_eval_episodes"):
            check_positive_int(name, getattr(self, name))
        if self.elites > self.population:
            raise ValueError(f"elites ({self.elites}) must be <= population ({self.population})")
        if self.max_episode_steps is not None:
            check_positive_int("max_episode_steps", self.max_episode_steps)
            if self.max_episode_steps <= self.horizon:
                raise ValueError(f"max_episode_steps ({self.max_episode_steps}) must exceed "
                                 f"the training horizon ({self.horizon})")
        check_positive_int("size", self.size)
        check_positive_int("frames", self.frames)
        if self.pixels and max(self.distractor_dims) > self.size:
            raise ValueError(f"with pixels, distractor_dims are noise-patch sides and must be "
                             f"<= size ({self.size}), got {max(self.distractor_dims)}")
        check_positive("lr", self.lr)
        check_nonnegative("beta", self.beta)
        check_nonnegative("explore", self.explore)
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {self.tau}")
        return self


def build_model(name: str, env: DMCEnv, cfg: ControlConfig) -> ControlWorldModel:
    """The world model called ``name`` for ``env``."""
    kw = dict(latent_dim=cfg.latent_dim, horizon=cfg.horizon, hidden_dim=cfg.hidden_dim,
              encoder="conv" if cfg.pixels else "mlp")
    if name == "vjepa":
        return ControlVJEPA(env.obs_dim, env.action_dim, beta=cfg.beta, tau=cfg.tau, **kw)
    if name == "recon":
        return ControlRecon(env.obs_dim, env.action_dim, **kw)
    raise ValueError(f"model must be one of {CONTROL_MODELS}, got {name!r}")


def make_env(cfg: ControlConfig, distractor_dims: int, seed: int) -> DMCEnv:
    """The environment of ``cfg`` with ``distractor_dims`` and ``seed``."""
    return DMCEnv(cfg.task, action_repeat=cfg.action_repeat, distractor_dims=distractor_dims,
                  distractor=cfg.distractor, sigma=cfg.sigma, seed=seed, pixels=cfg.pixels,
                  size=cfg.size, frames=cfg.frames)


def _to_env(env: DMCEnv, a: np.ndarray) -> np.ndarray:
    """Map a planner action in [-1, 1] to the task's action bounds."""
    return env.action_low + (a + 1.0) * 0.5 * (env.action_high - env.action_low)


def play(env: DMCEnv, policy: Callable[[np.ndarray], np.ndarray] | None, *,
         rng: np.random.Generator, max_steps: int | None = None) -> Episode:
    """One episode with ``policy(obs) -> action in [-1, 1]`` (``None``: uniform random)."""
    obs = [env.reset()]
    actions, rewards = [], []
    limit = env.episode_steps if max_steps is None else min(max_steps, env.episode_steps)
    for _ in range(limit):
        a = (rng.uniform(-1.0, 1.0, env.action_dim).astype(np.float32) if policy is None
             else policy(obs[-1]))
        o, r, done = env.step(_to_env(env, a))
        obs.append(o)
        actions.append(a)
        rewards.append(r)
        if done:
            break
    return Episode(np.stack(obs), np.stack(actions).astype(np.float32),
                   np.asarray(rewards, dtype=np.float32))


def _planner(model: ControlWorldModel, env: DMCEnv, cfg: ControlConfig, *, explore: float,
             seed: int) -> RewardCEM:
    return RewardCEM(model, env.action_dim, horizon=cfg.plan_horizon,
                     population=cfg.population, elites=cfg.elites, iterations=cfg.iterations,
                     particles=cfg.particles, sample=cfg.sample, explore=explore, seed=seed)


def _planned_episode(model: ControlWorldModel, env: DMCEnv, cfg: ControlConfig, *,
                     explore: float, seed: int, rng: np.random.Generator) -> Episode:
    planner = _planner(model, env, cfg, explore=explore, seed=seed)
    model.eval()
    try:
        return play(env, planner.act, rng=rng, max_steps=cfg.max_episode_steps)
    finally:
        model.train()


def _train(model: ControlWorldModel, buffer: ReplayBuffer, cfg: ControlConfig, seed: int,
           device: torch.device) -> float:
    obs, act, rew = (torch.as_tensor(a) for a in buffer.sequences(cfg.horizon))
    context, target = model.pack(obs, act, rew)
    history = fit(model, context, target, steps=cfg.train_steps, lr=cfg.lr,
                  batch_size=cfg.batch_size, seed=seed, device=device, progress=False,
                  elbo="meanfield", log_every=cfg.train_steps)
    return history.final_loss / cfg.horizon


@dataclass
class _State:
    episode: int = 0
    env_steps: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    final: list[float] | None = None


def final_evaluation(model: ControlWorldModel, cfg: ControlConfig, distractor_dims: int,
                     seed: int) -> list[float]:
    """Returns of ``cfg.final_eval_episodes`` episodes planned by the trained ``model`` without
    exploration noise, on an environment seeded apart from training and the periodic
    evaluations (``seed + 20 000``)."""
    env = make_env(cfg, distractor_dims, seed + 20_000)
    rng = np.random.default_rng([seed, 0xF1A1])
    return [_planned_episode(model, env, cfg, explore=0.0, seed=seed * 104_729 + 7 + i,
                             rng=rng).ret for i in range(cfg.final_eval_episodes)]


def _save_state(folder: Path, model: ControlWorldModel, buffer: ReplayBuffer, env: DMCEnv,
                eval_env: DMCEnv, rng: np.random.Generator, state: _State) -> None:
    buffer.save(folder / "replay")
    loop = {"episode": state.episode, "env_steps": state.env_steps, "rows": state.rows,
            "elapsed": state.elapsed, "env_rng": env.rng_state(),
            "eval_env_rng": eval_env.rng_state(), "final": state.final,
            "buffer_episodes": len(buffer.episodes),
            "loop_rng": rng.bit_generator.state}
    rng_state = capture_rng_state()
    save_checkpoint(folder / "model.pt", model, extra={"rng": rng_state})
    atomic_write(folder / "loop.json",
                 lambda tmp: tmp.write_text(json.dumps(loop, default=_plain_int)))


def _plain_int(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def _load_state(folder: Path, model: ControlWorldModel, env: DMCEnv, eval_env: DMCEnv,
                rng: np.random.Generator) -> tuple[ReplayBuffer, _State] | None:
    if not (folder / "loop.json").exists():
        return None
    loop = json.loads((folder / "loop.json").read_text())
    payload = load_checkpoint(folder / "model.pt")
    restore_model_state(payload, model, folder / "model.pt")
    restore_rng_state(payload["rng"])
    env.set_rng_state(loop["env_rng"])
    eval_env.set_rng_state(loop["eval_env_rng"])
    rng.bit_generator.state = loop["loop_rng"]
    buffer = ReplayBuffer.load(folder / "replay", loop["buffer_episodes"])
    return buffer, _State(loop["episode"], loop["env_steps"], loop["rows"], loop["elapsed"],
                          loop.get("final"))


def run_seed(cfg: ControlConfig, model_name: str, distractor_dims: int, seed: int, *,
             checkpoint_dir: str | Path | None = None, device: str | torch.device = "cpu",
             on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """One online run; returns one row per evaluation (module docstring)."""
    cfg.validate()
    device = torch.device(device)
    set_seed(seed)
    env, eval_env = (make_env(cfg, distractor_dims, s) for s in (seed, seed + 10_000))
    rng = np.random.default_rng([seed, 0xC0])
    model = build_model(model_name, env, cfg).to(device)
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    loaded = None if folder is None else _load_state(folder, model, env, eval_env, rng)
    if loaded is None:
        buffer, state = ReplayBuffer(), _State()
        for _ in range(cfg.seed_episodes):
            ep = play(env, None, rng=rng, max_steps=cfg.max_episode_steps)
            buffer.add(ep)
            state.env_steps += len(ep.rewards) * cfg.action_repeat
        model.set_obs_stats(torch.as_tensor(np.concatenate([e.obs for e in buffer.episodes])
                                            ).to(device))
        state.rows.append(_row(cfg, model_name, distractor_dims, seed, state,
                               np.mean([e.ret for e in buffer.episodes]), None, None))
    else:
        buffer, state = loaded
        logger.info("resumed %s/%d/%d at episode %d", model_name, distractor_dims, seed,
                    state.episode)
    tag = dict(model=model_name, distractor_dims=distractor_dims, seed=seed)
    while state.episode < cfg.episodes:
        t0 = time.perf_counter()
        state.episode += 1
        state.final = None  # a final evaluation belongs to the model of the last episode
        loss = _train(model, buffer, cfg, seed * 100_003 + state.episode, device)
        ep = _planned_episode(model, env, cfg, explore=cfg.explore,
                              seed=seed * 7919 + state.episode, rng=rng)
        buffer.add(ep)
        state.env_steps += len(ep.rewards) * cfg.action_repeat
        ret = None
        if state.episode % cfg.eval_every == 0 or state.episode == cfg.episodes:
            ret = float(np.mean([
                _planned_episode(model, eval_env, cfg, explore=0.0,
                                 seed=seed * 104_729 + state.episode * 31 + i, rng=rng).ret
                for i in range(cfg.eval_episodes)]))
        state.elapsed += time.perf_counter() - t0
        row = _row(cfg, model_name, distractor_dims, seed, state, ep.ret, ret, loss)
        state.rows.append(row)
        logger.info("%s episode %d: train return %.1f, eval %s, loss %.3f (%.0f s)", tag,
                    state.episode, ep.ret, "-" if ret is None else f"{ret:.1f}", loss,
                    state.elapsed)
        if on_row is not None:
            on_row(row)
        if folder is not None:
            _save_state(folder, model, buffer, env, eval_env, rng, state)
    if state.final is None:
        t0 = time.perf_counter()
        state.final = final_evaluation(model, cfg, distractor_dims, seed)
        logger.info("%s final evaluation: %s (%.0f s)", tag,
                    ", ".join(f"{r:.1f}" for r in state.final), time.perf_counter() - t0)
        if folder is not None:
            _save_state(folder, model, buffer, env, eval_env, rng, state)
    return with_final(state.rows, state.final)


def with_final(rows: list[dict[str, Any]], final: list[float] | None) -> list[dict[str, Any]]:
    """``rows`` with the final evaluation's mean, sd and episode count on the last row."""
    if not final or not rows:
        return list(rows)
    v = np.array(final)
    last = {**rows[-1], "final_return": float(v.mean()),
            "final_sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "final_episodes": len(v)}
    return [*rows[:-1], last]


def _row(cfg: ControlConfig, model: str, dims: int, seed: int, state: _State,
         train_return: float, eval_return: float | None, loss: float | None) -> dict[str, Any]:
    return dict(task=cfg.task, model=model, distractor_dims=dims, distractor=cfg.distractor,
                sigma=cfg.sigma, seed=seed, episode=state.episode, env_steps=state.env_steps,
                train_return=float(train_return),
                eval_return=None if eval_return is None else float(eval_return),
                loss=None if loss is None else float(loss), wall_s=round(state.elapsed, 2))


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return of the trained planner per (model, distractor dims): mean, sd and min over seeds
    of each run's final evaluation (``final_return``: the mean of ``final_eval_episodes``
    episodes), or, for a run without one (unfinished), of its last periodic evaluation."""
    final: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in rows:
        if r.get("eval_return") is None and r.get("final_return") is None:
            continue
        key = (r["model"], r["distractor_dims"], r["seed"])
        if key not in final or r["episode"] > final[key]["episode"]:
            final[key] = r
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for (m, d, _), r in final.items():
        groups.setdefault((m, d), []).append(r)
    out = []
    for (m, d), rs in sorted(groups.items()):
        v = np.array([r.get("final_return", r["eval_return"]) for r in rs])
        out.append(dict(model=m, distractor_dims=d, seeds=len(rs), mean=float(v.mean()),
                        sd=float(v.std(ddof=1)) if len(v) > 1 else 0.0, min=float(v.min()),
                        env_steps=max(r["env_steps"] for r in rs),
                        env_steps_min=min(r["env_steps"] for r in rs),
                        wall_s=float(np.mean([r["wall_s"] for r in rs]))))
    return out


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`summarise`'s rows."""
    lines = ["| model | distractor dims | seeds | final return (mean ± sd) | min | env steps "
             "| wall s / run |", "|---|---|---|---|---|---|---|"]
    for r in summary:
        lo = r.get("env_steps_min", r["env_steps"])
        steps = str(r["env_steps"]) if lo == r["env_steps"] else f"{lo}–{r['env_steps']}"
        lines.append(f"| {r['model']} | {r['distractor_dims']} | {r['seeds']} | "
                     f"{r['mean']:.1f} ± {r['sd']:.1f} | {r['min']:.1f} | {steps} | "
                     f"{r['wall_s']:.0f} |")
    return "\n".join(lines)


def run(cfg: ControlConfig, folder: Any, *, device: str | torch.device = "cpu",
        progress: bool = False) -> list[dict[str, Any]]:
    """Every (model, distractor dims, seed) of ``cfg`` into the run folder ``folder``
    (a :class:`bjepa.runs.RunFolder`); resumes unfinished runs from their checkpoints."""
    cfg.validate()
    if not getattr(folder, "resumed", False):  # a new run (--overwrite): no stale checkpoints
        shutil.rmtree(folder.file("checkpoints"), ignore_errors=True)
    folder.write_json("config.json", asdict(cfg))
    rows: list[dict[str, Any]] = []

    def stream(row: dict[str, Any]) -> None:
        append_jsonl(folder.metrics_path, [row])

    cells = [(m, d, s) for m in cfg.models for d in cfg.distractor_dims for s in cfg.seeds]
    for i, (m, d, s) in enumerate(cells):
        if progress:
            print(f"[{i + 1}/{len(cells)}] {cfg.task} {m} distractor_dims={d} seed={s}",
                  flush=True)
        ckpt = folder.file(f"checkpoints/{m}-d{d}-s{s}")
        rows += run_seed(cfg, m, d, s, checkpoint_dir=ckpt, device=device, on_row=stream)
    folder.write_rows("results", rows)
    folder.write_json("summary.json", summarise(rows))
    plot_curves(rows, folder.file("curves.png"), title=cfg.task)
    return rows


def collect(folders: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The rows of control run folders, e.g. runs of one grid cell each started in parallel:
    a finished run's ``results.json``, or an unfinished run's rows so far (from its
    checkpoints; its last evaluation then stands for it, at fewer environment steps — the
    ``env_steps`` column says so). Refuses folders whose configurations differ in anything but
    the grid (models, distractor dimensions, seeds)."""
    rows: list[dict[str, Any]] = []
    base: dict[str, Any] | None = None
    grid = {"models", "distractor_dims", "seeds"}
    for folder in folders:
        folder = Path(folder)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder} holds no config.json (not a `bjepa control` run "
                                    "folder)")
        stored = json.loads((folder / "config.json").read_text())
        known = {f.name for f in fields(ControlConfig)}
        # settings a run folder predates take their defaults, as they did when it ran
        cfg = {k: v for k, v in asdict(ControlConfig(**{k: v for k, v in stored.items()
                                                         if k in known})).items()
               if k not in grid}
        cfg.update({k: v for k, v in stored.items() if k not in known})
        if base is None:
            base = cfg
        elif cfg != base:
            diff = sorted(k for k in cfg.keys() | base.keys() if cfg.get(k) != base.get(k))
            raise ValueError(f"{folder} was run with other settings ({', '.join(diff)}); "
                             "collect runs of one configuration")
        if (folder / "results.json").exists():
            rows += json.loads((folder / "results.json").read_text())
            continue
        loops = sorted((folder / "checkpoints").glob("*/loop.json"))
        if not loops:
            raise FileNotFoundError(f"{folder} holds neither results.json nor a checkpoint "
                                    "(no episode finished yet)")
        logger.warning("%s is unfinished: reporting its %d checkpointed run(s) so far",
                       folder, len(loops))
        for loop in loops:
            state = json.loads(loop.read_text())
            rows += with_final(state["rows"], state.get("final"))
    return rows


def plot_curves(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> None:
    """Evaluation return against environment steps per (model, distractor dims): each seed
    thin, the mean over seeds thick (at the steps every seed has reached), and each run's final
    evaluation as a marker with the spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    groups: dict[tuple[str, int], dict[int, list[tuple[int, float]]]] = {}
    finals: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for r in rows:
        key = (r["model"], r["distractor_dims"])
        if r.get("final_return") is not None:
            finals.setdefault(key, []).append((r["env_steps"], r["final_return"]))
        if r.get("eval_return") is None:
            continue
        groups.setdefault(key, {}).setdefault(r["seed"], []).append(
            (r["env_steps"], r["eval_return"]))
    for i, ((m, d), seeds) in enumerate(sorted(groups.items())):
        color = f"C{i}"
        for pts in seeds.values():
            x, y = zip(*sorted(pts), strict=True)
            ax.plot(x, y, color=color, alpha=0.25, lw=0.8)
        steps = sorted({x for pts in seeds.values() for x, _ in pts})
        steps = [s for s in steps if all(any(x == s for x, _ in p) for p in seeds.values())]
        mean = [np.mean([y for pts in seeds.values() for x, y in pts if x == s]) for s in steps]
        ax.plot(steps, mean, color=color, lw=2, label=f"{m}, {d} distractor dims "
                f"({len(seeds)} seeds)")
        if (m, d) in finals:
            xs, ys = zip(*finals[(m, d)], strict=True)
            ax.errorbar(max(xs) + 300 * i, np.mean(ys), yerr=np.std(ys, ddof=1)
                        if len(ys) > 1 else 0.0, color=color, marker="D", ms=6, capsize=3)
    if finals:
        ax.plot([], [], "kD", ms=5, label="final evaluation (mean ± sd over seeds)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
