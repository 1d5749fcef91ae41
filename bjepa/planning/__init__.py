"""Planning in the latent space of an action-conditioned world model.

See docs/method.md#sampling-based-mpc.

- :mod:`.latent` — the task as costs on latents (:class:`LatentTask`, :func:`fit_decoder`),
  batched rollouts (:func:`rollout`) and linearisation (:func:`linearize`).
- :mod:`.cem` — CEM planners: mean-trajectory (:class:`MeanTrajectoryPlanner`), risk-sensitive
  sampling (:class:`SamplingPlanner`), BJEPA goal-prior fusion (:class:`GoalPriorPlanner`),
  and the :class:`RandomPolicy` baseline.
- :mod:`.posterior` — risk-aware CEM over a BJEPA weight posterior's draws
  (:class:`PosteriorSamplingPlanner`).
- :mod:`.lqr` — Riccati solver and the LQR oracle on the true state (:class:`LQRController`).

Every policy has ``observes`` (``"observation"`` or ``"state"``), ``reset(n_envs)`` and
``act(x) -> u`` for a batch of environments.
"""

from bjepa.planning.cem import (
    RISKS,
    GoalPriorPlanner,
    MeanTrajectoryPlanner,
    RandomPolicy,
    SamplingPlanner,
    cvar,
    latent_lqr_gain,
)
from bjepa.planning.latent import (
    LatentTask,
    fit_decoder,
    gaussian_step,
    linearize,
    rollout,
    rollout_cost,
)
from bjepa.planning.lqr import (
    LQRController,
    lqr_gain,
    risk_aware_setpoint,
    solve_dare,
    stationary_covariance,
)
from bjepa.planning.posterior import PosteriorSamplingPlanner, WeightDraw

__all__ = [
    "RISKS",
    "GoalPriorPlanner",
    "LQRController",
    "LatentTask",
    "MeanTrajectoryPlanner",
    "PosteriorSamplingPlanner",
    "RandomPolicy",
    "SamplingPlanner",
    "cvar",
    "fit_decoder",
    "gaussian_step",
    "latent_lqr_gain",
    "linearize",
    "lqr_gain",
    "risk_aware_setpoint",
    "rollout",
    "rollout_cost",
    "solve_dare",
    "stationary_covariance",
    "WeightDraw",
]
