"""Sampling-based model-predictive control in latent space (docs/method.md#sampling-based-mpc).

Every planner here optimises an action sequence ``u_{0:H}`` with the cross-entropy method
(CEM): draw ``N`` candidate sequences from a diagonal Gaussian, score them, refit the Gaussian
to the ``K`` best (the elites), repeat; apply the first action of the final mean; warm-start
the next step with the shifted plan. Scoring is batched: per horizon step, one transition call
covers all environments × candidates × samples (plus one for the candidates' mean paths when
sampled rollouts use feedback). The planners differ only in how a candidate is
scored and where the search starts:

- :class:`MeanTrajectoryPlanner` — (a) the cost of the *mean* latent rollout (certainty
  equivalence: the predictor's variance is ignored).
- :class:`SamplingPlanner` — (b) a risk measure (CVaR by default) of the costs of ``S``
  *sampled* latent rollouts per candidate, with common random numbers across candidates. By
  default the sampled paths follow the plan under a latent LQR feedback (see
  :func:`~bjepa.planning.latent.rollout`), so their spread is that of a controller that keeps
  re-planning rather than of a frozen open-loop sequence.
- :class:`GoalPriorPlanner` — (c) the sampling planner whose search starts from a proposal
  built by BJEPA goal-prior fusion (docs/method.md#fusion-at-inference): along the
  horizon, the predictive
  ``p(z_{k+1} | z_k, u_k)`` is multiplied by the goal prior ``N(z_goal, σ_goal² I)``
  (:func:`bjepa.priors.fuse`, a Kalman update in latent space); the action that moves the
  predictive mean onto the fused mean is the proposal. σ_goal sets how hard each step pulls:
  the fused mean moves a fraction ``σ_p² / (σ_p² + σ_goal²)`` of the way to the goal.

Each planner reads (standardised) observations through ``model.encode`` only.

Example::

    planner = SamplingPlanner(model, task, horizon=10, num_samples=32, alpha=0.2)
    planner.reset(n_envs=50)
    u = planner.act(frames)          # (50, action_dim)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from bjepa._validation import (
    check_choice,
    check_nonnegative_int,
    check_positive,
    check_positive_int,
    check_tensor,
    check_unit_interval,
)
from bjepa.planning.latent import LatentTask, linearize, rollout_cost
from bjepa.planning.lqr import lqr_gain
from bjepa.priors import GoalPrior, fuse

__all__ = [
    "RISKS",
    "GoalPriorPlanner",
    "MeanTrajectoryPlanner",
    "RandomPolicy",
    "SamplingPlanner",
    "cvar",
    "latent_lqr_gain",
]

logger = logging.getLogger(__name__)

RISKS = ("cvar", "mean", "worst")


def cvar(costs: torch.Tensor, alpha: float, dim: int = -1) -> torch.Tensor:
    """Conditional value at risk: the mean of the worst ``⌈α n⌉`` of ``n`` costs along
    ``dim`` (``α = 1``: the mean; small ``α``: the worst cases)."""
    check_unit_interval("alpha", alpha)
    if alpha == 0:
        raise ValueError("alpha must be > 0")
    n = costs.shape[dim]
    k = max(1, math.ceil(alpha * n - 1e-9))
    return costs.topk(k, dim=dim).values.mean(dim)


class _CEMPlanner:
    """Shared CEM machinery; subclasses define :meth:`_score` (and may seed the search)."""

    #: what :meth:`act` reads: (standardised) observations
    observes = "observation"

    def __init__(self, model: Any, task: LatentTask, *, horizon: int = 10,
                 num_candidates: int = 256, num_elites: int = 32, iterations: int = 4,
                 cold_iterations: int | None = None, init_std: float = 1.0,
                 warm_std: float | None = None, min_std: float = 0.05,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        if not hasattr(model, "transition") or not hasattr(model, "action_dim"):
            raise TypeError(f"model must be an action-conditioned world model with "
                            f"transition(z, u) (e.g. ActionVJEPA), got {type(model).__name__}")
        if not isinstance(task, LatentTask):
            raise TypeError(f"task must be a LatentTask, got {type(task).__name__}")
        if task.latent_dim != model.latent_dim:
            raise ValueError(f"task decodes {task.latent_dim}-d latents but the model's "
                             f"latent_dim is {model.latent_dim}")
        self.horizon = check_positive_int("horizon", horizon)
        self.num_candidates = check_positive_int("num_candidates", num_candidates)
        self.num_elites = check_positive_int("num_elites", num_elites)
        if self.num_elites > self.num_candidates:
            raise ValueError(f"num_elites ({num_elites}) must be <= num_candidates "
                             f"({num_candidates})")
        self.iterations = check_positive_int("iterations", iterations)
        self.cold_iterations = check_positive_int(
            "cold_iterations", 3 * iterations if cold_iterations is None else cold_iterations)
        self.init_std = check_positive("init_std", init_std)
        self.warm_std = 0.1 * self.init_std if warm_std is None else check_positive(
            "warm_std", warm_std)
        self.min_std = check_positive("min_std", min_std)
        check_nonnegative_int("seed", seed)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.task = task.to(self.device)
        self.action_dim = model.action_dim
        self.latent_dim = model.latent_dim
        self._gen = torch.Generator(device=self.device).manual_seed(seed)
        self._warm: torch.Tensor | None = None

    # -- episode interface --------------------------------------------------------------------
    def reset(self, n_envs: int) -> None:
        """Forget the warm start; the next :meth:`act` plans for ``n_envs`` environments."""
        check_positive_int("n_envs", n_envs)
        self._warm = torch.zeros(n_envs, self.horizon, self.action_dim, device=self.device)
        self._cold = True

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """First actions ``(E, m)`` of the plans for observations ``obs (E, D_x)`` (in the
        model's input space), returned on ``obs``' device."""
        check_tensor("obs", obs, ndim=2)
        with torch.no_grad():
            z0 = self.model.encode(obs.to(self.device, torch.float32))
            if self._warm is None or self._warm.shape[0] != z0.shape[0]:
                self.reset(z0.shape[0])
            plan = self.plan(z0, self._warm, cold=self._cold)
            self._cold = False
            self._warm = torch.cat([plan[:, 1:], plan[:, -1:]], dim=1)
        return plan[:, 0].to(obs.device)

    # -- CEM ------------------------------------------------------------------------------------
    def plan(self, z0: torch.Tensor, warm: torch.Tensor | None = None, *,
             cold: bool | None = None) -> torch.Tensor:
        """The best action sequences ``(E, H, m)`` found for latents ``z0 (E, D_z)``, starting
        the search at ``warm (E, H, m)`` (zeros if ``None``).

        Every candidate of a call is scored on the same random numbers, so the objective is one
        deterministic function per call and the lowest-scoring candidate over all iterations
        is returned (rather than the elites' mean, which carries the sampling noise of the
        search into the actions).

        :param cold: whether ``warm`` is a real previous plan (``False``: search around it
            with ``warm_std`` for ``iterations``) or not (``True``: ``init_std`` for
            ``cold_iterations``); default: cold when ``warm`` is ``None``.
        """
        check_tensor("z0", z0, ndim=2, last_dim=self.latent_dim)
        cold = warm is None if cold is None else bool(cold)
        iterations = self.cold_iterations if cold else self.iterations
        E, H, m = z0.shape[0], self.horizon, self.action_dim
        if warm is None:
            warm = torch.zeros(E, H, m, device=self.device)
        z0 = z0.to(self.device)
        with torch.no_grad():
            mean, fixed = self._start(z0, warm, cold)
            std = torch.full_like(mean, self.init_std if cold else self.warm_std)
            self._prepare(z0)
            best = mean
            best_score = torch.full((E,), math.inf, device=self.device)
            for _ in range(iterations):
                eps = torch.randn(E, self.num_candidates, H, m, generator=self._gen,
                                  device=self.device)
                cand = mean.unsqueeze(1) + std.unsqueeze(1) * eps
                keep = [best, mean, *fixed][: self.num_candidates]
                cand[:, : len(keep)] = torch.stack(keep, dim=1)
                scores = self._score(z0, cand)
                idx = scores.topk(self.num_elites, dim=1, largest=False).indices
                elites = cand.gather(1, idx[..., None, None].expand(-1, -1, H, m))
                top = scores.gather(1, idx[:, :1]).squeeze(1)
                better = top < best_score
                best = torch.where(better[:, None, None], elites[:, 0], best)
                best_score = torch.where(better, top, best_score)
                mean = elites.mean(1)
                std = elites.std(1).clamp_min(self.min_std) if self.num_elites > 1 \
                    else torch.full_like(mean, self.min_std)
        return best

    def _start(self, z0: torch.Tensor, warm: torch.Tensor, cold: bool
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The search's initial mean and extra candidates always scored."""
        return warm, []

    def _prepare(self, z0: torch.Tensor) -> None:
        """Per-call set-up (e.g. common random numbers)."""

    def _score(self, z0: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MeanTrajectoryPlanner(_CEMPlanner):
    """(a) CEM on the cost of the predictive-mean rollout ``z_{k+1} = E[z' | z_k, u_k]``.

    Arguments are those of :class:`SamplingPlanner` without the sampling ones.
    """

    def _score(self, z0: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        return rollout_cost(self.model, self.task, z0.unsqueeze(1), cand)


class SamplingPlanner(_CEMPlanner):
    """(b) CEM on a risk measure of the costs of sampled latent rollouts.

    :param model: an action-conditioned world model (``transition(z, u)``, ``encode``).
    :param task: the :class:`~bjepa.planning.latent.LatentTask` (costs on latents).
    :param horizon: planning horizon ``H``.
    :param num_candidates: action sequences per CEM iteration ``N``.
    :param num_elites: elites ``K`` refitted per iteration.
    :param iterations: CEM iterations per step.
    :param cold_iterations: CEM iterations for the first step after ``reset()``, when there
        is no previous plan to start from (default ``3 × iterations``).
    :param num_samples: sampled rollouts per candidate ``S`` (shared noise across candidates).
    :param risk: ``"cvar"`` (default), ``"mean"`` (expected cost) or ``"worst"``.
    :param alpha: CVaR level α in (0, 1] (mean of the worst α-fraction of the samples).
    :param feedback: ``"lqr"`` (default): sampled paths follow the plan under the LQR gain of
        the model's linearisation at the goal latent (with the task's metric); ``None``:
        open-loop rollouts; or a gain ``K (m, D_z)``.
    :param expected_violations: score a sampled path's unsafe steps by their probability under
        each step's Gaussian predictive (default; see
        :func:`~bjepa.planning.rollout_cost`) rather than by the indicator of the drawn
        latent.
    :param init_std: initial CEM standard deviation of every action (cold start).
    :param warm_std: initial CEM standard deviation when the search starts from the previous
        plan (default ``init_std / 10``): the shifted plan is already close, and a wide search
        around it would put its own sampling noise into the actions.
    :param min_std: floor of the CEM standard deviation.
    :param device: where planning runs.
    :param seed: seeds candidate and rollout noise.
    """

    def __init__(self, model: Any, task: LatentTask, *, horizon: int = 10,
                 num_candidates: int = 256, num_elites: int = 32, iterations: int = 4,
                 cold_iterations: int | None = None, num_samples: int = 32,
                 risk: str = "cvar", alpha: float = 0.2,
                 feedback: str | torch.Tensor | None = "lqr",
                 expected_violations: bool = True, init_std: float = 1.0,
                 warm_std: float | None = None, min_std: float = 0.05,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        super().__init__(model, task, horizon=horizon, num_candidates=num_candidates,
                         num_elites=num_elites, iterations=iterations,
                         cold_iterations=cold_iterations, init_std=init_std,
                         warm_std=warm_std, min_std=min_std, device=device, seed=seed)
        self.num_samples = check_positive_int("num_samples", num_samples)
        self.risk = check_choice("risk", risk, RISKS)
        self.alpha = check_unit_interval("alpha", alpha)
        if self.alpha == 0:
            raise ValueError("alpha must be > 0")
        self.expected_violations = bool(expected_violations)
        self._noise: torch.Tensor | None = None
        self.feedback = self._feedback(feedback)

    def _feedback(self, feedback: str | torch.Tensor | None) -> torch.Tensor | None:
        if feedback is None:
            return None
        if isinstance(feedback, torch.Tensor):
            check_tensor("feedback", feedback, ndim=2)
            if feedback.shape != (self.action_dim, self.latent_dim):
                raise ValueError(f"feedback must have shape ({self.action_dim}, "
                                 f"{self.latent_dim}), got {tuple(feedback.shape)}")
            return feedback.to(self.device, torch.float32)
        check_choice("feedback", feedback, ["lqr"])
        return latent_lqr_gain(self.model, self.task)

    def _prepare(self, z0: torch.Tensor) -> None:
        self._noise = torch.randn(z0.shape[0], 1, self.num_samples, self.horizon,
                                  self.latent_dim, generator=self._gen, device=self.device)

    def _score(self, z0: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        costs = rollout_cost(self.model, self.task, z0[:, None, None], cand.unsqueeze(2),
                             noise=self._noise, feedback=self.feedback,
                             expected_violations=self.expected_violations)  # (E, N, S)
        if self.risk == "mean":
            return costs.mean(-1)
        if self.risk == "worst":
            return costs.amax(-1)
        return cvar(costs, self.alpha, dim=-1)


class GoalPriorPlanner(SamplingPlanner):
    """(c) The sampling planner started from a BJEPA goal-prior fusion proposal.

    :param goal_latent: ``z_goal`` ``(D_z,)``, e.g. ``model.encode_target(x_goal)``.
    :param goal_scale: σ_goal > 0 of the goal prior ``N(z_goal, σ_goal² I)``.

    Other arguments are those of :class:`SamplingPlanner`. On a cold start (no previous plan)
    the search is centred on the proposal; afterwards it is centred on the previous plan and
    the proposal is one more candidate. Both stay among the scored candidates, and the best
    scored candidate is applied, so the proposal biases the search without overriding the
    risk-sensitive objective.
    """

    def __init__(self, model: Any, task: LatentTask, goal_latent: torch.Tensor, *,
                 goal_scale: float = 0.1, **kwargs: Any) -> None:
        super().__init__(model, task, **kwargs)
        check_tensor("goal_latent", goal_latent, ndim=1, last_dim=self.latent_dim)
        self.goal_scale = check_positive("goal_scale", goal_scale)
        self.goal_prior = GoalPrior(goal_latent.to(self.device, torch.float32),
                                    scale=goal_scale).to(self.device)
        z_ref = self.task.goal_latent()
        _, B_z, _ = linearize(self.model, z_ref, torch.zeros(self.action_dim,
                                                              device=self.device))
        self._B_pinv = torch.linalg.pinv(B_z.double()).float()

    def proposal(self, z0: torch.Tensor, nominal: torch.Tensor) -> torch.Tensor:
        """Actions ``(E, H, m)`` steering the mean rollout from ``z0`` onto the goal-fused
        means: at each step ``u_k = ū_k + B_z⁺ (E_fused[z'] − E[z' | z_k, ū_k])``."""
        z, out = z0, []
        for k in range(self.horizon):
            u_nom = nominal[:, k]
            like = self.model.transition(z, u_nom)
            fused = fuse(like, self.goal_prior)
            u = u_nom + (fused.mean - like.mean) @ self._B_pinv.T
            z = self.model.transition(z, u).mean
            out.append(u)
        return torch.stack(out, dim=1)

    def _start(self, z0: torch.Tensor, warm: torch.Tensor, cold: bool
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        proposal = self.proposal(z0, warm)
        return (proposal, [warm]) if cold else (warm, [proposal])


class RandomPolicy:
    """Baseline: i.i.d. ``N(0, scale² I)`` actions, whatever the observation."""

    observes = "observation"

    def __init__(self, action_dim: int, *, scale: float = 1.0,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.action_dim = check_positive_int("action_dim", action_dim)
        self.scale = check_positive("scale", scale)
        self.device = torch.device(device)
        self._gen = torch.Generator(device=self.device).manual_seed(
            check_nonnegative_int("seed", seed))

    def reset(self, n_envs: int) -> None:
        check_positive_int("n_envs", n_envs)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        check_tensor("obs", obs, ndim=2)
        u = self.scale * torch.randn(obs.shape[0], self.action_dim, generator=self._gen,
                                     device=self.device)
        return u.to(obs.device)


def latent_lqr_gain(model: Any, task: LatentTask, *, ridge: float = 1e-6
                    ) -> torch.Tensor | None:
    """LQR gain ``K (m, D_z)`` of the model's mean dynamics linearised at the task's goal
    latent, with state cost ``Wᵀ W`` (the decoder metric) and the task's control cost; ``None``
    (with a warning) if the Riccati iteration fails."""
    dev = task.W.device
    z_ref = task.goal_latent().to(dev)
    A_z, B_z, _ = linearize(model, z_ref, torch.zeros(model.action_dim, device=dev))
    Q = task.metric().double()
    Q = Q + ridge * torch.trace(Q) * torch.eye(Q.shape[0], dtype=Q.dtype, device=Q.device)
    R = task.R.double() if task.R is not None else task._r * torch.eye(
        model.action_dim, dtype=torch.float64, device=dev)
    try:
        K = lqr_gain(A_z.double().cpu(), B_z.double().cpu(), Q.cpu(), R.cpu())
    except ValueError as err:
        logger.warning("no latent LQR feedback (%s); sampled rollouts run open loop", err)
        return None
    return K.float().to(dev)
