"""DeepMind Control tasks with distractors, for control with latent world models.

See docs/control.md. Needs the ``control`` extra (``pip install "bjepa[control]"``: dm-control
and ``mujoco<4``; dm-control 1.0.50 fails with MuJoCo 4).

- :class:`DMCEnv` — one dm-control task (``"cartpole-swingup"``, ``"reacher-easy"``,
  ``"cheetah-run"``, any ``domain-task`` of the suite) with *action repeat* (each agent action
  is held for ``action_repeat`` physics control steps and their rewards are summed) and
  ``distractor_dims`` extra observation dimensions of strength ``sigma``:

  - ``"tv"`` — a noisy TV: i.i.d. ``N(0, σ²)`` values, redrawn every agent step;
  - ``"ar1"`` — an AR(1) process ``d' = ρ d + √(1 − ρ²) σ ε`` (``ρ = 0.9``, stationary sd σ):
    temporally correlated, so partly predictable, and it carries no information about the task.

  Observations are the task's state vector (the suite's observation dict flattened in key
  order) followed by the distractor, as ``float32``.

  With ``pixels=True`` observations are instead the last ``frames`` grayscale renderings of
  ``size × size`` pixels (values in [0, 1], camera 0), flat in (frame, row, column) order as
  :mod:`bjepa.models.conv` expects, and the distractor is a *noise patch*: a centred square of
  ``distractor_dims`` pixels a side to which the noise (``"tv"`` or ``"ar1"``, strength σ)
  is added, redrawn every agent step on 4 × 4-pixel blocks. Rendering needs an OpenGL
  back-end: EGL or OSMesa (Debian: ``apt-get install libegl1 libgl1-mesa-dri libosmesa6``);
  :func:`pick_renderer` chooses one that works unless ``MUJOCO_GL`` is set.
- :class:`Episode` / :class:`ReplayBuffer` — the transitions collected so far, sampled as
  fixed-length sequences, saved and loaded as one ``.npz`` per episode (no pickle).

Example::

    env = DMCEnv("cartpole-swingup", action_repeat=8, distractor_dims=20, seed=0)
    obs = env.reset()
    obs, reward, done = env.step(np.zeros(env.action_dim))
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bjepa._io import atomic_write
from bjepa._validation import (
    check_choice,
    check_nonnegative,
    check_nonnegative_int,
    check_positive_int,
)

__all__ = ["DISTRACTORS", "DMCEnv", "Episode", "ReplayBuffer", "load_suite"]

#: kinds of distractor dimensions
DISTRACTORS = ("tv", "ar1")
#: the AR(1) distractor's autocorrelation per agent step
AR1_RHO = 0.9


def pick_renderer() -> str:
    """The OpenGL back-end for dm-control's rendering: ``MUJOCO_GL`` when set, else the first
    of EGL and OSMesa that renders a frame (tried in a subprocess, before dm-control is
    imported here). Raises a clear error when none works."""
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    probe = ("from dm_control import suite; e = suite.load('cartpole', 'swingup'); e.reset(); "
             "assert e.physics.render(16, 16, camera_id=0).shape == (16, 16, 3)")
    for backend in ("egl", "osmesa"):
        env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                              timeout=300)
        if done.returncode == 0:
            os.environ["MUJOCO_GL"] = backend
            return backend
    raise RuntimeError(
        "pixel observations need an OpenGL back-end and neither EGL nor OSMesa rendered a "
        "frame; install Mesa (Debian/Ubuntu: apt-get install libegl1 libgl1-mesa-dri "
        "libosmesa6) or set MUJOCO_GL to a back-end that works here")


def load_suite(*, pixels: bool = False) -> Any:
    """dm-control's ``suite`` module, with a clear message when the extra is missing.

    :param pixels: choose a rendering back-end first (:func:`pick_renderer`)."""
    if pixels and "dm_control" not in sys.modules:
        pick_renderer()
    # state observations never render; keep dm-control from probing for a display
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import mujoco
        from dm_control import suite
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "bjepa's control experiments need dm-control and MuJoCo < 4: "
            "pip install 'bjepa[control]' (or pip install dm-control 'mujoco<4')") from err
    major = int(mujoco.__version__.split(".")[0])
    if major >= 4:  # pragma: no cover - depends on the environment
        raise ImportError(f"dm-control needs MuJoCo < 4, found mujoco {mujoco.__version__}: "
                          "pip install 'mujoco<4'")
    return suite


def split_task(task: str) -> tuple[str, str]:
    """``"cartpole-swingup"`` → ``("cartpole", "swingup")``; checked against the suite."""
    if not isinstance(task, str) or "-" not in task:
        raise ValueError(f"task must be 'domain-task' such as 'cartpole-swingup', got {task!r}")
    domain, name = task.split("-", 1)
    suite = load_suite()
    known = {f"{d}-{t}" for d, t in suite.ALL_TASKS}
    if (domain, name) not in suite.ALL_TASKS:
        close = sorted(k for k in known if k.startswith(domain))[:8]
        raise ValueError(f"task {task!r} is not in the dm-control suite"
                         + (f"; tasks of {domain!r}: {close}" if close else
                            "; e.g. 'cartpole-swingup', 'reacher-easy', 'cheetah-run'"))
    return domain, name


class DMCEnv:
    """A dm-control task with action repeat and distractor dimensions (module docstring).

    :param task: ``"domain-task"``, e.g. ``"cartpole-swingup"``.
    :param action_repeat: physics control steps per agent action (rewards summed).
    :param distractor_dims: extra observation dimensions (0: none).
    :param distractor: ``"tv"`` (i.i.d. noise) or ``"ar1"`` (AR(1), ρ = 0.9).
    :param sigma: the distractor's standard deviation.
    :param seed: seeds the task's initial states and the distractor.
    :param pixels: observe rendered frames instead of the state (``distractor_dims`` is then
        the side of the noise patch in pixels).
    :param size: frame side in pixels (``pixels=True``).
    :param frames: frames per observation (``pixels=True``; 2 makes velocity observable).
    """

    def __init__(self, task: str = "cartpole-swingup", *, action_repeat: int = 8,
                 distractor_dims: int = 0, distractor: str = "tv", sigma: float = 1.0,
                 seed: int = 0, pixels: bool = False, size: int = 64,
                 frames: int = 2) -> None:
        self.task = task
        self.action_repeat = check_positive_int("action_repeat", action_repeat)
        self.distractor_dims = check_nonnegative_int("distractor_dims", distractor_dims)
        self.distractor = check_choice("distractor", distractor, DISTRACTORS)
        self.sigma = check_nonnegative("sigma", sigma)
        check_nonnegative_int("seed", seed)
        self.pixels = bool(pixels)
        self.size = check_positive_int("size", size)
        self.frames = check_positive_int("frames", frames)
        if self.pixels and self.distractor_dims > self.size:
            raise ValueError(f"distractor_dims is the noise patch's side with pixels=True and "
                             f"must be <= size ({size}), got {distractor_dims}")
        if self.pixels and self.size < 16:
            raise ValueError(f"size must be >= 16 pixels for the conv encoders, got {size}")
        domain, name = split_task(task)
        self._env = load_suite(pixels=self.pixels).load(domain, name,
                                                        task_kwargs={"random": seed})
        spec = self._env.action_spec()
        self.action_dim = int(np.prod(spec.shape))
        self.action_low = np.broadcast_to(spec.minimum, spec.shape).astype(np.float32).ravel()
        self.action_high = np.broadcast_to(spec.maximum, spec.shape).astype(np.float32).ravel()
        self.state_dim = sum(int(np.prod(v.shape)) for v in
                             self._env.observation_spec().values())
        self._rng = np.random.default_rng([seed, 0xD157])
        if self.pixels:
            self.obs_dim = self.frames * self.size * self.size
            side = -(-self.distractor_dims // 4)  # noise blocks of 4 × 4 pixels
            self._d = np.zeros((side, side))
            self._stack: list[np.ndarray] = []
        else:
            self.obs_dim = self.state_dim + self.distractor_dims
            self._d = np.zeros(self.distractor_dims)

    @property
    def episode_steps(self) -> int:
        """Agent steps per episode (the suite's 1 000 control steps / action repeat)."""
        limit = self._env._step_limit  # noqa: SLF001 - dm-control keeps it private
        return int(np.ceil(float(limit) / self.action_repeat))

    def render(self) -> np.ndarray:
        """The current grayscale frame (size, size) in [0, 1], noise patch included."""
        rgb = self._env.physics.render(self.size, self.size, camera_id=0)
        frame = rgb.astype(np.float32).mean(-1) / 255.0
        if self.distractor_dims and self.sigma:
            p = self.distractor_dims
            lo = (self.size - p) // 2
            noise = np.kron(self._d, np.ones((4, 4)))[:p, :p]
            frame[lo:lo + p, lo:lo + p] += noise.astype(np.float32)
        return frame

    def _obs(self, time_step: Any, fresh: bool = False) -> np.ndarray:
        if self.pixels:
            frame = self.render()
            self._stack = [frame] * self.frames if fresh else [*self._stack[1:], frame]
            return np.stack(self._stack).reshape(-1)
        state = np.concatenate([np.asarray(v, dtype=np.float64).ravel()
                                for v in time_step.observation.values()])
        if self.distractor_dims:
            state = np.concatenate([state, self._d])
        return state.astype(np.float32)

    def _advance_distractor(self, fresh: bool = False) -> None:
        if not self.distractor_dims:
            return
        eps = self._rng.standard_normal(self._d.shape)
        if self.distractor == "tv" or fresh:
            self._d = self.sigma * eps
        else:
            self._d = AR1_RHO * self._d + np.sqrt(1 - AR1_RHO ** 2) * self.sigma * eps

    def reset(self) -> np.ndarray:
        """Start an episode; the first observation."""
        self._advance_distractor(fresh=True)
        return self._obs(self._env.reset(), fresh=True)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """Hold ``action`` (clipped to the action bounds) for ``action_repeat`` control steps:
        ``(observation, summed reward, episode over)``."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.action_dim,) or not np.isfinite(a).all():
            raise ValueError(f"action must be {self.action_dim} finite values, got shape "
                             f"{a.shape}")
        a = np.clip(a, self.action_low, self.action_high)
        reward, ts = 0.0, None
        for _ in range(self.action_repeat):
            ts = self._env.step(a)
            reward += float(ts.reward or 0.0)
            if ts.last():
                break
        self._advance_distractor()
        return self._obs(ts), reward, bool(ts.last())

    # -- state of the random streams (for resume) -------------------------------------------
    def rng_state(self) -> dict[str, Any]:
        """The task's and the distractor's RNG states as plain values (JSON-able)."""
        kind, keys, pos, has_gauss, cached = self._env.task.random.get_state()
        return {"task": [str(kind), keys.tolist(), int(pos), int(has_gauss), float(cached)],
                "distractor": self._rng.bit_generator.state}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`rng_state`."""
        kind, keys, pos, has_gauss, cached = state["task"]
        self._env.task.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos,
                                         has_gauss, cached))
        self._rng.bit_generator.state = state["distractor"]


