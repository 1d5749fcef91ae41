"""Action-conditioned VJEPA and BJEPA: the predictor reads the context latent *and* an action.

The generative story, per transition ``(x_t, u_t, x_{t+1})``::

    z_C       = f_θ(x_t)                                  # the encoder sees the frame only
    z_T       ~ N(0, I)                  (scaled by β)    # prior over the target latent
    factor      log p_φ(z_T | [z_C, u_t])                 # predictor on latent and action

with the guide ``z_T ~ q_θ'(z_T | x_{t+1})`` as in :class:`~bjepa.models.VJEPA`. Actions travel
*inside* the context tensor so that every trainer that calls ``model(context, target)`` (e.g.
the trainer ``fit``) works unchanged: ``context = pack(x_t, u_t)`` is
``cat([x_t, u_t], -1)`` of width ``obs_dim + action_dim``; the target stays the next frame.

In latent space the model is a stochastic controlled system, ``z' ~`` :meth:`ActionVJEPA.transition`
``(z, u)``, which is what the planners in :mod:`bjepa.planning` roll out.

Example::

    m = ActionVJEPA(obs_dim=20, latent_dim=2, action_dim=2)
    fit(m, m.pack(x[:-1], u), x[1:], steps=2000)
    m.transition(m.encode(x[:5]), u[:5]).mean   # (5, 2)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from pyro import poutine
from pyro.nn import pyro_method
from torch.distributions import Distribution

from bjepa._validation import check_positive_int, check_tensor
from bjepa.metrics import predictive_information
from bjepa.models.base import (
    canonical_directions,
    init_input_layer,
    last_layer_inputs,
    last_linear,
    to_pyro,
)
from bjepa.models.bjepa import BJEPA
from bjepa.models.encoders import HEAD_NETS
from bjepa.models.heads import make_head
from bjepa.models.vjepa import VJEPA
from bjepa.priors import LatentPrior, fuse

__all__ = ["ActionBJEPA", "ActionVJEPA", "controllable_directions"]


class ActionVJEPA(VJEPA):
    """VJEPA whose predictor takes ``[z_C, u]``: ``p_φ(z_T | f_θ(x_t), u_t)``.

    :param obs_dim: size of an observation frame ``x_t`` (what the encoders see).
    :param latent_dim: size of the latent ``z``.
    :param action_dim: size of an action ``u_t`` (keyword-only).

    :param action_latents: with ``init="cca"``, how many of the ``latent_dim`` directions start
        at the *controllable* directions of the next frame's features — those whose change,
        beyond what the current features predict, the actions predict best (a partial CCA);
        the others start as above. ``0`` (default): none.

    Other arguments are those of :class:`~bjepa.models.VJEPA`. With ``init="cca"`` the encoder
    starts at the canonical directions of the next frame that ``(x_t, u_t)`` predict best, and a
    linear head at the least-squares fit of ``z_{t+1}`` on ``[z_t, u_t]``.
    """

    def __init__(self, obs_dim: int, latent_dim: int = 4, *, action_dim: int,
                 action_latents: int = 0, **kwargs: Any) -> None:
        check_positive_int("action_dim", action_dim)
        if isinstance(action_latents, bool) or not isinstance(action_latents, int) \
                or not 0 <= action_latents <= latent_dim:
            raise ValueError(f"action_latents must be an int in 0..latent_dim ({latent_dim}), "
                             f"got {action_latents!r}")
        super().__init__(obs_dim, latent_dim, **kwargs)
        self.action_dim = action_dim
        self.action_latents = action_latents
        head, encoder = self.hparams["head"], self.hparams["encoder"]
        self.predictor = to_pyro(make_head(head, latent_dim + action_dim, latent_dim,
                                           net=HEAD_NETS[encoder],
                                           hidden_dim=self.hparams["hidden_dim"]))
        self.hparams["action_dim"] = action_dim
        if action_latents:  # absent when 0, so checkpoints written before it still load
            self.hparams["action_latents"] = action_latents

    # -- data -------------------------------------------------------------------------------
    @property
    def context_dim(self) -> int:
        """Width of a packed context, ``obs_dim + action_dim``."""
        return self.obs_dim + self.action_dim

    def pack(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The context tensor ``cat([x, u], -1)`` for frames ``x`` and actions ``u``."""
        check_tensor("x", x, last_dim=self.obs_dim)
        check_tensor("u", u)
        if u.shape[-1] != self.action_dim:
            raise ValueError(f"u must have last dimension {self.action_dim} (the model's "
                             f"action_dim), got shape {tuple(u.shape)}")
        if u.shape[:-1] != x.shape[:-1]:
            raise ValueError(f"x and u must have the same leading shape, got "
                             f"{tuple(x.shape)} and {tuple(u.shape)}")
        return torch.cat([x, u.to(x)], dim=-1)

    def split(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, u)`` from a packed context (the actions are its last ``action_dim`` columns)."""
        return context[..., :-self.action_dim], context[..., -self.action_dim:]

    def check_inputs(self, context: torch.Tensor, target: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A packed ``context`` ``(N, obs_dim + action_dim)`` and a ``target`` ``(N, obs_dim)``."""
        self._check_context(context)
        if target is None:
            raise ValueError(f"{type(self).__name__} needs a target (the next frames)")
        check_tensor("target", target, ndim=2, last_dim=self.obs_dim)
        if target.shape[0] != context.shape[0]:
            raise ValueError(f"context and target must have the same number of rows, got "
                             f"{context.shape[0]} and {target.shape[0]}")
        if target.device != context.device:
            raise ValueError("context and target must be on the same device")
        return context, target

    def _check_context(self, context: torch.Tensor) -> None:
        check_tensor("context", context, ndim=2)
        if context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context must have last dimension {self.context_dim} (obs_dim {self.obs_dim} + "
                f"action_dim {self.action_dim}; build it with model.pack(x, u)), got shape "
                f"{tuple(context.shape)}")

    # -- distributions ----------------------------------------------------------------------
    def predictive_dist(self, context: torch.Tensor) -> Distribution:
        """``p_φ(z_T | [f_θ(x_C), u])`` for a packed context."""
        x, u = self.split(context)
        return self.predictor(torch.cat([self.context_latent(x), u], dim=-1))

    def transition(self, z: torch.Tensor, u: torch.Tensor) -> Distribution:
        """The latent dynamics ``p_φ(z' | z, u)``; ``z (..., latent_dim)`` and
        ``u (..., action_dim)`` broadcast against each other. Gradients flow (wrap it in
        ``torch.no_grad()`` when planning)."""
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have last dimension {self.latent_dim}, got "
                             f"{tuple(z.shape)}")
        if u.shape[-1] != self.action_dim:
            raise ValueError(f"u must have last dimension {self.action_dim}, got "
                             f"{tuple(u.shape)}")
        shape = torch.broadcast_shapes(z.shape[:-1], u.shape[:-1])
        zu = torch.cat([z.expand(*shape, -1), u.to(z).expand(*shape, -1)], dim=-1)
        return self.predictor(zu)

    # -- initialisation ---------------------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self, context: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Point the encoder's last linear layer at the canonical directions of the *next*
        frame's features that the current features and the action predict best (a CCA between
        ``feat(x_{t+1})`` and ``[feat(x_t), u_t]``), copy it to the EMA target and give the head
        its closed-form start on ``[z_t, u_t] → z_{t+1}``. The encoder never sees ``u``.

        Returns the canonical correlations found.
        """
        x, u = self.split(context)
        encoder = self.context_encoder
        init_input_layer(encoder, x, target)
        a, b = last_layer_inputs(encoder, x), last_layer_inputs(encoder, target)
        m = self.action_latents
        weight, rho = canonical_directions(b, torch.cat([a, u.to(a)], dim=1),
                                           self.latent_dim - m)
        if m:
            w_act, rho_act = controllable_directions(a, b, u.to(a), m)
            weight, rho = torch.cat([weight, w_act.to(weight)]), torch.cat([rho, rho_act])
        layer = last_linear(encoder)
        layer.weight.copy_(weight.to(layer.weight))
        if layer.bias is not None:
            layer.bias.copy_(-(b.mean(0) @ weight.T.to(b)).to(layer.bias))
        if self._ema is not None:
            self._ema.update(encoder, 0.0)
        self._started = True  # as the base start records (the hook guard reads it)
        z_context = torch.cat([encoder(x), u.to(x)], dim=1)
        self._init_head(z_context, self._ema(target) if self._ema else encoder(target))
        return rho

    @torch.no_grad()
    def selection_score(self, context: torch.Tensor, target: torch.Tensor | None = None, *,
                        chunk: int = 2048, seed: int = 0) -> float:
        """The predictive information ``I([f_θ(x_t), u_t]; f_θ'(x_{t+1}))`` (nats, Gaussian
        estimate) on a packed ``context``: VJEPA's label-free score for comparing training
        restarts (:meth:`~bjepa.models.base.WorldModel.selection_score`), with the actions
        beside the latent as the predictor reads them. 0 for a collapsed encoder."""
        context, target = self.check_inputs(context, target)
        x, u = self.split(context)
        za = torch.cat([self.encode(x), u.to(x)], dim=1).double()
        return predictive_information(za, self._ema(self.as_input("target", target)).double())

    # -- public API -------------------------------------------------------------------------
    def predict(self, context: torch.Tensor) -> Distribution:
        """The predictive distribution over the next latent for a packed context."""
        self._check_context(context)
        with torch.no_grad():
            return self.predictive_dist(context)


def controllable_directions(a: torch.Tensor, b: torch.Tensor, u: torch.Tensor, k: int, *,
                            ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` directions of ``b`` whose part that ``a`` does not predict linearly is best
    predicted by ``u`` (a partial CCA of ``b`` and ``u`` given ``a``; rows paired).

    Returns ``(W, rho)``: ``W`` of shape ``(k, b.shape[1])`` with ``b @ W.T`` of unit variance
    on the data, and the partial canonical correlations ``rho`` (descending). With ``a`` the
    current features, ``b`` the next ones and ``u`` the actions, these are the features the
    actions control. ``ridge`` is relative to the largest variance of ``a``.
    """
    a = a.double() - a.double().mean(0)
    b = b.double() - b.double().mean(0)
    u = u.double() - u.double().mean(0)
    n = a.shape[0]
    cov = a.T @ a / n
    cov = cov + ridge * torch.linalg.eigvalsh(cov).max().clamp_min(1e-30) * torch.eye(
        a.shape[1], dtype=cov.dtype, device=cov.device)
    coef = torch.linalg.solve(cov, a.T @ torch.cat([b, u], dim=1) / n)
    resid = torch.cat([b, u], dim=1) - a @ coef
    weight, rho = canonical_directions(resid[:, :b.shape[1]], resid[:, b.shape[1]:], k,
                                       ridge=ridge)
    weight = weight.double()
    weight = weight / (b @ weight.T).std(0).clamp_min(1e-12)[:, None]
    return weight.float(), rho


