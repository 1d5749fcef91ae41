"""Risk-aware planning over a BJEPA weight posterior (docs/bayes.md#planning-with-little-data).

:class:`~bjepa.planning.SamplingPlanner` scores a candidate action sequence by a risk measure
of the costs of sampled latent rollouts under *one* predictor — for an
:class:`~bjepa.models.ActionBJEPA` with a weight prior, the posterior median. Its spread is
the aleatoric noise only. :class:`PosteriorSamplingPlanner` spreads the same sampled rollouts
over ``M`` draws of the predictor's weights from the posterior: rollout ``j`` of a candidate
runs under weight draw ``j mod M``, so the risk measure (CVaR by default) sees the model's
uncertainty about its own dynamics as well as the noise — where the data were few, the
planner keeps the margin that both call for.

The weight draws are taken once per planning call (common to every candidate, like the noise),
so the objective is one deterministic function per call.

Example::

    planner = PosteriorSamplingPlanner(bjepa_model, task, num_draws=8, num_samples=16)
    planner.reset(n_envs=20)
    u = planner.act(frames)
"""

from __future__ import annotations

from typing import Any

import torch
from pyro import poutine
from torch.distributions import Distribution

from bjepa._validation import check_positive_int
from bjepa.planning.cem import SamplingPlanner, cvar
from bjepa.planning.latent import LatentTask, rollout_cost

__all__ = ["PosteriorSamplingPlanner", "WeightDraw"]


class WeightDraw:
    """An action-conditioned BJEPA with its predictor weights fixed at one posterior draw:
    ``transition(z, u)`` is the predictive under those weights (what the rollouts call).

    :param model: an :class:`~bjepa.models.ActionBJEPA` with a weight prior.
    :param values: ``{weight site name: value}``, e.g. one row of ``model.weight_samples``.
    """

    def __init__(self, model: Any, values: dict[str, torch.Tensor]) -> None:
        missing = set(model.weight_site_names) - set(values)
        if missing:
            raise ValueError(f"values must hold every weight site; missing {sorted(missing)}")
        self.model = model
        self.values = values
        self.action_dim = model.action_dim
        self.latent_dim = model.latent_dim

    def transition(self, z: torch.Tensor, u: torch.Tensor) -> Distribution:
        with poutine.block(), poutine.condition(data=self.values):
            return self.model._conditioned_transition(z, u)


class PosteriorSamplingPlanner(SamplingPlanner):
    """CEM on a risk measure of sampled latent rollouts spread over weight-posterior draws.

    :param model: an :class:`~bjepa.models.ActionBJEPA` with a weight prior
        (``weight_prior="normal"`` etc.).
    :param task: the :class:`~bjepa.planning.LatentTask`.
    :param num_draws: weight draws ``M`` per planning call (``num_samples`` must be a multiple
        of it: each draw carries ``num_samples / M`` noise paths).

    Other arguments are those of :class:`~bjepa.planning.SamplingPlanner`; the latent LQR
    feedback of the sampled paths is that of the posterior-median predictor.
    """

    def __init__(self, model: Any, task: LatentTask, *, num_draws: int = 8,
                 **kwargs: Any) -> None:
        if getattr(model, "weight_guide", None) is None or \
                not hasattr(model, "_conditioned_transition"):
            raise TypeError("model must be an ActionBJEPA with a weight prior (e.g. "
                            "ActionBJEPA(..., weight_prior='normal')); for a point-estimated "
                            "predictor use SamplingPlanner")
        super().__init__(model, task, **kwargs)
        self.num_draws = check_positive_int("num_draws", num_draws)
        if self.num_samples % self.num_draws:
            raise ValueError(f"num_samples ({self.num_samples}) must be a multiple of "
                             f"num_draws ({self.num_draws})")
        self._draws: list[WeightDraw] = []

    def _prepare(self, z0: torch.Tensor) -> None:
        super()._prepare(z0)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self._gen,
                                 device=self.device).item())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            draws = self.model.weight_samples(self.num_draws)
        self._draws = [WeightDraw(self.model, {k: v[m] for k, v in draws.items()})
                       for m in range(self.num_draws)]

    def _score(self, z0: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        costs = torch.cat([
            rollout_cost(draw, self.task, z0[:, None, None], cand.unsqueeze(2),
                         noise=self._noise[:, :, m::self.num_draws], feedback=self.feedback,
                         expected_violations=self.expected_violations)
            for m, draw in enumerate(self._draws)], dim=-1)  # (E, N, S)
        if self.risk == "mean":
            return costs.mean(-1)
        if self.risk == "worst":
            return costs.amax(-1)
        return cvar(costs, self.alpha, dim=-1)