@dataclass
class Episode:
    """One episode: ``obs`` (T + 1, D), ``actions`` (T, A), ``rewards`` (T,)."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray

    def __post_init__(self) -> None:
        t = self.actions.shape[0]
        if self.obs.shape[0] != t + 1 or self.rewards.shape != (t,):
            raise ValueError(f"an episode needs T + 1 observations and T rewards for T actions, "
                             f"got {self.obs.shape[0]}, {self.rewards.shape} and {t}")

    @property
    def ret(self) -> float:
        """The episode's return (sum of rewards)."""
        return float(self.rewards.sum())


@dataclass
class ReplayBuffer:
    """Every episode collected, sampled as sequences of ``length`` transitions."""

    episodes: list[Episode] = field(default_factory=list)
    #: episodes already written by :meth:`save` (or read by :meth:`load`)
    _saved: int = field(default=0, repr=False, compare=False)

    def add(self, episode: Episode) -> None:
        self.episodes.append(episode)

    def __len__(self) -> int:
        return sum(e.actions.shape[0] for e in self.episodes)

    def sequences(self, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every window of ``length`` transitions that stays inside one episode:
        ``obs`` (N, length + 1, D), ``actions`` (N, length, A), ``rewards`` (N, length)."""
        check_positive_int("length", length)
        obs, act, rew = [], [], []
        for e in self.episodes:
            n = e.actions.shape[0] - length + 1
            if n <= 0:
                continue
            idx = np.arange(n)[:, None] + np.arange(length + 1)[None]
            obs.append(e.obs[idx])
            act.append(e.actions[idx[:, :-1]])
            rew.append(e.rewards[idx[:, :-1]])
        if not obs:
            raise ValueError(f"no episode has {length} transitions yet")
        return np.concatenate(obs), np.concatenate(act), np.concatenate(rew)

    def save(self, folder: str | Path) -> Path:
        """Write the episodes this buffer has not written yet to ``folder``, one
        ``episode-NNNNN.npz`` each (atomically, no pickle): episodes never change once added,
        so saving after every episode costs one episode's write, not the whole buffer's."""
        folder = Path(folder)
        for i in range(self._saved, len(self.episodes)):
            e = self.episodes[i]

            def write(tmp: Path, e: Episode = e) -> None:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, obs=e.obs, actions=e.actions, rewards=e.rewards)

            atomic_write(folder / f"episode-{i:05d}.npz", write)
        self._saved = len(self.episodes)
        return folder

    @classmethod
    def load(cls, folder: str | Path, episodes: int | None = None) -> ReplayBuffer:
        """Read the first ``episodes`` (default: all) episodes written by :meth:`save`
        (``allow_pickle=False``)."""
        folder = Path(folder)
        n = len(list(folder.glob("episode-*.npz"))) if episodes is None else episodes
        out = []
        for i in range(n):
            path = folder / f"episode-{i:05d}.npz"
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: the replay buffer in {folder} "
                                        f"holds fewer than {n} episodes")
            with np.load(path, allow_pickle=False) as f:
                out.append(Episode(f["obs"], f["actions"], f["rewards"]))
        buffer = cls(out)
        buffer._saved = n
        return buffer
