"""Posterior and representation collapse (docs/method.md#collapse).

Four symptoms, measured per latent dimension ``d`` of the target posterior
``q(z_T | x_T) = N(μ(x_T), diag σ²(x_T))`` and on the context representation ``z_C = f_θ(x_C)``:

- **per-dimension KL** ``E_x KL(q(z_d | x) ‖ p(z_d))`` to the prior (nats);
- **active units**: ``Var_x E_q[z_d | x]``, the classic statistic of Burda et al. (2016), with
  the usual threshold 0.01. *Scale.* The classic threshold is stated in units of the prior
  ``N(0, 1)``, and it presumes a VAE near its optimum, where the aggregate posterior matches
  the prior: ``Var_x μ_d + E_x σ_d² ≈ 1``. A VJEPA does not have that anchor — its target mean
  is an EMA of a (here linear) encoder that the KL never sees, so the scale of ``μ`` is
  arbitrary (the linear encoder can be rescaled freely) and a raw variance would call a
  shrunk-but-informative encoder collapsed, or a rescaled dead one alive. We therefore divide
  by the **aggregate posterior variance** instead::

      share_d = Var_x μ_d / (Var_x μ_d + E_x σ_d²)          (law of total variance)

  the fraction of the unit's variance that depends on the input. It equals the classic
  statistic exactly when the aggregate posterior has the prior's unit variance (so the 0.01
  threshold keeps its meaning), and it is invariant to rescaling ``z``. The raw prior-units
  value ``Var_x μ_d / Var_p(z_d)`` is reported alongside;
- **information per unit** ``½ log(1 + Var_x μ_d / E_x σ_d²)`` nats — the capacity of a
  Gaussian channel with that signal-to-noise ratio, an estimate of ``I(x; z_d)``. A unit
  with ``share_d < ½`` carries less than ½ bit: its posterior noise exceeds the spread of its
  means, i.e. the KL has pulled ``q`` most of the way onto the prior;
- the **predicted-variance floor**: predictive standard deviations sitting at the head's hard
  floor (``bjepa.models.heads.MIN_SCALE``), the signature of the VJEPA degeneracy where
  shrinking targets buys unbounded density;
- the **effective rank** of ``z_C`` (Roy & Vetterli 2007; "RankMe", Garrido et al. 2023):
  ``exp(H(p))`` with ``p`` the normalised singular values of the centred representation —
  ``D`` for a well-spread representation, 1 for a single direction, 0 for a constant.

Verdict: ``collapsed`` when ``z_C`` is constant (the trivial solution of the paper's
Theorem 1), when no unit is active, or when no unit carries ½ bit; ``partial collapse`` when
some units are inactive or weak (< ½ bit), the effective rank is below ``D/2`` or predictions
sit on the variance floor; else ``healthy``.

Example::

    report = collapse_diagnostics(model, context, target)
    report.verdict, report.n_active     # 'healthy', 4
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from bjepa._validation import check_tensor
from bjepa.diagnostics._common import jsonable

__all__ = [
    "ACTIVE_THRESHOLD",
    "INFORMATIVE_SHARE",
    "CollapseReport",
    "collapse_diagnostics",
    "collapse_from_moments",
    "effective_rank",
    "gaussian_kl_per_dim",
]

logger = logging.getLogger(__name__)

#: a unit is active when more than this share of its variance depends on the input
ACTIVE_THRESHOLD = 0.01
#: ... and informative (≥ ½ bit) when more than half of it does
INFORMATIVE_SHARE = 0.5
#: a predictive sd within this factor of the head's floor counts as "at the floor"
_FLOOR_FACTOR = 2.0
#: ... and a dimension is flagged when more than this share of its predictions is
_FLOOR_SHARE = 0.01


def _scale_floor() -> float:
    try:
        from bjepa.models.heads import MIN_SCALE
    except ImportError:  # pragma: no cover - heads always ships it
        return 1e-4
    return float(MIN_SCALE)


def gaussian_kl_per_dim(loc: torch.Tensor, scale: torch.Tensor, prior_loc: torch.Tensor,
                        prior_scale: torch.Tensor) -> torch.Tensor:
    """``KL(N(loc, scale²) ‖ N(prior_loc, prior_scale²))`` element-wise (nats)."""
    var_ratio = (scale / prior_scale) ** 2
    return 0.5 * (var_ratio + ((loc - prior_loc) / prior_scale) ** 2 - 1.0 - var_ratio.log())


def effective_rank(z: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``(erank, p)``: the effective rank ``exp(−Σ p log p)`` of the centred rows of ``z``
    (``(N, D)``) and the normalised singular values ``p``. A constant ``z`` has rank 0."""
    check_tensor("z", z, ndim=2, min_rows=2)
    zc = z.double() - z.double().mean(0)
    sv = torch.linalg.svdvals(zc)
    total = sv.sum()
    scale = z.double().abs().max().clamp_min(1e-300)
    if total <= 1e-9 * scale * math.sqrt(z.shape[0]):
        return 0.0, torch.zeros_like(sv)
    p = sv / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy.exp()), p


