"""RSSM: a recurrent state-space model (PlaNet/Dreamer's world model without actions), written
as a Pyro model and guide in the pattern of Pyro's deep Markov model example.

The generative story, per window of ``W`` consecutive frames::

    h_t  = GRU(h_{t-1}, z_{t-1})                       # deterministic state; the latent is fed back
    z_t  ~ N(μ_p(h_t), diag σ_p(h_t)²)   (scaled by β) # stochastic state
    x_t  ~ N(g(h_t, z_t), diag s²)                     # observation

and the guide (filtering posterior, sharing the deterministic path)::

    z_t  ~ q(z_t | h_t, x_t) = N(μ_q(h_t, x_t), diag σ_q(h_t, x_t)²)   (scaled by β)

Training is truncated back-propagation through time: the context is cut into windows of
``window`` frames; each window starts from the state the filter reaches over the ``burn_in``
frames before it, computed without gradient (the gradient is truncated at the window's start).

The representation of frame ``x_t`` is the filtered model state ``[h_t, μ_q(h_t, x_t)]`` of a
run over the whole trajectory (rows passed to :meth:`RSSM.encode` are consecutive frames), and
it is probed against ``s_{t+1}`` like the predictive models.

Example::

    m = RSSM(obs_dim=20, latent_dim=4)
    fit(m, train.obs[:-1], train.obs[1:], steps=2000, lr=3e-3, batch_size=512)
    m.encode(test.obs).shape        # (T, hidden_dim + latent_dim)
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroParam, pyro_method
from torch import nn
from torch.distributions import Distribution, constraints

from bjepa._validation import check_choice, check_nonnegative, check_positive_int
from bjepa.models.base import WorldModel
from bjepa.models.encoders import DECODERS, ENCODERS, make_encoder
from bjepa.models.heads import positive_scale
from bjepa.models.registry import register_model
from bjepa.models.state_space import frame_windows, window_batch

__all__ = ["RSSM"]


class RSSM(WorldModel):
    """Recurrent state-space model trained with the ELBO and truncated BPTT.

    :param obs_dim: observation size.
    :param latent_dim: size of the stochastic state ``z``.
    :param hidden_dim: size of the deterministic GRU state ``h``.
    :param encoder: network family of the prior, posterior and decoder nets (``"mlp"``
        default, or ``"linear"``).
    :param net_dim: hidden width of those nets.
    :param beta: KL weight β (1 = the ELBO).
    :param window: frames per training window (the BPTT truncation length).
    :param burn_in: frames filtered without gradient before each window to start its state.
    :param obs_encoder: an image encoder family (``"conv"``, ``"vit"`` or a registered
        geometry such as ``"conv2x32x32"``) for a CNN-RSSM: the posterior then reads
        ``[h_t, e(x_t)]`` with ``e`` that network (output ``embed_dim``), and the decoder is the
        family's decoder (transposed convolutions). ``None`` (default): the posterior reads the
        raw frame and ``encoder`` builds the decoder.
    :param embed_dim: size of the image embedding ``e(x_t)`` (with ``obs_encoder``).
    """

    probe_offset = 1
    needs_target = False
    stackable = False  # reads its data as one time series
    jit_safe = False  # a Python loop over time with a constrained PyroParam

    def __init__(self, obs_dim: int, latent_dim: int = 4, *, hidden_dim: int = 32,
                 encoder: str = "mlp", net_dim: int = 64, beta: float = 1.0, window: int = 32,
                 burn_in: int = 8, obs_encoder: str | None = None, embed_dim: int = 64) -> None:
        for name, value in [("obs_dim", obs_dim), ("latent_dim", latent_dim),
                            ("hidden_dim", hidden_dim), ("net_dim", net_dim),
                            ("window", window)]:
            check_positive_int(name, value)
        if not isinstance(burn_in, int) or burn_in < 0:
            raise ValueError(f"burn_in must be an integer >= 0, got {burn_in!r}")
        super().__init__(obs_dim, latent_dim)
        self.hparams = dict(obs_dim=obs_dim, latent_dim=latent_dim, hidden_dim=hidden_dim,
                            encoder=encoder, net_dim=net_dim, beta=beta, window=window,
                            burn_in=burn_in)
        self.beta = check_nonnegative("beta", beta)
        self.hidden_dim, self.window, self.burn_in = hidden_dim, window, burn_in
        # Plain torch networks: a PyroModule's per-call bookkeeping costs more than these tiny
        # nets inside a loop over time. They still train: the ELBO's surrogate loss is
        # differentiated with respect to every tensor in its graph once the program holds a
        # param site (``obs_scale``, registered by ``pyro_method``), and ``fit`` optimises all
        # of ``model.parameters()``.
        self.cell = nn.GRUCell(latent_dim, hidden_dim)
        net = dict(hidden_dim=net_dim, bias=True)
        self.prior_net = make_encoder(encoder, hidden_dim, 2 * latent_dim, **net)
        self.obs_embed: nn.Module | None = None
        if obs_encoder is None:
            self.posterior_net = make_encoder(encoder, hidden_dim + obs_dim, 2 * latent_dim,
                                              **net)
            self.decoder = make_encoder(encoder, hidden_dim + latent_dim, obs_dim, **net)
        else:
            check_positive_int("embed_dim", embed_dim)
            check_choice("obs_encoder", obs_encoder, ENCODERS)
            self.hparams.update(obs_encoder=obs_encoder, embed_dim=embed_dim)
            self.obs_embed = make_encoder(obs_encoder, obs_dim, embed_dim, **net)
            self.posterior_net = make_encoder(encoder, hidden_dim + embed_dim, 2 * latent_dim,
                                              **net)
            self.decoder = make_encoder(DECODERS[obs_encoder], hidden_dim + latent_dim,
                                        obs_dim, **net)
        self.obs_scale = PyroParam(torch.ones(obs_dim), constraint=constraints.positive)

    # -- distributions ----------------------------------------------------------------------
    def _normal(self, out: torch.Tensor) -> Distribution:
        loc, raw = out.split(self.latent_dim, dim=-1)
        return dist.Normal(loc, positive_scale(raw)).to_event(1)

    def prior_dist(self, h: torch.Tensor) -> Distribution:
        """``p(z_t | h_t)``."""
        return self._normal(self.prior_net(h))

    def posterior_dist(self, h: torch.Tensor, x: torch.Tensor) -> Distribution:
        """``q(z_t | h_t, x_t)``."""
        feats = x if self.obs_embed is None else self.obs_embed(x)
        return self._normal(self.posterior_net(torch.cat([h, feats], dim=-1)))

    def likelihood_dist(self, h: torch.Tensor, z: torch.Tensor) -> Distribution:
        """``p(x_t | h_t, z_t)``."""
        return dist.Normal(self.decoder(torch.cat([h, z], dim=-1)), self.obs_scale).to_event(1)

    # -- the deterministic path -------------------------------------------------------------
    def initial_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h_0, z_0) = (0, 0)`` for ``batch`` sequences."""
        return like.new_zeros(batch, self.hidden_dim), like.new_zeros(batch, self.latent_dim)

    def filter_states(self, frames: torch.Tensor, h: torch.Tensor | None = None,
                      z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the filter (posterior means, no sampling) over ``frames`` ``(B, T, D)``;
        returns the per-step ``h`` ``(B, T, hidden)`` and ``μ_q`` ``(B, T, latent)``."""
        if h is None or z is None:
            h, z = self.initial_state(frames.shape[0], frames)
        hs, zs = [], []
        for t in range(frames.shape[1]):
            h = self.cell(z, h)
            z = self.posterior_dist(h, frames[:, t]).mean
            hs.append(h)
            zs.append(z)
        return torch.stack(hs, 1), torch.stack(zs, 1)

    def _start(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The state each window starts from: the filter over its burn-in frames, without
        gradient (truncated BPTT)."""
        h, z = self.initial_state(seq.shape[0], seq)
        if self.burn_in:
            with torch.no_grad():
                hs, zs = self.filter_states(seq[:, :self.burn_in])
            h, z = hs[:, -1], zs[:, -1]
        return h, z

    def _windows(self, context: torch.Tensor, batch_size: int | None):
        seq = frame_windows(context, self.window, self.burn_in)
        return seq, pyro.plate("windows", seq.shape[0], device=context.device,
                               subsample_size=window_batch(batch_size, self.window,
                                                           seq.shape[0]))

    # -- Pyro program -----------------------------------------------------------------------
    @pyro_method
    def model(self, context: torch.Tensor, target: torch.Tensor | None = None,
              batch_size: int | None = None) -> None:
        seq, plate = self._windows(context, batch_size)
        with plate as idx:
            seq = seq.index_select(0, idx)
            h, z = self._start(seq)
            for t in pyro.markov(range(self.window)):
                h = self.cell(z, h)
                with poutine.scale(scale=self.beta):
                    z = pyro.sample(f"z_{t}", self.prior_dist(h))
                pyro.sample(f"x_{t}", self.likelihood_dist(h, z),
                            obs=seq[:, self.burn_in + t])

    @pyro_method
    def guide(self, context: torch.Tensor, target: torch.Tensor | None = None,
              batch_size: int | None = None) -> None:
        seq, plate = self._windows(context, batch_size)
        with plate as idx:
            seq = seq.index_select(0, idx)
            h, z = self._start(seq)
            for t in pyro.markov(range(self.window)):
                h = self.cell(z, h)
                with poutine.scale(scale=self.beta):
                    z = pyro.sample(f"z_{t}", self.posterior_dist(h, seq[:, self.burn_in + t]))

    # -- public API -------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[h_t, μ_q(h_t, x_t)]`` for consecutive frames ``x`` ``(T, D)``."""
        hs, zs = self.filter_states(x.unsqueeze(0))
        return torch.cat([hs[0], zs[0]], dim=-1)


register_model("rssm", color="C6",
               description="recurrent state-space model (GRU + stochastic latent, ELBO, "
                           "truncated BPTT)")(RSSM)
