"""Export a trained world model's posterior to :class:`arviz.InferenceData`.

See docs/method.md#diagnostics.

Groups (every sampled group has a leading ``chain`` axis, then ``draw``):

- ``posterior``: guide draws of the per-observation latent (``z_target`` for VJEPA/BJEPA, ``z``
  for the VAE/AR), dims ``(chain, draw, time, latent_dim)``; for a model with a weight
  posterior (a ``weight_guide``), one variable per weight site (``predictor_net_weight``, ...)
  with dims ``(chain, draw, <name>_dim_0, ...)``. Draw ``s`` of every variable is one joint
  draw.
- ``posterior_predictive``: one draw of the predicted next latent per posterior draw (for the
  VAE/AR: of the frame), dims ``(chain, draw, time, latent_dim)``.
- ``observed_data``: what the prediction is judged against — the EMA target encoder's mean
  latent ``μ_θ'(x_{t+1})`` (VAE/AR: the frame), dims ``(time, latent_dim)``.
- ``log_likelihood``: at the observed value, per posterior draw (ArviZ's convention):
  ``z_target`` per latent dimension, ``log p(y_{t,d} | z_C [, w^(s)])`` (the predictive's
  marginal), dims ``(chain, draw, time, latent_dim)`` — the shape of ``posterior_predictive``,
  so ``az.loo_pit``, ``az.plot_loo_pit`` and ``az.plot_ppc`` work per dimension — and
  ``z_target_joint``, the joint ``log p(y_t | z_C [, w^(s)])``, dims ``(chain, draw, time)``,
  for ``az.loo`` and ``az.compare`` (``var_name="z_target_joint"``). They vary across draws
  only through global latents (the weight posterior); without any, every draw has the same
  value, ``p_loo`` is 0 and elpd is the plain log predictive density.
- ``prior``: draws of the same latents from their priors (``N(0, I)`` for ``z_target``, the
  weight prior for the weights).
- ``sample_stats`` (when a loss trace is given): ``training_loss``, the per-observation
  negative ELBO during training, dims ``(chain, step)``.

Several models that share one observed space (independent seeds of one configuration over one
frozen encoder) become several chains, so R-hat and ESS mean something; otherwise the file's
attribute ``chains`` says why R-hat is absent.

The file written by :func:`save_inference_data` is plain NetCDF4 (h5netcdf): ArviZ 0.23
(``az.from_netcdf``) and ArviZ ≥ 1.3 (a DataTree) read it without bjepa installed.

Example::

    idata = to_inference_data(model, test.obs[:-1], test.obs[1:], num_samples=200)
    save_inference_data(idata, "inference_data.nc")
    az.loo(idata, var_name="z_target_joint"); az.loo_pit(idata, y="z_target")
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bjepa._validation import check_positive_int
from bjepa.diagnostics import _arviz
from bjepa.diagnostics._common import atomic_write, import_arviz, model_label
from bjepa.diagnostics._views import Draws, sample_draws

__all__ = ["load_inference_data", "save_inference_data", "to_inference_data"]


def to_inference_data(model: Any, context: torch.Tensor, target: torch.Tensor | None = None,
                      *, num_samples: int = 100, seed: int | None = 0, time_offset: int = 0,
                      loss_trace: Any = None):
    """``arviz.InferenceData`` of ``model`` on ``(context, target)`` pairs.

    :param model: a trained VJEPA, BJEPA, VAE or AR (a JEPA is deterministic and raises), or a
        list of them that share one observed space (e.g. seeds of a weight posterior over one
        frozen encoder): one chain each.
    :param context: ``(N, obs_dim)`` context frames ``x_t``.
    :param target: ``(N, obs_dim)`` next frames ``x_{t+1}`` (optional for the VAE).
    :param num_samples: joint posterior draws per chain (the ``draw`` axis).
    :param seed: seeds the draws without touching the caller's RNG (``None``: unseeded).
    :param time_offset: index of the first pair, used as the ``time`` coordinate.
    :param loss_trace: ``(steps, losses)`` of the training run (one per model for a list),
        stored as ``sample_stats.training_loss``.
    :returns: an ``arviz.InferenceData`` with groups ``posterior``, ``posterior_predictive``,
        ``observed_data``, ``log_likelihood``, ``prior`` and, with a loss trace,
        ``sample_stats``.
    """
    check_positive_int("num_samples", num_samples)
    if isinstance(time_offset, bool) or not isinstance(time_offset, int) or time_offset < 0:
        raise ValueError(f"time_offset must be an int >= 0, got {time_offset!r}")
    models = list(model) if isinstance(model, list | tuple) else [model]
    if not models:
        raise ValueError("model must be a model or a non-empty list of models")
    draws = [sample_draws(m, context, target, num_samples=num_samples,
                          seed=None if seed is None else seed + 1000 * i)
             for i, m in enumerate(models)]
    traces = loss_trace if len(models) > 1 or loss_trace is None else [loss_trace]
    if traces is not None and len(traces) != len(models):
        raise ValueError(f"loss_trace must hold one trace per model ({len(models)}), got "
                         f"{len(traces)}")
    return inference_data_from_draws(models, draws, time_offset=time_offset,
                                     loss_traces=traces)


def _var_name(model: Any, site: str) -> str:
    prefix = getattr(model, "_pyro_name", "")
    if prefix and site.startswith(prefix + "."):
        site = site[len(prefix) + 1:]
    return re.sub(r"[^0-9A-Za-z_]", "_", site).strip("_") or "weight"


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _check_same_space(models: list[Any], draws: list[Draws]) -> None:
    first = draws[0].observed
    for m, d in zip(models[1:], draws[1:], strict=True):
        if type(m) is not type(models[0]):
            raise ValueError(f"chains must come from one model class, got "
                             f"{type(models[0]).__name__} and {type(m).__name__}")
        if d.observed.shape != first.shape or not torch.allclose(d.observed, first,
                                                                 rtol=1e-5, atol=1e-6):
            gap = float((d.observed - first).abs().max()) if d.observed.shape == first.shape \
                else float("inf")
            raise ValueError(
                "these models do not share one observed space (their target latents differ by "
                f"up to {gap:.3g}), so their draws are not chains of one posterior; chains "
                "need independent runs over one frozen encoder (e.g. weight posteriors of "
                "several seeds)")
        if set(d.weights) != set(draws[0].weights):
            raise ValueError("chains must have the same weight sites")


def _stack(values: list[torch.Tensor]) -> np.ndarray:
    return np.stack([_np(v) for v in values])


def _loss_dataset(traces: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, losses (chain, step))`` on the union of the steps, NaN where a run has none."""
    parsed = []
    for tr in traces:
        steps, losses = (np.asarray(x, dtype=float).ravel() for x in tr)
        if steps.shape != losses.shape or steps.size == 0:
            raise ValueError("a loss trace is (steps, losses) of equal, non-zero length")
        parsed.append((steps, losses))
    union = np.unique(np.concatenate([s for s, _ in parsed]))
    out = np.full((len(parsed), union.size), np.nan)
    for c, (steps, losses) in enumerate(parsed):
        out[c, np.searchsorted(union, steps)] = losses
    return union.astype(np.int64), out


