"""Generative baselines: the VAE (reconstructs ``x_t``) and the autoregressive next-frame model
(predicts ``x_{t+1}`` through a latent bottleneck). Both are the "Noisy TV" victims
(docs/method.md#baselines): to explain the pixels they must spend latent capacity on the distractor.

Generative story (VAE; AR replaces the reconstructed frame by the next frame)::

    z_t  ~ N(0, I)                         (scaled by β)
    x    ~ N(g(z_t), diag s²)              # x = x_t (VAE) or x_{t+1} (AR)

guide: ``z_t ~ N(μ(x_t), diag σ²(x_t))``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroParam
from torch.distributions import Distribution, constraints

from bjepa._validation import check_nonnegative, check_positive_int
from bjepa.models.base import WorldModel, rows, to_pyro
from bjepa.models.encoders import DECODERS, make_encoder
from bjepa.models.heads import positive_scale

__all__ = ["VAE", "AutoRegressive"]


class VAE(WorldModel):
    """Variational autoencoder on single frames.

    :param obs_dim: observation size.
    :param latent_dim: latent size.
    :param encoder: ``"linear"`` (linear encoder and decoder) or ``"mlp"``.
    :param beta: KL weight (1 = the standard ELBO).
    """

    probe_offset = 0
    needs_target = False
    #: the constrained ``obs_scale`` PyroParam is read outside Pyro's param replay, so
    #: pyro.ops.jit cannot trace it: ``elbo="auto"`` trains these models eagerly
    jit_safe = False
    #: ``elbo="inductor"`` records the transform of the constrained parameter like any op
    inductor_safe = True
    #: which frame the decoder explains, ``"context"`` (VAE) or ``"target"`` (AR)
    reconstructs = "context"

    def __init__(self, obs_dim: int, latent_dim: int = 4, *, encoder: str = "linear",
                 hidden_dim: int = 64, beta: float = 1.0) -> None:
        check_positive_int("obs_dim", obs_dim)
        check_positive_int("latent_dim", latent_dim)
        super().__init__(obs_dim, latent_dim)
        self.hparams = dict(obs_dim=obs_dim, latent_dim=latent_dim, encoder=encoder,
                            hidden_dim=hidden_dim, beta=beta)
        self.beta = check_nonnegative("beta", beta)
        self.context_encoder = to_pyro(make_encoder(encoder, obs_dim, latent_dim,
                                                    hidden_dim=hidden_dim))
        self.scale_net = to_pyro(make_encoder(encoder, obs_dim, latent_dim,
                                              hidden_dim=hidden_dim, bias=True))
        self.decoder = to_pyro(make_encoder(DECODERS[encoder], latent_dim, obs_dim,
                                            hidden_dim=hidden_dim, bias=True))
        self.obs_scale = PyroParam(torch.ones(obs_dim), constraint=constraints.positive)

    def posterior_dist(self, x: torch.Tensor) -> Distribution:
        """``q(z | x)``."""
        return dist.Normal(self.context_latent(x),
                           positive_scale(self.scale_net(x))).to_event(1)

    def likelihood_dist(self, z: torch.Tensor) -> Distribution:
        """``p(x | z)``."""
        return dist.Normal(self.decoder(z), self.obs_scale).to_event(1)

    def _observed(self, context: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return context if self.reconstructs == "context" else target

    def model(self, context: torch.Tensor, target: torch.Tensor | None = None,
              batch_size: int | None = None) -> None:
        obs = self._observed(context, target)
        with pyro.plate("data", context.shape[-2], subsample_size=batch_size,
                        device=context.device) as idx:
            loc = context.new_zeros(context.shape[:-2] + (len(idx), self.latent_dim))
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", dist.Normal(loc, torch.ones_like(loc)).to_event(1))
            pyro.sample("obs", self.likelihood_dist(z), obs=rows(obs, idx))

    def guide(self, context: torch.Tensor, target: torch.Tensor | None = None,
              batch_size: int | None = None) -> None:
        with pyro.plate("data", context.shape[-2], subsample_size=batch_size,
                        device=context.device) as idx, poutine.scale(scale=self.beta):
            pyro.sample("z", self.posterior_dist(rows(context, idx)))


class AutoRegressive(VAE):
    """Generative next-frame model: ``x_{t+1} ~ p(x | z_t)``, ``z_t ~ q(z | x_t)``."""

    probe_offset = 1
    needs_target = True
    reconstructs = "target"
