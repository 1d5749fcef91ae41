"""Action-conditioned world models with a reward head, for planning (docs/control.md).

Both models are Pyro programs over *sequences* cut from a replay buffer: an observation
``o_0``, the ``H`` actions ``a_0 … a_{H-1}`` taken from it, the ``H`` observations
``o_1 … o_H`` that followed and the ``H`` rewards ``r_0 … r_{H-1}``. So that they train with
the library's one training loop (``fit``, mini-batches drawn by ``pyro.plate``), a batch of
sequences is packed into two matrices (:meth:`ControlWorldModel.pack`)::

    context = [o_0 | a_0 … a_{H-1}]              (N, D_o + H·A)
    target  = [o_1 … o_H | r_0 … r_{H-1}]        (N, H·D_o + H)

**ControlVJEPA** (VJEPA with actions and rewards). The context encoder ``f_θ`` maps ``o_0`` to
``ẑ_0``; the predictor rolls it forward open-loop, ``p_φ(z_{k+1} | ẑ_k, a_k) =
N(μ_φ(ẑ_k, a_k), diag σ²_φ(ẑ_k, a_k))`` with ``ẑ_{k+1} = μ_φ(ẑ_k, a_k)``; the target latents
``z_1 … z_H`` have the VJEPA posterior ``q(z_k | o_k) = N(μ_θ'(o_k), diag σ²_θ'(o_k))`` (EMA
mean, learned scale) and a standard-normal prior scaled by β; a reward head reads ``(ẑ_k, a_k)``::

    −ELBO = Σ_k E_q[−log p_φ(z_k | ẑ_{k-1}, a_{k-1})] + β Σ_k KL(q(z_k | o_k) ‖ N(0, I))
            − Σ_k log N(r_k; ρ(ẑ_k, a_k), s_r²)

No observation is reconstructed: the latent only has to predict its own EMA target and the
rewards, so dimensions of the observation that are unpredictable (a noisy TV) cost nothing.

**ControlRecon** (the reconstruction baseline, "Dreamer-lite": a non-recurrent state-space model
with a decoder, as in the reference implementation's planning experiment). ``z_0 ~ N(0, I)``,
``z_{k+1} ~ N(μ_φ(z_k, a_k), σ²_φ(z_k, a_k))``, ``o_k ~ N(g(z_k), s_o²)`` and
``r_k ~ N(ρ(z_k, a_k), s_r²)``, with the amortised posterior ``q(z_k | o_k)``: every
observation dimension, distractors included, has to be explained by the latent.

Both plan through :meth:`ControlWorldModel.imagine` (predicted rewards of action sequences from
a start latent, sampling the predictive distribution or following its mean), used by
:class:`bjepa.planning.reward.RewardCEM`.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from bjepa._validation import (
    check_choice,
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_tensor,
)
from bjepa.models.base import WorldModel, rows, tau_spec, to_pyro
from bjepa.models.encoders import DECODERS, make_encoder
from bjepa.models.heads import MIN_SCALE, positive_scale

#: observation encoders of the control models: an MLP on state vectors, the DQN-style CNN of
#: :mod:`bjepa.models.conv` on flat frame stacks (pixels)
CONTROL_ENCODERS = ("mlp", "conv")

__all__ = ["CONTROL_ENCODERS", "ControlRecon", "ControlVJEPA", "ControlWorldModel", "control_mlp",
           "observation_net"]


def control_mlp(in_dim: int, out_dim: int, hidden_dim: int) -> nn.Sequential:
    """Two hidden layers of ``hidden_dim`` with layer norm and ELU, then a linear read-out."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ELU(),
                         nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ELU(),
                         nn.Linear(hidden_dim, out_dim))


def observation_net(encoder: str, in_dim: int, out_dim: int, hidden_dim: int) -> nn.Module:
    """The network reading observations: ``control_mlp`` or the frame-stack CNN."""
    check_choice("encoder", encoder, CONTROL_ENCODERS)
    if encoder == "mlp":
        return control_mlp(in_dim, out_dim, hidden_dim)
    import bjepa.models.conv  # noqa: F401 - registers "conv" and "deconv"

    return make_encoder("conv", in_dim, out_dim, hidden_dim=hidden_dim, bias=True)


def _softplus_inverse(s: float) -> float:
    return s + math.log(-math.expm1(-s))


