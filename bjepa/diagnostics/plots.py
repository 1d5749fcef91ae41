"""Figures for the diagnostics: ``calibration.png`` and ``collapse.png``.

Figures are built with :class:`matplotlib.figure.Figure` directly (the Agg canvas), so nothing
here touches pyplot's global backend or state; the functions return the figure, which
notebooks display, and save it when given a path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from bjepa.diagnostics._common import import_arviz
from bjepa.diagnostics.calibration import CalibrationReport
from bjepa.diagnostics.collapse import INFORMATIVE_SHARE, CollapseReport

__all__ = ["plot_calibration", "plot_collapse"]

_VERDICT_COLORS = {"calibrated": "tab:green", "healthy": "tab:green",
                   "overconfident": "tab:red", "underconfident": "tab:orange",
                   "miscalibrated": "tab:red", "partial collapse": "tab:orange",
                   "collapsed": "tab:red"}


def _save(fig: Figure, path: str | Path | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)


def plot_calibration(report: CalibrationReport, path: str | Path | None = None, *,
                     title: str | None = None, units: str = "latent units",
                     state: CalibrationReport | None = None) -> Figure:
    """Four panels: coverage against nominal level, PIT histogram, PIT ECDF difference with a
    99 % simultaneous band (``az.plot_ecdf``), and predictive spread against error.

    :param report: from :func:`bjepa.diagnostics.calibrate`.
    :param path: save the figure here (PNG) when given.
    :param units: units of the observed values, for the spread/error axis.
    :param state: optional second report (e.g. the probe-mapped true state) drawn dashed in
        the coverage panel.
    """
    if not isinstance(report, CalibrationReport):
        raise TypeError(f"report must be a CalibrationReport, got {type(report).__name__}")
    fig = Figure(figsize=(12.5, 8.5), layout="constrained")
    (ax_cov, ax_hist), (ax_ecdf, ax_sharp) = fig.subplots(2, 2)
    levels = 100 * np.asarray(report.levels)
    allowed = 100 * np.asarray(report.allowed_deviation)

    # (a) coverage
    ax_cov.fill_between(levels, levels - allowed, levels + allowed, color="0.85",
                        label="calibrated (tolerance)")
    ax_cov.plot([0, 100], [0, 100], "k--", lw=1, label="ideal")
    per_dim = 100 * np.asarray(report.coverage_per_dim)
    for j in range(per_dim.shape[1]):
        ax_cov.plot(levels, per_dim[:, j], "-", lw=1, alpha=0.6,
                    label=f"dim {j}" if per_dim.shape[1] <= 8 else None)
    cov = 100 * np.asarray(report.coverage)
    ax_cov.plot(levels, cov, "o-", color="k", lw=2.2, ms=6, label="all dimensions")
    for x, y in zip(levels, cov, strict=True):
        ax_cov.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(-8, 8),
                        fontsize=8)
    if state is not None:
        ax_cov.plot(100 * np.asarray(state.levels), 100 * np.asarray(state.coverage), "s--",
                    color="tab:purple", lw=1.8, label=f"{state.target} ({state.verdict})")
    ax_cov.set(xlim=(max(0.0, levels.min() - 8), 100), ylim=(0, 101),
               xlabel="nominal central-interval level (%)", ylabel="empirical coverage (%)",
               title="Interval coverage (below the diagonal: overconfident)")
    ax_cov.grid(alpha=0.3)
    ax_cov.legend(fontsize=7.5, loc="best")

    # (b) PIT histogram with a 99 % band for a uniform PIT
    pit = np.asarray(report.pit).ravel()
    bins = 20
    n = pit.size
    lo, hi = stats.binom.ppf([0.005, 0.995], n, 1.0 / bins) * bins / n
    ax_hist.axhspan(lo, hi, color="0.85", label="99 % range if calibrated")
    ax_hist.hist(pit, bins=bins, range=(0, 1), density=True, color="tab:blue", alpha=0.75,
                 edgecolor="white", label=f"PIT, {n} values")
    ax_hist.axhline(1.0, color="k", ls="--", lw=1, label="uniform")
    ax_hist.set(xlim=(0, 1), xlabel="PIT = predictive CDF at the observed value (unitless)",
                ylabel="density (uniform = 1)",
                title="PIT histogram (∪-shaped: overconfident, ∩-shaped: underconfident)")
    ax_hist.legend(fontsize=8)
    ax_hist.grid(alpha=0.3)

    # (c) ECDF difference with simultaneous band (ArviZ)
    az = import_arviz()
    uniform = stats.uniform(0, 1)
    if hasattr(az, "plot_ecdf"):  # ArviZ < 1
        az.plot_ecdf(pit, eval_points=np.linspace(0, 1, 201), cdf=uniform.cdf,
                     difference=True, confidence_bands=True, ci_prob=0.99, rvs=uniform.rvs,
                     random_state=0, ax=ax_ecdf,
                     plot_kwargs={"color": "tab:blue", "label": "PIT ECDF − uniform"},
                     fill_kwargs={"color": "tab:gray", "alpha": 0.35,
                                  "label": "99 % simultaneous band if calibrated"})
    else:  # ArviZ >= 1 has no plot_ecdf: the same curve, with the DKW simultaneous band
        grid = np.linspace(0, 1, 201)
        values = np.sort(np.asarray(pit, dtype=float).ravel())
        ecdf = np.searchsorted(values, grid, side="right") / values.size
        eps = np.sqrt(np.log(2 / 0.01) / (2 * values.size))
        ax_ecdf.fill_between(grid, -eps, eps, color="tab:gray", alpha=0.35,
                             label="99 % simultaneous band if calibrated (DKW)")
        ax_ecdf.plot(grid, ecdf - grid, color="tab:blue", label="PIT ECDF − uniform")
    ax_ecdf.axhline(0.0, color="k", lw=0.8)
    ax_ecdf.set(xlabel="PIT value (unitless)", ylabel="ECDF − uniform CDF (fraction)",
                title=f"PIT ECDF difference (KS p = {report.ks_pvalue:.2g})")
    ax_ecdf.legend(fontsize=8, loc="lower center")
    ax_ecdf.grid(alpha=0.3)

    # (d) sharpness: spread vs error
    dims = np.arange(report.dim)
    width = 0.38
    ax_sharp.bar(dims - width / 2, report.rms_spread_per_dim, width, color="tab:blue",
                 label="RMS predictive sd")
    ax_sharp.bar(dims + width / 2, report.rmse_per_dim, width, color="tab:gray",
                 label="RMSE of predictive mean")
    ax_sharp.set(xticks=dims, xlabel="dimension", ylabel=f"{units}",
                 title="Spread vs error per dimension (≈ equal when calibrated)")
    text = f"CRPS {report.crps:.4g} {units}"
    text += f"\nNLL {report.nll:.4g} nats / obs" if report.nll is not None else "\nNLL n/a"
    ax_sharp.text(0.98, 0.97, text, transform=ax_sharp.transAxes, ha="right", va="top",
                  fontsize=9, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
    top = max(max(report.rms_spread_per_dim), max(report.rmse_per_dim))
    ax_sharp.set_ylim(0, 1.35 * top if top > 0 else 1.0)
    ax_sharp.legend(fontsize=8, loc="upper left")
    ax_sharp.grid(alpha=0.3, axis="y")

    heading = title or f"Calibration of the predictive for {report.target}"
    fig.suptitle(f"{heading} — {report.verdict}", fontsize=13,
                 color=_VERDICT_COLORS.get(report.verdict, "k"))
    _save(fig, path)
    return fig


def plot_collapse(report: CollapseReport, path: str | Path | None = None, *,
                  title: str | None = None) -> Figure:
    """Four panels: per-dimension KL, active units (share of variance explained by the input,
    log scale, with the 1 % and ½-bit thresholds), the context representation's singular-value
    spectrum with its effective rank, and predicted scales against the head's floor."""
    if not isinstance(report, CollapseReport):
        raise TypeError(f"report must be a CollapseReport, got {type(report).__name__}")
    fig = Figure(figsize=(12.5, 8.5), layout="constrained")
    (ax_kl, ax_act), (ax_rank, ax_floor) = fig.subplots(2, 2)
    d = report.latent_dim
    dims = np.arange(d)

    def not_applicable(ax, msg: str) -> None:
        ax.text(0.5, 0.5, msg, ha="center", va="center", wrap=True, fontsize=10,
                transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])

    # (a) KL
    if report.kl_per_dim is None:
        not_applicable(ax_kl, "deterministic encoder:\nno posterior, so no KL to the prior")
        ax_kl.set_title("KL(q ‖ prior) per dimension")
    else:
        bars = ax_kl.bar(dims, report.kl_per_dim, color="tab:blue")
        ax_kl.bar_label(bars, fmt="%.3g", fontsize=8)
        ax_kl.set(xticks=dims, xlabel="latent dimension", ylabel="mean KL (nats)",
                  title="KL(q(z_T | x_T) ‖ prior) per dimension (≈ 0: unit at the prior)")
        ax_kl.grid(alpha=0.3, axis="y")

    # (b) active units
    share = np.clip(np.asarray(report.share_explained, dtype=float), 1e-5, None)
    colors = ["tab:green" if i else "tab:orange" if a else "tab:red"
              for a, i in zip(report.active, report.informative, strict=True)]
    ax_act.bar(dims, share, color=colors)
    ax_act.set_yscale("log")
    ax_act.axhline(report.threshold, color="tab:red", ls="--", lw=1,
                   label=f"active threshold ({100 * report.threshold:g} %)")
    if not report.deterministic:
        ax_act.axhline(INFORMATIVE_SHARE, color="tab:green", ls=":", lw=1.2,
                       label="½ bit (signal = posterior noise)")
    for color, name in [("tab:green", "informative"), ("tab:orange", "active, < ½ bit"),
                        ("tab:red", "inactive")]:
        ax_act.bar([0], [0], color=color, label=name)
    ylabel = ("Var_x z_d / mean over dims (unitless)" if report.deterministic else
              "Var_x μ_d / (Var_x μ_d + E_x σ_d²)  (unitless)")
    ax_act.set(xticks=dims, ylim=(1e-5, 2.0), xlabel="latent dimension", ylabel=ylabel,
               title=f"Active units: {report.n_active} of {d} "
                     f"({report.n_informative} carry ≥ ½ bit)")
    ax_act.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax_act.grid(alpha=0.3, axis="y")

    # (c) effective rank
    if report.context_constant:
        not_applicable(ax_rank, "z_C is constant across inputs:\neffective rank 0")
    else:
        sv = np.asarray(report.singular_value_share)
        ax_rank.bar(np.arange(sv.size), sv, color="tab:purple")
        ax_rank.axhline(1.0 / sv.size, color="k", ls="--", lw=1, label="perfectly spread")
        ax_rank.set(xticks=np.arange(sv.size), xlabel="principal direction of z_C",
                    ylabel="share of the singular-value sum (unitless)")
        ax_rank.legend(fontsize=8)
        ax_rank.grid(alpha=0.3, axis="y")
    ax_rank.set_title(f"Context representation z_C: effective rank "
                      f"{report.effective_rank:.2f} of {d}")

    # (d) predicted-variance floor
    if report.predictive_sd_median is None:
        not_applicable(ax_floor, "no latent predictive distribution\n(variance floor n/a)")
        ax_floor.set_title("Predicted scale vs the head's floor")
    else:
        width = 0.38
        ax_floor.bar(dims - width / 2, report.predictive_sd_median, width, color="tab:blue",
                     label="median predictive sd")
        ax_floor.bar(dims + width / 2, report.predictive_sd_min, width, color="tab:cyan",
                     label="smallest predictive sd")
        ax_floor.axhline(report.scale_floor, color="tab:red", ls="--", lw=1,
                         label=f"head floor ({report.scale_floor:g})")
        ax_floor.set_yscale("log")
        low = min(report.scale_floor, min(report.predictive_sd_min)) / 3
        ax_floor.set_ylim(low, max(report.predictive_sd_median) * 30)
        ax_floor.set(xticks=dims, xlabel="latent dimension",
                     ylabel="predictive sd (latent units, log scale)",
                     title="Predicted scale vs the head's floor")
        ax_floor.legend(fontsize=8)
        ax_floor.grid(alpha=0.3, axis="y")

    heading = title or "Posterior collapse"
    fig.suptitle(f"{heading} — {report.verdict}", fontsize=13,
                 color=_VERDICT_COLORS.get(report.verdict, "k"))
    _save(fig, path)
    return fig
