"""What differs between ArviZ 0.23 (``InferenceData``) and ArviZ >= 1.3 (``xarray.DataTree``),
in one place (not public API).

This module imports only NumPy, xarray and ArviZ — no torch, no other bjepa module — so the
test suite runs it, by file path, under a Python >= 3.12 that has ArviZ 1.x and nothing else.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__: list[str] = []


def import_arviz():
    """Import ArviZ without its one-off "major refactor" FutureWarning banner."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        import arviz

    return arviz


def is_legacy(az: Any) -> bool:
    """ArviZ < 1 (``InferenceData``)."""
    return int(az.__version__.split(".")[0]) < 1


def dataset(data: dict[str, np.ndarray], dims: dict[str, list[str]],
            coords: dict[str, np.ndarray], attrs: dict[str, Any],
            sample_dims: tuple[str, ...] = ("chain", "draw")):
    """An ``xarray.Dataset`` whose variables have ``sample_dims`` then their own ``dims``;
    ``chain``/``draw`` coordinates are ``0..n-1``."""
    import xarray as xr

    variables = {}
    used: dict[str, np.ndarray] = {}
    for name, value in data.items():
        value = np.asarray(value)
        names = [*sample_dims, *dims.get(name, [])]
        names += [f"{name}_dim_{i}" for i in range(len(names), value.ndim)]
        if len(names) != value.ndim:
            raise ValueError(f"{name} has shape {value.shape} but dims {names}")
        variables[name] = (names, value)
        for dim, size in zip(names, value.shape, strict=True):
            used[dim] = coords[dim] if dim in coords else np.arange(size)
    return xr.Dataset(variables, coords=used, attrs=dict(attrs))


def build(groups: dict[str, Any]):
    """``az.InferenceData`` (ArviZ < 1) or ``xarray.DataTree`` (ArviZ >= 1) of the groups."""
    az = import_arviz()
    if is_legacy(az):
        return az.InferenceData(**groups)
    import xarray as xr

    return xr.DataTree.from_dict({f"/{k}": v for k, v in groups.items()})


def is_inference_data(obj: Any) -> bool:
    az = import_arviz()
    if is_legacy(az):
        return isinstance(obj, az.InferenceData)
    import xarray as xr

    return isinstance(obj, xr.DataTree)


def save(obj: Any, path: str | Path) -> None:
    """NetCDF4 through h5netcdf, for either kind (every group a NetCDF group)."""
    obj.to_netcdf(path, engine="h5netcdf")


def loo_stats(res: Any) -> dict[str, Any]:
    """The numbers of an ``az.loo`` result, under one set of names for both ArviZ lines."""
    def get(*names: str) -> Any:
        for n in names:
            if hasattr(res, n) and getattr(res, n) is not None:
                return getattr(res, n)
            try:
                return res[n]
            except (KeyError, TypeError, IndexError, AttributeError):
                continue
        raise KeyError(names)

    return {"elpd": float(get("elpd_loo", "elpd")), "se": float(get("se")),
            "p": float(get("p_loo", "p")), "n_samples": int(get("n_samples")),
            "n_data_points": int(get("n_data_points")),
            "good_k": float(getattr(res, "good_k", None) or 0.7),
            "pareto_k": get("pareto_k")}


def flat_log_likelihood(obj: Any, var: str) -> np.ndarray:
    """``(chain · draw, observations)`` of one log-likelihood variable."""
    ll = np.asarray(obj["log_likelihood"][var].values, dtype=float)
    return ll.reshape(ll.shape[0] * ll.shape[1], -1)


def exact_elpd(flat: np.ndarray) -> Any:
    """An ELPD result for a log-likelihood that is the same for every draw (no global latents):
    leave-one-out changes nothing, so elpd is the log predictive density and p_loo is 0. PSIS
    is undefined there (ArviZ 0.23 reports k̂ = inf, ArviZ 1.x refuses); this object is what
    ``az.compare`` accepts in place of ``az.loo``'s."""
    import xarray as xr

    az = import_arviz()
    lpd = flat[0]
    n = lpd.size
    pointwise = xr.DataArray(lpd, dims=["time"])
    zeros = xr.DataArray(np.zeros(n), dims=["time"])
    elpd, se = float(lpd.sum()), float(np.sqrt(n * lpd.var()))
    if is_legacy(az):
        return az.ELPDData(
            data=[elpd, se, 0.0, int(flat.shape[0]), n, False, pointwise, zeros, "log", 0.7],
            index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning",
                   "loo_i", "pareto_k", "scale", "good_k"])
    from arviz_stats.utils import ELPDDataLOO

    return ELPDDataLOO(elpd=elpd, se=se, p=0.0, n_samples=int(flat.shape[0]), n_data_points=n,
                       scale="log", warning=False, good_k=0.7, elpd_i=pointwise,
                       pareto_k=zeros)


