"""VJEPA: a variational joint-embedding predictive architecture (docs/method.md#the-models).

The generative story, per pair ``(x_C, x_T)`` of context and target frames::

    z_C       = f_θ(x_C)                                  # deterministic context encoder
    z_T       ~ N(0, I)                  (scaled by β)    # prior over the target latent
    factor      log p_φ(z_T | z_C)                        # the predictor's likelihood

and the guide (variational posterior over the target latent)::

    z_T       ~ q_θ'(z_T | x_T) = N(μ_θ'(x_T), diag σ²_θ'(x_T))   (scaled by β)

so that ``−ELBO = E_q[−log p_φ(z_T | z_C)] + β · KL(q_θ'(z_T | x_T) ‖ N(0, I))`` — the VJEPA
loss (paper Eq. 11) comes out of Pyro's ELBO rather than a hand-written formula. ``μ_θ'`` is an
exponential moving average of ``f_θ`` (kept out of the Pyro module tree) and ``σ_θ'`` is a
variance head trained by gradient through both terms.

Example::

    m = VJEPA(obs_dim=20, latent_dim=4, encoder="linear")
    fit(m, x[:-1], x[1:], steps=2000)
    m.predict(x[:-1]).mean   # (N - 1, 4)
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import Distribution

from bjepa._validation import check_nonnegative, check_positive, check_positive_int
from bjepa.models.base import WorldModel, rows, tau_spec, to_pyro, validated_init
from bjepa.models.ema import TauSchedule
from bjepa.models.encoders import HEAD_NETS, make_encoder
from bjepa.models.heads import make_head, positive_scale

__all__ = ["VJEPA"]


class VJEPA(WorldModel):
    """Variational JEPA.

    :param obs_dim: size of an observation vector.
    :param latent_dim: size of the latent ``z``.
    :param encoder: ``"linear"`` (bias-free linear map) or ``"mlp"``.
    :param head: predictor head: ``"diag"`` or ``"full"`` Gaussian (see :mod:`.heads`),
        ``"mdn"`` (a K = 5 mixture density network, :mod:`.mixture`), or any registered name.
    :param beta: weight β >= 0 of the KL to the standard-normal prior.
    :param tau: EMA momentum τ in [0, 1], ``"cosine"`` or a schedule ``f(step, total)``.
    :param init: ``"cca"`` (default) points the encoder's last layer at the leading
        canonical directions between context and target features before training (a conv
        encoder's first convolution too, on co-located patches); ``"random"`` keeps PyTorch's
        initialisation.
    :param target_scale_init: initial target standard deviation σ_θ'.
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int = 4,
        *,
        encoder: str = "linear",
        head: str = "diag",
        hidden_dim: int = 64,
        beta: float = 0.01,
        tau: float | str | TauSchedule = 0.99,
        init: str = "cca",
        target_scale_init: float = 0.1,
    ) -> None:
        check_positive_int("obs_dim", obs_dim)
        check_positive_int("latent_dim", latent_dim)
        check_positive("target_scale_init", target_scale_init)
        if target_scale_init > 1e6:
            raise ValueError("target_scale_init must be <= 1e6 (a standard deviation in latent "
                             f"units), got {target_scale_init}")
        super().__init__(obs_dim, latent_dim)
        self.hparams = dict(obs_dim=obs_dim, latent_dim=latent_dim, encoder=encoder, head=head,
                            hidden_dim=hidden_dim, beta=beta, tau=tau_spec(tau), init=init,
                            target_scale_init=target_scale_init)
        self.beta = check_nonnegative("beta", beta)
        self.init = validated_init(init)
        self.encoder_kind = encoder
        encoder_net = make_encoder(encoder, obs_dim, latent_dim, hidden_dim=hidden_dim)
        self._init_ema(encoder_net, tau)
        self.context_encoder = to_pyro(encoder_net)
        self.target_scale_net = to_pyro(
            make_encoder(encoder, obs_dim, latent_dim, hidden_dim=hidden_dim, bias=True))
        last = list(self.target_scale_net.parameters())
        with torch.no_grad():
            last[-2].mul_(0.0)  # start homoscedastic ...
            # ... at target_scale_init: softplus⁻¹(s) = s + log(1 - e^{-s}), stable for any s > 0
            last[-1].fill_(target_scale_init + math.log(-math.expm1(-target_scale_init)))
        self.predictor = to_pyro(make_head(head, latent_dim, latent_dim, net=HEAD_NETS[encoder],
                                           hidden_dim=hidden_dim))

    # -- distributions ----------------------------------------------------------------------
    def prior_dist(self, like: torch.Tensor) -> Distribution:
        """``N(0, I)`` over the target latent, batch shape ``like.shape[:-1]``."""
        zeros = like.new_zeros(like.shape)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def target_dist(self, target: torch.Tensor) -> Distribution:
        """``q_θ'(z_T | x_T)``: EMA mean (no gradient), learned scale."""
        loc = self._ema(target)
        return dist.Normal(loc, positive_scale(self.target_scale_net(target))).to_event(1)

    def predictive_dist(self, context: torch.Tensor) -> Distribution:
        """``p_φ(z_T | f_θ(x_C))``."""
        return self.predictor(self.context_latent(context))

    # -- Pyro program -----------------------------------------------------------------------
    def model(self, context: torch.Tensor, target: torch.Tensor,
              batch_size: int | None = None) -> None:
        with pyro.plate("data", context.shape[-2], subsample_size=batch_size,
                        device=context.device) as idx:
            pred = self.predictive_dist(rows(context, idx))
            with poutine.scale(scale=self.beta):
                z_t = pyro.sample("z_target", self.prior_dist(pred.mean))
            pyro.factor("dynamics", pred.log_prob(z_t))

    def guide(self, context: torch.Tensor, target: torch.Tensor,
              batch_size: int | None = None) -> None:
        with pyro.plate("data", context.shape[-2], subsample_size=batch_size,
                        device=context.device) as idx, poutine.scale(scale=self.beta):
            pyro.sample("z_target", self.target_dist(rows(target, idx)))

    # -- public API -------------------------------------------------------------------------
    def predict(self, context: torch.Tensor) -> Distribution:
        """The predictive distribution over the next latent, batch ``(N,)``, event ``(D_z,)``."""
        context = self.as_input("context", context)
        with torch.no_grad():
            return self.predictive_dist(context)

    def encode_target(self, x: torch.Tensor) -> torch.Tensor:
        """The EMA target encoder's mean latent ``μ_θ'(x)``."""
        return self._ema(self.as_input("x", x))
