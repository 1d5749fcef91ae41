"""Hyper-parameter sweeps of VJEPA on Noisy TV (docs/method.md#beta-sweep, #ema-tau-ablation).

- :func:`run_beta_sweep` — the KL weight β on a log grid: from over-confident, barely
  regularised uncertainty at small β to collapse of the target posterior onto the prior at
  large β (``bjepa beta-sweep``, ``examples/beta_sweep.py``).
- :func:`run_tau_ablation` — the EMA momentum τ of the target encoder, including τ = 0 (the
  target is a stop-gradient copy of the context encoder) and a cosine schedule
  (``bjepa tau-ablation``, ``examples/tau_ablation.py``).

Both share one loop (:func:`run_grid`): for every σ × setting × seed, train a VJEPA, probe the
frozen representation (:func:`bjepa.experiments.noisy_tv.probe`) and measure its collapse
(:func:`bjepa.diagnostics.collapse_diagnostics`) and predictive calibration
(:func:`bjepa.diagnostics.calibrate`) on held-out data (:func:`evaluate`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from pyro.distributions import Normal

from bjepa._util import seeded
from bjepa._validation import check_nonnegative, check_positive_int
from bjepa.data import noisy_tv
from bjepa.diagnostics import calibrate, collapse_diagnostics, fit_linear_probe
from bjepa.experiments.grid import summarise_rows
from bjepa.experiments.noisy_tv import finished_row, probe
from bjepa.inference import fit
from bjepa.inference.checkpoint import save_checkpoint
from bjepa.inference.fit import set_seed
from bjepa.models.ema import make_tau_schedule
from bjepa.runs import RunFolder

__all__ = [
    "METRICS",
    "BetaSweepConfig",
    "SweepConfig",
    "TauAblationConfig",
    "evaluate",
    "format_table",
    "plot_beta_sweep",
    "plot_tau_ablation",
    "run_beta_sweep",
    "run_grid",
    "run_tau_ablation",
    "summarise",
    "tau_label",
]

logger = logging.getLogger(__name__)

#: per-run metrics summarised as mean ± sd over seeds
METRICS = [
    "signal_r2", "noise_r2", "active_units", "informative_units", "kl_per_dim",
    "info_per_dim", "effective_rank", "target_sd", "predictive_sd", "coverage90", "nll",
    "state_coverage90", "state_nll", "final_loss",
]


@dataclass
class SweepConfig:
    """Settings shared by the sweeps (dumped as ``config.json``)."""

    sigmas: list[float] = field(default_factory=lambda: [4.0, 8.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    steps: int = 1500
    #: higher than :func:`~bjepa.inference.fit`'s default so that the target posterior's scale
    #: net (started at sd 0.1) can reach the prior's scale within the step budget at large β
    lr: float = 3e-3
    batch_size: int | None = 512
    encoder: str = "linear"
    latent_dim: int = 4
    train_steps: int = 3000
    test_steps: int = 1000
    #: draws of ``z_T ~ q(z_T | x_T)`` the predictive is calibrated against
    calibration_draws: int = 20
    device: str = "cpu"
    progress: bool = True

    def validate(self) -> SweepConfig:
        """Check every setting; raises ``ValueError`` naming the bad one."""
        if not self.sigmas:
            raise ValueError("sigmas must list at least one distractor strength")
        for s in self.sigmas:
            check_nonnegative("sigma", s)
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        check_positive_int("steps", self.steps)
        check_positive_int("latent_dim", self.latent_dim)
        check_positive_int("calibration_draws", self.calibration_draws)
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size)
        if self.train_steps < 10 * self.latent_dim or self.test_steps < 10 * self.latent_dim:
            raise ValueError("train_steps and test_steps must be at least 10 × latent_dim "
                             f"({10 * self.latent_dim}) for the linear probes")
        return self


@dataclass
class BetaSweepConfig(SweepConfig):
    """The β sweep: KL weights on a log grid at a fixed EMA momentum."""

    betas: list[float] = field(
        default_factory=lambda: [1e-4, 1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0])
    tau: float | str = 0.99

    @classmethod
    def quick(cls, **overrides: Any) -> BetaSweepConfig:
        """A small configuration (5 β, 2 seeds, σ = 8) that finishes in about a minute."""
        base: dict[str, Any] = dict(betas=[1e-4, 1e-2, 0.1, 1.0, 10.0], sigmas=[8.0],
                                    seeds=[0, 1], steps=600, train_steps=2000, test_steps=1000)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def validate(self) -> BetaSweepConfig:
        super().validate()
        if not self.betas:
            raise ValueError("betas must list at least one β")
        for b in self.betas:
            check_nonnegative("beta", b)
        make_tau_schedule(self.tau)
        return self


@dataclass
class TauAblationConfig(SweepConfig):
    """The τ ablation: EMA momenta (floats in [0, 1] or ``"cosine:a:b"``) at a fixed β."""

    sigmas: list[float] = field(default_factory=lambda: [0.0, 8.0])
    taus: list[float | str] = field(
        default_factory=lambda: [0.0, 0.9, 0.99, 0.996, 0.999, "cosine:0.99:1"])
    beta: float = 0.01

    @classmethod
    def quick(cls, **overrides: Any) -> TauAblationConfig:
        """A small configuration (all six τ, 2 seeds, σ = 8) that finishes in about a minute."""
        base: dict[str, Any] = dict(sigmas=[8.0], seeds=[0, 1], steps=600, train_steps=2000,
                                    test_steps=1000)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def validate(self) -> TauAblationConfig:
        super().validate()
        if not self.taus:
            raise ValueError("taus must list at least one τ")
        for t in self.taus:
            make_tau_schedule(t)
        check_nonnegative("beta", self.beta)
        return self


def tau_label(tau: float | str) -> str:
    """A short label: ``0.99``, ``cos 0.99→1``."""
    if isinstance(tau, str):
        parts = tau.split(":")
        start, end = (parts[1], parts[2]) if len(parts) == 3 else ("0.99", "1")
        return f"cos {float(start):g}→{float(end):g}"
    return f"{tau:g}"


def evaluate(model: Any, train: noisy_tv.NoisyTV, test: noisy_tv.NoisyTV, *,
             calibration_draws: int = 20) -> dict[str, float]:
    """Probe, collapse and calibration metrics of a trained VJEPA on held-out Noisy TV.

    - ``signal_r2`` / ``noise_r2``: linear-probe R² of ``z_t`` for ``s_{t+1}`` / ``σ·d_{t+1}``.
    - ``active_units``, ``informative_units`` (≥ ½ bit), ``kl_per_dim`` (mean over dimensions
      of ``KL(q(z_T|x_T) ‖ N(0, I))``), ``info_per_dim`` (mean information the posterior
      carries about ``x_T`` per dimension, nats), ``effective_rank`` of ``z_C``: from
      :func:`~bjepa.diagnostics.collapse_diagnostics` on the test pairs.
    - ``target_sd`` / ``predictive_sd``: median posterior and predictive standard deviations
      (latent units).
    - ``coverage90`` / ``nll``: calibration of ``p(z_T | z_C)`` for draws of
      ``z_T ~ q(z_T | x_T)`` (what the ELBO fits it to).
    - ``state_coverage90`` / ``state_nll``: the latent forecast pushed through a linear probe
      (fit on training data) to forecast the true next signal ``s_{t+1}`` — in the units of
      the signal, so comparable across β.
    """
    context, target = test.obs[:-1], test.obs[1:]
    out: dict[str, float] = dict(probe(model, train, test))
    col = collapse_diagnostics(model, context, target)
    out["active_units"] = float(col.n_active)
    out["informative_units"] = float(col.n_informative)
    out["kl_per_dim"] = float(np.mean(col.kl_per_dim)) if col.kl_per_dim else float("nan")
    out["info_per_dim"] = (float(np.mean(col.information_nats)) if col.information_nats
                           else float("nan"))
    out["effective_rank"] = float(col.effective_rank)
    with torch.no_grad():
        pred = model.predict(context)
        q = model.target_dist(target)
        draws = q.sample((calibration_draws,))
        out["target_sd"] = float(q.base_dist.scale.median())
        out["predictive_sd"] = float(pred.variance.sqrt().median())
        rep = calibrate(pred, draws, target="the next latent z_T ~ q(z_T | x_{t+1})")
        out["coverage90"] = rep.coverage_at(0.9)
        out["nll"] = float("nan") if rep.nll is None else rep.nll
        coef, intercept, resid_sd = fit_linear_probe(model.encode_target(train.obs[1:]),
                                                     train.signal[1:])
        # the diagonal-Gaussian forecast pushed through the probe: Gaussian marginals
        coef = coef.to(pred.mean)
        loc = pred.mean @ coef + intercept.to(pred.mean)
        scale = (pred.variance @ coef.pow(2) + resid_sd.to(loc).pow(2)).sqrt()
        signal = test.signal[1:].to(loc)
        srep = calibrate(Normal(loc, scale).to_event(1), signal,
                         target="the true next signal (probe-mapped)")
    out["state_coverage90"] = srep.coverage_at(0.9)
    out["state_nll"] = float("nan") if srep.nll is None else srep.nll / signal.shape[1]
    return out


Builder = Callable[[int, Any], torch.nn.Module]


def run_grid(cfg: SweepConfig, param: str, values: Sequence[Any], build: Builder,
             folder: RunFolder | None = None, *, resume: bool = False,
             desc: str = "sweep") -> list[dict[str, Any]]:
    """Train and evaluate one VJEPA per σ × ``values`` × seed; returns one row per run.

    :param param: the swept setting's name (``"beta"``, ``"tau"``), a column of every row.
    :param build: ``build(obs_dim, value)`` → an untrained model.
    :param folder: with a run folder, each finished run is saved as
        ``checkpoints/<param><value>-sigma<σ>-seed<seed>.pt`` holding its row, and training
        checkpoints are kept while it trains; ``resume=True`` keeps finished runs and
        continues unfinished ones.
    """
    if resume and folder is None:
        raise ValueError("resume=True needs a run folder")
    rows: list[dict[str, Any]] = []
    total = len(cfg.sigmas) * len(values) * len(cfg.seeds)
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)
    every = max(cfg.steps // 5, 50)
    for sigma in cfg.sigmas:
        for seed in cfg.seeds:
            train, test = noisy_tv.make_split(sigma, seed, train_steps=cfg.train_steps,
                                              test_steps=cfg.test_steps)
            train, test = train.to(cfg.device), test.to(cfg.device)
            for value in values:
                key = f"{param}{str(value).replace(':', '_')}-sigma{sigma:g}-seed{seed}"
                final = folder.file(f"checkpoints/{key}.pt") if folder else None
                ckdir = folder.file(f"checkpoints/{key}") if folder else None
                row = finished_row(final) if resume and final.exists() else None
                if row is None:
                    if ckdir is not None and not resume:
                        shutil.rmtree(ckdir, ignore_errors=True)
                    set_seed(seed)
                    model = build(train.obs.shape[1], value)
                    hist = fit(model, train.obs[:-1], train.obs[1:], steps=cfg.steps,
                               lr=cfg.lr, batch_size=cfg.batch_size, seed=seed,
                               device=cfg.device, progress=False,
                               log_every=max(cfg.steps // 50, 1),
                               metrics_path=folder.metrics_path if folder else None,
                               metrics_tags={param: value, "sigma": sigma, "seed": seed},
                               checkpoint_dir=ckdir, checkpoint_every=every, keep_last=1,
                               resume=resume)
                    with seeded(seed):
                        metrics = evaluate(model, train, test,
                                           calibration_draws=cfg.calibration_draws)
                    row = {param: value, "sigma": sigma, "seed": seed, **metrics,
                           "final_loss": hist.final_loss,
                           "train_seconds": round(hist.seconds, 3)}
                    if folder is not None:
                        save_checkpoint(final, model, meta={param: value, "sigma": sigma,
                                                            "seed": seed, "row": row})
                        shutil.rmtree(ckdir, ignore_errors=True)
                else:
                    logger.info("resume: %s already finished, keeping its results", key)
                rows.append(row)
                if bar is not None:
                    bar.set_postfix_str(f"{param}={value} σ={sigma:g} seed={seed} "
                                        f"KL/dim={row['kl_per_dim']:.3g}")
                    bar.update(1)
                logger.info("[%d/%d] %s=%s σ=%g seed=%d signal R²=%.3f KL/dim=%.3g "
                            "coverage90=%.3f", len(rows), total, param, value, sigma, seed,
                            row["signal_r2"], row["kl_per_dim"], row["coverage90"])
    if bar is not None:
        bar.close()
    return rows


def run_beta_sweep(cfg: BetaSweepConfig, folder: RunFolder | None = None, *,
                   resume: bool = False) -> list[dict[str, Any]]:
    """The β sweep (docs/method.md#beta-sweep); with a folder writes ``config.json``,
    ``results.csv/json``, ``summary.json`` and ``beta_sweep.png``."""
    from bjepa.models import VJEPA

    cfg.validate()
    if folder is not None:
        folder.write_json("config.json", asdict(cfg))

    def build(obs_dim: int, beta: float) -> torch.nn.Module:
        return VJEPA(obs_dim, cfg.latent_dim, beta=beta, tau=cfg.tau, encoder=cfg.encoder)

    rows = run_grid(cfg, "beta", cfg.betas, build, folder, resume=resume, desc="β sweep")
    if folder is not None:
        folder.write_rows("results", rows)
        folder.write_json("summary.json", summarise(rows, "beta"))
        plot_beta_sweep(rows, folder.file("beta_sweep.png"))
    return rows


def run_tau_ablation(cfg: TauAblationConfig, folder: RunFolder | None = None, *,
                     resume: bool = False) -> list[dict[str, Any]]:
    """The EMA τ ablation (docs/method.md#ema-tau-ablation); with a folder writes ``config.json``,
    ``results.csv/json``, ``summary.json`` and ``tau_ablation.png``."""
    from bjepa.models import VJEPA

    cfg.validate()
    if folder is not None:
        folder.write_json("config.json", asdict(cfg))

    def build(obs_dim: int, tau: float | str) -> torch.nn.Module:
        return VJEPA(obs_dim, cfg.latent_dim, beta=cfg.beta, tau=tau, encoder=cfg.encoder)

    rows = run_grid(cfg, "tau", cfg.taus, build, folder, resume=resume, desc="τ ablation")
    if folder is not None:
        folder.write_rows("results", rows)
        folder.write_json("summary.json", summarise(rows, "tau"))
        plot_tau_ablation(rows, folder.file("tau_ablation.png"))
    return rows


def summarise(rows: Sequence[dict[str, Any]], param: str) -> list[dict[str, Any]]:
    """Mean, sd, min and max over seeds of every metric in :data:`METRICS`, per σ and
    ``param`` value (in the order the values first appear within a σ)."""
    order = {k: i for i, k in enumerate(dict.fromkeys((r["sigma"], r[param]) for r in rows))}
    return summarise_rows(rows, (param, "sigma"), METRICS,
                          order=lambda k: (k[1], order[(k[1], k[0])]))


def format_table(summary: Sequence[dict[str, Any]], param: str) -> str:
    """A plain-text table of :func:`summarise`'s rows (mean ± sd over seeds)."""
    cols = [("signal_r2", "signal R2", ".3f"), ("noise_r2", "distr. R2", ".3f"),
            ("active_units", "active", ".1f"), ("informative_units", "inform.", ".1f"),
            ("kl_per_dim", "KL/dim", ".3g"), ("coverage90", "cov90 z", ".3f"),
            ("nll", "NLL z", ".3g"), ("state_coverage90", "cov90 s", ".3f"),
            ("state_nll", "NLL s", ".3g")]
    head = f"{param:>13} {'sigma':>5} {'n':>2} " + " ".join(f"{c[1]:>17}" for c in cols)
    lines = [head]
    for s in summary:
        label = tau_label(s[param]) if param == "tau" else f"{s[param]:g}"
        cells = []
        for m, _, fmt in cols:
            cells.append(f"{format(s[m + '_mean'], fmt):>8} ± {format(s[m + '_sd'], fmt):<6}")
        lines.append(f"{label:>13} {s['sigma']:>5g} {s['n']:>2} " + " ".join(cells))
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax: Any, x: Sequence[float], summary: Sequence[dict[str, Any]], metric: str,
          color: str, label: str, style: str = "o-") -> None:
    m = np.array([s[f"{metric}_mean"] for s in summary])
    sd = np.array([s[f"{metric}_sd"] for s in summary])
    ax.plot(x, m, style, color=color, label=label)
    ax.fill_between(x, m - sd, m + sd, color=color, alpha=0.2)


def plot_beta_sweep(rows: Sequence[dict[str, Any]], path: Any) -> None:
    """Six panels against β (log axis), one line per σ, mean ± sd over seeds: probe R²,
    active/informative units, KL per dimension, 90 % coverage, NLL and predictive spread."""
    plt = _pyplot()
    summary = summarise(rows, "beta")
    n_seeds = len({r["seed"] for r in rows})
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    ax = axes.ravel()
    for i, sigma in enumerate(dict.fromkeys(s["sigma"] for s in summary)):
        sel = [s for s in summary if s["sigma"] == sigma]
        x = [s["beta"] for s in sel]
        c1, c2 = f"C{2 * i}", f"C{2 * i + 1}"
        _band(ax[0], x, sel, "signal_r2", c1, f"signal, σ={sigma:g}")
        _band(ax[0], x, sel, "noise_r2", c1, f"distractor, σ={sigma:g}", "s--")
        _band(ax[1], x, sel, "active_units", c1, f"active, σ={sigma:g}")
        _band(ax[1], x, sel, "informative_units", c1, f"≥ ½ bit, σ={sigma:g}", "s--")
        _band(ax[2], x, sel, "kl_per_dim", c1, f"σ={sigma:g}")
        _band(ax[3], x, sel, "coverage90", c1, f"z_T draws, σ={sigma:g}")
        _band(ax[3], x, sel, "state_coverage90", c2, f"true signal (probe), σ={sigma:g}", "s--")
        _band(ax[4], x, sel, "state_nll", c1, f"true signal (probe), σ={sigma:g}")
        _band(ax[5], x, sel, "predictive_sd", c1, f"predictive p(z_T|z_C), σ={sigma:g}")
        _band(ax[5], x, sel, "target_sd", c2, f"posterior q(z_T|x_T), σ={sigma:g}", "s--")
    ax[3].axhline(0.9, color="k", lw=1, ls=":", label="nominal 90 %")
    ax[2].set_yscale("log")
    ax[5].set_yscale("log")
    ax[0].set(title="Linear probes of z_C", ylabel="test R²")
    ax[1].set(title="Units of q(z_T|x_T) in use", ylabel="number of latent units")
    ax[2].set(title="Rate: mean KL(q ‖ N(0,I)) per dim", ylabel="KL per dimension (nats)")
    ax[3].set(title="Coverage of central 90 % intervals", ylabel="fraction inside")
    ax[4].set(title="NLL of the true next signal", ylabel="nats per signal dim (lower better)")
    ax[5].set(title="Uncertainty scale (median sd)", ylabel="sd (latent units)")
    for a in ax:
        a.set_xscale("log")
        a.set_xlabel("KL weight β (log scale)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(f"VJEPA β sweep on Noisy TV (mean ± sd over {n_seeds} seeds)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tau_ablation(rows: Sequence[dict[str, Any]], path: Any) -> None:
    """Four panels against τ (categorical), one line per σ, mean ± sd over seeds: probe R²,
    units in use, KL per dimension and effective rank of ``z_C``."""
    plt = _pyplot()
    summary = summarise(rows, "tau")
    n_seeds = len({r["seed"] for r in rows})
    taus = list(dict.fromkeys(s["tau"] for s in summary))
    labels = [tau_label(t) for t in taus]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.4), constrained_layout=True)
    for i, sigma in enumerate(dict.fromkeys(s["sigma"] for s in summary)):
        sel = [s for s in summary if s["sigma"] == sigma]
        x = [taus.index(s["tau"]) for s in sel]
        c = f"C{i}"
        _band(axes[0], x, sel, "signal_r2", c, f"signal, σ={sigma:g}")
        _band(axes[0], x, sel, "noise_r2", c, f"distractor, σ={sigma:g}", "s--")
        _band(axes[1], x, sel, "informative_units", c, f"≥ ½ bit, σ={sigma:g}")
        _band(axes[1], x, sel, "active_units", c, f"active, σ={sigma:g}", "s--")
        _band(axes[2], x, sel, "kl_per_dim", c, f"σ={sigma:g}")
        _band(axes[3], x, sel, "effective_rank", c, f"σ={sigma:g}")
    axes[0].set(title="Linear probes of z_C", ylabel="test R²")
    axes[1].set(title="Units of q(z_T|x_T) in use", ylabel="units")
    axes[2].set(title="Mean KL(q ‖ N(0,I)) per dim", ylabel="KL per dimension (nats)")
    axes[2].set_yscale("log")
    axes[3].set(title="Effective rank of z_C", ylabel="exp(entropy of singular values)")
    for a in axes:
        a.set_xticks(range(len(taus)), labels)
        a.set_xlabel("EMA momentum τ (0 = stop-gradient copy)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(f"VJEPA EMA τ ablation on Noisy TV (mean ± sd over {n_seeds} seeds)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
