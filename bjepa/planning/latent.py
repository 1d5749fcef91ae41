"""The planning problem in latent space: costs read through a linear decoder, batched rollouts
of an action-conditioned world model, and its linearisation.

A planner never sees the true state. It sees observations, the learned latent dynamics
``z' ~ p_φ(z' | z, u)`` (e.g. :meth:`bjepa.models.ActionVJEPA.transition`), and a task written
in observation coordinates: a goal observation ``x_goal`` and an unsafe half-space
``a_x · x > c`` of clean observations. A :class:`LatentTask` turns it into costs on latents:

- the goal latent ``z_g`` is the target encoder's latent of the goal observation,
  ``μ_θ'(x_goal)`` (the same latent as the BJEPA goal prior, docs/method.md#fusion-at-inference);
- latent *differences* map to observation differences through the slope ``W`` of an affine
  decoder ``x ≈ W z + b`` fitted by least squares on exploration frames
  (:func:`fit_decoder`), so ``x̂(z) = x_goal + W (z − z_g)``.

Only the slope is used: the intercept ``b`` carries the sample mean of everything the latent
does not hold — with a strong distractor that is a sizeable offset (``σ D d̄``) which, read
against a clean goal observation, would move the planner's goal and edge. The slope is
``Cov(x, z) Cov(z)⁻¹``, free of the distractor when the latent is. No true state enters.

Example::

    W, _ = fit_decoder(model.encode_target(frames), raw_frames)
    task = LatentTask(W, z_goal, x_goal, control_cost=0.1, normal=a_x, threshold=c,
                      penalty=1.0)
    z, u = rollout(model, z0, actions, noise=torch.randn(..., H, D_z))   # (..., H + 1, D_z)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from bjepa._validation import check_nonnegative, check_tensor

__all__ = ["LatentTask", "fit_decoder", "gaussian_step", "linearize", "rollout", "rollout_cost"]


def fit_decoder(z: torch.Tensor, x: torch.Tensor, *, ridge: float = 1e-8
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares ``x ≈ W z + b`` with intercept; returns ``(W (D_x, D_z), b (D_x,))``.

    :param z: ``(N, D_z)`` latents of frames.
    :param x: ``(N, D_x)`` the frames in the coordinates the task is written in.
    :param ridge: relative ridge on the normal equations (numerical safety).
    """
    check_tensor("z", z, ndim=2)
    check_tensor("x", x, ndim=2)
    if z.shape[0] != x.shape[0]:
        raise ValueError(f"z and x need the same rows, got {z.shape[0]} and {x.shape[0]}")
    if z.shape[0] <= z.shape[1]:
        raise ValueError("fit_decoder needs more rows than latent dimensions")
    design = torch.cat([z.double(), torch.ones_like(z[:, :1]).double()], dim=1)
    gram = design.T @ design
    gram = gram + ridge * torch.trace(gram) / gram.shape[0] * torch.eye(
        gram.shape[0], dtype=gram.dtype, device=gram.device)
    coef = torch.linalg.solve(gram, design.T @ x.double().to(design.device))
    return coef[:-1].T.float(), coef[-1].float()