def elpd(obj: Any, var: str) -> Any:
    """``az.loo(obj, var_name=var)``, or :func:`exact_elpd` when the log-likelihood does not
    vary across draws."""
    flat = flat_log_likelihood(obj, var)
    if np.all(np.ptp(flat, axis=0) == 0):
        return exact_elpd(flat)
    az = import_arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.loo(obj, var_name=var, pointwise=True)


def pick_loo_var(obj: Any, var_name: str | None) -> str:
    names = list(obj["log_likelihood"].data_vars)
    if var_name is not None:
        if var_name not in names:
            raise ValueError(f"no log_likelihood variable {var_name!r}; the file has {names}")
        return var_name
    if len(names) == 1:
        return names[0]
    joint = [n for n in names if n.endswith("_joint")]
    if len(joint) == 1:
        return joint[0]
    raise ValueError(f"the data have several log-likelihood variables {names}; pass var_name")


def summarise_loo(obj: Any, var_name: str | None = None, *, worst: int = 5,
                  num_parameters: int | None = None) -> dict[str, Any]:
    """See :func:`bjepa.diagnostics.loo_summary` (this is its ArviZ-facing part)."""
    az = import_arviz()
    var = pick_loo_var(obj, var_name)
    flat = flat_log_likelihood(obj, var)
    if np.all(np.ptp(flat, axis=0) == 0):
        lpd = flat[0]
        return {
            "var_name": var, "applicable": False, "reliable": True, "problems": [],
            "reason": "the log-likelihood is the same for every draw (no global latents): "
                      "leaving an observation out changes nothing, so elpd_loo is the log "
                      "predictive density, p_loo = 0 and Pareto k̂ is undefined",
            "elpd_loo": float(lpd.sum()), "se": float(np.sqrt(lpd.size * lpd.var())),
            "p_loo": 0.0, "n_samples": int(flat.shape[0]), "n_data_points": int(lpd.size),
            "good_k": None, "khat_max": None, "khat_mean": None,
            "khat_counts": {"good": 0, "bad": 0, "very_bad": 0}, "share_above_good_k": 0.0,
            "share_above_0_7": 0.0, "num_parameters": num_parameters, "worst": [],
            "warnings": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = loo_stats(az.loo(obj, var_name=var, pointwise=True))
    pk = stats["pareto_k"]
    k = np.asarray(pk.values, dtype=float).ravel()
    good_k = stats["good_k"]
    times = np.asarray(pk.coords["time"].values) if "time" in pk.coords else np.arange(k.size)
    order = np.argsort(-k)[:worst]
    notes = sorted({str(x.message).split("\n")[0] for x in caught})
    if stats["n_samples"] < 100:
        notes.append(f"only {stats['n_samples']} draws: k̂ cannot be estimated reliably "
                     "(use >= 100)")
    n, p_loo = stats["n_data_points"], stats["p"]
    share_07 = float((k > 0.7).mean())
    problems = []
    if share_07 > 0.01:
        problems.append(f"Pareto k̂ > 0.7 for {100 * share_07:.1f} % of the {n} observations: "
                        "their leave-one-out estimates are unreliable")
    if p_loo > n / 5:
        problems.append(f"p_loo = {p_loo:.1f} exceeds N/5 = {n / 5:.1f}: the posterior is "
                        "badly misspecified or overfitted")
    elif num_parameters is not None and p_loo > 2 * num_parameters:
        problems.append(f"p_loo = {p_loo:.1f} exceeds twice the {num_parameters} global "
                        "parameters: the model is misspecified")
    return {
        "var_name": var, "applicable": True, "reliable": not problems, "problems": problems,
        "elpd_loo": stats["elpd"], "se": stats["se"], "p_loo": p_loo,
        "n_samples": stats["n_samples"], "n_data_points": n,
        "good_k": good_k, "khat_max": float(k.max()), "khat_mean": float(k.mean()),
        "khat_counts": {"good": int((k <= good_k).sum()),
                        "bad": int(((k > good_k) & (k <= 1.0)).sum()),
                        "very_bad": int((k > 1.0).sum())},
        "share_above_good_k": float((k > good_k).mean()), "share_above_0_7": share_07,
        "num_parameters": num_parameters,
        "worst": [{"time": int(times[i]), "khat": float(k[i])} for i in order],
        "warnings": notes,
    }
