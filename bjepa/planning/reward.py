"""Reward-maximising CEM in a world model's latent space (docs/control.md).

:class:`RewardCEM` plans for any model with ``start_latent(obs)`` and
``imagine(z0, actions, sample=..., generator=...)`` (the models of :mod:`bjepa.models.control`):
at each decision it encodes the observation, scores ``population`` action sequences of length
``horizon`` by their imagined return — averaged over ``particles`` draws from the predictive
distribution when ``sample=True`` — refits a Gaussian to the ``elites`` best for
``iterations`` rounds, and returns the first action of the final mean. The mean is shifted by
one step and reused as the next decision's start (warm start).

Example::

    planner = RewardCEM(model, action_dim=1, horizon=12)
    action = planner.act(obs)          # obs: (D_o,) NumPy or torch
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bjepa._validation import check_nonnegative, check_positive, check_positive_int

__all__ = ["RewardCEM"]


class RewardCEM:
    """Cross-entropy-method planner maximising imagined return (module docstring).

    :param model: a control world model (``start_latent``, ``imagine``).
    :param action_dim: action size; actions are planned in ``[-1, 1]``.
    :param horizon: planning horizon in agent steps.
    :param population: candidate action sequences per iteration.
    :param elites: candidates the Gaussian is refitted to.
    :param iterations: CEM rounds per decision.
    :param particles: predictive draws averaged per candidate (``sample=True``).
    :param sample: draw latents from the predictive distribution (``False``: its mean).
    :param min_std: floor on the proposal's standard deviation.
    :param explore: standard deviation of Gaussian noise added to the returned action
        (exploration while collecting data; 0 when evaluating).
    :param seed: seeds the planner's own random stream.
    """

    def __init__(self, model: Any, action_dim: int, *, horizon: int = 12,
                 population: int = 500, elites: int = 50, iterations: int = 6,
                 particles: int = 1, sample: bool = True, min_std: float = 0.05,
                 explore: float = 0.0, seed: int = 0) -> None:
        for name in ("start_latent", "imagine"):
            if not callable(getattr(model, name, None)):
                raise TypeError(f"model must have a {name}() method (a bjepa.models.control "
                                f"model), got {type(model).__name__}")
        self.model = model
        self.action_dim = check_positive_int("action_dim", action_dim)
        self.horizon = check_positive_int("horizon", horizon)
        self.population = check_positive_int("population", population)
        self.elites = check_positive_int("elites", elites)
        if self.elites > self.population:
            raise ValueError(f"elites ({elites}) must be <= population ({population})")
        self.iterations = check_positive_int("iterations", iterations)
        self.particles = check_positive_int("particles", particles)
        self.sample = bool(sample)
        self.min_std = check_positive("min_std", min_std)
        self.explore = check_nonnegative("explore", explore)
        self.generator = torch.Generator().manual_seed(seed)
        self._mean: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the warm start (call at the start of an episode)."""
        self._mean = None

    @torch.no_grad()
    def plan(self, obs: torch.Tensor) -> torch.Tensor:
        """The planned action sequence's mean (H, A) from observation ``obs`` (D_o,)."""
        model = self.model
        p = next(model.parameters())
        obs = torch.as_tensor(obs, dtype=p.dtype, device=p.device).reshape(1, -1)
        z0 = model.start_latent(obs)[0]
        h, a, n = self.horizon, self.action_dim, self.population
        mean = torch.zeros(h, a, dtype=p.dtype) if self._mean is None else self._mean
        std = torch.ones(h, a, dtype=p.dtype)
        gen = self.generator
        for _ in range(self.iterations):
            eps = torch.randn(n, h, a, generator=gen, dtype=p.dtype)
            cand = (mean + std * eps).clamp(-1.0, 1.0)
            cand_dev = cand.to(p.device)
            k = self.particles if self.sample else 1
            reps = cand_dev.repeat(k, 1, 1)
            ret = model.imagine(z0, reps, sample=self.sample,
                                generator=gen if p.device.type == "cpu" else None)
            score = ret.sum(-1).reshape(k, n).mean(0).cpu()
            top = score.topk(self.elites).indices
            elite = cand[top]
            mean, std = elite.mean(0), elite.std(0).clamp_min(self.min_std)
        self._mean = torch.cat([mean[1:], torch.zeros(1, a, dtype=p.dtype)])
        return mean

    def act(self, obs: Any) -> np.ndarray:
        """The action to take now (A,), as a NumPy array in ``[-1, 1]``."""
        action = self.plan(obs)[0]
        if self.explore:
            action = action + self.explore * torch.randn(self.action_dim, generator=self.generator,
                                                         dtype=action.dtype)
        return action.clamp(-1.0, 1.0).numpy().astype(np.float32)
