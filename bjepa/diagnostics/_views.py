"""How the diagnostics see each kind of world model (not public API).

Three kinds, recognised by the methods a model has, not by its class, so new models plug in:

- ``latent`` (VJEPA, BJEPA): ``predictive_dist(context)`` over the next latent and
  ``target_dist(target)`` (the guide ``q(z_T | x_T)``); the observed value is the target
  encoder's mean latent. A model with a weight posterior also has ``weight_guide``.
- ``observation`` (VAE, AR): ``posterior_dist(x)`` and ``likelihood_dist(z)``; the predictive is
  the decoder averaged over ``q(z | x_C)``, the observed value is the frame it explains.
- ``deterministic`` (JEPA): an encoder and a point prediction, no distribution to check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import Distribution

from bjepa._util import seeded
from bjepa._validation import check_positive_int, check_tensor
from bjepa.diagnostics.calibration import Forecast, _gaussian_marginals, _mixture_parts

__all__: list[str] = []

#: latent draws whose decoders form the VAE/AR observation-space predictive mixture
_MAX_COMPONENTS = 32


@dataclass(frozen=True)
class ModelView:
    kind: str
    latent_name: str | None
    observed_name: str
    observed_dim: str
    observed_description: str

    # -- inputs -----------------------------------------------------------------------------
    def check(self, model: Any, context: torch.Tensor, target: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_tensor("context", context, ndim=2, min_rows=2)
        if hasattr(model, "check_inputs"):
            context, target = model.check_inputs(context, target)
        elif target is not None:
            check_tensor("target", target, ndim=2)
        if self.kind != "observation" and target is None:
            raise ValueError(f"{type(model).__name__} needs target frames (the next frames "
                             "x_{t+1}) to diagnose its prediction of the next latent")
        dev = _device(model)
        return context.to(dev), None if target is None else target.to(dev)

    # -- quantities -------------------------------------------------------------------------
    def observed(self, model: Any, context: torch.Tensor, target: torch.Tensor | None
                 ) -> torch.Tensor:
        """The realised value the predictive is judged against, ``(N, D)``."""
        with torch.no_grad():
            if self.kind == "latent":
                if hasattr(model, "target_dist"):
                    return model.target_dist(target).mean
                return model.encode_target(target)
            if self.kind == "observation":
                return target if getattr(model, "reconstructs", "context") == "target" \
                    else context
            return self.deterministic_latent(model, target)

    def latent_posterior(self, model: Any, context: torch.Tensor, target: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(loc, scale)`` of the per-observation latent's guide, or ``None``."""
        with torch.no_grad():
            q = self.latent_dist(model, context, target)
        if q is None:
            return None
        marg = _gaussian_marginals(q)
        if marg is not None:
            return marg
        return q.mean, q.variance.sqrt()

    def latent_dist(self, model: Any, context: torch.Tensor, target: torch.Tensor | None
                    ) -> Distribution | None:
        if self.kind == "latent" and hasattr(model, "target_dist"):
            return model.target_dist(target)
        if self.kind == "observation":
            return model.posterior_dist(context)
        return None

    def deterministic_latent(self, model: Any, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if hasattr(model, "encode_target"):
                return model.encode_target(target)
            ema = getattr(model, "target_encoder", None)
            return ema(target) if ema is not None else model.encode(target)


LATENT = ModelView("latent", "z_target", "z_target", "latent_dim",
                   "the target encoder's mean latent of the next frame, μ_θ'(x_{t+1})")
OBSERVATION_VAE = ModelView("observation", "z", "x", "obs_dim",
                            "the frame x_t the decoder reconstructs")
OBSERVATION_AR = ModelView("observation", "z", "x", "obs_dim",
                           "the next frame x_{t+1} the decoder predicts")
DETERMINISTIC = ModelView("deterministic", None, "z_target", "latent_dim",
                          "the EMA target encoder's latent of the next frame")


def view_of(model: Any) -> ModelView:
    """Classify ``model`` by the methods it has; raise ``TypeError`` naming what is missing."""
    if callable(getattr(model, "predictive_dist", None)) and (
            hasattr(model, "target_dist") or hasattr(model, "encode_target")):
        return LATENT
    if callable(getattr(model, "posterior_dist", None)) \
            and callable(getattr(model, "likelihood_dist", None)):
        return OBSERVATION_AR if getattr(model, "reconstructs", "context") == "target" \
            else OBSERVATION_VAE
    if callable(getattr(model, "encode", None)) and (
            hasattr(model, "predict_mean") or hasattr(model, "target_encoder")):
        return DETERMINISTIC
    raise TypeError(
        f"{type(model).__name__} is not a bjepa world model the diagnostics understand: "
        "expected predictive_dist + target_dist (VJEPA, BJEPA), posterior_dist + "
        "likelihood_dist (VAE, AR), or encode + predict_mean (JEPA)")


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _is_local(site: dict[str, Any], n: int) -> bool:
    """A per-observation site: inside the ``data`` plate (or any plate of size ``n``)."""
    return any(f.name == "data" or f.size == n for f in site["cond_indep_stack"])


def latent_sites(trace: Any, n: int, *, local: bool) -> list[str]:
    """Names of the latent sample sites of ``trace`` that are per observation (``local``) or
    global; plates' subsample sites, observed and auxiliary sites are left out."""
    return [name for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
            and not site_is_subsample(site) and not site["infer"].get("is_auxiliary", False)
            and _is_local(site, n) == local]


def weight_draws(model: Any, context: torch.Tensor, target: torch.Tensor | None,
                 num_samples: int) -> list[dict[str, torch.Tensor]]:
    """``num_samples`` draws of the global (weight) sites of ``model.weight_guide``.

    The guide is called like the model, ``weight_guide(context, target)``; every sample site
    that is not observed, not auxiliary and not per-observation counts as a weight."""
    guide = getattr(model, "weight_guide", None)
    if guide is None:
        return []
    n = context.shape[0]
    draws = []
    for _ in range(num_samples):
        with torch.no_grad(), poutine.block():
            tr = poutine.trace(guide).get_trace(context, target)
        draws.append({name: tr.nodes[name]["value"].detach()
                      for name in latent_sites(tr, n, local=False)})
    if not draws[0]:
        raise ValueError(f"{type(model).__name__}.weight_guide samples no global sites; "
                         "nothing to export as a weight posterior")
    return draws


def conditioned_predictive(model: Any, context: torch.Tensor,
                           weights: dict[str, torch.Tensor]) -> Distribution:
    """``p(z_T | z_C, w)`` with the predictor's random weights fixed at ``weights``."""
    with torch.no_grad(), poutine.block(), poutine.condition(data=weights):
        return model.predictive_dist(context)


def predictive_forecast(model: Any, context: torch.Tensor, target: torch.Tensor | None, *,
                        num_weight_samples: int = 50) -> Forecast:
    """The predictive of a ``latent`` model, integrated over its weight posterior if it has one."""
    with torch.no_grad():
        ws = weight_draws(model, context, target, num_weight_samples)
        if ws:
            return Forecast.mixture([conditioned_predictive(model, context, w) for w in ws])
        return Forecast.from_distribution(model.predictive_dist(context))


@dataclass
class Draws:
    """Joint posterior draws and what follows from them, for one model on one data set."""

    view: ModelView
    observed: torch.Tensor                      # (N, D_obs)
    latent: torch.Tensor | None                 # (S, N, D_z) guide draws of the local latent
    weights: dict[str, torch.Tensor]            # site -> (S, ...) weight-posterior draws
    predictive: torch.Tensor                    # (S, N, D_obs) posterior-predictive draws
    log_likelihood: torch.Tensor                # (S, N) joint, at the observed value
    forecast: Forecast                          # the exact (mixture) predictive
    latent_loc: torch.Tensor | None = None      # (N, D_z) guide moments (collapse)
    latent_scale: torch.Tensor | None = None
    log_likelihood_dims: torch.Tensor | None = None  # (S, N, D_obs) per-dimension marginals
    prior_latent: torch.Tensor | None = None    # (S, N, D_z) draws of the latent's prior
    prior_weights: dict[str, torch.Tensor] | None = None  # site -> (S, ...) weight-prior draws


def marginal_log_prob(d: Distribution, y: torch.Tensor) -> torch.Tensor | None:
    """``log p(y_d)`` per dimension ``(..., N, D)`` of a Gaussian or a mixture of Gaussians
    with event ``(D,)``; ``None`` for other distributions (no closed-form marginals)."""
    parts = _mixture_parts(d) if d.batch_shape and len(d.batch_shape) == 1 else None
    if parts is None:
        marg = _gaussian_marginals(d)
        if marg is None:
            return None
        return torch.distributions.Normal(marg[0], marg[1]).log_prob(y)
    weights, loc, scale = parts                             # (K, N), (K, N, D), (K, N, D)
    comp = torch.distributions.Normal(loc, scale).log_prob(y.unsqueeze(0))
    return torch.logsumexp(comp + weights.clamp_min(1e-38).log().unsqueeze(-1), 0)


def _prior_weight_draws(model: Any, context: torch.Tensor, target: torch.Tensor | None,
                        sites: list[str], s: int) -> dict[str, torch.Tensor] | None:
    """``s`` draws of the weight sites from their prior (``model._weights_only`` programs)."""
    program = getattr(model, "_weights_only", None)
    if program is None or not sites:
        return None
    draws: dict[str, list[torch.Tensor]] = {k: [] for k in sites}
    for _ in range(s):
        with torch.no_grad(), poutine.block():
            tr = poutine.trace(program).get_trace(context, target)
        for k in sites:
            if k not in tr.nodes:
                return None
            draws[k].append(tr.nodes[k]["value"].detach())
    return {k: torch.stack(v) for k, v in draws.items()}


def sample_draws(model: Any, context: torch.Tensor, target: torch.Tensor | None, *,
                 num_samples: int = 100, seed: int | None = 0) -> Draws:
    """Draw ``num_samples`` joint posterior samples and everything diagnostics need."""
    view = view_of(model)
    if view.kind == "deterministic":
        raise ValueError(
            f"{type(model).__name__} is deterministic: it has no posterior or predictive "
            "distribution to sample (diagnose its representation with collapse_diagnostics)")
    check_positive_int("num_samples", num_samples)
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    context, target = view.check(model, context, target)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad(), seeded(seed, _device(model)):
            if view.kind == "latent":
                return _latent_draws(model, view, context, target, num_samples)
            return _observation_draws(model, view, context, target, num_samples)
    finally:
        if hasattr(model, "train"):
            model.train(was_training)


def _latent_draws(model: Any, view: ModelView, context: torch.Tensor, target: torch.Tensor,
                  s: int) -> Draws:
    observed = view.observed(model, context, target)
    q = view.latent_dist(model, context, target)
    latent = q.sample((s,)) if q is not None else observed.expand(s, *observed.shape)
    loc_scale = view.latent_posterior(model, context, target)
    ws = weight_draws(model, context, target, s)
    # log-likelihoods are evaluated at the observed value (ArviZ's convention): they vary
    # across draws only through global latents (the weight posterior)
    if ws:
        dists = [conditioned_predictive(model, context, w) for w in ws]
        predictive = torch.stack([d.sample() for d in dists])
        loglik = torch.stack([d.log_prob(observed) for d in dists])
        per_dim = [marginal_log_prob(d, observed) for d in dists]
        loglik_dims = None if per_dim[0] is None else torch.stack(per_dim)
        forecast = Forecast.mixture(dists)
        weights = {k: torch.stack([w[k] for w in ws]) for k in ws[0]}
    else:
        pred = model.predictive_dist(context)
        predictive = pred.sample((s,))
        loglik = pred.log_prob(observed).expand(s, -1)
        per_dim = marginal_log_prob(pred, observed)
        loglik_dims = None if per_dim is None else per_dim.expand(s, -1, -1)
        forecast = Forecast.from_distribution(pred)
        weights = {}
    prior_fn = getattr(model, "prior_dist", None)
    prior_latent = prior_fn(observed).sample((s,)) if callable(prior_fn) else None
    return Draws(view, observed, latent, weights, predictive, loglik, forecast,
                 *(loc_scale or (None, None)), log_likelihood_dims=loglik_dims,
                 prior_latent=prior_latent,
                 prior_weights=_prior_weight_draws(model, context, target, list(weights), s))


def _observation_draws(model: Any, view: ModelView, context: torch.Tensor,
                       target: torch.Tensor | None, s: int) -> Draws:
    observed = view.observed(model, context, target)
    q = model.posterior_dist(context)
    z = q.sample((s,))                                       # (S, N, D_z)
    lik = model.likelihood_dist(z)                           # batch (S, N), event (D_x,)
    predictive = lik.sample()
    loglik = lik.log_prob(observed)
    # the predictive p(x | x_C) = E_q p(x | z): a mixture over the first K latent draws
    k = min(s, _MAX_COMPONENTS)
    comp = model.likelihood_dist(z[:k])
    marg = _gaussian_marginals(comp)

    def log_prob(y: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(comp.log_prob(y), 0) - math.log(k)

    def sampler(m: int) -> torch.Tensor:
        idx = torch.randint(k, (m,), device=z.device)
        return model.likelihood_dist(z[idx]).sample()

    if marg is not None:
        forecast = Forecast(loc=marg[0], scale=marg[1], log_prob=log_prob, sampler=sampler,
                            dtype=observed.dtype)
    else:
        forecast = Forecast(samples=predictive, log_prob=log_prob, sampler=sampler,
                            dtype=observed.dtype)
    loc, scale = view.latent_posterior(model, context, target)
    per_dim = marginal_log_prob(lik, observed)
    prior_latent = None
    try:  # the latent's prior is the distribution at its site in the model
        with torch.no_grad(), poutine.block():
            tr = poutine.trace(model.model).get_trace(context, target)
        site = tr.nodes.get(view.latent_name)
        if site is not None and site["type"] == "sample":
            prior_latent = site["fn"].sample((s,))
    except (AttributeError, TypeError, ValueError, RuntimeError, NotImplementedError):
        prior_latent = None
    return Draws(view, observed, z, {}, predictive, loglik, forecast, loc, scale,
                 log_likelihood_dims=per_dim, prior_latent=prior_latent)