@dataclass
class CollapseReport:
    """Per-dimension collapse statistics and a verdict (``healthy`` / ``partial collapse`` /
    ``collapsed``) with the reasons in words. Lists are indexed by latent dimension."""

    latent_dim: int
    deterministic: bool
    kl_per_dim: list[float] | None
    mean_variance_prior_units: list[float] | None
    posterior_variance_prior_units: list[float] | None
    share_explained: list[float]
    information_nats: list[float] | None
    active: list[bool]
    informative: list[bool]
    n_active: int
    n_informative: int
    threshold: float
    effective_rank: float
    singular_value_share: list[float]
    context_constant: bool
    predictive_sd_median: list[float] | None
    predictive_sd_min: list[float] | None
    floor_share: list[float] | None
    scale_floor: float
    verdict: str
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return jsonable({k: getattr(self, k) for k in self.__dataclass_fields__})

    def summary(self) -> str:
        return (f"{self.verdict}: {self.n_active} of {self.latent_dim} units active, "
                f"{self.n_informative} carry ≥ ½ bit, effective rank of z_C "
                f"{self.effective_rank:.2f} of {self.latent_dim}")


def collapse_from_moments(
    post_loc: torch.Tensor,
    post_scale: torch.Tensor | None,
    z_context: torch.Tensor,
    *,
    prior_loc: torch.Tensor | None = None,
    prior_scale: torch.Tensor | None = None,
    predictive_scale: torch.Tensor | None = None,
    threshold: float = ACTIVE_THRESHOLD,
    scale_floor: float | None = None,
) -> CollapseReport:
    """Collapse statistics from the target posterior's moments.

    :param post_loc: ``(N, D)`` posterior means ``E_q[z | x_n]``.
    :param post_scale: ``(N, D)`` posterior standard deviations, or ``None`` for a
        deterministic encoder (then a unit is active when its variance exceeds ``threshold``
        times the mean variance of all units, and KL/information are not defined).
    :param z_context: ``(N', D')`` context representation for the effective rank.
    :param prior_loc: prior mean (broadcastable to ``post_loc``; default 0).
    :param prior_scale: prior standard deviation (default 1).
    :param predictive_scale: ``(N, D)`` predictive standard deviations (variance floor check).
    :param threshold: active-unit threshold on the share of variance explained (0.01).
    :param scale_floor: the heads' minimum scale (default ``bjepa.models.heads.MIN_SCALE``).
    """
    check_tensor("post_loc", post_loc, ndim=2, min_rows=2)
    n, d = post_loc.shape
    if post_scale is not None:
        check_tensor("post_scale", post_scale, ndim=2)
        if post_scale.shape != post_loc.shape:
            raise ValueError(f"post_scale must have the shape of post_loc {tuple(post_loc.shape)}"
                             f", got {tuple(post_scale.shape)}")
    check_tensor("z_context", z_context, ndim=2, min_rows=2)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
            or not 0.0 < threshold < INFORMATIVE_SHARE:
        raise ValueError(f"threshold must be a number in (0, {INFORMATIVE_SHARE}), got "
                         f"{threshold!r}")
    floor = _scale_floor() if scale_floor is None else float(scale_floor)
    loc = post_loc.detach().double().cpu()
    var_mean = loc.var(0, unbiased=False)
    reasons: list[str] = []

    erank, p = effective_rank(z_context.detach())
    constant = erank == 0.0
    kl = mean_prior_units = post_prior_units = info = None
    if post_scale is None:
        deterministic = True
        ref = var_mean.mean()
        share = var_mean / ref if ref > 0 else torch.zeros_like(var_mean)
        active = share > threshold
        informative = active.clone()
    else:
        deterministic = False
        scale = post_scale.detach().double().cpu()
        p_loc = torch.zeros(()) if prior_loc is None else prior_loc.detach().double().cpu()
        p_scale = torch.ones(()) if prior_scale is None else prior_scale.detach().double().cpu()
        p_loc, p_scale = p_loc.expand_as(loc), p_scale.expand_as(loc)
        kl = gaussian_kl_per_dim(loc, scale, p_loc, p_scale).mean(0)
        prior_var = (p_scale ** 2).mean(0)
        noise = (scale ** 2).mean(0)
        total = var_mean + noise
        share = torch.where(total > 0, var_mean / total.clamp_min(1e-300), 0.0)
        info = 0.5 * torch.log1p(var_mean / noise.clamp_min(1e-300))
        mean_prior_units = var_mean / prior_var
        post_prior_units = noise / prior_var
        active = share > threshold
        informative = share > INFORMATIVE_SHARE

    pred_median = pred_min = floor_share = None
    if predictive_scale is not None:
        check_tensor("predictive_scale", predictive_scale, ndim=2)
        ps = predictive_scale.detach().double().cpu()
        pred_median, pred_min = ps.median(0).values, ps.min(0).values
        floor_share = (ps <= _FLOOR_FACTOR * floor).double().mean(0)

    n_active, n_inf = int(active.sum()), int(informative.sum())
    inactive_dims = [j for j in range(d) if not active[j]]
    weak_dims = [j for j in range(d) if active[j] and not informative[j]]
    collapsed = partial = False
    if constant:
        collapsed = True
        reasons.append("the context representation z_C is constant across inputs (effective "
                       "rank 0): the trivial solution that the paper's Theorem 1 rules out as a "
                       "global optimum")
    if n_active == 0:
        collapsed = True
        what = "its share of the mean variance" if deterministic else \
            "the input explains"
        reasons.append(f"no active units: in every dimension {what} ≤ {100 * threshold:g} % of "
                       "the target latent's variance")
    elif inactive_dims:
        partial = True
        reasons.append(f"{len(inactive_dims)} of {d} units inactive (dims {inactive_dims}): the "
                       f"input explains ≤ {100 * threshold:g} % of their variance")
    if not deterministic and n_active > 0:
        if n_inf == 0:
            collapsed = True
            reasons.append(
                f"no unit carries ½ bit about its input: in every dimension the posterior "
                f"noise exceeds the spread of the posterior means (mean E_x σ² = "
                f"{float(post_prior_units.mean()):.2f} of the prior variance); the KL term has "
                "pulled q(z_T | x_T) onto the prior")
        elif weak_dims:
            partial = True
            reasons.append(
                f"{len(weak_dims)} of {d} units carry < ½ bit (dims {weak_dims}): posterior "
                f"noise exceeds the spread of the means there (E_x σ² = "
                + ", ".join(f"{float(post_prior_units[j]):.2f}" for j in weak_dims)
                + " of the prior variance), so the KL has pulled q towards the prior")
    if not constant and erank < d / 2:
        partial = True
        reasons.append(f"effective rank of z_C is {erank:.2f} of {d}: the representation "
                       "occupies few directions (dimensional collapse)")
    if floor_share is not None:
        at_floor = [j for j in range(d) if floor_share[j] > _FLOOR_SHARE]
        if at_floor:
            partial = True
            reasons.append(f"predicted scale sits at the head's floor ({floor:g}) for dims "
                           f"{at_floor} (" + ", ".join(f"{100 * float(floor_share[j]):.0f} %"
                                                       for j in at_floor)
                           + " of predictions): the predictor buys density by shrinking its "
                           "variance")
    verdict = "collapsed" if collapsed else "partial collapse" if partial else "healthy"
    if verdict == "healthy":
        reasons.append(f"all {d} units active and informative, effective rank {erank:.2f} of "
                       f"{d}" + ("" if floor_share is None else ", no predictions at the "
                                 "variance floor"))
    report = CollapseReport(
        latent_dim=d, deterministic=deterministic,
        kl_per_dim=None if kl is None else kl.tolist(),
        mean_variance_prior_units=None if mean_prior_units is None else mean_prior_units.tolist(),
        posterior_variance_prior_units=None if post_prior_units is None
        else post_prior_units.tolist(),
        share_explained=share.tolist(), information_nats=None if info is None else info.tolist(),
        active=[bool(a) for a in active], informative=[bool(a) for a in informative],
        n_active=n_active, n_informative=n_inf, threshold=float(threshold),
        effective_rank=erank, singular_value_share=p.tolist(), context_constant=constant,
        predictive_sd_median=None if pred_median is None else pred_median.tolist(),
        predictive_sd_min=None if pred_min is None else pred_min.tolist(),
        floor_share=None if floor_share is None else floor_share.tolist(), scale_floor=floor,
        verdict=verdict, reasons=reasons)
    logger.info("collapse: %s", report.summary())
    return report