class ControlWorldModel(WorldModel):
    """Shared parts: packing, observation standardisation, the reward head, imagination."""

    probe_offset = 0
    jit_safe = False
    stackable = False

    def __init__(self, obs_dim: int, action_dim: int, latent_dim: int, *, horizon: int,
                 hidden_dim: int, encoder: str = "mlp") -> None:
        check_positive_int("obs_dim", obs_dim)
        check_positive_int("action_dim", action_dim)
        check_positive_int("latent_dim", latent_dim)
        check_positive_int("horizon", horizon)
        check_positive_int("hidden_dim", hidden_dim)
        super().__init__(obs_dim, latent_dim)
        self.action_dim, self.horizon, self.hidden_dim = action_dim, horizon, hidden_dim
        self.encoder_kind = check_choice("encoder", encoder, CONTROL_ENCODERS)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_scale", torch.ones(obs_dim))
        self.reward_head = to_pyro(control_mlp(latent_dim + action_dim, 1, hidden_dim))
        self.reward_scale_raw = nn.Parameter(torch.tensor(_softplus_inverse(1.0)))

    # -- packing ----------------------------------------------------------------------------
    @property
    def context_width(self) -> int:
        return self.obs_dim + self.horizon * self.action_dim

    @property
    def target_width(self) -> int:
        return self.horizon * (self.obs_dim + 1)

    def pack(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences ``obs`` (N, H + 1, D_o), ``actions`` (N, H, A), ``rewards`` (N, H) →
        ``(context, target)`` for ``fit`` (module docstring)."""
        n, h = obs.shape[0], self.horizon
        check_tensor("obs", obs, ndim=3, last_dim=self.obs_dim)
        check_tensor("actions", actions, ndim=3, last_dim=self.action_dim)
        check_tensor("rewards", rewards, ndim=2)
        if obs.shape[1] != h + 1 or actions.shape[:2] != (n, h) or rewards.shape != (n, h):
            raise ValueError(
                f"sequences for horizon {h} need obs (N, {h + 1}, {self.obs_dim}), actions "
                f"(N, {h}, {self.action_dim}) and rewards (N, {h}); got {tuple(obs.shape)}, "
                f"{tuple(actions.shape)} and {tuple(rewards.shape)}")
        context = torch.cat([obs[:, 0], actions.reshape(n, -1)], -1)
        target = torch.cat([obs[:, 1:].reshape(n, -1), rewards], -1)
        return context, target

    def unpack(self, context: torch.Tensor, target: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(o_0, actions (N, H, A), o_{1..H} (N, H, D_o), rewards (N, H))``, standardised."""
        n, h, d = context.shape[0], self.horizon, self.obs_dim
        o0 = self.standardize(context[:, :d])
        actions = context[:, d:].reshape(n, h, self.action_dim)
        nxt = self.standardize(target[:, :h * d].reshape(n, h, d))
        return o0, actions, nxt, target[:, h * d:]

    def check_inputs(self, context: torch.Tensor, target: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_tensor("context", context, ndim=2, last_dim=self.context_width)
        if target is None:
            raise ValueError(f"{type(self).__name__} needs a target (packed with .pack)")
        check_tensor("target", target, ndim=2, last_dim=self.target_width)
        if target.shape[0] != context.shape[0]:
            raise ValueError("context and target must have the same number of rows, got "
                             f"{context.shape[0]} and {target.shape[0]}")
        return context, target

    # -- observations -----------------------------------------------------------------------
    @torch.no_grad()
    def set_obs_stats(self, obs: torch.Tensor) -> None:
        """Standardise observations by the mean and standard deviation of ``obs`` (N, D_o)
        (e.g. the first, random-action episodes); kept in the model's state."""
        check_tensor("obs", obs, ndim=2, last_dim=self.obs_dim)
        self.obs_mean.copy_(obs.mean(0))
        self.obs_scale.copy_(obs.std(0).clamp_min(1e-2))

    def standardize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_scale

    @property
    def reward_scale(self) -> torch.Tensor:
        return F.softplus(self.reward_scale_raw) + 1e-3

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.reward_head(torch.cat([z, a], -1)).squeeze(-1)

    # -- planning ---------------------------------------------------------------------------
    def start_latent(self, obs: torch.Tensor) -> torch.Tensor:
        """The latent planning starts from, for observations (N, D_o)."""
        raise NotImplementedError

    def transition(self, z: torch.Tensor, a: torch.Tensor) -> dist.Normal:
        """``p(z' | z, a) = N(z + Δ_φ(z, a), σ²_φ(z, a))`` from the subclass's ``predictor``
        (a network of ``[z, a]`` with ``2·D_z`` outputs; batch shape (N, D_z))."""
        loc, raw = self.predictor(torch.cat([z, a], -1)).chunk(2, -1)
        return dist.Normal(z + loc, positive_scale(raw))

    @torch.no_grad()
    def imagine(self, z0: torch.Tensor, actions: torch.Tensor, *, sample: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Predicted rewards (P, H') of ``actions`` (P, H', A) from ``z0`` (P, D_z) or (D_z,):
        each step draws the next latent from the predictive distribution (``sample=True``) or
        takes its mean."""
        p, h = actions.shape[:2]
        z = z0.expand(p, -1) if z0.dim() == 1 else z0
        out = []
        for k in range(h):
            a = actions[:, k]
            out.append(self.reward(z, a))
            d = self.transition(z, a)
            z = d.loc
            if sample:
                eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
                z = z + d.scale * eps
        return torch.stack(out, -1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The representation of observations (N, D_o) used by probes and planning."""
        check_tensor("x", x, ndim=2, last_dim=self.obs_dim, device=self.device)
        with torch.no_grad():
            return self.start_latent(x.to(self.obs_mean.dtype))


class ControlVJEPA(ControlWorldModel):
    """VJEPA with actions and a reward head (module docstring).

    :param obs_dim: observation size (state and distractor dimensions).
    :param action_dim: action size.
    :param latent_dim: latent size.
    :param horizon: transitions per training sequence (open-loop rollout length).
    :param hidden_dim: width of every network.
    :param beta: weight β of the KL of the target posterior to ``N(0, I)``.
    :param tau: EMA momentum of the target encoder.
    :param target_scale_init: initial target standard deviation.
    :param encoder: ``"mlp"`` (state vectors) or ``"conv"`` (flat frame stacks).
    """

    def __init__(self, obs_dim: int, action_dim: int, latent_dim: int = 32, *, horizon: int = 5,
                 hidden_dim: int = 128, beta: float = 0.01, tau: float = 0.99,
                 target_scale_init: float = 0.1, encoder: str = "mlp") -> None:
        super().__init__(obs_dim, action_dim, latent_dim, horizon=horizon,
                         hidden_dim=hidden_dim, encoder=encoder)
        self.beta = check_nonnegative("beta", beta)
        check_positive("target_scale_init", target_scale_init)
        self.hparams = dict(obs_dim=obs_dim, action_dim=action_dim, latent_dim=latent_dim,
                            horizon=horizon, hidden_dim=hidden_dim, beta=beta,
                            tau=tau_spec(tau), target_scale_init=target_scale_init,
                            encoder=encoder)
        net = observation_net(encoder, obs_dim, latent_dim, hidden_dim)
        self._init_ema(net, tau)
        self.context_encoder = to_pyro(net)
        self.target_scale_net = to_pyro(nn.Linear(obs_dim, latent_dim))
        with torch.no_grad():
            self.target_scale_net.weight.zero_()
            self.target_scale_net.bias.fill_(_softplus_inverse(target_scale_init))
        self.predictor = to_pyro(control_mlp(latent_dim + action_dim, 2 * latent_dim,
                                             hidden_dim))

    def start_latent(self, obs: torch.Tensor) -> torch.Tensor:
        return self.context_encoder(self.standardize(obs))

    def _rollout(self, o0: torch.Tensor, actions: torch.Tensor):
        z = self.context_latent(o0)
        locs, scales, rewards = [], [], []
        for k in range(self.horizon):
            a = actions[:, k]
            rewards.append(self.reward(z, a))
            d = self.transition(z, a)
            locs.append(d.loc)
            scales.append(d.scale)
            z = d.loc
        return torch.stack(locs, -2), torch.stack(scales, -2), torch.stack(rewards, -1)

    def model(self, context: torch.Tensor, target: torch.Tensor,
              batch_size: int | None = None) -> None:
        with pyro.plate("data", context.shape[0], subsample_size=batch_size,
                        device=context.device) as idx:
            o0, actions, _, rew = self.unpack(rows(context, idx), rows(target, idx))
            loc, scale, r_hat = self._rollout(o0, actions)
            with poutine.scale(scale=self.beta):
                z_t = pyro.sample("z_target", dist.Normal(torch.zeros_like(loc),
                                                          torch.ones_like(loc)).to_event(2))
            pyro.factor("dynamics", dist.Normal(loc, scale).to_event(2).log_prob(z_t))
            pyro.sample("reward", dist.Normal(r_hat, self.reward_scale).to_event(1), obs=rew)

    def guide(self, context: torch.Tensor, target: torch.Tensor,
              batch_size: int | None = None) -> None:
        with pyro.plate("data", context.shape[0], subsample_size=batch_size,
                        device=context.device) as idx, poutine.scale(scale=self.beta):
            _, _, nxt, _ = self.unpack(rows(context, idx), rows(target, idx))
            loc = self._ema(nxt)
            scale = positive_scale(self.target_scale_net(nxt))
            pyro.sample("z_target", dist.Normal(loc, scale).to_event(2))


class ControlRecon(ControlWorldModel):
    """The reconstruction baseline ("Dreamer-lite", module docstring): a state-space model
    with an observation decoder, trained by the ELBO.

    :param obs_scale_init: initial (learned) observation noise, in standardised units.
    :param encoder: ``"mlp"`` (state vectors) or ``"conv"`` (flat frame stacks; the decoder is
        then the transposed CNN).
    """

    def __init__(self, obs_dim: int, action_dim: int, latent_dim: int = 32, *, horizon: int = 5,
                 hidden_dim: int = 128, beta: float = 1.0, obs_scale_init: float = 0.3,
                 encoder: str = "mlp") -> None:
        super().__init__(obs_dim, action_dim, latent_dim, horizon=horizon,
                         hidden_dim=hidden_dim, encoder=encoder)
        self.beta = check_nonnegative("beta", beta)
        check_positive("obs_scale_init", obs_scale_init)
        self.hparams = dict(obs_dim=obs_dim, action_dim=action_dim, latent_dim=latent_dim,
                            horizon=horizon, hidden_dim=hidden_dim, beta=beta,
                            obs_scale_init=obs_scale_init, encoder=encoder)
        self.context_encoder = to_pyro(observation_net(encoder, obs_dim, 2 * latent_dim,
                                                       hidden_dim))
        if encoder == "mlp":
            self.decoder = to_pyro(control_mlp(latent_dim, obs_dim, hidden_dim))
        else:
            self.decoder = to_pyro(make_encoder(DECODERS["conv"], latent_dim, obs_dim,
                                                hidden_dim=hidden_dim, bias=True))
        self.predictor = to_pyro(control_mlp(latent_dim + action_dim, 2 * latent_dim,
                                             hidden_dim))
        self.obs_scale_raw = nn.Parameter(torch.full((obs_dim,),
                                                     _softplus_inverse(obs_scale_init)))

    def posterior(self, obs_std: torch.Tensor) -> dist.Normal:
        """``q(z | o)`` for standardised observations."""
        loc, raw = self.context_encoder(obs_std).chunk(2, -1)
        return dist.Normal(loc, positive_scale(raw))

    def start_latent(self, obs: torch.Tensor) -> torch.Tensor:
        return self.posterior(self.standardize(obs)).loc

    def model(self, context: torch.Tensor, target: torch.Tensor,
              batch_size: int | None = None) -> None:
        obs_scale = F.softplus(self.obs_scale_raw) + MIN_SCALE
        with pyro.plate("data", context.shape[0], subsample_size=batch_size,
                        device=context.device) as idx:
            o0, actions, nxt, rew = self.unpack(rows(context, idx), rows(target, idx))
            obs = torch.cat([o0.unsqueeze(-2), nxt], -2)
            zeros = o0.new_zeros(o0.shape[0], self.latent_dim)
            prior = dist.Normal(zeros, torch.ones_like(zeros))
            for k in range(self.horizon + 1):
                with poutine.scale(scale=self.beta):
                    z = pyro.sample(f"z_{k}", prior.to_event(1))
                pyro.sample(f"obs_{k}", dist.Normal(self.decoder(z), obs_scale).to_event(1),
                            obs=obs[:, k])
                if k < self.horizon:
                    a = actions[:, k]
                    pyro.sample(f"reward_{k}", dist.Normal(self.reward(z, a), self.reward_scale),
                                obs=rew[:, k])
                    prior = self.transition(z, a)

    def guide(self, context: torch.Tensor, target: torch.Tensor,
              batch_size: int | None = None) -> None:
        with pyro.plate("data", context.shape[0], subsample_size=batch_size,
                        device=context.device) as idx:
            o0, _, nxt, _ = self.unpack(rows(context, idx), rows(target, idx))
            q = self.posterior(torch.cat([o0.unsqueeze(-2), nxt], -2))
            for k in range(self.horizon + 1):
                with poutine.scale(scale=self.beta):
                    pyro.sample(f"z_{k}", dist.Normal(q.loc[:, k], q.scale[:, k]).to_event(1))
