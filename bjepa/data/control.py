"""A linear control task seen through the Noisy TV: reach a goal next to a cliff.

See docs/method.md#sampling-based-mpc.

The true system (state ``s``, action ``u``, distractor ``d``)::

    s_{t+1} = A s_t + B u_t + w,      A = 0.95 · orthogonal,  w ~ N(0, σ_w² I)
    d_{t+1} = 0.9 d_t + v,                                    v ~ N(0, 0.3² I)
    x_t     = C s_t + σ D d_t + ε,                            ε ~ N(0, 0.01² I)

``A`` is a damped rotation (stable, slowly turning), ``B = b · orthogonal`` (fully actuated,
well conditioned). The distractor and the observation map follow the Noisy TV construction
(:mod:`bjepa.data.noisy_tv`: unit-norm Gaussian columns of ``D``) except that ``C`` has
*orthonormal* columns, so ``‖C (s − s')‖ = ‖s − s'‖``: the clean observation ``C s`` is an
isometric picture of the state, and the task's cost can be written on observations.

**The task.** From a start ``s_0`` on the safe side, reach the goal ``g`` and stay there for
``T`` steps. The goal lies a margin ``m`` inside a half-space boundary; the other side,
``{s : a·s > c}``, is unsafe (the cliff). The episode cost is::

    J = Σ_{t=1..T} [ ‖s_t − g‖² + λ · 1(a·s_t > c) ] + Σ_{t=0..T-1} r ‖u_t‖²

**Why variance matters.** With ``m`` about one process-noise standard deviation, a controller
that drives the *mean* state onto the goal steps over the edge on roughly one step in six; the
expected cost is lowest at a setpoint backed away from the edge by an amount that grows with
the noise level. A planner can only find that back-off if it knows the spread of the next
states — for a latent planner, the predictor's variance. (The noise is homoscedastic; the
risk lives in the cost, not in the noise.)

Planners see observations only. The task is published in observation coordinates
(:meth:`ControlParams.goal_observation`, :meth:`ControlParams.constraint_in_observation`);
the true state is used by the LQR oracle and by the evaluation.

Example::

    params = make_params(seed=0, sigma=4.0)
    data = explore(params, steps=4000, seed=0)
    env = ControlEnv(params, n_envs=50, seed=1)
    x = env.reset()
    x, info = env.step(torch.zeros(50, 2))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bjepa._validation import (
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_tensor,
)

__all__ = ["ControlEnv", "ControlParams", "Exploration", "explore", "make_params"]


@dataclass(frozen=True)
class ControlParams:
    """The true system and the task (state coordinates; see the module docstring)."""

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    D: np.ndarray
    sigma: float
    goal: np.ndarray
    normal: np.ndarray
    threshold: float
    process_noise: float = 0.1
    distractor_rho: float = 0.9
    distractor_noise: float = 0.3
    obs_noise: float = 0.01
    control_cost: float = 0.1
    violation_penalty: float = 1.0
    episode_steps: int = 30
    start_radius: tuple[float, float] = (1.5, 3.0)
    success_radius: float = 0.4

    @property
    def state_dim(self) -> int:
        return self.A.shape[0]

    @property
    def action_dim(self) -> int:
        return self.B.shape[1]

    @property
    def obs_dim(self) -> int:
        return self.C.shape[0]

    @property
    def Q(self) -> np.ndarray:  # noqa: N802 (the standard name)
        """State cost matrix (identity)."""
        return np.eye(self.state_dim)

    @property
    def R(self) -> np.ndarray:  # noqa: N802
        """Control cost matrix ``r I``."""
        return self.control_cost * np.eye(self.action_dim)

    @property
    def goal_margin(self) -> float:
        """Distance from the goal to the unsafe half-space."""
        return float(self.threshold - self.normal @ self.goal)

    def goal_observation(self) -> np.ndarray:
        """The clean (distractor-free, noise-free) raw observation of the goal, ``C g``."""
        return self.C @ self.goal

    def constraint_in_observation(self) -> tuple[np.ndarray, float]:
        """``(a_x, c)`` with ``a_x = C a``: unsafe iff ``a_x · (C s) > c`` (``C`` is an
        isometry, so this is the state constraint read off a clean observation)."""
        return self.C @ self.normal, self.threshold


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def make_params(seed: int = 0, sigma: float = 4.0, *, obs_dim: int = 20, state_dim: int = 2,
                distractor_dim: int = 4, damping: float = 0.95, actuation: float = 0.5,
                process_noise: float = 0.1, goal_margin: float = 0.1,
                goal_norm: float = 0.0, control_cost: float = 0.1,
                violation_penalty: float = 1.0, episode_steps: int = 30) -> ControlParams:
    """Draw one system and task.

    :param seed: seeds every matrix, the goal and the cliff's direction.
    :param sigma: distractor strength σ >= 0.
    :param damping: spectral radius of ``A`` (< 1: stable).
    :param actuation: singular value ``b`` of ``B = b · orthogonal``.
    :param process_noise: σ_w, standard deviation of the process noise per state dimension.
    :param goal_margin: distance ``m`` from the goal to the unsafe half-space.
    :param goal_norm: distance of the goal from the origin.
    :param control_cost: ``r`` in ``r ‖u‖²``.
    :param violation_penalty: λ, cost of one step in the unsafe region.
    :param episode_steps: ``T``.
    """
    check_nonnegative("sigma", sigma)
    for name, value in [("obs_dim", obs_dim), ("state_dim", state_dim),
                        ("distractor_dim", distractor_dim), ("episode_steps", episode_steps)]:
        check_positive_int(name, value)
    if obs_dim < state_dim + distractor_dim:
        raise ValueError(f"obs_dim must be >= state_dim + distractor_dim "
                         f"({state_dim + distractor_dim}), got {obs_dim}")
    if not 0.0 < damping < 1.0:
        raise ValueError(f"damping must lie in (0, 1) for a stable system, got {damping}")
    for name, value in [("actuation", actuation), ("process_noise", process_noise),
                        ("goal_margin", goal_margin), ("control_cost", control_cost)]:
        check_positive(name, value)
    check_nonnegative("goal_norm", goal_norm)
    check_nonnegative("violation_penalty", violation_penalty)
    rng = np.random.default_rng(seed)
    A = damping * _orthogonal(rng, state_dim)
    B = actuation * _orthogonal(rng, state_dim)
    C = np.linalg.qr(rng.standard_normal((obs_dim, state_dim)))[0]
    D = rng.standard_normal((obs_dim, distractor_dim))
    D /= np.linalg.norm(D, axis=0, keepdims=True)
    goal = rng.standard_normal(state_dim)
    goal *= goal_norm / max(np.linalg.norm(goal), 1e-12)
    normal = rng.standard_normal(state_dim)
    normal /= np.linalg.norm(normal)
    return ControlParams(A=A, B=B, C=C, D=D, sigma=float(sigma), goal=goal, normal=normal,
                         threshold=float(normal @ goal + goal_margin),
                         process_noise=float(process_noise), control_cost=float(control_cost),
                         violation_penalty=float(violation_penalty),
                         episode_steps=int(episode_steps))


def _render(params: ControlParams, s: torch.Tensor, d: torch.Tensor,
            gen: torch.Generator) -> torch.Tensor:
    C = torch.as_tensor(params.C, dtype=s.dtype)
    D = torch.as_tensor(params.D, dtype=s.dtype)
    eps = torch.randn(s.shape[0], params.obs_dim, generator=gen, dtype=s.dtype)
    return s @ C.T + params.sigma * d @ D.T + params.obs_noise * eps


@dataclass
class Exploration:
    """One exploration trajectory with random actions.

    ``obs[t]`` is the raw ``x_t`` (``steps + 1`` frames), ``actions[t]`` is ``u_t``,
    ``states[t]`` is ``s_t`` (evaluation only), ``mean``/``std`` standardise observations.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    states: torch.Tensor
    params: ControlParams
    mean: torch.Tensor
    std: torch.Tensor

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − mean) / std`` as float32 (the models' input space)."""
        return ((x - self.mean.to(x)) / self.std.to(x)).float()

    @property
    def frames(self) -> torch.Tensor:
        """Standardised observations, float32, ``(steps + 1, obs_dim)``."""
        return self.standardize(self.obs)

    @property
    def pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_t, u_t, x_{t+1})`` standardised, float32."""
        f = self.frames
        return f[:-1], self.actions.float(), f[1:]


def explore(params: ControlParams, steps: int = 4000, seed: int = 0, *,
            action_scale: float = 1.0, stats: Exploration | None = None) -> Exploration:
    """Run the system for ``steps`` steps with i.i.d. ``N(0, action_scale² I)`` actions from a
    stationary start; standardise with this trajectory's statistics, or with those of
    ``stats`` (e.g. the training trajectory for a test trajectory)."""
    check_positive_int("steps", steps)
    check_positive("action_scale", action_scale)
    gen = torch.Generator().manual_seed(int(seed))
    env = ControlEnv(params, 1, seed=int(seed) + 7919, start="stationary")
    x0 = env.reset()
    u = action_scale * torch.randn(steps, params.action_dim, generator=gen,
                                   dtype=torch.float64)
    obs, states = [x0[0]], [env.state[0]]
    for t in range(steps):
        x, _ = env.step(u[t:t + 1])
        obs.append(x[0])
        states.append(env.state[0])
    obs_t = torch.stack(obs)
    if stats is None:
        mean, std = obs_t.mean(0), obs_t.std(0) + 1e-8
    else:
        mean, std = stats.mean, stats.std
    return Exploration(obs_t, u, torch.stack(states), params, mean, std)


class ControlEnv:
    """``n_envs`` copies of the system stepped together (float64, CPU).

    :param params: the system and task.
    :param n_envs: number of parallel episodes.
    :param seed: seeds starts, process noise, distractor and observation noise. Two
        environments with the same seed face the same starts and the same noise sequence
        whatever the actions (paired comparisons of controllers).
    :param start: ``"task"`` (default): ``s_0 = g + ρ e`` with ``ρ`` uniform in
        ``params.start_radius`` and ``e`` a random unit vector on the safe side;
        ``"stationary"``: a draw from the uncontrolled system's stationary distribution
        under unit random actions (used for exploration).
    """

    def __init__(self, params: ControlParams, n_envs: int, *, seed: int = 0,
                 start: str = "task") -> None:
        self.params = params
        self.n_envs = check_positive_int("n_envs", n_envs)
        if start not in ("task", "stationary"):
            raise ValueError(f"unknown start {start!r}; choose 'task' or 'stationary'")
        self.start = start
        self.seed = int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)
        f = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        self.A, self.B = f(params.A), f(params.B)
        self.goal, self.normal = f(params.goal), f(params.normal)
        self.state = torch.zeros(n_envs, params.state_dim, dtype=torch.float64)
        self.distractor = torch.zeros(n_envs, params.D.shape[1], dtype=torch.float64)
        self.t = 0

    def reset(self) -> torch.Tensor:
        """New start states (and stationary distractors); returns raw observations
        ``(n_envs, obs_dim)``."""
        p, n, g = self.params, self.n_envs, self._gen
        if self.start == "task":
            e = torch.randn(n, p.state_dim, generator=g, dtype=torch.float64)
            e = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
            e = torch.where((e @ self.normal > 0).unsqueeze(1), -e, e)  # safe side
            lo, hi = p.start_radius
            rho = lo + (hi - lo) * torch.rand(n, 1, generator=g, dtype=torch.float64)
            self.state = self.goal + rho * e
        else:
            # stationary covariance of s under u ~ N(0, I): solve Σ = A Σ Aᵀ + B Bᵀ + σ_w² I
            W = self.B @ self.B.T + p.process_noise**2 * torch.eye(p.state_dim,
                                                                     dtype=torch.float64)
            L = torch.linalg.cholesky(_lyapunov(self.A, W))
            self.state = torch.randn(n, p.state_dim, generator=g, dtype=torch.float64) @ L.T
        stat = p.distractor_noise / np.sqrt(1.0 - p.distractor_rho**2)
        self.distractor = stat * torch.randn(n, p.D.shape[1], generator=g, dtype=torch.float64)
        self.t = 0
        return _render(p, self.state, self.distractor, g)

    def step(self, u: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Apply actions ``u`` ``(n_envs, action_dim)``; returns the raw next observations and
        ``info`` with the per-environment ``state_cost`` ``‖s_{t+1} − g‖²``,
        ``control_cost`` ``r ‖u_t‖²``, ``violation`` (``a·s_{t+1} > c``) and ``cost`` (their
        sum with the penalty λ)."""
        p, g = self.params, self._gen
        check_tensor("u", u, ndim=2)
        if u.shape != (self.n_envs, p.action_dim):
            raise ValueError(f"u must have shape ({self.n_envs}, {p.action_dim}), got "
                             f"{tuple(u.shape)}")
        u = u.detach().to(device="cpu", dtype=torch.float64)
        w = p.process_noise * torch.randn(self.n_envs, p.state_dim, generator=g,
                                          dtype=torch.float64)
        v = p.distractor_noise * torch.randn(self.n_envs, p.D.shape[1], generator=g,
                                             dtype=torch.float64)
        self.state = self.state @ self.A.T + u @ self.B.T + w
        self.distractor = p.distractor_rho * self.distractor + v
        self.t += 1
        info = self.evaluate(self.state, u)
        return _render(p, self.state, self.distractor, g), info

    def evaluate(self, s: torch.Tensor, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage costs of arriving in ``s`` after applying ``u`` (true state, float64)."""
        p = self.params
        state_cost = (s - self.goal).pow(2).sum(-1)
        control_cost = p.control_cost * u.pow(2).sum(-1)
        violation = s @ self.normal > p.threshold
        cost = state_cost + control_cost + p.violation_penalty * violation.double()
        return {"state_cost": state_cost, "control_cost": control_cost,
                "violation": violation, "cost": cost}


def _lyapunov(A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``Σ`` with ``Σ = A Σ Aᵀ + W`` (vectorised solve; small systems only)."""
    n = A.shape[0]
    lhs = torch.eye(n * n, dtype=A.dtype) - torch.kron(A, A)
    return torch.linalg.solve(lhs, W.reshape(-1)).reshape(n, n)
