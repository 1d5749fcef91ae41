"""Diagnose the checkpoints of a run folder (what ``bjepa diagnose RUN_DIR`` does).

A run folder holds model checkpoints as ``RUN_DIR/checkpoints/<name>.pt`` (``bjepa noisy-tv``)
or ``RUN_DIR/<name>.pt``. Each checkpoint's ``meta`` says which data it was trained on
(``meta["data"]``, e.g. ``"noisy_tv"`` with ``sigma``, ``seed``, ``train_steps``,
``test_steps``); a registered data loader regenerates the held-out pairs from it. Other
experiments add theirs with :func:`register_data_loader`.

Outputs go to ``RUN_DIR/diagnostics/<name>/`` (see :func:`~bjepa.diagnostics.write_diagnosis`)
plus ``RUN_DIR/diagnostics/summary.json`` and ``summary.md``. A checkpoint that cannot be read
or diagnosed is reported there (and returned) without stopping the others; diagnosing one
checkpoint updates its row of an existing summary instead of overwriting the others.
:func:`compare_runs` ranks the diagnosed models with ``az.compare`` — only those whose
log-likelihoods score one observed space.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bjepa._validation import check_choice, check_positive_int
from bjepa.diagnostics._common import jsonable, write_text
from bjepa.diagnostics._views import view_of
from bjepa.diagnostics.report import Diagnosis, diagnose_model, write_diagnosis

__all__ = ["DATA_LOADERS", "Failure", "RunData", "compare_runs", "diagnose_checkpoint",
           "diagnose_run", "find_checkpoints", "format_summary", "loss_trace",
           "register_data_loader", "summary_rows"]

logger = logging.getLogger(__name__)


@dataclass
class RunData:
    """Held-out pairs for a checkpoint, and optionally the true state for a probe check.

    ``probe_frames`` are training frames ``x_{t+1}`` and ``probe_state`` their true state, used
    to fit the linear probe from the target latent to the state; ``true_state`` is the state
    at the target frames of ``(context, target)``.
    """

    context: torch.Tensor
    target: torch.Tensor
    description: str
    true_state: torch.Tensor | None = None
    probe_frames: torch.Tensor | None = None
    probe_state: torch.Tensor | None = None


DataLoader = Callable[[dict[str, Any], str], RunData]
#: training states written by ``fit`` (``checkpoints/step-*.pt``), not finished models
_TRAINING_STATE = re.compile(r"^step-\d+\.pt$")
#: ``meta["data"]`` → function ``(meta, split) -> RunData``
DATA_LOADERS: dict[str, DataLoader] = {}


def register_data_loader(name: str, loader: DataLoader) -> None:
    """Teach :func:`diagnose_run` to rebuild the data of checkpoints with ``meta["data"] ==
    name``: ``loader(meta, split)`` returns a :class:`RunData` (``split``: test or train)."""
    if not callable(loader):
        raise TypeError("loader must be callable (meta, split) -> RunData")
    DATA_LOADERS[name] = loader


def _noisy_tv(meta: dict[str, Any], split: str) -> RunData:
    from bjepa.data import noisy_tv

    row = meta.get("row") if isinstance(meta.get("row"), dict) else {}
    meta = {**{k: row[k] for k in ("sigma", "seed") if k in row}, **meta}  # bjepa train
    missing = [k for k in ("sigma", "seed") if k not in meta]
    if missing:
        raise ValueError(f"noisy_tv checkpoint meta lacks {missing}; cannot rebuild its data")
    train, test = noisy_tv.make_split(float(meta["sigma"]), int(meta["seed"]),
                                      train_steps=int(meta.get("train_steps", 6000)),
                                      test_steps=int(meta.get("test_steps", 2000)))
    data = test if split == "test" else train
    return RunData(context=data.obs[:-1], target=data.obs[1:],
                   description=f"Noisy TV σ = {float(meta['sigma']):g}, seed {meta['seed']}, "
                               f"{split} split",
                   true_state=data.signal[1:], probe_frames=train.obs[1:],
                   probe_state=train.signal[1:])


register_data_loader("noisy_tv", _noisy_tv)


def _file(meta: dict[str, Any], split: str) -> RunData:
    """A run of ``bjepa train --data PATH``: its file re-read with the stored settings."""
    from bjepa.data.pairs import pairs_from_meta

    data = pairs_from_meta(meta)
    pairs = data.train if split == "train" else (data.test or data.val)
    if pairs is None:
        raise ValueError(f"the run on {meta.get('path')} holds no held-out pairs "
                         "(--val-frac 0 --test-frac 0); diagnose it with --split train")
    context, target = pairs.tensors()
    return RunData(context=context, target=target,
                   description=f"{meta.get('path')}, {split} split ({len(pairs)} pairs)")


register_data_loader("file", _file)


def find_checkpoints(run_dir: str | Path) -> list[Path]:
    """Model checkpoints of a run folder: ``checkpoints/*.pt``, else ``*.pt`` at the top.

    :raises FileNotFoundError: with what was expected, when there is none.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if run_dir.is_file():
        if run_dir.suffix != ".pt":
            raise ValueError(f"{run_dir} is a file but not a .pt checkpoint; pass a run folder "
                             "or a checkpoint file")
        return [run_dir]
    found = [p for p in sorted((run_dir / "checkpoints").glob("*.pt"))
             if not _TRAINING_STATE.match(p.name)] or sorted(run_dir.glob("*.pt"))
    if not found:
        listing = sorted(p.name for p in run_dir.iterdir())[:12]
        raise FileNotFoundError(
            f"{run_dir} is not a bjepa run folder: expected model checkpoints in "
            f"{run_dir}/checkpoints/*.pt (as written by `bjepa noisy-tv --out DIR`) or *.pt "
            f"files in the folder itself, found {listing or 'nothing'}")
    return found


def _pick(checkpoints: list[Path], name: str) -> Path:
    for p in checkpoints:
        if name in (p.name, p.stem):
            return p
    raise ValueError(f"no checkpoint named {name!r}; available: "
                     + ", ".join(p.stem for p in checkpoints))


def _check_settings(num_samples: int, max_rows: int | None, psis_particles: int,
                    tolerance: float, chains: int = 1, chain_steps: int = 1) -> None:
    check_positive_int("chains", chains)
    check_positive_int("chain_steps", chain_steps)
    check_positive_int("num_samples", num_samples)
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    if max_rows is not None:
        check_positive_int("max_rows", max_rows)
        if max_rows < 10:
            raise ValueError(f"max_rows must be >= 10 to say anything, got {max_rows}")
    check_positive_int("psis_particles", psis_particles)
    if psis_particles < 50:
        raise ValueError(f"psis_particles must be >= 50 for a tail fit, got {psis_particles}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) \
            or not 0.0 < tolerance < 0.5:
        raise ValueError(f"tolerance must be a number in (0, 0.5), got {tolerance!r}")


def diagnose_checkpoint(path: str | Path, *, split: str = "test", num_samples: int = 100,
                        max_rows: int | None = None, seed: int | None = 0,
                        psis_particles: int = 1000, tolerance: float = 0.03,
                        device: str | torch.device = "cpu", chains: int = 1,
                        chain_steps: int = 500) -> Diagnosis:
    """Load one checkpoint, rebuild its held-out data from ``meta`` and diagnose it on
    ``device`` (model and data are moved there once).

    :param chains: for a model with a weight posterior, refit it ``chains`` times from
        dispersed starts with independent seeds over the frozen encoders (training split,
        ``chain_steps`` SVI steps each) and export one chain per refit, so R-hat and ESS are
        defined; ignored (with a note) for models without one."""
    from bjepa.inference.checkpoint import CheckpointError, load_checkpoint, load_model

    path = Path(path)
    check_choice("split", split, ["test", "train"])
    _check_settings(num_samples, max_rows, psis_particles, tolerance, chains, chain_steps)
    try:
        meta = dict(load_checkpoint(path).get("meta", {}))
    except CheckpointError as err:
        raise ValueError(f"cannot read checkpoint {path.name}: {err}") from err
    kind = meta.get("data")
    if kind is None:
        raise ValueError(
            f"checkpoint {path.name} does not record its data (meta['data'] is missing), so "
            "its pairs cannot be rebuilt; diagnose it from Python with "
            "bjepa.diagnostics.diagnose_model(model, context, target)")
    if kind not in DATA_LOADERS:
        raise ValueError(f"checkpoint {path.name} was trained on {kind!r} data, which "
                         f"`bjepa diagnose` cannot rebuild (known: {sorted(DATA_LOADERS)}); "
                         "register a loader with bjepa.diagnostics.register_data_loader")
    from bjepa._validation import resolve_device

    try:
        model = load_model(path)
    except CheckpointError as err:
        raise ValueError(f"cannot rebuild the model in {path.name}: {err}") from err
    dev = resolve_device(device, model)
    model.to(dev)
    data = DATA_LOADERS[kind](meta, split)

    def moved(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.to(dev)

    context, target, state = moved(data.context), moved(data.target), moved(data.true_state)
    if max_rows is not None:
        context, target = context[:max_rows], target[:max_rows]
        state = None if state is None else state[:max_rows]
    probe_train = None
    if state is not None and data.probe_frames is not None and view_of(model).kind == "latent":
        with torch.no_grad():
            frames = moved(data.probe_frames)
            z = model.target_dist(frames).mean if hasattr(model, "target_dist") \
                else model.encode_target(frames)
        probe_train = (z, moved(data.probe_state))
    else:
        state = None
    refits = None
    if chains > 1 and getattr(model, "weight_guide", None) is not None:
        from bjepa.inference.weights import weight_posterior_chains

        train = DATA_LOADERS[kind](meta, "train")
        rows = min(train.context.shape[0], 2000)
        refits = weight_posterior_chains(model, train.context[:rows].to(dev),
                                         train.target[:rows].to(dev), num_chains=chains,
                                         steps=chain_steps, seed=0 if seed is None else seed)
    elif chains > 1:
        logger.info("%s has no weight posterior: one chain (no refits to make)", path.name)
    info = {k: v for k, v in meta.items() if isinstance(v, int | float | str | bool)}
    info.update(checkpoint=str(path), split=split, description=data.description)
    if isinstance(meta.get("row"), dict):
        info["training_results"] = jsonable(meta["row"])
    return diagnose_model(model, context, target, name=path.stem, num_samples=num_samples,
                          seed=seed, psis_particles=psis_particles, tolerance=tolerance,
                          true_state=state, probe_train=probe_train, meta=info,
                          loss_trace=loss_trace(path), chains=refits)


def loss_trace(path: str | Path) -> tuple[list[int], list[float]] | None:
    """``(steps, losses)`` of the training run behind a checkpoint: its training history
    (training checkpoints), else the matching records of the run folder's ``metrics.jsonl``
    (same ``model``/``sigma``/``seed`` tags as the checkpoint's ``meta``); ``None`` if neither
    exists."""
    from bjepa.inference.checkpoint import CheckpointError, load_checkpoint

    path = Path(path)
    try:
        payload = load_checkpoint(path)
    except CheckpointError:
        return None
    hist = (payload.get("training") or {}).get("history") or {}
    cols = hist.get("columns") if isinstance(hist, dict) else None
    if isinstance(cols, dict) and "step" in cols and "loss" in cols:
        steps, losses = cols["step"].tolist(), cols["loss"].tolist()
        if steps:
            return [int(s) for s in steps], [float(v) for v in losses]
    meta = payload.get("meta", {})
    row = meta.get("row") if isinstance(meta.get("row"), dict) else {}
    tags = {k: row.get(k, meta.get(k)) for k in ("model", "sigma", "seed")}
    for folder in (path.parent, path.parent.parent):
        metrics = folder / "metrics.jsonl"
        if not metrics.is_file():
            continue
        steps, losses = [], []
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or "step" not in rec or "loss" not in rec:
                continue
            if any(v is not None and k in rec and rec[k] != v for k, v in tags.items()):
                continue
            steps.append(int(rec["step"]))
            losses.append(float(rec["loss"]) if rec["loss"] is not None else float("nan"))
        if steps:
            return steps, losses
    return None


@dataclass
class Failure:
    """A checkpoint that could not be diagnosed, and why."""

    name: str
    path: Path
    error: str


def diagnose_run(run_dir: str | Path, *, checkpoint: str | None = None,
                 out: str | Path | None = None, split: str = "test", num_samples: int = 100,
                 max_rows: int | None = None, seed: int | None = 0, psis_particles: int = 1000,
                 tolerance: float = 0.03, device: str | torch.device = "cpu",
                 failures: list[Failure] | None = None, chains: int = 1,
                 chain_steps: int = 500) -> list[tuple[Diagnosis, dict[str, Path]]]:
    """Diagnose every model checkpoint of ``run_dir`` (or the one named ``checkpoint``).

    :param run_dir: a run folder, or one ``.pt`` checkpoint file.
    :param checkpoint: a checkpoint name (file name or stem) to diagnose alone; its row in an
        existing ``summary.md``/``summary.json`` is replaced and the other rows are kept.
    :param out: output folder (default ``RUN_DIR/diagnostics``); one sub-folder per checkpoint.
    :param split: ``"test"`` (held-out, default) or ``"train"``.
    :param max_rows: diagnose only the first ``max_rows`` pairs.
    :param device: where models and data go (``"cpu"`` or ``"cuda"``).
    :param chains: weight-posterior refits exported as chains (see
        :func:`diagnose_checkpoint`).
    :param failures: a list that receives a :class:`Failure` per checkpoint that could not be
        read or diagnosed (they are also listed in the summary); without it, a folder where
        every checkpoint fails raises the first error.
    :returns: ``[(diagnosis, files written)]`` in checkpoint order, for those that worked.
    """
    check_choice("split", split, ["test", "train"])
    _check_settings(num_samples, max_rows, psis_particles, tolerance, chains, chain_steps)
    run_dir = Path(run_dir)
    checkpoints = find_checkpoints(run_dir)
    single = checkpoint is not None or run_dir.is_file()
    if checkpoint is not None:
        checkpoints = [_pick(checkpoints, checkpoint)]
    base = run_dir.parent if run_dir.is_file() else run_dir
    out_dir = Path(out) if out is not None else base / "diagnostics"
    results, failed = [], []
    first_error: Exception | None = None
    for path in checkpoints:
        logger.info("diagnosing %s", path.name)
        try:
            diag = diagnose_checkpoint(path, split=split, num_samples=num_samples,
                                       max_rows=max_rows, seed=seed,
                                       psis_particles=psis_particles, tolerance=tolerance,
                                       device=device, chains=chains, chain_steps=chain_steps)
        except (ValueError, TypeError, RuntimeError, OSError) as err:
            logger.warning("cannot diagnose %s: %s", path.name, err)
            failed.append(Failure(path.stem, path, str(err)))
            first_error = first_error or err
            continue
        results.append((diag, write_diagnosis(diag, out_dir / path.stem)))
    if failures is not None:
        failures.extend(failed)
    elif failed and not results:
        raise first_error  # type: ignore[misc]
    _write_summary(results, out_dir, failed, merge=single)
    return results


def summary_rows(results: list[tuple[Diagnosis, dict[str, Path]]]) -> list[dict[str, Any]]:
    """One row per diagnosis: the verdicts and headline numbers."""
    rows = []
    for diag, _ in results:
        cal = diag.calibration
        rows.append({
            "name": diag.name, "model": diag.model, "verdict": diag.verdict,
            "calibration": cal.verdict if cal else "n/a",
            "coverage_90": cal.coverage_at(0.9) if cal and 0.9 in cal.levels else None,
            "crps": cal.crps if cal else None, "nll": cal.nll if cal else None,
            "collapse": diag.collapse.verdict, "active_units": diag.collapse.n_active,
            "latent_dim": diag.collapse.latent_dim,
            "effective_rank": diag.collapse.effective_rank,
        })
    return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of :func:`summary_rows`."""
    head = (f"{'checkpoint':<28} {'verdict':<10} {'calibration':<15} {'cov@90':>7} "
            f"{'collapse':<17} {'active':>6} {'erank':>6}")
    lines = [head]
    for r in rows:
        cov = f"{100 * r['coverage_90']:.1f}%" if r["coverage_90"] is not None else "n/a"
        lines.append(f"{r['name']:<28} {r['verdict']:<10} {r['calibration']:<15} {cov:>7} "
                     f"{r['collapse']:<17} {r['active_units']:>3}/{r['latent_dim']:<2} "
                     f"{r['effective_rank']:>6.2f}")
    return "\n".join(lines)


def _write_summary(results: list[tuple[Diagnosis, dict[str, Path]]], out_dir: Path,
                   failed: list[Failure] | None = None, *, merge: bool = False) -> None:
    """Write ``summary.json`` and ``summary.md``; with ``merge``, keep the rows of other
    checkpoints already in ``summary.json`` and replace only those diagnosed now."""
    rows = summary_rows(results)
    for r, (diag, files) in zip(rows, results, strict=True):
        r["report"] = f"{diag.name}/{files['report'].name}"
        r["loo"] = _loo_word(diag)
    rows += [{"name": f.name, "verdict": "failed", "error": f.error} for f in failed or []]
    out_dir.mkdir(parents=True, exist_ok=True)
    old_path = out_dir / "summary.json"
    if merge and old_path.is_file():
        try:
            old = json.loads(old_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = []
        now = {r["name"] for r in rows}
        rows = [r for r in old if isinstance(r, dict) and r.get("name") not in now] + rows
        rows.sort(key=lambda r: str(r.get("name")))
    write_text(old_path, json.dumps(jsonable(rows), indent=2) + "\n")
    lines = ["# Diagnostics summary", "",
             "| checkpoint | overall | calibration | coverage of 90 % intervals | collapse | "
             "active units | effective rank | PSIS-LOO |", "|---|---|---|---|---|---|---|---|"]
    bad = []
    for r in rows:
        if r.get("verdict") == "failed":
            bad.append(r)
            continue
        cov = f"{100 * r['coverage_90']:.1f} %" if r.get("coverage_90") is not None else "n/a"
        link = f"[{r['name']}]({r.get('report', r['name'] + '/report.md')})"
        erank = r.get("effective_rank")
        lines.append(f"| {link} | {r['verdict']} | {r['calibration']} | {cov} | "
                     f"{r['collapse']} | {r['active_units']} of {r['latent_dim']} | "
                     f"{'n/a' if erank is None else format(erank, '.2f')} | "
                     f"{r.get('loo', 'n/a')} |")
    if bad:
        lines += ["", "## Not diagnosed", ""]
        lines += [f"- `{r['name']}`: {r['error']}" for r in bad]
    write_text(out_dir / "summary.md", "\n".join(lines) + "\n")


def _loo_word(diag: Diagnosis) -> str:
    loo = diag.loo
    if loo is None:
        return "n/a"
    if not loo.get("applicable", True):
        return "exact (no global latents)"
    return "reliable" if loo.get("reliable") else "unreliable"


# -- comparing runs --------------------------------------------------------------------------
def compare_runs(diag_dir: str | Path, *, names: list[str] | None = None,
                 out: str | Path | None = None) -> dict[str, Any]:
    """``az.compare`` of the models diagnosed in ``diag_dir`` (``RUN_DIR/diagnostics``),
    restricted to models whose log-likelihoods score the same observed values.

    Each model's ``inference_data.nc`` is read; models are grouped by their
    ``observed_data`` (equal to 1e-6: e.g. heads, weight priors or fusion priors over one
    frozen encoder). The largest group (at least two models) is compared; every other model
    is refused with the reason (its latent space differs, so its elpd is on another scale).
    Writes ``compare.csv``, ``compare.md`` and ``compare.png`` (``az.plot_compare``) into
    ``out`` (default ``diag_dir``).

    :returns: ``{"compared": [...], "refused": {name: reason}, "table": DataFrame, "files"}``.
    :raises ValueError: if fewer than two models share one observed space.
    """
    import numpy as np

    from bjepa.diagnostics._common import import_arviz
    from bjepa.diagnostics.inference_data import load_inference_data

    az = import_arviz()
    diag_dir = Path(diag_dir)
    found = sorted(p.parent.name for p in diag_dir.glob("*/inference_data.nc"))
    names = found if names is None else list(names)
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"no inference_data.nc for {missing} in {diag_dir}; run "
                         "`bjepa diagnose` on them first (found: "
                         f"{', '.join(found) or 'none'})")
    refused: dict[str, str] = {}
    groups: list[tuple[Any, list[str]]] = []
    data: dict[str, Any] = {}
    for name in names:
        idata = load_inference_data(diag_dir / name / "inference_data.nc")
        obs_vars = list(idata.observed_data.data_vars)
        var = f"{obs_vars[0]}_joint" if obs_vars else None
        if var is None or var not in idata.log_likelihood:
            refused[name] = "its file has no joint log-likelihood (written by an older bjepa)"
            continue
        y = np.asarray(idata.observed_data[obs_vars[0]].values)
        data[name] = (idata, var)
        for ref, members in groups:
            if ref.shape == y.shape and np.allclose(ref, y, rtol=1e-5, atol=1e-6):
                members.append(name)
                break
        else:
            groups.append((y, [name]))
    groups.sort(key=lambda g: -len(g[1]))
    if not groups or len(groups[0][1]) < 2:
        why = "; ".join(f"{k}: {v}" for k, v in refused.items())
        raise ValueError(
            "no two diagnosed models score the same observed values, so there is nothing "
            "az.compare can rank: each model's log-likelihood lives in its own latent space "
            "(a different encoder gives different targets). Compare models over one frozen "
            "encoder (heads, weight priors, fusion priors)" + (f" ({why})" if why else ""))
    chosen = groups[0][1]
    for _, members in groups[1:]:
        for name in members:
            refused[name] = (f"its observed values (target latents) differ from those of "
                             f"{chosen[0]}: it scores another latent space, so its elpd is on "
                             "another scale")
    from bjepa.diagnostics._arviz import elpd

    elpds = {name: elpd(*data[name]) for name in chosen}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = az.compare(elpds)
    out_dir = Path(out) if out is not None else diag_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"csv": out_dir / "compare.csv", "markdown": out_dir / "compare.md",
             "plot": out_dir / "compare.png"}
    write_text(files["csv"], table.to_csv())
    md = ["# Model comparison (PSIS-LOO, `az.compare`)", "",
          f"Compared on the joint log-likelihood of {len(chosen)} models that score the same "
          "observed values. Models without global latents enter with their exact "
          "leave-one-out elpd (the log predictive density, p_loo = 0).", "",
          "```", table.to_string(), "```", ""]
    if refused:
        md += ["## Not compared", ""] + [f"- `{k}`: {v}" for k, v in sorted(refused.items())]
    write_text(files["markdown"], "\n".join(md) + "\n")
    _plot_compare(az, table, files["plot"])
    return {"compared": chosen, "refused": refused, "table": table,
            "files": {k: v for k, v in files.items() if v.exists()}}


def _plot_compare(az: Any, table: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bjepa.diagnostics._arviz import is_legacy

    if not is_legacy(az):
        return  # ArviZ >= 1: plotting lives in arviz_plots; the table is written anyway
    ax = az.plot_compare(table, insample_dev=False, figsize=(7, 1.2 + 0.6 * len(table)))
    ax.set_title("az.plot_compare: elpd_loo (higher is better)")
    fig = ax.get_figure()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
