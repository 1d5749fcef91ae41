"""One call that diagnoses a trained world model, and the files that record it.

:func:`diagnose_model` runs calibration, collapse and importance diagnostics and builds the
InferenceData; :func:`write_diagnosis` writes ``diagnostics.json``, ``inference_data.nc``,
``calibration.png``, ``collapse.png`` and ``report.md`` into a folder.

Example::

    diag = diagnose_model(model, test.obs[:-1], test.obs[1:])
    print(diag.verdict, diag.reasons)
    write_diagnosis(diag, "diagnostics/vjepa")
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bjepa._util import seeded
from bjepa._validation import check_tensor
from bjepa.diagnostics._common import jsonable, model_label, write_text
from bjepa.diagnostics._views import sample_draws, view_of
from bjepa.diagnostics.calibration import (
    LEVELS,
    CalibrationReport,
    calibrate,
    fit_linear_probe,
)
from bjepa.diagnostics.collapse import ACTIVE_THRESHOLD, CollapseReport, collapse_from_moments
from bjepa.diagnostics.importance import guide_psis_khat, loo_summary
from bjepa.diagnostics.inference_data import inference_data_from_draws, save_inference_data
from bjepa.diagnostics.plots import plot_calibration, plot_collapse

__all__ = ["Diagnosis", "diagnose_model", "render_markdown", "write_diagnosis"]

logger = logging.getLogger(__name__)

#: draws of the target posterior the latent predictive is calibrated against
_CALIBRATION_DRAWS = 10


@dataclass
class Diagnosis:
    """Everything :func:`diagnose_model` found about one model.

    ``verdict`` is ``"healthy"`` when the predictive is calibrated, the representation shows
    no collapse and (where there are global latents) the guide's PSIS k̂ ≤ 0.7 and PSIS-LOO is
    reliable (Pareto k̂ and p_loo, see :func:`~bjepa.diagnostics.loo_summary`); otherwise
    ``"unhealthy"``, with ``reasons`` in words.
    """

    name: str
    model: str
    kind: str
    verdict: str
    reasons: list[str]
    calibration: CalibrationReport | None
    calibration_note: str | None
    mean_calibration: CalibrationReport | None
    state_calibration: CalibrationReport | None
    collapse: CollapseReport
    guide_psis: dict[str, Any]
    loo: dict[str, Any] | None
    idata: Any = field(default=None, repr=False)
    settings: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "name": self.name, "model": self.model, "kind": self.kind,
            "verdict": self.verdict, "reasons": self.reasons,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "calibration_note": self.calibration_note,
            "mean_calibration": None if self.mean_calibration is None
            else self.mean_calibration.to_dict(),
            "state_calibration": None if self.state_calibration is None
            else self.state_calibration.to_dict(),
            "collapse": self.collapse.to_dict(),
            "importance": {"guide_psis": self.guide_psis, "loo": self.loo},
            "settings": self.settings, "meta": self.meta,
        })


def _deterministic_note(model: Any) -> str:
    return (f"{type(model).__name__} is deterministic: it predicts a single next latent, so "
            "there is no predictive distribution to calibrate (no coverage, PIT, CRPS, NLL, "
            "InferenceData or LOO); only its representation is diagnosed")


def diagnose_model(
    model: Any,
    context: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    name: str | None = None,
    num_samples: int = 100,
    levels: Sequence[float] = LEVELS,
    tolerance: float = 0.03,
    threshold: float = ACTIVE_THRESHOLD,
    seed: int | None = 0,
    psis_particles: int = 1000,
    true_state: torch.Tensor | None = None,
    probe_train: tuple[torch.Tensor, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
    time_offset: int = 0,
    loss_trace: Any = None,
    chains: Sequence[Any] | None = None,
) -> Diagnosis:
    """Calibration, collapse and importance diagnostics of a trained world model.

    :param model: a trained VJEPA, BJEPA, VAE, AR or JEPA.
    :param context: ``(N, obs_dim)`` context frames (use held-out data).
    :param target: ``(N, obs_dim)`` next frames.
    :param name: a name for reports (default: the model's class).
    :param num_samples: joint posterior draws for the InferenceData and LOO.
    :param levels: nominal central-interval levels.
    :param tolerance: accepted coverage deviation (see :func:`~bjepa.diagnostics.calibrate`).
    :param threshold: active-unit threshold (see :mod:`bjepa.diagnostics.collapse`).
    :param seed: seeds every draw (the caller's RNG state is restored).
    :param psis_particles: particles for the guide's PSIS k̂ (global latents only).
    :param true_state: ``(N, P)`` true next state; with ``probe_train`` the latent predictive
        is mapped through a linear probe and calibrated for it too.
    :param probe_train: ``(z_target_train, state_train)`` to fit that probe (training data).
    :param meta: free-form facts recorded in the JSON (data, checkpoint, ...).
    :param loss_trace: ``(steps, losses)`` of training, stored in the InferenceData's
        ``sample_stats``.
    :param chains: models that share ``model``'s observed space (e.g.
        :func:`bjepa.inference.weights.weight_posterior_chains`): the InferenceData and LOO
        use one chain per model (R-hat, ESS); calibration and collapse judge ``model``.
    """
    view = view_of(model)
    label = model_label(model)
    context, target = view.check(model, context, target)
    settings = {"num_samples": num_samples, "levels": list(levels), "tolerance": tolerance,
                "threshold": threshold, "seed": seed, "psis_particles": psis_particles,
                "rows": int(context.shape[0])}
    if (true_state is None) != (probe_train is None):
        raise ValueError("pass true_state and probe_train together (or neither)")
    if true_state is not None:
        check_tensor("true_state", true_state, ndim=2)
        if true_state.shape[0] != context.shape[0]:
            raise ValueError(f"true_state must have one row per pair ({context.shape[0]}), got "
                             f"{true_state.shape[0]}")
    with torch.no_grad():
        z_context = model.encode(context)
    reasons: list[str] = []
    if view.kind == "deterministic":
        collapse = collapse_from_moments(view.deterministic_latent(model, target), None,
                                         z_context, threshold=threshold)
        calibration = mean_cal = state = idata = loo = None
        note = _deterministic_note(model)
        psis = {"available": False, "khat": None, "reason": "deterministic model: no guide"}
    else:
        with seeded(seed, context.device):  # every draw below is reproducible
            draws = sample_draws(model, context, target, num_samples=num_samples, seed=seed)
            fc = draws.forecast
            mean_cal = None
            if view.kind == "latent":
                # the predictor is fit to draws of z_T from q(z_T | x_T), so those draws are what
                # it must be calibrated for; the posterior mean is checked too (informational)
                calibration = calibrate(fc, draws.latent[:_CALIBRATION_DRAWS], levels=levels,
                                        tolerance=tolerance,
                                        target="the next latent z_T ~ q(z_T | x_{t+1})")
                mean_cal = calibrate(fc, draws.observed, levels=levels, tolerance=tolerance,
                                     target="the target mean μ_θ'(x_{t+1})")
            else:
                words = "the next frame" if getattr(model, "reconstructs", "") == "target" \
                    else "the reconstructed frame"
                calibration = calibrate(fc, draws.observed, levels=levels, tolerance=tolerance,
                                        target=words)
            note = None
            state = None
            if true_state is not None and view.kind == "latent":
                coef, intercept, resid_sd = fit_linear_probe(*probe_train)
                state_fc = fc.affine(coef, intercept, resid_sd)
                state = calibrate(state_fc, true_state.to(state_fc.samples.device), levels=levels,
                                  tolerance=tolerance, target="the true next state (probe-mapped)")
            pred_sd = fc.variance.sqrt() if view.kind == "latent" else None
            if draws.latent_loc is not None:
                collapse = collapse_from_moments(
                    draws.latent_loc, draws.latent_scale, z_context,
                    **_prior_moments(model, draws.latent_loc), predictive_scale=pred_sd,
                    threshold=threshold)
            else:
                collapse = collapse_from_moments(draws.observed, None, z_context,
                                                 predictive_scale=pred_sd, threshold=threshold)
            if chains:  # independent refits over one observed space: one chain each
                chain_draws = [sample_draws(m, context, target, num_samples=num_samples,
                                            seed=None if seed is None else seed + 1000 * (i + 1))
                               for i, m in enumerate(chains)]
                idata = inference_data_from_draws(
                    list(chains), chain_draws, time_offset=time_offset,
                    loss_traces=None if loss_trace is None else [loss_trace] * len(chains))
                settings["chains"] = len(chains)
            else:
                idata = inference_data_from_draws(
                    model, draws, time_offset=time_offset,
                    loss_traces=None if loss_trace is None else [loss_trace])
            n_par = sum(int(v[0].numel()) for v in draws.weights.values()) or None
            loo = loo_summary(idata, num_parameters=n_par)
            psis = guide_psis_khat(model, context, target, num_particles=psis_particles, seed=seed)
            if calibration.verdict != "calibrated":
                reasons.append(f"the predictive distribution is {calibration.verdict}: "
                               + "; ".join(r for r in calibration.reasons
                                           if not r.startswith("the PIT is not uniform")))
    if collapse.verdict != "healthy":
        reasons.append(f"representation: {collapse.verdict} — " + "; ".join(collapse.reasons))
    if loo is not None and not loo["reliable"]:
        reasons.append("PSIS-LOO cannot be trusted: " + "; ".join(loo["problems"]))
    if psis.get("available") and psis.get("khat") is not None and psis["khat"] > 0.7:
        reasons.append(f"the guide is a poor importance proposal for its global latents "
                       f"(PSIS k̂ = {psis['khat']:.2f} > 0.7)")
    verdict = "unhealthy" if reasons else "healthy"
    diag = Diagnosis(name=name or type(model).__name__, model=label, kind=view.kind,
                     verdict=verdict, reasons=reasons, calibration=calibration,
                     calibration_note=note, mean_calibration=mean_cal,
                     state_calibration=state, collapse=collapse,
                     guide_psis=psis, loo=loo, idata=idata, settings=settings,
                     meta=dict(meta or {}))
    logger.info("%s: %s", diag.name, verdict)
    return diag


def _prior_moments(model: Any, like: torch.Tensor) -> dict[str, torch.Tensor]:
    prior_fn = getattr(model, "prior_dist", None)
    if prior_fn is None:
        return {}
    from bjepa.diagnostics.calibration import _gaussian_marginals

    with torch.no_grad():
        marg = _gaussian_marginals(prior_fn(like))
    return {} if marg is None else {"prior_loc": marg[0], "prior_scale": marg[1]}


# -- files -------------------------------------------------------------------------------------
def write_diagnosis(diag: Diagnosis, out_dir: str | Path) -> dict[str, Path]:
    """Write ``diagnostics.json``, ``inference_data.nc``, ``calibration.png``, ``collapse.png``
    and ``report.md`` into ``out_dir`` (files that do not apply — e.g. calibration of a
    deterministic JEPA — are skipped and the report says why). Returns name → path."""
    if not isinstance(diag, Diagnosis):
        raise TypeError(f"diag must be a Diagnosis, got {type(diag).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    if diag.idata is not None:
        files["inference_data"] = save_inference_data(diag.idata, out / "inference_data.nc")
    units = "latent units" if diag.kind == "latent" else "standardised obs units"
    who = diag.model if diag.model.split()[0] == diag.name else f"{diag.name} — {diag.model}"
    if diag.calibration is not None:
        plot_calibration(diag.calibration, out / "calibration.png",
                         title=f"{who}: calibration for {diag.calibration.target}",
                         units=units, state=diag.state_calibration)
        files["calibration"] = out / "calibration.png"
    plot_collapse(diag.collapse, out / "collapse.png", title=f"{who}: posterior collapse")
    files["collapse"] = out / "collapse.png"
    files["report"] = out / "report.md"
    files["json"] = out / "diagnostics.json"
    payload = diag.to_dict()
    payload["files"] = {k: p.name for k, p in files.items()}
    write_text(files["json"], json.dumps(payload, indent=2) + "\n")
    write_text(files["report"], render_markdown(diag, {k: p.name for k, p in files.items()}))
    return files


def _num(x: float | None, spec: str) -> str:
    return "∞" if x is None else format(x, spec)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _meaning(verdict: str) -> str:
    return {
        "calibrated": "its uncertainty can be taken at face value",
        "overconfident": "the intervals are too narrow — the model is more certain than it "
                         "should be, so risk is underestimated",
        "underconfident": "the intervals are too wide — the model is less certain than it "
                          "could be (safe, but wasteful for planning)",
        "miscalibrated": "the predictive is off in shape or location (biased, or too narrow in "
                         "some dimensions and too wide in others)",
    }.get(verdict, "")


def render_markdown(diag: Diagnosis, files: dict[str, str] | None = None) -> str:
    """The human-readable ``report.md`` (figures embedded by relative path)."""
    files = files or {}
    lines = [f"# Diagnostics — {diag.name}", ""]
    if diag.verdict == "healthy":
        lines += [f"**Overall: healthy.** {diag.model}: "
                  + ("its predictive distribution is calibrated and " if diag.calibration
                     else "") + "its representation shows no sign of collapse.", ""]
    else:
        lines += [f"**Overall: unhealthy.** {diag.model}:", ""]
        lines += [f"- {r}" for r in diag.reasons] + [""]
    lines += ["| | |", "|---|---|", f"| Model | {diag.model} |"]
    m = diag.meta
    if m.get("data"):
        data = f"{m['data']}"
        if "sigma" in m:
            data += f", σ = {m['sigma']:g}"
        if "seed" in m:
            data += f", seed {m['seed']}"
        if "split" in m:
            data += f"; {m['split']} split"
        lines.append(f"| Data | {data} |")
    if m.get("checkpoint"):
        lines.append(f"| Checkpoint | `{m['checkpoint']}` |")
    lines.append(f"| Pairs | {diag.settings.get('rows')} |")
    if diag.idata is not None:
        n_chains = int(diag.idata.posterior.sizes.get("chain", 1))
        lines.append(f"| Posterior draws | {diag.settings.get('num_samples')} ({n_chains} "
                     f"chain{'s' if n_chains > 1 else ''}) |")
    lines.append("")

    # calibration
    cal = diag.calibration
    if cal is None:
        lines += ["## Calibration: not applicable", "", diag.calibration_note or "", ""]
    else:
        lv90 = 0.9 if 0.9 in cal.levels else cal.levels[-1]
        lines += [f"## Calibration: {cal.verdict}", "",
                  f"At the {100 * lv90:g} % level the predictive intervals contain "
                  f"{cal.target} {_pct(cal.coverage_at(lv90))} of the time (nominal "
                  f"{100 * lv90:g} %): {_meaning(cal.verdict)}."
                  + (f" Coverage, CRPS and NLL average over {cal.n_draws} draws of the target "
                     "posterior (the NLL is the ELBO's E_q[−log p_φ(z_T | z_C)] term)."
                     if cal.n_draws > 1 else ""), ""]
        head = "| nominal | all dims | " + " | ".join(f"dim {j}" for j in range(cal.dim)) + " |"
        lines += [head, "|---" * (cal.dim + 2) + "|"]
        for i, lv in enumerate(cal.levels):
            per = " | ".join(_pct(cal.coverage_per_dim[i][j]) for j in range(cal.dim))
            lines.append(f"| {100 * lv:g} % | **{_pct(cal.coverage[i])}** | {per} |")
        ks_word = "not rejected" if cal.ks_pvalue >= 0.01 else "rejected"
        lines += ["",
                  f"- PIT uniformity (Kolmogorov–Smirnov, pooled over dimensions): statistic "
                  f"{cal.ks_statistic:.3f}, p = {cal.ks_pvalue:.3g} — uniformity {ks_word} at "
                  "the 1 % level.",
                  f"- CRPS {cal.crps:.4g} (units of the observed value; lower is better).",
                  f"- NLL {cal.nll:.4g} nats per observation." if cal.nll is not None
                  else "- NLL not available (no density).",
                  f"- Predictive evaluated as: {cal.forecast_kind}"
                  + (" (closed form)." if cal.forecast_kind != "samples" else
                     " (from draws)."), ""]
        lines += [f"- {r}" for r in cal.reasons if not r.startswith("coverage of")]
        if "calibration" in files:
            lines += ["", f"![Calibration: coverage, PIT histogram, PIT ECDF and spread vs "
                          f"error]({files['calibration']})"]
        lines.append("")
    mc = diag.mean_calibration
    if mc is not None and cal is not None:
        lv90 = 0.9 if 0.9 in mc.levels else mc.levels[-1]
        noise = diag.collapse.posterior_variance_prior_units
        lines += ["### Against the target mean", "",
                  f"Judged against the target encoder's mean μ_θ'(x_{{t+1}}) instead of draws "
                  f"from q, the {100 * lv90:g} % intervals cover {_pct(mc.coverage_at(lv90))} "
                  f"(**{mc.verdict}**). The predictor is trained on draws from q, so its "
                  "variance includes the target posterior's own variance"
                  + (f" (E_x σ_q² = {sum(noise) / len(noise):.3g} prior units on average)"
                     if noise else "")
                  + "; wide target posteriors therefore look underconfident here. "
                  "Informational, not part of the overall verdict.", ""]
    st = diag.state_calibration
    if st is not None:
        lv90 = 0.9 if 0.9 in st.levels else st.levels[-1]
        lines += ["### Probe-mapped true state", "",
                  f"Pushing the predictive through a linear probe (fitted on training data, "
                  f"its residual noise added), the {100 * lv90:g} % intervals contain the true "
                  f"next state {_pct(st.coverage_at(lv90))} of the time: **{st.verdict}**. "
                  "This also depends on how linear the latent-to-state map is, so it is "
                  "reported but not part of the overall verdict.", "",
                  "| nominal | " + " | ".join(f"{100 * lv:g} %" for lv in st.levels) + " |",
                  "|---" * (len(st.levels) + 1) + "|",
                  "| coverage | " + " | ".join(_pct(c) for c in st.coverage) + " |", ""]

    # collapse
    col = diag.collapse
    lines += [f"## Posterior collapse: {col.verdict}", ""]
    lines += [f"- {r}" for r in col.reasons] + [""]
    if col.deterministic:
        lines += ["| dim | share of mean variance | status |", "|---|---|---|"]
        for j in range(col.latent_dim):
            status = "active" if col.active[j] else "inactive"
            lines.append(f"| {j} | {col.share_explained[j]:.3g} | {status} |")
    else:
        lines += ["| dim | KL to prior (nats) | Var_x μ (prior units) | E_x σ² (prior units) | "
                  "share explained by input | information (nats) | status |",
                  "|---|---|---|---|---|---|---|"]
        for j in range(col.latent_dim):
            status = ("informative" if col.informative[j] else
                      "active, < ½ bit" if col.active[j] else "inactive")
            lines.append(
                f"| {j} | {col.kl_per_dim[j]:.3g} | {col.mean_variance_prior_units[j]:.3g} | "
                f"{col.posterior_variance_prior_units[j]:.3g} | {col.share_explained[j]:.3g} | "
                f"{col.information_nats[j]:.3g} | {status} |")
    lines += ["", f"Effective rank of the context representation z_C: "
                  f"{col.effective_rank:.2f} of {col.latent_dim}."]
    if col.floor_share is not None:
        lines.append(f"Smallest predicted sd: {min(col.predictive_sd_min):.3g} (head floor "
                     f"{col.scale_floor:g}).")
    lines += ["", f"![Posterior collapse: KL, active units, effective rank, variance floor]"
                  f"({files.get('collapse', 'collapse.png')})", ""]

    # importance
    lines += ["## Importance sampling", ""]
    psis = diag.guide_psis
    if psis.get("available"):
        khat = "∞" if psis.get("khat") is None else f"{psis['khat']:.3f}"
        lines.append(f"- Guide PSIS k̂ = {khat} — {psis['verdict']} "
                     f"({psis['target']}; {psis['num_particles']} particles).")
    else:
        lines.append(f"- Guide PSIS k̂: not applicable — {psis.get('reason', '')}.")
    loo = diag.loo
    if loo is not None and not loo.get("applicable", True):
        lines.append(f"- PSIS-LOO: not needed — {loo['reason']}. Log predictive density "
                     f"{_num(loo['elpd_loo'], '.1f')} ± {_num(loo['se'], '.1f')} over "
                     f"{loo['n_data_points']} observations.")
    elif loo is not None:
        n_bad = loo["khat_counts"]["bad"] + loo["khat_counts"]["very_bad"]
        word = "reliable" if loo["reliable"] else "**unreliable**"
        lines.append(
            f"- PSIS-LOO ({word}): elpd_loo = {_num(loo['elpd_loo'], '.1f')} ± "
            f"{_num(loo['se'], '.1f')}, p_loo = {_num(loo['p_loo'], '.1f')}"
            + (f" (of {loo['num_parameters']} global parameters)"
               if loo.get("num_parameters") else "")
            + f"; k̂ above ArviZ's threshold {_num(loo['good_k'], '.2f')} for {n_bad} of "
            f"{loo['n_data_points']} observations, above 0.7 for "
            f"{_pct(loo.get('share_above_0_7', 0.0))} (max {_num(loo['khat_max'], '.2f')}, "
            "∞ = too few draws in the tail).")
        lines += [f"  - {p}" for p in loo.get("problems", [])]
    lines.append("")

    lines += ["## How to read this", "",
              "- *Coverage*: share of observed values inside the central intervals of the "
              "predictive; equal to the nominal level when calibrated, below it when "
              "overconfident.",
              "- *PIT*: the predictive CDF at the observed value; flat histogram when "
              "calibrated, ∪-shaped when overconfident, ∩-shaped when underconfident.",
              "- *Active unit*: a latent dimension where the input explains more than "
              f"{100 * col.threshold:g} % of the target latent's variance; *informative* "
              "when more than half (≥ ½ bit).",
              "- *Effective rank*: how many directions the context representation really uses.",
              ""]
    extra = [f"`{files[k]}`" for k in ("json", "inference_data") if k in files]
    if extra:
        lines += ["All numbers are in " + " and ".join(extra)
                  + (" (open the NetCDF with `arviz.from_netcdf`, no bjepa needed)"
                     if "inference_data" in files else "") + ".", ""]
    return "\n".join(lines)
