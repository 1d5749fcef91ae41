"""Calibration of a world model's predictive distribution (docs/method.md#diagnostics).

For ``N`` observed vectors ``y_n ∈ R^D`` (e.g. the target encoder's latent of the next frame)
and a predictive distribution ``p_n`` for each, this module computes, per dimension and
pooled over dimensions:

- **coverage** of the central ``ℓ``-intervals (ℓ = 50/80/90/95 %): the share of ``y_{n,d}``
  inside ``[F^{-1}((1−ℓ)/2), F^{-1}((1+ℓ)/2)]`` of the marginal ``F = F_{n,d}``. It is read off
  the PIT below (``y`` lies in the central ℓ-interval iff ``|F(y) − ½| ≤ ℓ/2``), which needs no
  quantile inversion and is exact for mixtures;
- the **PIT** ``F_{n,d}(y_{n,d})``, uniform on [0, 1] for a calibrated forecast; a
  Kolmogorov–Smirnov test against the uniform;
- the **CRPS** (continuous ranked probability score, in the units of ``y``): closed form for
  Gaussians and Gaussian mixtures (Grimit et al. 2006), the unbiased ("fair") sample estimator
  otherwise;
- the **NLL** ``−log p_n(y_n)`` of the joint density, in nats per observation, where the
  distribution has a density.

Gaussian heads (diagonal or full covariance), Gaussian mixtures (MDN heads, mixtures over
weight-posterior draws) are handled in closed form; any other distribution is reduced to
samples.

Example::

    report = calibrate(model.predict(context), model.encode_target(target))
    report.verdict, report.coverage       # 'calibrated', [0.50, 0.80, 0.90, 0.95]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pyro.distributions import Empirical
from scipy import stats
from torch.distributions import (
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from bjepa._validation import check_positive_int, check_tensor
from bjepa.diagnostics._common import jsonable

__all__ = [
    "LEVELS",
    "CalibrationReport",
    "Forecast",
    "as_forecast",
    "calibrate",
    "coverage",
    "crps",
    "fit_linear_probe",
    "pit",
]

logger = logging.getLogger(__name__)

#: nominal levels of the central intervals checked by default
LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
#: largest K²·N·D for the exact mixture CRPS; above it the E|X − X'| term is estimated from
#: _PAIR_DRAWS marginal draws (unbiased; the error of the mean CRPS over N·D values is small)
_EXACT_PAIR_BUDGET = 2_000_000
_PAIR_DRAWS = 256

Predictive = Any  # Forecast | Distribution | Tensor (S, N, D) | sequence of Distributions


def _normal_pdf(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) / _SQRT_2PI


def _abs_moment(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``E|X|`` for ``X ~ N(m, s²)``."""
    z = m / s
    return 2.0 * s * _normal_pdf(z) + m * (2.0 * torch.special.ndtr(z) - 1.0)


def _gaussian_marginals(d: Distribution) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(loc, scale)`` of the per-dimension marginals of a Gaussian with event ``(D,)``."""
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1 \
            and isinstance(d.base_dist, Normal):
        shape = d.batch_shape + d.event_shape
        return d.base_dist.loc.expand(shape), d.base_dist.scale.expand(shape)
    if isinstance(d, MultivariateNormal):
        shape = d.batch_shape + d.event_shape
        return d.loc.expand(shape), d.variance.sqrt().expand(shape)
    return None


def _mixture_parts(d: Distribution
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(weights (K, N), loc (K, N, D), scale (K, N, D))`` when ``d`` is a Gaussian or a
    mixture of Gaussians (batch ``(N,)``), else ``None``."""
    single = _gaussian_marginals(d)
    if single is not None:
        loc, scale = single
        return loc.new_ones(1, loc.shape[0]), loc[None], scale[None]
    if isinstance(d, MixtureSameFamily):
        comp = _gaussian_marginals(d.component_distribution)
        if comp is None:
            return None
        loc, scale = comp  # (N, K, D)
        probs = d.mixture_distribution.probs.expand(loc.shape[:-1])  # (N, K)
        return probs.T, loc.transpose(0, 1), scale.transpose(0, 1)
    return None