def inference_data_from_draws(model: Any, draws: Draws | list[Draws], *, time_offset: int = 0,
                              loss_traces: list[Any] | None = None):
    """Assemble the InferenceData from :func:`bjepa.diagnostics._views.sample_draws` output
    (a list of draws, one per model, gives one chain per model)."""
    models = list(model) if isinstance(model, list | tuple) else [model]
    all_draws = list(draws) if isinstance(draws, list | tuple) else [draws]
    _check_same_space(models, all_draws)
    first, model0 = all_draws[0], models[0]
    view = first.view
    n, d_obs = first.observed.shape
    coords: dict[str, Any] = {"time": np.arange(time_offset, time_offset + n),
                              view.observed_dim: np.arange(d_obs)}
    dims: dict[str, list[str]] = {}
    posterior: dict[str, np.ndarray] = {}
    prior: dict[str, np.ndarray] = {}
    if first.latent is not None:
        posterior[view.latent_name] = _stack([d.latent for d in all_draws])
        coords["latent_dim"] = np.arange(first.latent.shape[-1])
        dims[view.latent_name] = ["time", "latent_dim"]
        if first.prior_latent is not None:
            prior[view.latent_name] = _np(first.prior_latent)[None]
    for site, value in first.weights.items():
        name = _var_name(model0, site)
        posterior[name] = _stack([d.weights[site] for d in all_draws])
        dims[name] = [f"{name}_dim_{i}" for i in range(value.dim() - 1)]
        if first.prior_weights is not None and site in first.prior_weights:
            prior[name] = _np(first.prior_weights[site])[None]
    obs, joint = view.observed_name, f"{view.observed_name}_joint"
    hparams = getattr(model0, "hparams", {})
    from bjepa import __version__

    global_latents = bool(first.weights)
    chains = len(all_draws)
    attrs = {
        "inference_library": "pyro",
        "bjepa_version": __version__,
        "model_class": type(model0).__name__,
        "model": model_label(model0),
        "hparams": json.dumps(hparams, default=str),
        "observed": f"observed_data.{obs}: {view.observed_description}",
        "log_likelihood": (
            f"log_likelihood.{obs}: per dimension, the predictive's marginal log-density at the "
            f"observed value for each posterior draw (same shape as posterior_predictive.{obs}:"
            f" use it for loo_pit, plot_loo_pit and plot_ppc); log_likelihood.{joint}: the "
            f"joint log-density per observation (use it for loo and compare: "
            f"var_name='{joint}')"),
        "global_latents": ("the weight posterior: log-likelihoods vary across draws through "
                           "it" if global_latents else
                           "none: every draw has the same log-likelihood, so p_loo = 0, the "
                           "Pareto k-hat values are undefined (ArviZ reports inf) and elpd_loo "
                           "is the log predictive density"),
        "chains": (f"{chains} chains: one per independently trained model over one observed "
                   "space, so R-hat and ESS compare independent runs" if chains > 1 else
                   "1 chain: SVI fits one approximation, whose draws are independent; R-hat "
                   "needs several independent runs and is absent (NaN). Pass several models "
                   "that share one frozen encoder (e.g. seeds) to to_inference_data to get "
                   "chains"),
        "draws": "draw s of every group is one joint posterior draw",
    }

    def dataset(data: dict[str, np.ndarray], var_dims: dict[str, list[str]],
                sample_dims: tuple[str, ...] = ("chain", "draw")):
        return _arviz.dataset(data, var_dims, coords, attrs, sample_dims)

    loglik = {joint: _stack([d.log_likelihood for d in all_draws])}
    ll_dims = {joint: ["time"]}
    if first.log_likelihood_dims is not None:
        loglik[obs] = _stack([d.log_likelihood_dims for d in all_draws])
        ll_dims[obs] = ["time", view.observed_dim]
    groups = {
        "posterior": dataset(posterior, dims),
        "posterior_predictive": dataset({obs: _stack([d.predictive for d in all_draws])},
                                        {obs: ["time", view.observed_dim]}),
        "log_likelihood": dataset(loglik, ll_dims),
        "observed_data": dataset({obs: _np(first.observed)}, {obs: ["time", view.observed_dim]},
                                 sample_dims=()),
    }
    if prior:
        groups["prior"] = dataset(prior, {k: v for k, v in dims.items() if k in prior})
    if loss_traces is not None and any(t is not None for t in loss_traces):
        if any(t is None for t in loss_traces):
            raise ValueError("give a loss trace for every chain, or none")
        steps, losses = _loss_dataset(loss_traces)
        groups["sample_stats"] = _arviz.dataset(
            {"training_loss": losses}, {"training_loss": ["step"]}, {"step": steps},
            {**attrs, "training_loss": "per-observation negative ELBO of each chain's training "
                                       "run at the logged steps"}, ("chain",))
    return _arviz.build(groups)


def save_inference_data(idata: Any, path: str | Path) -> Path:
    """Write ``idata`` to NetCDF (h5netcdf engine) atomically; returns the path."""
    if not _arviz.is_inference_data(idata):
        raise TypeError(f"idata must be an arviz.InferenceData (ArviZ < 1) or an "
                        f"xarray.DataTree (ArviZ >= 1), got {type(idata).__name__}")
    return atomic_write(path, lambda tmp: _arviz.save(idata, tmp))


def load_inference_data(path: str | Path):
    """Read an InferenceData NetCDF file (``az.from_netcdf`` with the h5netcdf engine)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no InferenceData file at {path}")
    return import_arviz().from_netcdf(path, engine="h5netcdf")
