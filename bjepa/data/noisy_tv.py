"""The linear "Noisy TV" world (docs/method.md#noisy-tv).

A slowly rotating signal ``s_t`` and a fast, high-variance distractor ``d_t`` are mixed into
the observation::

    s_{t+1} = A s_t + w,        A orthogonal,   w ~ N(0, 0.1² I)
    d_{t+1} = 0.9 d_t + v,                      v ~ N(0, 0.3² I)
    x_t     = C s_t + σ D d_t + ε,              ε ~ N(0, 0.01² I)

Train and test sets are separate trajectories of the same system; both are standardised with
the training statistics.

Example::

    train, test = make_split(sigma=8.0, seed=0)
    train.obs.shape, train.signal.shape   # (6000, 20), (6000, 4)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import lfilter

from bjepa._validation import check_nonnegative, check_nonnegative_int, check_positive_int

__all__ = ["NoisyTV", "NoisyTVParams", "make_params", "make_split", "simulate"]


@dataclass(frozen=True)
class NoisyTVParams:
    """The true system: dynamics ``A``, mixing matrices ``C`` (signal) and ``D`` (distractor)."""

    A: np.ndarray
    C: np.ndarray
    D: np.ndarray
    sigma: float
    signal_noise: float = 0.1
    distractor_rho: float = 0.9
    distractor_noise: float = 0.3
    obs_noise: float = 0.01


@dataclass
class NoisyTV:
    """One trajectory. ``obs[t]`` is ``x_t``; ``signal[t]`` is ``s_t``; ``distractor[t]`` is
    the distractor as it enters the observation's latent factors, ``σ d_t``.

    ``mean``/``std`` are the (training) statistics used to standardise ``obs``.
    """

    obs: torch.Tensor
    signal: torch.Tensor
    distractor: torch.Tensor
    params: NoisyTVParams
    mean: torch.Tensor
    std: torch.Tensor

    def __len__(self) -> int:
        return self.obs.shape[0]

    def to(self, device: torch.device | str) -> NoisyTV:
        """A copy with the tensors moved to ``device``."""
        return NoisyTV(
            self.obs.to(device),
            self.signal.to(device),
            self.distractor.to(device),
            self.params,
            self.mean.to(device),
            self.std.to(device),
        )


def _unit_columns(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    m = rng.standard_normal((rows, cols))
    return m / np.linalg.norm(m, axis=0, keepdims=True)


def make_params(
    sigma: float, *, obs_dim: int = 20, signal_dim: int = 4, distractor_dim: int = 4,
    rng: np.random.Generator,
) -> NoisyTVParams:
    """Draw ``A`` (QR of a Gaussian matrix, sign-corrected so it is Haar-orthogonal) and the
    unit-norm mixing columns ``C`` and ``D``."""
    q, r = np.linalg.qr(rng.standard_normal((signal_dim, signal_dim)))
    A = q * np.sign(np.diag(r))
    C = _unit_columns(rng, obs_dim, signal_dim)
    D = _unit_columns(rng, obs_dim, distractor_dim)
    return NoisyTVParams(A=A, C=C, D=D, sigma=float(sigma))


def _linear_recursion(a: np.ndarray | float, x0: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``x[0] = x0``, ``x[t+1] = a x[t] + noise[t]`` for ``t < T - 1`` (``a`` a matrix or a scalar),
    as a linear filter per eigen-mode of ``a`` instead of a Python loop (about 50× faster; the
    same numbers to rounding). Falls back to the loop for a defective ``a``."""
    steps = noise.shape[0]
    drive = np.concatenate([x0[None], noise[:-1]])  # x[t] = a x[t-1] + drive[t], x[-1] = 0
    if np.isscalar(a) or np.ndim(a) == 0:
        return lfilter([1.0], [1.0, -float(a)], drive, axis=0)
    evals, evecs = np.linalg.eig(a)
    if np.linalg.cond(evecs) < 1e6:
        modes = np.linalg.solve(evecs, drive.T.astype(complex))  # (k, T)
        out = np.stack([lfilter([1.0], [1.0, -lam], m) for lam, m in zip(evals, modes,
                                                                         strict=True)])
        return np.real(evecs @ out).T
    x = np.empty((steps, x0.shape[0]))
    x[0] = x0
    for t in range(steps - 1):
        x[t + 1] = a @ x[t] + noise[t]
    return x


def simulate(params: NoisyTVParams, steps: int, rng: np.random.Generator):
    """Simulate ``steps`` frames; returns raw ``(x, s, σ d)`` as float64 numpy arrays."""
    ds, dd = params.A.shape[0], params.D.shape[1]
    rho, vn = params.distractor_rho, params.distractor_noise
    s = np.empty((steps, ds))
    d = np.empty((steps, dd))
    s[0] = rng.standard_normal(ds)
    d[0] = rng.standard_normal(dd) * vn / np.sqrt(1.0 - rho**2)  # stationary start
    w = rng.standard_normal((steps, ds)) * params.signal_noise
    v = rng.standard_normal((steps, dd)) * vn
    s[:], d[:] = _linear_recursion(params.A, s[0], w), _linear_recursion(rho, d[0], v)
    eps = rng.standard_normal((steps, params.C.shape[0])) * params.obs_noise
    x = s @ params.C.T + params.sigma * d @ params.D.T + eps
    return x, s, params.sigma * d


def make_split(
    sigma: float = 8.0,
    seed: int = 0,
    *,
    train_steps: int = 6000,
    test_steps: int = 2000,
    obs_dim: int = 20,
    signal_dim: int = 4,
    distractor_dim: int = 4,
    standardize: bool = True,
) -> tuple[NoisyTV, NoisyTV]:
    """Train and test trajectories of one Noisy TV system (defaults of docs/method.md#noisy-tv).

    :param sigma: distractor strength σ >= 0.
    :param seed: seeds the system matrices and both trajectories.
    :param standardize: standardise observations with the training mean and std.
    """
    sigma = check_nonnegative("sigma", sigma)
    seed = check_nonnegative_int("seed", seed)
    for name, value in [("train_steps", train_steps), ("test_steps", test_steps),
                        ("obs_dim", obs_dim), ("signal_dim", signal_dim),
                        ("distractor_dim", distractor_dim)]:
        check_positive_int(name, value)
    if train_steps < 2 or test_steps < 2:
        raise ValueError("train_steps and test_steps must be >= 2 (pairs of frames are needed)")
    rng = np.random.default_rng(seed)
    params = make_params(sigma, obs_dim=obs_dim, signal_dim=signal_dim,
                         distractor_dim=distractor_dim, rng=rng)
    with np.errstate(over="ignore", invalid="ignore"):
        xs, ss, ds = simulate(params, train_steps, rng)
        xt, st, dt = simulate(params, test_steps, rng)
        mean = xs.mean(0) if standardize else np.zeros(obs_dim)
        std = xs.std(0) + 1e-8 if standardize else np.ones(obs_dim)
    big = np.finfo(np.float32).max
    if not all(np.isfinite(a).all() and np.abs(a).max() < big for a in (xs, xt, ds, dt, std)):
        raise ValueError(f"sigma={sigma:g} is too large: the observations overflow float32")

    def pack(x, s, d):
        f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        return NoisyTV(f((x - mean) / std), f(s), f(d), params, f(mean), f(std))

    return pack(xs, ss, ds), pack(xt, st, dt)