def _has_density(d: Distribution) -> bool:
    # an Empirical distribution's log_prob is a probability mass, not a density
    return not isinstance(d, Empirical)


class Forecast:
    """What calibration needs from a predictive distribution over ``N`` vectors in ``R^D``:
    marginal CDFs, CRPS, moments, joint samples and (when known) the joint log density.

    Build one with :meth:`from_distribution`, :meth:`mixture` (equal-weight mixture, e.g.
    over weight-posterior draws) or :meth:`from_samples`; :func:`as_forecast` picks.

    :param loc: ``(K, N, D)`` means of a Gaussian mixture's components (K = 1: a Gaussian).
    :param scale: ``(K, N, D)`` marginal standard deviations of the components.
    :param weights: ``(K, N)`` component weights summing to one over ``K`` (default equal).
    :param samples: ``(S, N, D)`` draws, used when no closed form is available.
    :param log_prob: ``y (N, D) -> (N,)`` joint log density, or ``None``.
    :param sampler: ``S -> (S, N, D)`` joint draws (needed by :meth:`affine`).
    """

    def __init__(self, *, loc: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                 weights: torch.Tensor | None = None, samples: torch.Tensor | None = None,
                 log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 sampler: Callable[[int], torch.Tensor] | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if (loc is None) == (samples is None):
            raise ValueError("a Forecast needs either loc/scale (Gaussian mixture) or samples")
        if loc is not None:
            if scale is None or loc.shape != scale.shape or loc.dim() != 3:
                raise ValueError("loc and scale must both have shape (K, N, D)")
            if not bool((scale > 0).all()):
                raise ValueError("scale must be positive")
            self.loc, self.scale = loc.detach().double(), scale.detach().double()
            k, n = loc.shape[:2]
            w = loc.new_full((k, n), 1.0 / k) if weights is None else weights
            if w.shape != (k, n):
                raise ValueError(f"weights must have shape (K, N) = {(k, n)}, got "
                                 f"{tuple(w.shape)}")
            self.weights = (w / w.sum(0, keepdim=True)).detach().double()
            self.samples = None
            self.shape = tuple(loc.shape[1:])
        else:
            if samples.dim() != 3 or samples.shape[0] < 2:
                raise ValueError("samples must have shape (S, N, D) with S >= 2")
            self.loc = self.scale = self.weights = None
            self.samples = samples.detach().double().sort(dim=0).values
            self.shape = tuple(samples.shape[1:])
        self._log_prob = log_prob
        self._sampler = sampler
        self._half_spread: torch.Tensor | None = None
        #: dtype in which ``log_prob`` is evaluated (that of the wrapped distribution)
        self._dtype = dtype or (loc if loc is not None else samples).dtype

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_distribution(cls, d: Distribution, *, num_samples: int = 1000) -> Forecast:
        """Closed form for Gaussians and Gaussian mixtures, ``num_samples`` draws otherwise."""
        _check_distribution(d)
        log_prob = d.log_prob if _has_density(d) else None
        parts = _mixture_parts(d)
        if parts is not None:
            w, loc, scale = parts
            return cls(loc=loc, scale=scale, weights=w, log_prob=log_prob,
                       sampler=lambda s: d.sample((s,)), dtype=d.mean.dtype)
        check_positive_int("num_samples", num_samples)
        draws = d.sample((num_samples,))
        return cls(samples=draws, log_prob=log_prob, sampler=lambda s: d.sample((s,)),
                   dtype=draws.dtype)

    @classmethod
    def mixture(cls, dists: Sequence[Distribution], *, num_samples: int = 1000) -> Forecast:
        """Equal-weight mixture of ``dists`` (e.g. one predictive per weight-posterior draw)."""
        if not dists:
            raise ValueError("dists must contain at least one distribution")
        for d in dists:
            _check_distribution(d)
        shapes = {tuple(d.batch_shape + d.event_shape) for d in dists}
        if len(shapes) != 1:
            raise ValueError(f"all mixture components need the same shape, got {shapes}")
        m = len(dists)

        def sampler(s: int) -> torch.Tensor:
            per = -(-s // m)
            return torch.cat([d.sample((per,)) for d in dists])[:s]

        log_prob = None
        if all(_has_density(d) for d in dists):
            def log_prob(y: torch.Tensor) -> torch.Tensor:
                lp = torch.stack([d.log_prob(y) for d in dists])
                return torch.logsumexp(lp, 0) - math.log(m)

        parts = [_mixture_parts(d) for d in dists]
        if all(p is not None for p in parts):
            w = torch.cat([p[0] for p in parts]) / m
            loc = torch.cat([p[1] for p in parts])
            scale = torch.cat([p[2] for p in parts])
            return cls(loc=loc, scale=scale, weights=w, log_prob=log_prob, sampler=sampler,
                       dtype=dists[0].mean.dtype)
        check_positive_int("num_samples", num_samples)
        draws = sampler(max(num_samples, m))
        return cls(samples=draws, log_prob=log_prob, sampler=sampler, dtype=draws.dtype)

    @classmethod
    def from_samples(cls, samples: torch.Tensor) -> Forecast:
        """Draws ``(S, N, D)`` from the predictive (no density: NLL is not available)."""
        check_tensor("samples", samples, ndim=3, min_rows=2)
        kept = samples.detach()

        def sampler(s: int) -> torch.Tensor:
            idx = torch.randint(kept.shape[0], (s,), device=kept.device)
            return kept[idx] if s != kept.shape[0] else kept

        return cls(samples=kept, sampler=sampler)

    # -- properties -------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"gaussian"``, ``"gaussian mixture"`` or ``"samples"``."""
        if self.samples is not None:
            return "samples"
        return "gaussian" if self.loc.shape[0] == 1 else "gaussian mixture"

    @property
    def has_density(self) -> bool:
        return self._log_prob is not None

    @property
    def mean(self) -> torch.Tensor:
        """``(N, D)`` predictive means."""
        if self.samples is not None:
            return self.samples.mean(0)
        return (self.weights[..., None] * self.loc).sum(0)

    @property
    def variance(self) -> torch.Tensor:
        """``(N, D)`` predictive marginal variances."""
        if self.samples is not None:
            return self.samples.var(0)
        second = (self.weights[..., None] * (self.scale ** 2 + self.loc ** 2)).sum(0)
        return (second - self.mean ** 2).clamp_min(0.0)

    # -- scores -----------------------------------------------------------------------------
    def _check_y(self, y: torch.Tensor) -> torch.Tensor:
        check_tensor("observed", y, ndim=2)
        if tuple(y.shape) != self.shape:
            raise ValueError(f"observed must have shape {self.shape} (N, D) to match the "
                             f"predictive, got {tuple(y.shape)}")
        ref = self.loc if self.loc is not None else self.samples
        return y.detach().to(device=ref.device, dtype=torch.float64)

    def cdf(self, y: torch.Tensor) -> torch.Tensor:
        """Marginal CDF values ``F_{n,d}(y_{n,d})`` (the PIT), ``(N, D)``.

        For samples: the mid-rank ``(#{x < y} + ½ #{x = y} + ½) / (S + 1)``, uniform on a grid
        of step ``1/(S+1)`` when ``y`` is exchangeable with the draws."""
        y = self._check_y(y)
        if self.samples is not None:
            below = (self.samples < y).sum(0).double()
            ties = (self.samples == y).sum(0).double()
            return (below + 0.5 * ties + 0.5) / (self.samples.shape[0] + 1)
        z = (y - self.loc) / self.scale
        return (self.weights[..., None] * torch.special.ndtr(z)).sum(0).clamp(0.0, 1.0)

    def crps(self, y: torch.Tensor) -> torch.Tensor:
        """CRPS per observation and dimension, ``(N, D)``, in the units of ``y``:
        ``E|X − y| − ½ E|X − X'|`` (the second term depends on the forecast only and is
        computed once)."""
        y = self._check_y(y)
        if self.samples is not None:
            first = (self.samples - y).abs().mean(0)
        else:
            w = self.weights[..., None]
            first = (w * _abs_moment(y - self.loc, self.scale)).sum(0)
        if self._half_spread is None:
            self._half_spread = self._compute_half_spread()
        return first - self._half_spread

    def _compute_half_spread(self) -> torch.Tensor:
        """``½ E|X − X'|`` per observation and dimension."""
        if self.samples is None:
            k = self.loc.shape[0]
            if k == 1:
                return self.scale[0] / math.sqrt(math.pi)
            if k * k * self.loc[0].numel() <= _EXACT_PAIR_BUDGET:
                w, var = self.weights[..., None], self.scale ** 2
                total = torch.zeros_like(self.loc[0])
                for i in range(k):  # O(K²) pairs, one row of the K×K table at a time
                    pair = _abs_moment(self.loc[i] - self.loc, (var[i] + var).sqrt())
                    total += w[i] * (w * pair).sum(0)
                return 0.5 * total
            # too many pairs: estimate from marginal draws (O(S log S) instead of O(K²))
            x = self._marginal_draws(_PAIR_DRAWS).sort(dim=0).values
        else:
            x = self.samples  # sorted along S
        s = x.shape[0]
        coef = 2.0 * torch.arange(s, dtype=x.dtype, device=x.device) - s + 1.0
        # fair estimator: E|X − X'| = 2 Σ_i (2i − S + 1) x_(i) / (S (S − 1))
        return (coef[:, None, None] * x).sum(0) / (s * (s - 1))

    def log_prob(self, y: torch.Tensor) -> torch.Tensor | None:
        """Joint log density ``log p_n(y_n)``, ``(N,)``; ``None`` without a density."""
        if self._log_prob is None:
            return None
        self._check_y(y)
        with torch.no_grad():
            return self._log_prob(y.detach().to(self._dtype)).double()

    def sample(self, num_samples: int) -> torch.Tensor:
        """Joint draws ``(S, N, D)``."""
        check_positive_int("num_samples", num_samples)
        if self._sampler is not None:
            with torch.no_grad():
                return self._sampler(num_samples).double()
        if self.samples is not None:
            idx = torch.randint(self.samples.shape[0], (num_samples,))
            return self.samples[idx]
        return self._marginal_draws(num_samples)

    def _marginal_draws(self, num_samples: int) -> torch.Tensor:
        """Draws with the right per-dimension marginals (a mixture component per draw and row,
        independent dimensions within it): enough for marginal scores, not for joint use."""
        comp = torch.multinomial(self.weights.T, num_samples, replacement=True).T  # (S, N)
        rows = torch.arange(self.shape[0], device=comp.device)
        loc, scale = self.loc[comp, rows], self.scale[comp, rows]
        return loc + scale * torch.randn_like(loc)

    def affine(self, coef: torch.Tensor, intercept: torch.Tensor,
               noise_scale: torch.Tensor | None = None, *, num_samples: int = 1000) -> Forecast:
        """The forecast of ``y' = y @ coef + intercept + ε``, ``ε ~ N(0, diag noise_scale²)``,
        from joint draws (e.g. a linear probe from the latent to the true state)."""
        check_tensor("coef", coef, ndim=2)
        if coef.shape[0] != self.shape[1]:
            raise ValueError(f"coef must have {self.shape[1]} rows (the forecast's D), got "
                             f"{coef.shape[0]}")
        z = self.sample(num_samples)
        coef = coef.to(z)
        out = z @ coef + intercept.to(z)
        if noise_scale is not None:
            out = out + noise_scale.to(z) * torch.randn_like(out)
        return Forecast.from_samples(out)


def _check_distribution(d: Distribution) -> None:
    if not isinstance(d, Distribution):
        raise TypeError(f"predictive must be a torch Distribution, got {type(d).__name__}")
    if len(d.event_shape) != 1 or len(d.batch_shape) != 1:
        raise ValueError(
            "predictive must have batch shape (N,) and event shape (D,), got batch "
            f"{tuple(d.batch_shape)} and event {tuple(d.event_shape)}; use .to_event(1) on a "
            "per-dimension distribution")


def as_forecast(predictive: Predictive, *, num_samples: int = 1000) -> Forecast:
    """Accept a :class:`Forecast`, a torch ``Distribution`` (batch ``(N,)``, event ``(D,)``),
    a sequence of them (an equal-weight mixture) or a tensor of draws ``(S, N, D)``."""
    if isinstance(predictive, Forecast):
        return predictive
    if isinstance(predictive, Distribution):
        return Forecast.from_distribution(predictive, num_samples=num_samples)
    if isinstance(predictive, torch.Tensor):
        return Forecast.from_samples(predictive)
    if isinstance(predictive, Sequence) and predictive \
            and all(isinstance(d, Distribution) for d in predictive):
        return Forecast.mixture(list(predictive), num_samples=num_samples)
    raise TypeError(
        "predictive must be a Forecast, a torch Distribution, a list of Distributions or a "
        f"(S, N, D) tensor of draws, got {type(predictive).__name__}")


def _check_levels(levels: Sequence[float]) -> list[float]:
    out = [float(v) for v in levels]
    if not out or any(not 0.0 < v < 1.0 for v in out):
        raise ValueError(f"levels must be numbers strictly between 0 and 1, got {list(levels)}")
    return sorted(set(out))


def pit(predictive: Predictive, observed: torch.Tensor, *, num_samples: int = 1000
        ) -> torch.Tensor:
    """Probability integral transform ``F_{n,d}(y_{n,d})``, ``(N, D)``."""
    return as_forecast(predictive, num_samples=num_samples).cdf(observed)


def coverage(pit_values: torch.Tensor, levels: Sequence[float] = LEVELS) -> torch.Tensor:
    """Share of observations inside each central interval, ``(len(levels), D)``, from PIT
    values (``y`` is inside the central ℓ-interval iff ``|F(y) − ½| ≤ ℓ/2``)."""
    check_tensor("pit_values", pit_values, ndim=2)
    lv = torch.tensor(_check_levels(levels), dtype=torch.float64, device=pit_values.device)
    inside = (pit_values.double() - 0.5).abs()[None] <= lv[:, None, None] / 2 + 1e-12
    return inside.double().mean(1)


def crps(predictive: Predictive, observed: torch.Tensor, *, num_samples: int = 1000
         ) -> torch.Tensor:
    """Continuous ranked probability score per observation and dimension, ``(N, D)``."""
    return as_forecast(predictive, num_samples=num_samples).crps(observed)


@dataclass
class CalibrationReport:
    """Calibration of one predictive against one set of observations.

    ``verdict`` is ``"calibrated"``, ``"overconfident"`` (intervals too narrow: coverage below
    nominal), ``"underconfident"`` (too wide) or ``"miscalibrated"`` (biased, or too narrow in
    some places and too wide in others); ``reasons`` says why in words.
    """

    target: str
    levels: list[float]
    coverage: list[float]
    coverage_per_dim: list[list[float]]
    allowed_deviation: list[float]
    pit_mean_per_dim: list[float]
    ks_statistic: float
    ks_pvalue: float
    ks_pvalue_per_dim: list[float]
    crps: float
    crps_per_dim: list[float]
    nll: float | None
    rms_spread_per_dim: list[float]
    rmse_per_dim: list[float]
    n_observations: int
    dim: int
    forecast_kind: str
    n_draws: int
    verdict: str
    reasons: list[str]
    pit: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the PIT as a 20-bin histogram, not the raw values)."""
        counts, _ = np.histogram(self.pit.ravel(), bins=20, range=(0.0, 1.0))
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "pit"}
        out["pit_histogram"] = {"bins": 20, "counts": counts.tolist()}
        return jsonable(out)

    def coverage_at(self, level: float) -> float:
        """Pooled coverage at a nominal level that was checked."""
        for lv, c in zip(self.levels, self.coverage, strict=True):
            if abs(lv - level) < 1e-9:
                return c
        raise ValueError(f"level {level} was not checked; checked {self.levels}")

    def summary(self) -> str:
        """One sentence for reports and logs."""
        lv = 0.9 if 0.9 in self.levels else self.levels[-1]
        return (f"{self.verdict}: {100 * self.coverage_at(lv):.1f} % of {self.target} inside "
                f"the central {100 * lv:g} % intervals (nominal {100 * lv:g} %), PIT KS "
                f"p = {self.ks_pvalue:.3g}, CRPS {self.crps:.4g}"
                + (f", NLL {self.nll:.4g} nats" if self.nll is not None else ""))


def calibrate(
    predictive: Predictive,
    observed: torch.Tensor,
    *,
    levels: Sequence[float] = LEVELS,
    tolerance: float = 0.03,
    num_samples: int = 1000,
    target: str = "observed values",
) -> CalibrationReport:
    """Calibration of ``predictive`` for ``observed``, with a verdict.

    :param predictive: a torch ``Distribution`` with batch ``(N,)`` and event ``(D,)``, a list
        of them (equal-weight mixture), a ``(S, N, D)`` tensor of draws or a :class:`Forecast`.
    :param observed: ``(N, D)`` realised values, or ``(R, N, D)`` draws of realised values that
        are themselves uncertain (e.g. the next latent drawn from the target posterior
        ``q(z_T | x_T)``). With draws, coverage, CRPS, NLL and the spread/error comparison
        average over them (the NLL is then the ELBO's ``E_q[−log p]`` term), while the PIT
        histogram and the KS test use the first draw only, so their values stay independent
        across observations.
    :param levels: nominal central-interval levels in (0, 1).
    :param tolerance: coverage deviation (absolute, e.g. 0.03 = 3 points) accepted as
        calibrated. A statistical allowance of three binomial standard errors over the ``N``
        rows is added, so small samples are not condemned for sampling noise.
    :param num_samples: draws used when the distribution has no closed form.
    :param target: what ``observed`` is, for messages (e.g. ``"the next latent"``).
    """
    lv = _check_levels(levels)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) \
            or not 0.0 < tolerance < 0.5:
        raise ValueError(f"tolerance must be a number in (0, 0.5), got {tolerance!r}")
    fc = as_forecast(predictive, num_samples=num_samples)
    check_tensor("observed", observed)
    if observed.dim() not in (2, 3):
        raise ValueError(f"observed must have shape (N, D) or (R, N, D), got "
                         f"{tuple(observed.shape)}")
    ys = observed if observed.dim() == 3 else observed[None]
    n, d = fc.shape
    pit_all = torch.stack([fc.cdf(y) for y in ys])                   # (R, N, D)
    cov = coverage(pit_all.reshape(-1, d), lv)  # (L, D)
    cov_all = cov.mean(1)
    scores = torch.stack([fc.crps(y) for y in ys]).mean(0)
    lps = [fc.log_prob(y) for y in ys]
    lp = None if lps[0] is None else torch.stack(lps).mean(0)
    y_all = ys.detach().double().to(pit_all.device)
    rmse = (fc.mean - y_all).pow(2).mean((0, 1)).sqrt()
    spread = fc.variance.mean(0).sqrt()
    flat = pit_all[0].cpu().numpy()
    ks = stats.kstest(flat.ravel(), "uniform")
    ks_dim = [float(stats.kstest(flat[:, j], "uniform").pvalue) for j in range(d)]

    lv_t = torch.tensor(lv, dtype=torch.float64)
    allowed = tolerance + 3.0 * torch.sqrt(lv_t * (1 - lv_t) / n)
    dev_all = cov_all.cpu() - lv_t
    dev_dim = cov.cpu() - lv_t[:, None]
    pit_mean = pit_all.mean((0, 1)).cpu()
    bias_allowed = 0.05 + 3.0 * math.sqrt(1.0 / (12.0 * n))
    verdict, reasons = _verdict(lv, dev_all, dev_dim, allowed, pit_mean, bias_allowed, target)
    if ks.pvalue < 0.01:
        reasons.append(f"the PIT is not uniform (KS statistic {ks.statistic:.3f}, p = "
                       f"{ks.pvalue:.2g}); with many observations even small miscalibration is "
                       "detected, so judge its size from the coverage")
    report = CalibrationReport(
        target=target, levels=lv, coverage=cov_all.tolist(), coverage_per_dim=cov.tolist(),
        allowed_deviation=allowed.tolist(), pit_mean_per_dim=pit_mean.tolist(),
        ks_statistic=float(ks.statistic), ks_pvalue=float(ks.pvalue), ks_pvalue_per_dim=ks_dim,
        crps=float(scores.mean()), crps_per_dim=scores.mean(0).tolist(),
        nll=None if lp is None else float(-lp.mean()),
        rms_spread_per_dim=spread.tolist(), rmse_per_dim=rmse.tolist(), n_observations=n,
        dim=d, forecast_kind=fc.kind, n_draws=int(ys.shape[0]), verdict=verdict,
        reasons=reasons, pit=flat)
    logger.info("calibration of %s: %s", target, report.summary())
    return report


def _verdict(levels: list[float], dev_all: torch.Tensor, dev_dim: torch.Tensor,
             allowed: torch.Tensor, pit_mean: torch.Tensor, bias_allowed: float,
             target: str) -> tuple[str, list[str]]:
    reasons: list[str] = []
    low_all = [i for i in range(len(levels)) if dev_all[i] < -allowed[i]]
    high_all = [i for i in range(len(levels)) if dev_all[i] > allowed[i]]
    low_dims = sorted({j for i in range(len(levels)) for j in range(dev_dim.shape[1])
                       if dev_dim[i, j] < -allowed[i]})
    high_dims = sorted({j for i in range(len(levels)) for j in range(dev_dim.shape[1])
                        if dev_dim[i, j] > allowed[i]})
    biased = [j for j in range(len(pit_mean)) if abs(float(pit_mean[j]) - 0.5) > bias_allowed]

    def fmt(idx: list[int]) -> str:
        return ", ".join(f"{100 * levels[i]:g} %: {100 * (levels[i] + float(dev_all[i])):.1f} %"
                         for i in idx)

    if low_all:
        reasons.append(f"intervals are too narrow: coverage below nominal at {fmt(low_all)}")
    if high_all:
        reasons.append(f"intervals are too wide: coverage above nominal at {fmt(high_all)}")
    if low_dims and not low_all:
        reasons.append(f"intervals too narrow in latent dims {low_dims}")
    if high_dims and not high_all:
        reasons.append(f"intervals too wide in latent dims {high_dims}")
    for side, dims in (("below", [j for j in biased if pit_mean[j] < 0.5]),
                       ("above", [j for j in biased if pit_mean[j] > 0.5])):
        if dims:
            vals = [float(pit_mean[j]) for j in dims]
            span = f"{min(vals):.2f}" if len(vals) == 1 else f"{min(vals):.2f}–{max(vals):.2f}"
            reasons.append(f"biased in dims {dims}: the observed value lies {side} the "
                           f"predictive median too often (mean PIT {span}, ideal 0.50)")
    over, under = bool(low_all or low_dims), bool(high_all or high_dims)
    if biased or (over and under):
        verdict = "miscalibrated"
    elif over:
        verdict = "overconfident"
    elif under:
        verdict = "underconfident"
    else:
        verdict = "calibrated"
        reasons.append(f"coverage of {target} is within ±{100 * float(allowed.min()):.1f} "
                       "points of nominal at every level and in every dimension")
    return verdict, reasons


def fit_linear_probe(z: torch.Tensor, y: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ordinary least squares ``y ≈ z @ coef + intercept``; returns ``(coef (D, P),
    intercept (P,), residual sd (P,))`` — the map :meth:`Forecast.affine` pushes a latent
    forecast through to forecast the true state."""
    check_tensor("z", z, ndim=2)
    check_tensor("y", y, ndim=2)
    if z.shape[0] != y.shape[0]:
        raise ValueError(f"z and y need the same number of rows, got {z.shape[0]} and "
                         f"{y.shape[0]}")
    if z.shape[0] <= z.shape[1] + 1:
        raise ValueError("a linear probe needs more rows than latent dimensions + 1")
    zd, yd = z.detach().double(), y.detach().double().to(z.device)
    design = torch.cat([zd, torch.ones_like(zd[:, :1])], dim=1)
    sol = torch.linalg.lstsq(design, yd).solution
    resid = yd - design @ sol
    return sol[:-1], sol[-1], resid.std(0)