class ActionBJEPA(BJEPA, ActionVJEPA):
    """BJEPA (structural prior, optional weight prior, task-prior fusion) whose predictor
    takes ``[z_C, u]``.

    :param obs_dim: size of an observation frame.
    :param latent_dim: size of the latent.
    :param action_dim: size of an action (keyword-only).

    Other arguments are those of :class:`~bjepa.models.BJEPA` and
    :class:`~bjepa.models.VJEPA`. With a weight prior, :meth:`transition` uses the weight
    posterior's median (a point predictor, cheap enough for planning); :meth:`predict`
    integrates over the posterior.
    """

    def __init__(self, obs_dim: int, latent_dim: int = 4, *, action_dim: int,
                 **kwargs: Any) -> None:
        super().__init__(obs_dim, latent_dim, action_dim=action_dim, **kwargs)

    @contextmanager
    def _packed_width(self) -> Iterator[None]:
        """While open, ``obs_dim`` is the packed context width, so BJEPA's dummy pass that
        builds the weight guide feeds the model a context of the right width."""
        obs_dim = self.obs_dim
        self.obs_dim = obs_dim + self.action_dim
        try:
            yield
        finally:
            self.obs_dim = obs_dim

    def _build_weight_guide(self, init_values: dict[str, torch.Tensor] | None = None) -> None:
        with self._packed_width():
            super()._build_weight_guide(init_values)

    def transition(self, z: torch.Tensor, u: torch.Tensor) -> Distribution:
        if self.weight_guide is None:
            return super().transition(z, u)
        with poutine.block(), poutine.condition(data=self.weight_guide.median()):
            return self._conditioned_transition(z, u)

    @pyro_method
    def _conditioned_transition(self, z: torch.Tensor, u: torch.Tensor) -> Distribution:
        self._draw_weights()
        return ActionVJEPA.transition(self, z, u)

    def predict(self, context: torch.Tensor, prior: LatentPrior | None = None,
                eta: torch.Tensor | None = None, *, num_samples: int = 100,
                fusion_samples: int = 2000) -> Distribution:
        """The (fused) predictive distribution over the next latent for a packed context; see
        :meth:`bjepa.models.BJEPA.predict`."""
        self._check_context(context)
        with torch.no_grad():
            if self.weight_guide is None:
                like = self.predictive_dist(context)
            else:
                like = self._posterior_predictive(context, num_samples)
            return like if prior is None else fuse(like, prior, eta, num_samples=fusion_samples)
