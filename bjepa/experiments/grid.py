"""One grid runner for "models × settings × seeds" experiments, and one summary of its rows.

Every experiment command trains some models at some settings (σ, β, τ, a head) over some seeds
and reports mean, spread and worst case over the seeds. :func:`run_grid` walks the points in a
fixed order, keeps finished runs (``finished(point)`` returns their stored row, e.g. on
``--resume``), trains the others one at a time (``run_one``) or a whole model's points at once
(``run_group``: replica-batched training), shows progress and logs each row.
:func:`summarise_rows` groups rows by keys and gives ``n`` and the NaN-aware mean, sd
(ddof = 1), min and max of each metric; :func:`format_rows` prints them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bjepa._util import progress_bar

__all__ = ["GridPoint", "format_rows", "grid_points", "run_grid", "summarise_rows"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridPoint:
    """One run of a grid: model ``model`` at ``setting`` (e.g. σ) with ``seed``."""

    model: str
    setting: Any
    seed: int


def grid_points(models: Sequence[str], settings: Sequence[Any], seeds: Sequence[int], *,
                order: str = "setting") -> list[GridPoint]:
    """The product of ``models × settings × seeds``: ``order="setting"`` walks σ, then seed,
    then model; ``"seed"`` walks seed, then σ, then model (one data set per seed first)."""
    if order == "setting":
        return [GridPoint(m, s, seed) for s in settings for seed in seeds for m in models]
    if order == "seed":
        return [GridPoint(m, s, seed) for seed in seeds for s in settings for m in models]
    raise ValueError(f"order must be 'setting' or 'seed', got {order!r}")


def run_grid(points: Sequence[GridPoint], *,
             run_one: Callable[[GridPoint], dict[str, Any]] | None = None,
             run_group: Callable[[str, list[GridPoint]], Iterable[dict[str, Any]]] | None = None,
             finished: Callable[[GridPoint], dict[str, Any] | None] | None = None,
             describe: Callable[[dict[str, Any]], str] = lambda row: "",
             progress: bool = True, desc: str = "runs") -> list[dict[str, Any]]:
    """Run every point once; returns their rows in the order of ``points``.

    :param run_one: trains one point and returns its row (used when ``run_group`` is not).
    :param run_group: trains all unfinished points of one model together and yields their rows
        in the order given (replica-batched training); called once per model, after the
        single runs.
    :param finished: the stored row of a point that is already done, or ``None``.
    :param describe: a short text of a row for the progress bar and the log.
    """
    if (run_one is None) == (run_group is None):
        raise ValueError("pass exactly one of run_one and run_group")
    rows: dict[GridPoint, dict[str, Any]] = {}
    bar = progress_bar(len(points), progress, desc, unit="run")

    def done(point: GridPoint, row: dict[str, Any]) -> None:
        rows[point] = row
        text = describe(row)
        if bar is not None:
            bar.set_postfix_str(f"{point.model} {point.setting} seed={point.seed} {text}")
            bar.update(1)
        logger.info("[%d/%d] %s %s seed=%d %s", len(rows), len(points), point.model,
                    point.setting, point.seed, text)

    todo: dict[str, list[GridPoint]] = {}
    try:
        for point in points:
            row = finished(point) if finished is not None else None
            if row is not None:
                logger.info("resume: %s %s seed=%d already finished, keeping its results",
                            point.model, point.setting, point.seed)
                done(point, row)
            elif run_one is not None:
                done(point, run_one(point))
            else:
                todo.setdefault(point.model, []).append(point)
        for model, group in todo.items():
            for point, row in zip(group, run_group(model, group), strict=True):
                done(point, row)
    finally:
        if bar is not None:
            bar.close()
    return [rows[p] for p in points]


def summarise_rows(rows: Sequence[dict[str, Any]], by: Sequence[str], metrics: Sequence[str],
                   *, names: dict[str, str] | None = None,
                   order: Callable[[tuple[Any, ...]], Any] | None = None
                   ) -> list[dict[str, Any]]:
    """Group ``rows`` by the values of ``by`` and summarise each metric over the group.

    Each entry holds the ``by`` values, ``n`` and, per metric ``m`` present in the rows,
    ``<name>_mean``, ``_sd`` (ddof = 1; 0 for one value), ``_min`` and ``_max`` over its finite
    values (NaN when none is finite), where ``<name>`` is ``names.get(m, m)``. Groups come in
    the order they first appear, or sorted by ``order(key)``.
    """
    names = names or {}
    keys = list(dict.fromkeys(tuple(r[k] for k in by) for r in rows))
    if order is not None:
        keys.sort(key=order)
    out = []
    for key in keys:
        sel = [r for r in rows if tuple(r[k] for k in by) == key]
        entry: dict[str, Any] = {**dict(zip(by, key, strict=True)), "n": len(sel)}
        for m in metrics:
            if m not in sel[0]:
                continue
            v = np.array([r[m] for r in sel], dtype=float)
            v = v[np.isfinite(v)]
            name = names.get(m, m)
            empty = v.size == 0
            entry[f"{name}_mean"] = float("nan") if empty else float(v.mean())
            entry[f"{name}_sd"] = float(v.std(ddof=1)) if v.size > 1 else (
                float("nan") if empty else 0.0)
            entry[f"{name}_min"] = float("nan") if empty else float(v.min())
            entry[f"{name}_max"] = float("nan") if empty else float(v.max())
        out.append(entry)
    return out


def format_rows(summary: Sequence[dict[str, Any]], keys: Sequence[tuple[str, str, str]],
                columns: Sequence[tuple[str, str, str]], *, worst: bool = False) -> str:
    """A plain-text table of :func:`summarise_rows`'s entries.

    :param keys: ``(key, header, format spec)`` of the grouping columns, e.g.
        ``("model", "model", "<7")``, ``("sigma", "sigma", ">5g")``.
    :param columns: ``(name, header, number format)`` of the metrics, e.g.
        ``("signal", "signal R2", ".3f")``, each printed as ``mean ± sd``.
    :param worst: also print each metric's minimum over the seeds.
    """
    def cell(s: dict[str, Any], name: str, fmt: str) -> str:
        if f"{name}_mean" not in s:
            return "—"
        text = f"{s[f'{name}_mean']:{fmt}} ± {s[f'{name}_sd']:{fmt}}"
        return text + (f" (min {s[f'{name}_min']:{fmt}})" if worst else "")

    width = 26 if worst else 16
    head = " ".join(f"{h:{f.rstrip('gdf')}}" for _, h, f in keys) + f" {'n':>3}"
    head += "".join(f"  {h:>{width}}" for _, h, _ in columns)
    lines = [head]
    for s in summary:
        line = " ".join(f"{s[k]:{f}}" for k, _, f in keys) + f" {s['n']:>3}"
        line += "".join(f"  {cell(s, name, fmt):>{width}}" for name, _, fmt in columns)
        lines.append(line)
    return "\n".join(lines)