class LatentTask:
    """A quadratic-cost task with an unsafe half-space, evaluated on latents.

    With ``x̂(z) = x_goal + W (z − z_g)``, the stage cost of arriving at ``z`` with action
    ``u`` is::

        ‖x̂(z) − x_goal‖² + uᵀ R u + λ · 1(a_x · x̂(z) > c)

    :param decoder_weight: ``W`` ``(D_x, D_z)``, latent-to-observation slope (see
        :func:`fit_decoder`).
    :param goal_latent: ``z_g`` ``(D_z,)``, e.g. ``model.encode_target(x_goal)``.
    :param goal_obs: ``x_goal`` ``(D_x,)``, the goal in the task's observation coordinates.
    :param control_cost: ``r`` (``R = r I``) or an ``(m, m)`` matrix ``R``.
    :param normal: ``a_x`` ``(D_x,)`` of the unsafe half-space (``None``: no constraint).
    :param threshold: ``c``.
    :param penalty: λ >= 0, cost of one unsafe step.
    :param device: where the tensors live.
    """

    def __init__(self, decoder_weight: torch.Tensor, goal_latent: torch.Tensor,
                 goal_obs: torch.Tensor, *, control_cost: float | torch.Tensor = 0.1,
                 normal: torch.Tensor | None = None, threshold: float = 0.0,
                 penalty: float = 0.0, device: str | torch.device = "cpu") -> None:
        check_tensor("decoder_weight", decoder_weight, ndim=2)
        d_x, d_z = decoder_weight.shape
        check_tensor("goal_latent", goal_latent, ndim=1, last_dim=d_z)
        check_tensor("goal_obs", goal_obs, ndim=1, last_dim=d_x)
        self.device = torch.device(device)
        f = lambda t: torch.as_tensor(t).to(self.device, torch.float32)  # noqa: E731
        self.W, self.z_goal, self.goal_obs = f(decoder_weight), f(goal_latent), f(goal_obs)
        self.penalty = check_nonnegative("penalty", penalty)
        if isinstance(control_cost, torch.Tensor):
            R = f(control_cost)
            if R.dim() != 2 or R.shape[0] != R.shape[1]:
                raise ValueError(f"control_cost must be a number or a square matrix, got "
                                 f"shape {tuple(R.shape)}")
            self._r = 0.0
        else:
            self._r = check_nonnegative("control_cost", control_cost)
            R = None
        self.R = R
        if normal is None:
            self.normal = None
        else:
            check_tensor("normal", normal, ndim=1, last_dim=d_x)
            self.normal = f(normal)
        self.threshold = float(threshold)
        self._precompute()

    def _precompute(self) -> None:
        """The costs as forms on latents: ``‖W (z − z_g)‖² = zᵀ M z + 2 vᵀ z + k`` and
        ``a_x · x̂(z) − c = nᵀ z + n0`` (cheap: no decoding to ``D_x`` dimensions)."""
        self._M = self.W.T @ self.W
        self._v = -(self._M @ self.z_goal)
        self._k = float(self.z_goal @ self._M @ self.z_goal)
        if self.normal is not None:
            self._n = self.W.T @ self.normal
            self._n0 = float(self.normal @ self.goal_obs) - self.threshold \
                - float(self._n @ self.z_goal)

    @property
    def latent_dim(self) -> int:
        return self.W.shape[1]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``x̂(z) = x_goal + W (z − z_g)`` for latents ``(..., D_z)``."""
        return self.goal_obs + (z - self.z_goal) @ self.W.T

    def state_cost(self, z: torch.Tensor) -> torch.Tensor:
        """``‖x̂ − x_goal‖²`` per latent, shape ``z.shape[:-1]``."""
        return (((z @ self._M) * z).sum(-1) + 2.0 * (z @ self._v) + self._k).clamp_min(0.0)

    def control_cost(self, u: torch.Tensor) -> torch.Tensor:
        """``uᵀ R u`` per action, shape ``u.shape[:-1]``."""
        if self.R is None:
            return self._r * u.pow(2).sum(-1)
        return ((u @ self.R) * u).sum(-1)

    def margin(self, z: torch.Tensor) -> torch.Tensor:
        """``a_x · x̂ − c`` (positive = unsafe); zeros without a constraint."""
        if self.normal is None:
            return torch.zeros(z.shape[:-1], device=z.device, dtype=z.dtype)
        return z @ self._n + self._n0

    def violation(self, z: torch.Tensor) -> torch.Tensor:
        """Whether each latent decodes into the unsafe half-space."""
        return self.margin(z) > 0

    def violation_probability(self, d: Distribution) -> torch.Tensor | None:
        """``P(a_x · x̂ > c)`` for ``z ~ d`` when ``d`` is a Gaussian predictive (diagonal or
        full covariance): ``Φ((nᵀ μ + n0) / √(nᵀ Σ n))``; ``None`` for other distributions
        or without a constraint."""
        if self.normal is None:
            return None
        if isinstance(d, Independent) and isinstance(d.base_dist, Normal) \
                and d.reinterpreted_batch_ndims == 1:
            loc, sd = d.base_dist.loc, (d.base_dist.scale.pow(2) @ self._n.pow(2)).sqrt()
        elif isinstance(d, MultivariateNormal):
            loc = d.loc
            sd = (self._n.unsqueeze(-2) @ d.scale_tril).squeeze(-2).norm(dim=-1)
        else:
            return None
        mean = loc @ self._n + self._n0
        return 0.5 * torch.erfc(-mean / (sd.clamp_min(1e-12) * math.sqrt(2.0)))

    def trajectory_cost(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Total cost of latent paths ``z (..., H + 1, D_z)`` (``z[..., 0, :]`` is the start,
        not charged) under actions ``u (..., H, m)``; shape ``(...)``."""
        zs = z[..., 1:, :]
        cost = self.state_cost(zs) + self.control_cost(u)
        if self.penalty > 0:
            cost = cost + self.penalty * self.violation(zs).to(cost.dtype)
        return cost.sum(-1)

    def metric(self) -> torch.Tensor:
        """``Wᵀ W``: the state cost's quadratic form on latents, ``(D_z, D_z)``."""
        return self._M

    def goal_latent(self) -> torch.Tensor:
        """``z_g``."""
        return self.z_goal

    def to(self, device: str | torch.device) -> LatentTask:
        """This task with its tensors on ``device``."""
        out = object.__new__(LatentTask)
        out.__dict__.update(self.__dict__)
        out.device = torch.device(device)
        for name in ("W", "z_goal", "goal_obs", "R", "normal"):
            value = getattr(self, name)
            setattr(out, name, None if value is None else value.to(device))
        out._precompute()
        return out


