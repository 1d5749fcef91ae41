"""Posterior diagnostics with ArviZ: can a trained world model's uncertainty be
trusted?

See docs/method.md#diagnostics.

- :func:`to_inference_data` — posterior, posterior predictive, observed data and per-observation
  log-likelihood as ``arviz.InferenceData`` (NetCDF via :func:`save_inference_data`).
- :func:`calibrate` — coverage of central intervals, PIT, CRPS, NLL and a verdict.
- :func:`collapse_diagnostics` — per-dimension KL, active units, variance floor, effective rank
  and a verdict (``healthy`` / ``partial collapse`` / ``collapsed``).
- :func:`guide_psis_khat`, :func:`loo_summary` — importance-sampling diagnostics.
- :func:`diagnose_model` / :func:`write_diagnosis` — all of it, with figures and a report;
  :func:`diagnose_run` does it for every checkpoint of a run folder (``bjepa diagnose``), and
  :func:`compare_runs` ranks those that score one observed space with ``az.compare``.

Example::

    from bjepa.diagnostics import diagnose_model, write_diagnosis
    diag = diagnose_model(model, test.obs[:-1], test.obs[1:])
    diag.verdict                       # 'healthy'
    write_diagnosis(diag, "runs/x/diagnostics/vjepa")
"""

from bjepa.diagnostics.calibration import (
    LEVELS,
    CalibrationReport,
    Forecast,
    as_forecast,
    calibrate,
    coverage,
    crps,
    fit_linear_probe,
    pit,
)
from bjepa.diagnostics.collapse import (
    CollapseReport,
    collapse_diagnostics,
    collapse_from_moments,
    effective_rank,
    gaussian_kl_per_dim,
)
from bjepa.diagnostics.importance import global_latent_sites, guide_psis_khat, loo_summary
from bjepa.diagnostics.inference_data import (
    load_inference_data,
    save_inference_data,
    to_inference_data,
)
from bjepa.diagnostics.plots import plot_calibration, plot_collapse
from bjepa.diagnostics.report import Diagnosis, diagnose_model, render_markdown, write_diagnosis
from bjepa.diagnostics.runs import (
    RunData,
    compare_runs,
    diagnose_checkpoint,
    diagnose_run,
    find_checkpoints,
    register_data_loader,
)

__all__ = [
    "LEVELS",
    "CalibrationReport",
    "CollapseReport",
    "Diagnosis",
    "Forecast",
    "RunData",
    "as_forecast",
    "calibrate",
    "collapse_diagnostics",
    "compare_runs",
    "collapse_from_moments",
    "coverage",
    "crps",
    "diagnose_checkpoint",
    "diagnose_model",
    "diagnose_run",
    "effective_rank",
    "find_checkpoints",
    "fit_linear_probe",
    "gaussian_kl_per_dim",
    "global_latent_sites",
    "guide_psis_khat",
    "load_inference_data",
    "loo_summary",
    "pit",
    "plot_calibration",
    "plot_collapse",
    "register_data_loader",
    "render_markdown",
    "save_inference_data",
    "to_inference_data",
    "write_diagnosis",
]
