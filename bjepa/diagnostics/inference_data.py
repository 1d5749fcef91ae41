"""Export a trained world model's posterior to :class:`arviz.InferenceData`.

See docs/method.md#diagnostics.

Groups (every sampled group has a leading ``chain`` axis of size 1 — SVI has one "chain" — then
``draw``):

- ``posterior``: guide draws of the per-observation latent (``z_target`` for VJEPA/BJEPA, ``z``
  for the VAE/AR), dims ``(chain, draw, time, latent_dim)``; for a model with a weight
  posterior (a ``weight_guide``), one variable per weight site (``predictor_net_weight``, ...)
  with dims ``(chain, draw, <name>_dim_0, ...)``. Draw ``s`` of every variable is one joint
  draw.
- ``posterior_predictive``: one draw of the predicted next latent per posterior draw (for the
  VAE/AR: of the frame), dims ``(chain, draw, time, latent_dim)``.
- ``observed_data``: what the prediction is judged against — the EMA target encoder's mean
  latent ``μ_θ'(x_{t+1})`` (VAE/AR: the frame), dims ``(time, latent_dim)``.
- ``log_likelihood``: per observation and draw, the model's likelihood term at the posterior
  draw — ``log p_φ(z_T^{(s)} | z_C [, w^{(s)}])``, the ``"dynamics"`` factor of the Pyro model
  (VAE/AR: ``log p(x | z^{(s)})``), dims ``(chain, draw, time)``; ``az.loo`` reads it.

The file written by :func:`save_inference_data` is plain NetCDF4 (h5netcdf): ``az.from_netcdf``
reads it without bjepa installed.

Example::

    idata = to_inference_data(model, test.obs[:-1], test.obs[1:], num_samples=200)
    save_inference_data(idata, "inference_data.nc")
    az.loo(idata)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bjepa._validation import check_positive_int
from bjepa.diagnostics._common import atomic_write, import_arviz, model_label
from bjepa.diagnostics._views import Draws, sample_draws

__all__ = ["load_inference_data", "save_inference_data", "to_inference_data"]


def to_inference_data(model: Any, context: torch.Tensor, target: torch.Tensor | None = None,
                      *, num_samples: int = 100, seed: int | None = 0, time_offset: int = 0):
    """``arviz.InferenceData`` of ``model`` on ``(context, target)`` pairs.

    :param model: a trained VJEPA, BJEPA, VAE or AR (a JEPA is deterministic and raises).
    :param context: ``(N, obs_dim)`` context frames ``x_t``.
    :param target: ``(N, obs_dim)`` next frames ``x_{t+1}`` (optional for the VAE).
    :param num_samples: joint posterior draws (the ``draw`` axis).
    :param seed: seeds the draws without touching the caller's RNG (``None``: unseeded).
    :param time_offset: index of the first pair, used as the ``time`` coordinate.
    :returns: an ``arviz.InferenceData`` with groups ``posterior``, ``posterior_predictive``,
        ``observed_data`` and ``log_likelihood``.
    """
    check_positive_int("num_samples", num_samples)
    if isinstance(time_offset, bool) or not isinstance(time_offset, int) or time_offset < 0:
        raise ValueError(f"time_offset must be an int >= 0, got {time_offset!r}")
    draws = sample_draws(model, context, target, num_samples=num_samples, seed=seed)
    return inference_data_from_draws(model, draws, time_offset=time_offset)


def _var_name(model: Any, site: str) -> str:
    prefix = getattr(model, "_pyro_name", "")
    if prefix and site.startswith(prefix + "."):
        site = site[len(prefix) + 1:]
    return re.sub(r"[^0-9A-Za-z_]", "_", site).strip("_") or "weight"


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def inference_data_from_draws(model: Any, draws: Draws, *, time_offset: int = 0):
    """Assemble the InferenceData from :func:`bjepa.diagnostics._views.sample_draws` output."""
    az = import_arviz()
    view = draws.view
    n, d_obs = draws.observed.shape
    coords: dict[str, Any] = {"time": np.arange(time_offset, time_offset + n),
                              view.observed_dim: np.arange(d_obs)}
    dims: dict[str, list[str]] = {}
    posterior: dict[str, np.ndarray] = {}
    if draws.latent is not None:
        posterior[view.latent_name] = _np(draws.latent)[None]
        coords["latent_dim"] = np.arange(draws.latent.shape[-1])
        dims[view.latent_name] = ["time", "latent_dim"]
    for site, value in draws.weights.items():
        name = _var_name(model, site)
        posterior[name] = _np(value)[None]
        dims[name] = [f"{name}_dim_{i}" for i in range(value.dim() - 1)]
    obs = view.observed_name
    hparams = getattr(model, "hparams", {})
    from bjepa import __version__

    attrs = {
        "inference_library": "pyro",
        "bjepa_version": __version__,
        "model_class": type(model).__name__,
        "model": model_label(model),
        "hparams": json.dumps(hparams, default=str),
        "observed": f"observed_data.{obs}: {view.observed_description}",
        "log_likelihood": (f"log_likelihood.{obs}: per observation and posterior draw, the "
                           "model's likelihood term at that draw (log p_phi(z_T^(s) | z_C) for "
                           "latent world models, log p(x | z^(s)) for the VAE/AR)"),
        "draws": "draw s of every group is one joint posterior draw; chain is SVI's single run",
    }
    def dataset(data: dict[str, np.ndarray], var_dims: dict[str, list[str]], **kw: Any):
        used = {dim for names in var_dims.values() for dim in names}
        return az.dict_to_dataset(data, attrs=attrs, dims=var_dims,
                                  coords={k: v for k, v in coords.items() if k in used}, **kw)

    groups = {
        "posterior": dataset(posterior, dims),
        "posterior_predictive": dataset({obs: _np(draws.predictive)[None]},
                                        {obs: ["time", view.observed_dim]}),
        "log_likelihood": dataset({obs: _np(draws.log_likelihood)[None]}, {obs: ["time"]}),
        "observed_data": dataset({obs: _np(draws.observed)}, {obs: ["time", view.observed_dim]},
                                 default_dims=[]),
    }
    return az.InferenceData(**groups)


def save_inference_data(idata: Any, path: str | Path) -> Path:
    """Write ``idata`` to NetCDF (h5netcdf engine) atomically; returns the path."""
    az = import_arviz()
    if not isinstance(idata, az.InferenceData):
        raise TypeError(f"idata must be an arviz.InferenceData, got {type(idata).__name__}")
    return atomic_write(path, lambda tmp: idata.to_netcdf(tmp, engine="h5netcdf"))


def load_inference_data(path: str | Path):
    """Read an InferenceData NetCDF file (``az.from_netcdf`` with the h5netcdf engine)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no InferenceData file at {path}")
    return import_arviz().from_netcdf(path, engine="h5netcdf")
