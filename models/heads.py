"""Predictor heads: networks that map the context latent to a *distribution* over the target.

A head is an ``nn.Module`` whose ``forward(z_context)`` returns a
:class:`torch.distributions.Distribution` with batch shape ``z_context.shape[:-1]`` and event
shape ``(latent_dim,)``. New heads (e.g. a mixture density network) are added with
:func:`register_head` and become available to every model that takes ``head=...``.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution

from bjepa._validation import check_choice
from bjepa.models.encoders import make_encoder

__all__ = ["HEADS", "DiagonalGaussianHead", "FullCovGaussianHead", "make_head", "register_head"]

MIN_SCALE = 1e-4
HeadFactory = Callable[..., nn.Module]
HEADS: dict[str, HeadFactory] = {}


def register_head(name: str, factory: HeadFactory) -> None:
    """Register ``factory(in_dim, latent_dim, *, net, hidden_dim) -> nn.Module`` as ``name``."""
    HEADS[name] = factory


def positive_scale(raw: torch.Tensor) -> torch.Tensor:
    """Map an unconstrained tensor to a scale bounded away from zero."""
    return F.softplus(raw) + MIN_SCALE


def inverse_positive_scale(scale: torch.Tensor) -> torch.Tensor:
    """The unconstrained value whose :func:`positive_scale` is ``scale``."""
    x = (scale - MIN_SCALE).clamp_min(1e-6)
    return x + torch.log(-torch.expm1(-x))


def _least_squares(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OLS of ``y`` on ``[x, 1]``: coefficients ``(D_x + 1, D_y)`` and residuals."""
    design = torch.cat([x, torch.ones_like(x[:, :1])], dim=1).double()
    coef = torch.linalg.lstsq(design, y.double()).solution
    return coef.to(x.dtype), (y.double() - design @ coef).to(x.dtype)


class DiagonalGaussianHead(nn.Module):
    """``z_T | z_C ~ N(m(z_C), diag s(z_C)²)`` with ``m`` and ``s`` read from one network."""

    def __init__(self, in_dim: int, latent_dim: int, *, net: str = "linear",
                 hidden_dim: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.net = make_encoder(net, in_dim, 2 * latent_dim, hidden_dim=hidden_dim, bias=True)

    def forward(self, z: torch.Tensor) -> Distribution:
        loc, raw = self.net(z).split(self.latent_dim, dim=-1)
        return dist.Normal(loc, positive_scale(raw)).to_event(1)

    @torch.no_grad()
    def init_values(self, z_context: torch.Tensor, z_target: torch.Tensor
                    ) -> dict[str, torch.Tensor] | None:
        """Closed-form start for a linear head: least-squares mean, residual scale.

        Returns ``{parameter name: value}`` (``None`` for non-linear nets)."""
        if not isinstance(self.net, nn.Linear):
            return None
        coef, resid = _least_squares(z_context, z_target)
        scale_bias = inverse_positive_scale(resid.std(0))
        return {"net.weight": torch.cat([coef[:-1].T, torch.zeros_like(coef[:-1].T)]),
                "net.bias": torch.cat([coef[-1], scale_bias])}


class FullCovGaussianHead(nn.Module):
    """``z_T | z_C ~ N(m(z_C), L L^T)`` with a lower-triangular Cholesky factor ``L(z_C)``."""

    def __init__(self, in_dim: int, latent_dim: int, *, net: str = "linear",
                 hidden_dim: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        n_tril = latent_dim * (latent_dim + 1) // 2
        self.net = make_encoder(net, in_dim, latent_dim + n_tril, hidden_dim=hidden_dim,
                                bias=True)
        self.register_buffer("_rows", torch.tril_indices(latent_dim, latent_dim)[0],
                             persistent=False)
        self.register_buffer("_cols", torch.tril_indices(latent_dim, latent_dim)[1],
                             persistent=False)

    def forward(self, z: torch.Tensor) -> Distribution:
        out = self.net(z)
        d = self.latent_dim
        loc, tril = out[..., :d], out[..., d:]
        L = out.new_zeros(out.shape[:-1] + (d, d))
        L[..., self._rows, self._cols] = tril
        diag = positive_scale(torch.diagonal(L, dim1=-2, dim2=-1))
        L = torch.tril(L, diagonal=-1) + torch.diag_embed(diag)
        return dist.MultivariateNormal(loc, scale_tril=L)

    @torch.no_grad()
    def init_values(self, z_context: torch.Tensor, z_target: torch.Tensor
                    ) -> dict[str, torch.Tensor] | None:
        """Closed-form start for a linear head: least-squares mean, residual Cholesky factor."""
        if not isinstance(self.net, nn.Linear):
            return None
        coef, resid = _least_squares(z_context, z_target)
        d = self.latent_dim
        cov = torch.cov(resid.T.double()) + 1e-8 * torch.eye(d, dtype=torch.float64)
        L = torch.linalg.cholesky(cov).to(resid.dtype)
        L = torch.tril(L, -1) + torch.diag_embed(inverse_positive_scale(L.diagonal()))
        n_tril = self._rows.numel()
        weight = torch.cat([coef[:-1].T, coef.new_zeros(n_tril, coef.shape[0] - 1)])
        return {"net.weight": weight, "net.bias": torch.cat([coef[-1], L[self._rows, self._cols]])}


register_head("diag", DiagonalGaussianHead)
register_head("full", FullCovGaussianHead)


def make_head(name: str, in_dim: int, latent_dim: int, *, net: str = "linear",
              hidden_dim: int = 64) -> nn.Module:
    """Build the predictor head registered as ``name`` (``"diag"`` or ``"full"`` built in)."""
    check_choice("head", name, HEADS)
    return HEADS[name](in_dim, latent_dim, net=net, hidden_dim=hidden_dim)
