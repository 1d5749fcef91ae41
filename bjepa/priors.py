"""Priors for BJEPA — one interface for both kinds (docs/method.md#bjepa-two-kinds-of-prior).

**Latent priors** are experts over the target latent ``z`` in the product of experts::

    p(z_T | z_C, η)  ∝  p_like(z_T | z_C) · p_prior(z_T | η)

A latent prior is a small ``nn.Module`` with one required method, ``log_prob(z, eta=None)``
(an unnormalised log-density is fine). A Gaussian prior also implements ``gaussian(eta)``,
returning ``(loc, precision)`` so fusion with a Gaussian predictor is closed-form (a Kalman
update in latent space); everything else is fused by importance sampling. Priors used in
*training* (``p_struct`` in BJEPA's ``γ · KL(p_like ‖ p_struct)``) are turned into a Pyro
distribution by :meth:`LatentPrior.distribution`.

A new prior is one subclass and one method::

    class StudentT(LatentPrior):
        def __init__(self, dim, df=3.0):
            super().__init__(dim)
            self.df = df

        def log_prob(self, z, eta=None):
            return torch.distributions.StudentT(self.df).log_prob(z).sum(-1)

**Weight priors** put a distribution on the predictor's weights: :class:`WeightPrior`
subclasses implement ``site_dist(name, param)`` (TyXe style); :func:`make_weight_prior`
accepts ``"normal"``, ``"laplace"``, ``"horseshoe"``, a :class:`WeightPrior`, or any
callable ``(name, param) -> torch.distributions.Distribution``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import nn
from torch.distributions import Distribution, constraints

from bjepa._validation import check_positive, check_positive_int, check_tensor

__all__ = [
    "EnergyPrior",
    "fuse",
    "fuse_gaussian",
    "GaussianPrior",
    "GoalPrior",
    "HorseshoeWeightPrior",
    "LaplaceWeightPrior",
    "LatentPrior",
    "MixturePrior",
    "NormalWeightPrior",
    "StandardNormal",
    "UnnormalizedDensity",
    "WeightPrior",
    "make_weight_prior",
]


_NO_SHAPE = torch.Size()
logger = logging.getLogger(__name__)


class _Wrapped(dist.TorchDistribution):
    """Makes any ``torch.distributions`` object usable at a Pyro sample site."""

    arg_constraints: dict = {}

    def __init__(self, base: Distribution) -> None:
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    @property
    def has_rsample(self) -> bool:
        return self.base.has_rsample

    def rsample(self, sample_shape=_NO_SHAPE):
        return self.base.rsample(sample_shape)

    def sample(self, sample_shape=_NO_SHAPE):
        return self.base.sample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value)

    @property
    def mean(self):
        return self.base.mean

    @property
    def variance(self):
        return self.base.variance


class UnnormalizedDensity(dist.TorchDistribution):
    """A Pyro distribution defined only by a (possibly unnormalised) log-density.

    It cannot be sampled; it serves as the *model* side of a sample site whose value comes
    from the guide (the ELBO then uses the Monte Carlo estimate ``log q − log p``).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, log_density: Callable[[torch.Tensor], torch.Tensor], dim: int,
                 batch_shape: torch.Size = _NO_SHAPE) -> None:
        self._log_density = log_density
        super().__init__(batch_shape, torch.Size([dim]), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self._log_density(value)

    def expand(self, batch_shape, _instance=None):
        return UnnormalizedDensity(self._log_density, self.event_shape[0],
                                   torch.Size(batch_shape))


class LatentPrior(nn.Module):
    """Base class of priors over the target latent ``z`` (event shape ``(dim,)``).

    Subclasses implement :meth:`log_prob`; Gaussian ones also :meth:`gaussian`.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)

    def log_prob(self, z: torch.Tensor, eta: torch.Tensor | None = None) -> torch.Tensor:
        """Log-density (up to a constant) of ``z`` of shape ``(..., dim)`` → ``(...)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement log_prob(z, eta)")

    def gaussian(self, eta: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(loc, precision)`` with shapes ``(..., dim)`` and ``(..., dim, dim)`` if this
        prior is Gaussian, else ``None`` (fusion then falls back to importance sampling)."""
        return None

    def distribution(self, eta: torch.Tensor | None = None) -> Distribution:
        """The prior as a distribution with event shape ``(dim,)`` (for Pyro sample sites)."""
        g = self.gaussian(eta)
        if g is not None:
            loc, prec = g
            return dist.MultivariateNormal(loc, precision_matrix=prec)
        return UnnormalizedDensity(lambda z: self.checked_log_prob(z, eta), self.dim)

    def checked_log_prob(self, z: torch.Tensor, eta: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """:meth:`log_prob` with shape and finiteness checks that name the prior."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__} has event shape ({self.dim},) but got "
                             f"z with last dimension {z.shape[-1]}")
        out = self.log_prob(z, eta)
        if not torch.is_tensor(out) or out.shape != z.shape[:-1]:
            raise ValueError(
                f"{type(self).__name__}.log_prob must return shape {tuple(z.shape[:-1])} "
                f"(one value per latent), got "
                f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}")
        if torch.isnan(out).any() or torch.isposinf(out).any():
            raise ValueError(f"{type(self).__name__}.log_prob returned NaN or +inf")
        return out


class GaussianPrior(LatentPrior):
    """``N(loc, diag scale²)``; ``learnable=True`` makes ``loc`` and ``scale`` parameters
    (the structural prior ``p_struct`` of BJEPA's training objective)."""

    def __init__(self, dim: int, loc: float | torch.Tensor = 0.0,
                 scale: float | torch.Tensor = 1.0, *, learnable: bool = False) -> None:
        super().__init__(dim)
        loc_t = torch.as_tensor(loc, dtype=torch.float32).expand(dim).clone()
        scale_t = torch.as_tensor(scale, dtype=torch.float32).expand(dim).clone()
        if not torch.isfinite(loc_t).all():
            raise ValueError("loc must be finite")
        if not (torch.isfinite(scale_t).all() and (scale_t > 0).all()):
            raise ValueError(f"scale must be finite and > 0, got {scale_t.tolist()}")
        self.learnable = learnable
        if learnable:
            self.loc = nn.Parameter(loc_t)
            self.raw_scale = nn.Parameter(torch.log(torch.expm1(scale_t)))
        else:
            self.register_buffer("loc", loc_t)
            self.register_buffer("raw_scale", torch.log(torch.expm1(scale_t)))

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale) + 1e-6

    def log_prob(self, z: torch.Tensor, eta: torch.Tensor | None = None) -> torch.Tensor:
        return torch.distributions.Normal(self.loc, self.scale).log_prob(z).sum(-1)

    def gaussian(self, eta: torch.Tensor | None = None):
        return self.loc, torch.diag_embed(self.scale.pow(-2))

    def distribution(self, eta: torch.Tensor | None = None) -> Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class StandardNormal(GaussianPrior):
    """``N(0, I)``."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, 0.0, 1.0)


class GoalPrior(LatentPrior):
    """``N(f_θ'(x_goal), σ²_goal I)``: a task prior pulling predictions towards a goal.

    :param goal_latent: the goal's latent, e.g. ``model.encode_target(x_goal)``; shape
        ``(dim,)`` or ``(N, dim)`` (one goal per row). ``eta`` passed at call time overrides it.
    :param scale: σ_goal > 0 (small = a strong pull).
    """

    def __init__(self, goal_latent: torch.Tensor, scale: float = 1.0) -> None:
        check_tensor("goal_latent", goal_latent)
        if goal_latent.dim() not in (1, 2):
            raise ValueError(f"goal_latent must be (dim,) or (N, dim), got "
                             f"{tuple(goal_latent.shape)}")
        super().__init__(goal_latent.shape[-1])
        self.scale = check_positive("scale", scale)
        self.register_buffer("goal", goal_latent.detach().clone())

    def _loc(self, eta: torch.Tensor | None) -> torch.Tensor:
        return self.goal if eta is None else eta

    def log_prob(self, z: torch.Tensor, eta: torch.Tensor | None = None) -> torch.Tensor:
        return torch.distributions.Normal(self._loc(eta), self.scale).log_prob(z).sum(-1)

    def gaussian(self, eta: torch.Tensor | None = None):
        loc = self._loc(eta)
        prec = torch.eye(self.dim, dtype=loc.dtype, device=loc.device) / self.scale**2
        return loc, prec.expand(loc.shape[:-1] + (self.dim, self.dim))


class EnergyPrior(LatentPrior):
    """``p(z) ∝ exp(−E(z))`` for any callable energy ``E: (..., dim) → (...)``."""

    def __init__(self, dim: int, energy: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__(dim)
        if not callable(energy):
            raise TypeError("energy must be a callable E(z) -> tensor of energies")
        self.energy = energy

    def log_prob(self, z: torch.Tensor, eta: torch.Tensor | None = None) -> torch.Tensor:
        return -self.energy(z)


class MixturePrior(LatentPrior):
    """A mixture of diagonal Gaussians, ``Σ_k w_k N(loc_k, diag scale_k²)``."""

    def __init__(self, locs: torch.Tensor, scales: torch.Tensor | float = 1.0,
                 weights: torch.Tensor | None = None) -> None:
        check_tensor("locs", locs, ndim=2)
        super().__init__(locs.shape[1])
        k = locs.shape[0]
        scales_t = torch.as_tensor(scales, dtype=locs.dtype).expand(k, self.dim).clone()
        if not (torch.isfinite(scales_t).all() and (scales_t > 0).all()):
            raise ValueError("scales must be finite and > 0")
        w = torch.ones(k) if weights is None else torch.as_tensor(weights, dtype=locs.dtype)
        if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum")
        self.register_buffer("locs", locs.detach().clone())
        self.register_buffer("scales", scales_t)
        self.register_buffer("logits", torch.log(w / w.sum()))

    def mixture(self) -> Distribution:
        comp = torch.distributions.Independent(
            torch.distributions.Normal(self.locs, self.scales), 1)
        return torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=self.logits), comp)

    def log_prob(self, z: torch.Tensor, eta: torch.Tensor | None = None) -> torch.Tensor:
        return self.mixture().log_prob(z)

    def distribution(self, eta: torch.Tensor | None = None) -> Distribution:
        comp = dist.Normal(self.locs, self.scales).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), comp)


# --------------------------------------------------------------------------- weight priors
class WeightPrior:
    """Chooses which predictor parameters become random and their prior (TyXe style).

    Subclasses implement :meth:`site_dist`. ``include`` filters parameters by name
    substring (default: every weight and bias of the predictor).
    """

    def __init__(self, include: tuple[str, ...] = ("weight", "bias")) -> None:
        self.include = include

    def selects(self, name: str) -> bool:
        return any(key in name.rsplit(".", 1)[-1] for key in self.include)

    def site_dist(self, name: str, param: torch.Tensor) -> Distribution:
        raise NotImplementedError


class NormalWeightPrior(WeightPrior):
    """``w ~ N(0, s²)`` elementwise (default ``s = 1``)."""

    def __init__(self, scale: float = 1.0, **kw) -> None:
        super().__init__(**kw)
        self.scale = check_positive("scale", scale)

    def site_dist(self, name: str, param: torch.Tensor) -> Distribution:
        return dist.Normal(torch.zeros_like(param), self.scale).to_event(param.dim())


class LaplaceWeightPrior(WeightPrior):
    """``w ~ Laplace(0, b)`` elementwise: sparsity-promoting."""

    def __init__(self, scale: float = 1.0, **kw) -> None:
        super().__init__(**kw)
        self.scale = check_positive("scale", scale)

    def site_dist(self, name: str, param: torch.Tensor) -> Distribution:
        return dist.Laplace(torch.zeros_like(param), self.scale).to_event(param.dim())


class HorseshoeWeightPrior(WeightPrior):
    """A horseshoe-like prior: the marginal of ``w | λ ~ N(0, (τ λ)²)``, ``λ ~ C⁺(0, 1)``.

    The exact marginal has no closed form; we use the tight analytic approximation
    ``log p(w) ≈ log log(1 + 2 τ² / w²) + const`` (Carvalho, Polson & Scott 2010, Thm. 1),
    which keeps the horseshoe's infinite spike at 0 and Cauchy-like tails while staying a
    single site per tensor (so it works with every autoguide).
    """

    def __init__(self, scale: float = 1.0, **kw) -> None:
        super().__init__(**kw)
        self.scale = check_positive("scale", scale)

    def site_dist(self, name: str, param: torch.Tensor) -> Distribution:
        tau2 = self.scale**2

        def log_density(w: torch.Tensor) -> torch.Tensor:
            lp = torch.log(torch.log1p(2 * tau2 / w.pow(2).clamp_min(1e-12)))
            lp = lp - math.log(self.scale) - 0.5 * math.log(2 * math.pi**3)
            return lp.flatten(-param.dim()).sum(-1)

        return _TensorDensity(log_density, param.shape)


class _TensorDensity(dist.TorchDistribution):
    """Unnormalised density over a whole parameter tensor (event shape = its shape)."""

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(self, log_density, shape: torch.Size) -> None:
        self._log_density = log_density
        super().__init__(torch.Size(), torch.Size(shape), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self._log_density(value)

    def sample(self, sample_shape=_NO_SHAPE):
        # used only to initialise autoguides near zero (the mode region of the horseshoe)
        return 0.1 * torch.randn(torch.Size(sample_shape) + self.event_shape)


class _CallablePrior(WeightPrior):
    def __init__(self, fn: Callable[[str, torch.Tensor], Distribution]) -> None:
        super().__init__()
        self.fn = fn

    def site_dist(self, name: str, param: torch.Tensor) -> Distribution:
        d = self.fn(name, param)
        if not isinstance(d, Distribution):
            raise TypeError(f"weight prior callable must return a torch Distribution for "
                            f"{name}, got {type(d).__name__}")
        if not d.event_shape and d.batch_shape in (torch.Size(), param.shape):
            d = d.expand(param.shape)  # an elementwise prior, broadcast over the tensor
        if tuple(d.batch_shape + d.event_shape) != tuple(param.shape):
            raise ValueError(f"weight prior for {name} has shape "
                             f"{tuple(d.batch_shape + d.event_shape)}, parameter has "
                             f"{tuple(param.shape)}")
        if isinstance(d, TorchDistributionMixin):
            return d.to_event(len(d.batch_shape)) if d.batch_shape else d
        if d.batch_shape:
            d = torch.distributions.Independent(d, len(d.batch_shape))
        return _Wrapped(d)


WEIGHT_PRIORS: dict[str, type[WeightPrior]] = {
    "normal": NormalWeightPrior, "laplace": LaplaceWeightPrior,
    "horseshoe": HorseshoeWeightPrior,
}


def make_weight_prior(spec: str | WeightPrior | Callable | None) -> WeightPrior | None:
    """``None`` | ``"normal"`` | ``"laplace"`` | ``"horseshoe"`` | a :class:`WeightPrior` |
    a callable ``(name, param) -> Distribution``."""
    if spec is None or isinstance(spec, WeightPrior):
        return spec
    if isinstance(spec, str):
        if spec not in WEIGHT_PRIORS:
            raise ValueError(f"unknown weight_prior {spec!r}; choose one of "
                             f"{', '.join(map(repr, WEIGHT_PRIORS))}, a WeightPrior or a "
                             "callable (name, param) -> Distribution")
        return WEIGHT_PRIORS[spec]()
    if callable(spec):
        return _CallablePrior(spec)
    raise TypeError(f"weight_prior must be a name, a WeightPrior or a callable, got "
                    f"{type(spec).__name__}")


# --------------------------------------------------------------------------------- fusion
def _gaussian_parts(d: Distribution) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
    """``(loc, precision, diagonal?)`` of a Gaussian predictive, else ``None``."""
    if isinstance(d, torch.distributions.Independent) and isinstance(
            d.base_dist, torch.distributions.Normal) and d.reinterpreted_batch_ndims == 1:
        return d.base_dist.loc, torch.diag_embed(d.base_dist.scale.pow(-2)), True
    if isinstance(d, torch.distributions.MultivariateNormal):
        return d.loc, d.precision_matrix, False
    return None


def fuse_gaussian(loc_a: torch.Tensor, prec_a: torch.Tensor, loc_b: torch.Tensor,
                  prec_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of two Gaussians: ``Λ = Λ_a + Λ_b``, ``μ = Λ⁻¹ (Λ_a μ_a + Λ_b μ_b)``.

    Returns ``(loc, covariance)`` — the Kalman update in latent space.
    """
    prec = prec_a + prec_b
    cov = torch.linalg.inv(prec)
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    rhs = (prec_a @ loc_a.unsqueeze(-1) + prec_b @ loc_b.unsqueeze(-1)).squeeze(-1)
    return (cov @ rhs.unsqueeze(-1)).squeeze(-1), cov


def fuse(likelihood: Distribution, prior: LatentPrior, eta: torch.Tensor | None = None, *,
         num_samples: int = 2000) -> Distribution:
    """The product of experts ``p_like(z) · p_prior(z | η)``, normalised.

    Closed form when both experts are Gaussian (a diagonal result stays an ``Independent
    Normal``, otherwise a ``MultivariateNormal``). Otherwise: draw ``num_samples`` proposals
    from ``likelihood``, weight them by the prior (self-normalised importance sampling) and
    return a :class:`pyro.distributions.Empirical` with batch ``(N,)``; its attribute ``ess``
    holds the effective sample size per row.
    """
    if not isinstance(prior, LatentPrior):
        raise TypeError(f"prior must be a LatentPrior, got {type(prior).__name__}")
    if likelihood.event_shape != (prior.dim,):
        raise ValueError(f"prior has event shape ({prior.dim},) but the prediction has "
                         f"{tuple(likelihood.event_shape)}")
    parts = _gaussian_parts(likelihood)
    g = prior.gaussian(eta)
    if parts is not None and g is not None:
        loc_l, prec_l, diag_l = parts
        loc_p, prec_p = g
        loc_p, prec_p = loc_p.to(loc_l), prec_p.to(loc_l)
        if not (torch.isfinite(prec_p).all() and torch.isfinite(loc_p).all()):
            raise ValueError(f"{type(prior).__name__}.gaussian returned non-finite values")
        loc, cov = fuse_gaussian(loc_l, prec_l, loc_p.expand_as(loc_l),
                                 prec_p.expand_as(prec_l))
        off = cov - torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))
        if diag_l and bool((off.abs() <= 1e-12 * cov.abs().amax()).all()):
            return dist.Normal(loc, torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()).to_event(1)
        return dist.MultivariateNormal(loc, covariance_matrix=cov)
    check_positive_int("num_samples", num_samples)
    z = likelihood.sample((num_samples,))  # (S, N, D)
    logw = prior.checked_log_prob(z, eta)
    logw = logw - logw.logsumexp(0, keepdim=True)
    ess = 1.0 / logw.exp().pow(2).sum(0)
    if bool((ess < 0.05 * num_samples).any()):
        logger.warning("importance-sampled fusion: effective sample size down to %.1f of %d; "
                       "the prior is far from the prediction, raise num_samples",
                       float(ess.min()), num_samples)
    out = dist.Empirical(z.movedim(0, -2), logw.movedim(0, -1))
    out.ess = ess
    return out
