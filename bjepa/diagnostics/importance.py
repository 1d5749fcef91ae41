"""Importance-sampling diagnostics: PSIS k̂ of an SVI guide and PSIS-LOO.

See docs/method.md#diagnostics.

- :func:`guide_psis_khat` — Pareto k̂ of the importance weights ``p(w, data) / q(w)`` of the
  guide's **global** latents (Yao et al. 2018, via
  :func:`pyro.infer.importance.psis_diagnostic`): k̂ < 0.5 good, 0.5–0.7 usable, > 0.7 the
  guide is a poor approximation of the posterior. For a model with a weight posterior and a
  ``weight_likelihood(z_C, z_T)`` program (BJEPA), the target is the predictor's weight
  posterior given the frozen encoders' latents; otherwise it is the full ``model``/``guide``
  pair with the per-observation latents held at one guide draw, so that only the global sites
  are importance-weighted. A model whose only latents are per observation (VJEPA, VAE) has no
  global latents: k̂ of a product of N independent weights says nothing, and the result says
  so instead of a number.
- :func:`loo_summary` — ``az.loo`` on the ``log_likelihood`` group with its per-observation
  k̂ values.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch
from pyro import poutine
from pyro.infer.importance import psis_diagnostic
from pyro.ops.stats import fit_generalized_pareto

from bjepa._util import seeded
from bjepa._validation import check_positive_int
from bjepa.diagnostics._common import jsonable
from bjepa.diagnostics._views import _device, latent_sites

__all__ = ["global_latent_sites", "guide_psis_khat", "khat_verdict", "loo_summary"]

logger = logging.getLogger(__name__)


def khat_verdict(khat: float) -> str:
    """Words for a Pareto k̂ (Vehtari et al. 2024 thresholds)."""
    if not math.isfinite(khat):
        return "not estimable"
    if khat < 0.5:
        return "good"
    if khat <= 0.7:
        return "usable (0.5 ≤ k̂ ≤ 0.7)"
    return "poor (k̂ > 0.7): the guide misses posterior mass"


def _guide_trace(model: Any, context: torch.Tensor, target: torch.Tensor | None):
    with torch.no_grad(), poutine.block():
        return poutine.trace(model.guide).get_trace(context, target)


def global_latent_sites(model: Any, context: torch.Tensor, target: torch.Tensor | None = None
                        ) -> list[str]:
    """Latent sites of ``model.guide`` outside the per-observation ``data`` plate."""
    if not callable(getattr(model, "guide", None)):
        raise TypeError(f"{type(model).__name__} has no Pyro guide")
    return latent_sites(_guide_trace(model, context, target), context.shape[0], local=False)


def _sequential_khat(model_fn: Any, guide_fn: Any, args: tuple, num_particles: int) -> float:
    """The same estimate as ``psis_diagnostic``, one particle at a time (for programs that
    cannot be vectorised over particles, e.g. ``nn.Linear`` with sampled weights)."""
    log_w = []
    for _ in range(num_particles):
        g = poutine.trace(guide_fn).get_trace(*args)
        m = poutine.trace(poutine.replay(model_fn, trace=g)).get_trace(*args)
        log_w.append(float(m.log_prob_sum() - g.log_prob_sum()))
    lw = torch.tensor(log_w, dtype=torch.float64)
    lw = torch.sort(lw - lw.max()).values
    cutoff = -int(math.ceil(min(0.2 * num_particles, 3.0 * math.sqrt(num_particles)))) - 1
    lw_cutoff = max(math.log(1.0e-15), float(lw[cutoff]))
    tail = lw[lw > lw_cutoff]
    if len(tail) < 10:
        return float("inf")
    k, _ = fit_generalized_pareto(tail.exp() - math.exp(lw_cutoff))
    return float(k)


def guide_psis_khat(model: Any, context: torch.Tensor, target: torch.Tensor | None = None, *,
                    num_particles: int = 1000, seed: int | None = 0) -> dict[str, Any]:
    """PSIS k̂ of the model's guide over its global latents (see the module docstring).

    :returns: a dict with ``available`` (bool), ``khat``, ``verdict``, ``sites``, ``target``
        (what the weights are importance weights for), ``method`` and, when not available,
        ``reason``.
    """
    check_positive_int("num_particles", num_particles)
    if num_particles < 50:
        raise ValueError(f"num_particles must be >= 50 for a tail fit, got {num_particles}")
    if not callable(getattr(model, "guide", None)) or not callable(getattr(model, "model",
                                                                           None)):
        return {"available": False, "khat": None,
                "reason": f"{type(model).__name__} has no Pyro model/guide pair"}
    if hasattr(model, "check_inputs"):
        context, target = model.check_inputs(context, target)
    dev = _device(model)
    context = context.to(dev)
    target = None if target is None else target.to(dev)
    with seeded(seed, dev), torch.no_grad():
        sites = global_latent_sites(model, context, target)
        if not sites:
            return {"available": False, "khat": None, "sites": [],
                    "reason": ("no global latent sites: the only latents are per observation, "
                               "so the guide's joint importance weight is a product over all "
                               "observations and its k̂ is uninformative; see the "
                               "per-observation LOO k̂ instead")}
        if callable(getattr(model, "weight_likelihood", None)) \
                and getattr(model, "weight_guide", None) is not None:
            args = (model.encode(context), _target_latent(model, target))
            model_fn = model.weight_likelihood

            def guide_fn(*_: Any) -> Any:
                return model.weight_guide(context, target)

            what = "weight posterior given the frozen encoders' latents (weight_likelihood)"
        else:
            tr = _guide_trace(model, context, target)
            local = {name: tr.nodes[name]["value"]
                     for name in latent_sites(tr, context.shape[0], local=True)}
            model_fn = poutine.condition(model.model, data=local)
            guide_fn = poutine.condition(model.guide, data=local)
            args = (context, target)
            what = ("global latents of model/guide" + (" with per-observation latents held at "
                                                       "one guide draw" if local else ""))
        caught: list[str] = []
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:
                khat = float(psis_diagnostic(model_fn, guide_fn, *args,
                                             num_particles=num_particles,
                                             max_plate_nesting=1))
                method = "pyro.infer.importance.psis_diagnostic (vectorised)"
            except (RuntimeError, ValueError, IndexError, NotImplementedError) as err:
                logger.info("vectorised PSIS failed (%s); sampling particles one by one", err)
                khat = _sequential_khat(model_fn, guide_fn, args, num_particles)
                method = "sequential particles (program not vectorisable)"
            caught = [str(x.message) for x in w]
    return jsonable({"available": True, "khat": khat, "verdict": khat_verdict(khat),
                     "sites": sites, "target": what, "num_particles": num_particles,
                     "method": method, "warnings": caught})


def _target_latent(model: Any, target: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "encode_target"):
        return model.encode_target(target)
    return model.target_dist(target).mean


def loo_summary(idata: Any, var_name: str | None = None, *, worst: int = 5,
                num_parameters: int | None = None) -> dict[str, Any]:
    """PSIS-LOO (``az.loo``) on the ``log_likelihood`` group, with the k̂ counts and whether
    the estimate can be trusted.

    ``var_name`` defaults to the joint log-likelihood (``<name>_joint``) when the file has the
    per-dimension one too. ``good_k`` is ArviZ's sample-size-aware threshold
    ``min(1 − 1/log10(S), 0.7)``; k̂ values that cannot be estimated are reported as ``None``.

    ``reliable`` is ``False`` — and ``problems`` says why — when more than 1 % of the
    observations have k̂ > 0.7 (the PSIS estimate of their LOO density is unreliable; Vehtari
    et al. 2024), when ``p_loo`` exceeds ``N/5`` or twice the number of global parameters
    ``num_parameters`` (p_loo above the number of parameters signals a misspecified model;
    twice leaves room for Monte Carlo noise; Vehtari, "LOO glossary"). When the
    log-likelihood does not vary across draws (no global latents) LOO is exact and trivial:
    ``applicable`` is ``False``, ``elpd_loo`` is the log predictive density and ``p_loo`` is 0.
    """
    from bjepa.diagnostics._arviz import summarise_loo

    if not hasattr(idata, "log_likelihood"):
        raise ValueError("idata has no log_likelihood group; build it with to_inference_data")
    return jsonable(summarise_loo(idata, var_name, worst=worst, num_parameters=num_parameters))