def gaussian_step(d: Distribution, eps: torch.Tensor | None) -> torch.Tensor:
    """A draw ``loc + L ε`` from a Gaussian predictive with given standard-normal ``ε``
    (common random numbers across candidates); the mean when ``eps`` is ``None``. Other
    distributions fall back to ``d.sample()`` (their own randomness)."""
    if eps is None:
        return d.mean
    if isinstance(d, Independent) and isinstance(d.base_dist, Normal) \
            and d.reinterpreted_batch_ndims == 1:
        return d.base_dist.loc + d.base_dist.scale * eps
    if isinstance(d, MultivariateNormal):
        return d.loc + (d.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    return d.sample()


def _steps(model: Any, z0: torch.Tensor, actions: torch.Tensor,
           noise: torch.Tensor | None, feedback: torch.Tensor | None
           ) -> Iterator[tuple[Distribution, torch.Tensor, torch.Tensor]]:
    """Yield ``(predictive, next latent, applied action)`` along a batched rollout."""
    check_tensor("z0", z0)
    check_tensor("actions", actions)
    if actions.dim() < 2:
        raise ValueError(f"actions must be (..., H, m), got shape {tuple(actions.shape)}")
    horizon = actions.shape[-2]
    if noise is not None and (noise.dim() < 2 or noise.shape[-2] != horizon):
        raise ValueError(f"noise must be (..., {horizon}, D_z) to match actions' horizon, got "
                         f"shape {tuple(noise.shape)}")
    closed_loop = feedback is not None and noise is not None
    z, z_bar = z0, z0
    for k in range(horizon):
        u = actions[..., k, :]
        if closed_loop:
            u = u - (z - z_bar) @ feedback.T
            z_bar = model.transition(z_bar, actions[..., k, :]).mean
        d = model.transition(z, u)
        z = gaussian_step(d, None if noise is None else noise[..., k, :])
        yield d, z, u


def rollout(model: Any, z0: torch.Tensor, actions: torch.Tensor, *,
            noise: torch.Tensor | None = None, feedback: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll the latent dynamics ``model.transition(z, u)`` forward, batched.

    Shapes broadcast: ``z0 (..., D_z)``, ``actions (..., H, m)``, ``noise (..., H, D_z)``
    (standard normal; ``None`` rolls out the predictive *mean*). One transition call per step
    covers every candidate and every sample.

    With ``feedback`` ``K (m, D_z)`` (and ``noise``), the actions are applied around the mean
    path: ``u_k = ū_k − K (z_k − z̄_k)`` where ``z̄`` is the mean rollout under ``ū`` — the
    sampled paths then show the spread of a controller that keeps re-planning, not of an
    open-loop sequence.

    :returns: ``(z (..., H + 1, D_z), u (..., H, m))``: the latents including ``z0`` and the
        actions applied.
    """
    path, applied = [z0], []
    for _, z, u in _steps(model, z0, actions, noise, feedback):
        path.append(z)
        applied.append(u)
    shape = torch.broadcast_shapes(*(p.shape for p in path))
    zs = torch.stack([p.expand(shape) for p in path], dim=-2)
    ushape = torch.broadcast_shapes(*(u.shape for u in applied))
    return zs, torch.stack([u.expand(ushape) for u in applied], dim=-2)


def rollout_cost(model: Any, task: LatentTask, z0: torch.Tensor, actions: torch.Tensor, *,
                 noise: torch.Tensor | None = None, feedback: torch.Tensor | None = None,
                 expected_violations: bool = False) -> torch.Tensor:
    """Total task cost of batched rollouts (see :func:`rollout`), accumulated step by step
    without storing the paths; shape: the broadcast batch shape.

    :param expected_violations: charge ``λ · P(unsafe)`` under each step's Gaussian
        predictive given the sampled path so far (:meth:`LatentTask.violation_probability`)
        instead of ``λ · 1(unsafe)`` of the drawn latent. Same expectation, far less variance,
        and smooth in the actions — which the search needs when the objective is estimated
        from a few samples.
    """
    total = None
    for d, z, u in _steps(model, z0, actions, noise, feedback):
        cost = task.state_cost(z) + task.control_cost(u)
        if task.penalty > 0:
            prob = task.violation_probability(d) if expected_violations else None
            risk = task.violation(z).to(cost.dtype) if prob is None else prob
            cost = cost + task.penalty * risk
        total = cost if total is None else total + cost
    return total


def linearize(model: Any, z: torch.Tensor, u: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Jacobians of the predictive mean at ``(z, u)`` (single points ``(D_z,)``, ``(m,)``):
    ``(A_z (D_z, D_z), B_z (D_z, m), c)`` with ``mean(z', u') ≈ A_z z' + B_z u' + c`` near
    ``(z, u)`` (exact for a linear head)."""
    check_tensor("z", z, ndim=1)
    check_tensor("u", u, ndim=1)

    def mean(zz: torch.Tensor, uu: torch.Tensor) -> torch.Tensor:
        return model.transition(zz, uu).mean

    with torch.enable_grad():
        A_z, B_z = torch.autograd.functional.jacobian(mean, (z.detach(), u.detach()))
    with torch.no_grad():
        c = mean(z, u) - A_z @ z - B_z @ u
    return A_z.detach(), B_z.detach(), c.detach()
