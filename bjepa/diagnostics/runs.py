"""Diagnose the checkpoints of a run folder (what ``bjepa diagnose RUN_DIR`` does).

A run folder holds model checkpoints as ``RUN_DIR/checkpoints/<name>.pt`` (``bjepa noisy-tv``)
or ``RUN_DIR/<name>.pt``. Each checkpoint's ``meta`` says which data it was trained on
(``meta["data"]``, e.g. ``"noisy_tv"`` with ``sigma``, ``seed``, ``train_steps``,
``test_steps``); a registered data loader regenerates the held-out pairs from it. Other
experiments add theirs with :func:`register_data_loader`.

Outputs go to ``RUN_DIR/diagnostics/<name>/`` (see :func:`~bjepa.diagnostics.write_diagnosis`)
plus ``RUN_DIR/diagnostics/summary.json`` and ``summary.md``.
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

__all__ = ["DATA_LOADERS", "RunData", "diagnose_checkpoint", "diagnose_run", "find_checkpoints",
           "format_summary", "register_data_loader", "summary_rows"]

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
                    tolerance: float) -> None:
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
                        device: str | torch.device = "cpu") -> Diagnosis:
    """Load one checkpoint, rebuild its held-out data from ``meta`` and diagnose it on
    ``device`` (model and data are moved there once)."""
    from bjepa.inference.checkpoint import CheckpointError, load_checkpoint, load_model

    path = Path(path)
    check_choice("split", split, ["test", "train"])
    _check_settings(num_samples, max_rows, psis_particles, tolerance)
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
    info = {k: v for k, v in meta.items() if isinstance(v, int | float | str | bool)}
    info.update(checkpoint=str(path), split=split, description=data.description)
    if isinstance(meta.get("row"), dict):
        info["training_results"] = jsonable(meta["row"])
    return diagnose_model(model, context, target, name=path.stem, num_samples=num_samples,
                          seed=seed, psis_particles=psis_particles, tolerance=tolerance,
                          true_state=state, probe_train=probe_train, meta=info)


def diagnose_run(run_dir: str | Path, *, checkpoint: str | None = None,
                 out: str | Path | None = None, split: str = "test", num_samples: int = 100,
                 max_rows: int | None = None, seed: int | None = 0, psis_particles: int = 1000,
                 tolerance: float = 0.03, device: str | torch.device = "cpu"
                 ) -> list[tuple[Diagnosis, dict[str, Path]]]:
    """Diagnose every model checkpoint of ``run_dir`` (or the one named ``checkpoint``).

    :param run_dir: a run folder, or one ``.pt`` checkpoint file.
    :param checkpoint: a checkpoint name (file name or stem) to diagnose alone.
    :param out: output folder (default ``RUN_DIR/diagnostics``); one sub-folder per checkpoint.
    :param split: ``"test"`` (held-out, default) or ``"train"``.
    :param max_rows: diagnose only the first ``max_rows`` pairs.
    :param device: where models and data go (``"cpu"`` or ``"cuda"``).
    :returns: ``[(diagnosis, files written)]`` in checkpoint order.
    """
    check_choice("split", split, ["test", "train"])
    _check_settings(num_samples, max_rows, psis_particles, tolerance)
    run_dir = Path(run_dir)
    checkpoints = find_checkpoints(run_dir)
    if checkpoint is not None:
        checkpoints = [_pick(checkpoints, checkpoint)]
    base = run_dir.parent if run_dir.is_file() else run_dir
    out_dir = Path(out) if out is not None else base / "diagnostics"
    results = []
    for path in checkpoints:
        logger.info("diagnosing %s", path.name)
        diag = diagnose_checkpoint(path, split=split, num_samples=num_samples,
                                   max_rows=max_rows, seed=seed,
                                   psis_particles=psis_particles, tolerance=tolerance,
                                   device=device)
        results.append((diag, write_diagnosis(diag, out_dir / path.stem)))
    _write_summary(results, out_dir)
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


def _write_summary(results: list[tuple[Diagnosis, dict[str, Path]]], out_dir: Path) -> None:
    rows = summary_rows(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "summary.json", json.dumps(jsonable(rows), indent=2) + "\n")
    lines = ["# Diagnostics summary", "",
             "| checkpoint | overall | calibration | coverage of 90 % intervals | collapse | "
             "active units | effective rank |", "|---|---|---|---|---|---|---|"]
    for r, (diag, files) in zip(rows, results, strict=True):
        cov = f"{100 * r['coverage_90']:.1f} %" if r["coverage_90"] is not None else "n/a"
        link = f"[{r['name']}]({diag.name}/{files['report'].name})"
        lines.append(f"| {link} | {r['verdict']} | {r['calibration']} | {cov} | "
                     f"{r['collapse']} | {r['active_units']} of {r['latent_dim']} | "
                     f"{r['effective_rank']:.2f} |")
    write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