def collapse_diagnostics(model: Any, context: torch.Tensor, target: torch.Tensor | None = None,
                         *, predictive_scale: torch.Tensor | None = None,
                         threshold: float = ACTIVE_THRESHOLD) -> CollapseReport:
    """Collapse statistics of a bjepa world model on ``(context, target)`` pairs.

    Uses the target posterior ``q(z_T | x_T)`` (``target_dist``) for VJEPA/BJEPA, the
    encoder posterior ``q(z | x)`` (``posterior_dist``) for the VAE/AR, and the EMA target
    encoder's deterministic latent for the JEPA. ``predictive_scale`` (``(N, D)``) enables the
    variance-floor check; by default it is read from ``model.predictive_dist`` when present.
    """
    from bjepa.diagnostics._views import predictive_forecast, view_of

    view = view_of(model)
    context, target = view.check(model, context, target)
    with torch.no_grad():
        z_context = model.encode(context)
        q = view.latent_posterior(model, context, target)
        if q is None:
            return collapse_from_moments(view.deterministic_latent(model, target), None,
                                         z_context, threshold=threshold)
        loc, scale = q
        prior_loc = prior_scale = None
        prior_fn = getattr(model, "prior_dist", None)
        if prior_fn is not None:
            from bjepa.diagnostics.calibration import _gaussian_marginals

            marg = _gaussian_marginals(prior_fn(loc))
            if marg is not None:
                prior_loc, prior_scale = marg
        if predictive_scale is None and view.kind == "latent":
            predictive_scale = predictive_forecast(model, context, target).variance.sqrt()
    return collapse_from_moments(loc, scale, z_context, prior_loc=prior_loc,
                                 prior_scale=prior_scale, predictive_scale=predictive_scale,
                                 threshold=threshold)
