"""Linear-Gaussian state-space baselines: the Kalman filter with the true system (an oracle) and
a linear-Gaussian state-space model *learned* from the observations alone.

The learned model's generative story, per window of ``W`` consecutive frames::

    z_0        ~ N(m_0, P_0)
    z_{t+1}    = z_t F + w_t,            w_t ~ N(0, Q)
    x_t - b    = z_t H + v_t,            v_t ~ N(0, diag r²)

The states are integrated out exactly (``pyro.distributions.GaussianHMM``: a parallel-scan
Kalman filter), so the guide is empty and the ELBO is the exact log-likelihood: SVI here is
maximum likelihood of ``F, Q, H, r, b, m_0, P_0`` by Adam. ``init="cca"`` starts from a subspace
identification (canonical directions between ``x_t`` and ``x_{t+1}``, then least squares).

Both models represent frame ``x_t`` by the one-step predicted state mean
``E[z_{t+1} | x_{≤t}]`` from a Kalman filter run over the whole trajectory, so rows passed to
``encode`` must be consecutive frames of one trajectory. Training pairs ``(x_t, x_{t+1})``
are consecutive rows too (``fit(model, obs[:-1], obs[1:])``); the model cuts the context into
windows of ``window`` frames.

Example::

    m = LinearGaussianSSM(obs_dim=20, latent_dim=4)
    fit(m, train.obs[:-1], train.obs[1:], steps=500, lr=1e-2)
    z = m.encode(test.obs)          # (T, 4): predicted next state, probed against s_{t+1}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroParam, pyro_method
from torch import nn
from torch.distributions import constraints

from bjepa._validation import check_positive_int, check_tensor
from bjepa.metrics import canonical_directions
from bjepa.models.base import WorldModel, validated_init
from bjepa.models.registry import register_model

__all__ = ["KalmanOracle", "LinearGaussianSSM", "frame_windows", "kalman_filter",
           "window_batch"]


def frame_windows(frames: torch.Tensor, window: int, burn_in: int = 0) -> torch.Tensor:
    """Consecutive, non-overlapping windows of ``burn_in + window`` frames: ``(n, burn_in +
    window, D)`` where window ``j`` scores frames ``burn_in + j·window … burn_in + (j+1)·window
    − 1`` and is preceded by its ``burn_in`` frames (which the previous window scores)."""
    if frames.dim() != 2:
        raise ValueError(f"sequence models take frames of shape (T, obs_dim), got "
                         f"{tuple(frames.shape)}; they cannot be trained as a replica stack: "
                         "train one model at a time (fit(..., replicas=1), --replicas 1)")
    n = (frames.shape[-2] - burn_in) // window
    if n < 1:
        raise ValueError(f"context has {frames.shape[-2]} frames, fewer than one window of "
                         f"{window} (+ {burn_in} burn-in); pass more frames or a smaller window")
    return frames.unfold(-2, burn_in + window, window)[:n].transpose(-1, -2)


def window_batch(batch_size: int | None, window: int, n_windows: int) -> int | None:
    """How many windows a mini-batch of ``batch_size`` frames holds (``None``: all)."""
    if batch_size is None:
        return None
    return min(max(1, math.ceil(batch_size / window)), n_windows)


def kalman_filter(obs: np.ndarray, transition: np.ndarray, transition_cov: np.ndarray,
                  observation: np.ndarray, observation_cov: np.ndarray, init_loc: np.ndarray,
                  init_cov: np.ndarray, obs_offset: np.ndarray | None = None) -> np.ndarray:
    """Filtered state means ``E[z_t | x_{≤t}]``, shape ``(T, n)``, of the column-vector system
    ``z_{t+1} = F z_t + w`` (``w ~ N(0, Q)``), ``x_t = H z_t + b + v`` (``v ~ N(0, R)``),
    ``z_0 ~ N(m_0, P_0)``. Covariances are iterated until they stop changing (a time-invariant
    system reaches its steady-state gain quickly), then the gain is reused."""
    x = np.asarray(obs, dtype=np.float64)
    F, Q, H, R = (np.asarray(a, dtype=np.float64) for a in (transition, transition_cov,
                                                             observation, observation_cov))
    b = np.zeros(H.shape[0]) if obs_offset is None else np.asarray(obs_offset, np.float64)
    m, P = np.asarray(init_loc, np.float64).copy(), np.asarray(init_cov, np.float64).copy()
    n = F.shape[0]
    out = np.empty((x.shape[0], n))
    eye = np.eye(n)
    K = None
    steady = False
    for t in range(x.shape[0]):
        if not steady:
            S = H @ P @ H.T + R
            K = np.linalg.solve(S, H @ P).T  # P Hᵀ S⁻¹ (S, P symmetric)
            IKH = eye - K @ H
            P_filt = IKH @ P @ IKH.T + K @ R @ K.T  # Joseph form
            P_next = F @ P_filt @ F.T + Q
            steady = np.allclose(P_next, P, rtol=1e-9, atol=1e-12)
            P = 0.5 * (P_next + P_next.T)
        m = m + K @ (x[t] - b - H @ m)
        out[t] = m
        m = F @ m
    return out


class KalmanOracle(nn.Module):
    """The Kalman filter with the true Noisy TV system on the augmented state ``[s; d]``.

    ``s_{t+1} = A s_t + w``, ``d_{t+1} = ρ d_t + v``, ``x_t = C s_t + σ D d_t + ε``, with
    observations standardised by ``(x − mean) / std`` (the data's own statistics). It is an
    upper bound for the other models, not something that learns: it has no parameters.

    :param system: the true :class:`bjepa.data.noisy_tv.NoisyTVParams`.
    :param mean: the standardisation mean of the observations.
    :param std: the standardisation standard deviation.
    """

    probe_offset = 1

    def __init__(self, system: Any, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        A, C, D = (np.asarray(a, np.float64) for a in (system.A, system.C, system.D))
        ds, dd = A.shape[0], D.shape[1]
        mean, std = (np.asarray(torch.as_tensor(v).double().cpu()) for v in (mean, std))
        if mean.shape != (C.shape[0],) or std.shape != (C.shape[0],):
            raise ValueError(f"mean and std must have shape ({C.shape[0]},) like the "
                             f"observations, got {mean.shape} and {std.shape}")
        rho = system.distractor_rho
        F = np.block([[A, np.zeros((ds, dd))], [np.zeros((dd, ds)), rho * np.eye(dd)]])
        Q = np.diag([system.signal_noise ** 2] * ds + [system.distractor_noise ** 2] * dd)
        H = np.hstack([C, system.sigma * D]) / std[:, None]
        R = np.diag(system.obs_noise ** 2 / std ** 2)
        P0 = np.diag([1.0] * ds + [system.distractor_noise ** 2 / (1 - rho ** 2)] * dd)
        self.obs_dim, self.signal_dim = C.shape[0], ds
        for name, value in dict(transition=F, transition_cov=Q, observation=H,
                                observation_cov=R, init_cov=P0, obs_offset=-mean / std).items():
            self.register_buffer(name, torch.as_tensor(value))

    @classmethod
    def from_split(cls, train: Any) -> KalmanOracle:
        """The oracle of a :class:`bjepa.data.noisy_tv.NoisyTV` split (its system and its
        standardisation)."""
        return cls(train.params, train.mean, train.std)

    def filter(self, x: torch.Tensor) -> torch.Tensor:
        """Filtered means ``E[[s_t; d_t] | x_{≤t}]`` of consecutive frames ``x``, ``(T, 8)``."""
        check_tensor("x", x, ndim=2, last_dim=self.obs_dim)
        b = {k: v.numpy() for k, v in self.named_buffers()}
        m = kalman_filter(x.detach().cpu().double().numpy(), b["transition"],
                          b["transition_cov"], b["observation"], b["observation_cov"],
                          np.zeros(b["transition"].shape[0]), b["init_cov"], b["obs_offset"])
        return torch.as_tensor(m, dtype=torch.float32)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted next state ``E[[s_{t+1}; d_{t+1}] | x_{≤t}]``, ``(T, 8)``."""
        return self.filter(x) @ self.transition.float().T

    def predict_signal(self, x: torch.Tensor) -> torch.Tensor:
        """The filter's own prediction of ``s_{t+1}`` (no probe), ``(T, D_s)``."""
        return self.encode(x)[:, :self.signal_dim]


class LinearGaussianSSM(WorldModel):
    """A linear-Gaussian state-space model learned by maximum likelihood (SVI with an empty
    guide over the exactly marginalised states; see the module docstring).

    :param obs_dim: observation size.
    :param latent_dim: state size ``n``.
    :param window: frames per training window (the likelihood restarts from ``N(m_0, P_0)``
        at every window).
    :param init: ``"cca"`` (subspace identification from the training pairs, default) or
        ``"random"``.
    """

    probe_offset = 1
    needs_target = False
    jit_safe = False  # constrained PyroParams are read outside Pyro's param replay
    stackable = False  # reads its data as one time series

    def __init__(self, obs_dim: int, latent_dim: int = 4, *, window: int = 50,
                 init: str = "cca") -> None:
        check_positive_int("obs_dim", obs_dim)
        check_positive_int("latent_dim", latent_dim)
        check_positive_int("window", window)
        super().__init__(obs_dim, latent_dim)
        self.hparams = dict(obs_dim=obs_dim, latent_dim=latent_dim, window=window, init=init)
        self.window = window
        self.init = validated_init(init)
        n = latent_dim
        # row-vector convention of GaussianHMM: z_{t+1} = z_t @ transition_matrix
        self.transition_matrix = nn.Parameter(0.9 * torch.eye(n))
        self.transition_scale_tril = PyroParam(0.3 * torch.eye(n),
                                               constraint=constraints.lower_cholesky)
        self.observation_matrix = nn.Parameter(torch.randn(n, obs_dim) / math.sqrt(n))
        self.observation_scale = PyroParam(torch.ones(obs_dim), constraint=constraints.positive)
        self.obs_loc = nn.Parameter(torch.zeros(obs_dim))
        self.init_loc = nn.Parameter(torch.zeros(n))
        self.init_scale_tril = PyroParam(torch.eye(n), constraint=constraints.lower_cholesky)

    # -- distributions ----------------------------------------------------------------------
    def hmm_dist(self, duration: int, dtype: torch.dtype | None = None) -> dist.GaussianHMM:
        """``p(x_{1:W} − b)`` with the states integrated out, event shape ``(W, obs_dim)``,
        computed in ``dtype`` (the model trains in float64: with nearly noise-free observations
        the filter's covariances are too ill-conditioned for float32 Cholesky factors)."""
        def c(t: torch.Tensor) -> torch.Tensor:
            return t if dtype is None else t.to(dtype)

        zeros = c(self.init_loc.new_zeros(self.latent_dim))
        return dist.GaussianHMM(
            dist.MultivariateNormal(c(self.init_loc), scale_tril=c(self.init_scale_tril)),
            c(self.transition_matrix),
            dist.MultivariateNormal(zeros, scale_tril=c(self.transition_scale_tril)),
            c(self.observation_matrix),
            dist.Normal(c(self.obs_loc.new_zeros(self.obs_dim)),
                        c(self.observation_scale)).to_event(1),
            duration=duration)

    # -- Pyro program -----------------------------------------------------------------------
    @pyro_method  # this module's own parameters become param sites, so SVI trains them
    def model(self, context: torch.Tensor, target: torch.Tensor | None = None,
              batch_size: int | None = None) -> None:
        seq = frame_windows(context, self.window)
        with pyro.plate("windows", seq.shape[0], device=context.device,
                        subsample_size=window_batch(batch_size, self.window, seq.shape[0])
                        ) as idx:
            obs = (seq.index_select(0, idx) - self.obs_loc).double()
            pyro.sample("obs", self.hmm_dist(self.window, torch.float64).expand([len(idx)]),
                        obs=obs)

    def guide(self, context: torch.Tensor, target: torch.Tensor | None = None,
              batch_size: int | None = None) -> None:
        """Empty: the states are integrated out exactly, so the ELBO is the log-likelihood."""

    # -- initialisation ---------------------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self, context: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Subspace identification: states ``z_t = W (x_t − x̄)`` along the leading canonical
        directions between ``x_t`` and ``x_{t+1}``; ``F``, ``H`` and the noise scales by least
        squares on those states. Returns the canonical correlations."""
        x = context.double()
        W, rho = canonical_directions(x, target.double(), self.latent_dim)
        mean = x.mean(0)
        z = (x - mean) @ W.double().T
        F = torch.linalg.lstsq(z[:-1], z[1:]).solution                     # z_{t+1} ≈ z_t F
        w = z[1:] - z[:-1] @ F
        H = torch.linalg.lstsq(z, x - mean).solution                        # x − x̄ ≈ z H
        v = (x - mean) - z @ H
        n = self.latent_dim
        Q = torch.cov(w.T).reshape(n, n) + 1e-6 * torch.eye(n, dtype=x.dtype)
        P0 = torch.cov(z.T).reshape(n, n) + 1e-6 * torch.eye(n, dtype=x.dtype)
        dtype = self.transition_matrix.dtype
        self.transition_matrix.copy_(F.to(dtype))
        self.transition_scale_tril = torch.linalg.cholesky(Q).to(dtype)
        self.observation_matrix.copy_(H.to(dtype))
        self.observation_scale = v.std(0).clamp_min(1e-3).to(dtype)
        self.obs_loc.copy_(mean.to(dtype))
        self.init_loc.copy_(z[0].to(dtype))
        self.init_scale_tril = torch.linalg.cholesky(P0).to(dtype)
        return rho

    # -- public API -------------------------------------------------------------------------
    @torch.no_grad()
    def filter(self, x: torch.Tensor) -> torch.Tensor:
        """Filtered state means ``E[z_t | x_{≤t}]`` of consecutive frames ``x``, ``(T, n)``."""
        x = self.as_input("x", x)
        F = self.transition_matrix.double().T
        L = self.transition_scale_tril.double()
        H = self.observation_matrix.double().T
        r = self.observation_scale.double()
        P0 = self.init_scale_tril.double()
        m = kalman_filter(x.cpu().double().numpy(), F.cpu().numpy(), (L @ L.T).cpu().numpy(),
                          H.cpu().numpy(), torch.diag(r ** 2).cpu().numpy(),
                          self.init_loc.double().cpu().numpy(), (P0 @ P0.T).cpu().numpy(),
                          self.obs_loc.double().cpu().numpy())
        return torch.as_tensor(m, dtype=x.dtype, device=x.device)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted next state ``E[z_{t+1} | x_{≤t}]``."""
        return self.filter(x) @ self.transition_matrix


register_model("lgssm", color="C5", description="linear-Gaussian state-space model learned by "
               "maximum likelihood (Kalman likelihood, SVI)")(LinearGaussianSSM)
