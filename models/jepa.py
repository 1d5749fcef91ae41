"""JEPA baseline: deterministic predictor in latent space with a VICReg regulariser.

Objective (minimised), on a batch of context/target pairs::

    25 · ‖g(f_θ(x_C)) − f_θ'(x_T)‖²         (invariance; f_θ' is the EMA target)
  + 25 · mean_d relu(1 − std(z_C)_d)        (variance hinge, keeps dimensions alive)
  +  1 · Σ_{i≠j} cov(z_C)_{ij}² / D         (decorrelation)

It enters Pyro as ``pyro.factor("vicreg", −N · loss)`` with an empty guide, so it trains through
the same SVI loop as the probabilistic models.
"""

from __future__ import annotations

import pyro
import torch

from bjepa._validation import check_nonnegative, check_positive_int
from bjepa.models.base import WorldModel, rows, tau_spec, to_pyro, validated_init
from bjepa.models.ema import TauSchedule
from bjepa.models.encoders import HEAD_NETS, make_encoder

__all__ = ["JEPA", "vicreg_loss"]


def vicreg_loss(pred: torch.Tensor, target: torch.Tensor, z: torch.Tensor, *,
                sim: float = 25.0, var: float = 25.0, cov: float = 1.0) -> torch.Tensor:
    """The VICReg-regularised JEPA loss above: a scalar for ``(N, D)`` inputs, one value per
    leading index for batched inputs ``(..., N, D)`` (rows are dim -2)."""
    invariance = (pred - target).pow(2).sum(-1).mean(-1)
    zc = z - z.mean(-2, keepdim=True)
    std = torch.sqrt(zc.var(-2) + 1e-4)
    variance = torch.relu(1.0 - std).mean(-1)
    c = zc.transpose(-1, -2) @ zc / max(z.shape[-2] - 1, 1)
    off = c - torch.diag_embed(torch.diagonal(c, dim1=-2, dim2=-1))
    covariance = off.pow(2).sum((-1, -2)) / z.shape[-1]
    return sim * invariance + var * variance + cov * covariance


class JEPA(WorldModel):
    """Deterministic JEPA with an EMA target encoder and VICReg weights 25/25/1."""

    #: VICReg's variance term needs two rows per step (read by the trainer)
    min_batch_size = 2

    def __init__(self, obs_dim: int, latent_dim: int = 4, *, encoder: str = "linear",
                 hidden_dim: int = 64, tau: float | str | TauSchedule = 0.99,
                 init: str = "random", sim_weight: float = 25.0, var_weight: float = 25.0,
                 cov_weight: float = 1.0) -> None:
        check_positive_int("obs_dim", obs_dim)
        check_positive_int("latent_dim", latent_dim)
        super().__init__(obs_dim, latent_dim)
        self.hparams = dict(obs_dim=obs_dim, latent_dim=latent_dim, encoder=encoder,
                            hidden_dim=hidden_dim, tau=tau_spec(tau), init=init,
                            sim_weight=sim_weight, var_weight=var_weight, cov_weight=cov_weight)
        self.init = validated_init(init)
        self.weights = {
            "sim": check_nonnegative("sim_weight", sim_weight),
            "var": check_nonnegative("var_weight", var_weight),
            "cov": check_nonnegative("cov_weight", cov_weight),
        }
        encoder_net = make_encoder(encoder, obs_dim, latent_dim, hidden_dim=hidden_dim)
        self._init_ema(encoder_net, tau)
        self.context_encoder = to_pyro(encoder_net)
        self.predictor = to_pyro(make_encoder(HEAD_NETS[encoder], latent_dim, latent_dim,
                                              hidden_dim=hidden_dim, bias=True))

    def loss(self, context: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The mean VICReg loss on a batch."""
        z = self.context_latent(context)
        return vicreg_loss(self.predictor(z), self._ema(target), z, **self.weights)

    def model(self, context: torch.Tensor, target: torch.Tensor,
              batch_size: int | None = None) -> None:
        n = context.shape[-2]
        with pyro.plate("data", n, subsample_size=batch_size, device=context.device) as idx:
            pass
        loss = self.loss(rows(context, idx), rows(target, idx))
        # one factor per replica (shape (R, 1) under a replicas plate at dim -2), else a scalar
        pyro.factor("vicreg", -n * (loss.unsqueeze(-1) if loss.ndim else loss))

    def guide(self, context: torch.Tensor, target: torch.Tensor,
              batch_size: int | None = None) -> None:
        with pyro.plate("data", context.shape[-2], subsample_size=batch_size,
                        device=context.device):
            pass

    def predict_mean(self, context: torch.Tensor) -> torch.Tensor:
        """The deterministic prediction of the next latent."""
        with torch.no_grad():
            return self.predictor(self.context_encoder(context))
