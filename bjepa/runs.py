"""Run folders: every run writes its config, metrics, results and figures into one folder."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["RunFolder", "atomic_write_text", "default_run_dir"]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, fsync, replace)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def default_run_dir(kind: str) -> Path:
    """``runs/<kind>-YYYYmmdd-HHMMSS`` under the current directory."""
    return Path("runs") / f"{kind}-{datetime.now():%Y%m%d-%H%M%S}"


class RunFolder:
    """One experiment's output folder.

    Refuses a folder that already holds a run (a ``config.json``) unless ``overwrite=True``,
    so two runs never interleave their files.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        if (self.path / "config.json").exists() and not overwrite:
            raise FileExistsError(
                f"{self.path} already holds a run (config.json exists); choose another --out "
                "or pass --overwrite")
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "metrics.jsonl").unlink(missing_ok=True)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        atomic_write_text(self.file(name), json.dumps(_jsonable(obj), indent=2) + "\n")
        return self.file(name)

    def write_rows(self, stem: str, rows: list[dict[str, Any]]) -> None:
        """``<stem>.json`` and ``<stem>.csv`` with one row per dict."""
        self.write_json(f"{stem}.json", rows)
        fields: list[str] = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        tmp = self.file(f".{stem}.csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.file(f"{stem}.csv"))

    @property
    def metrics_path(self) -> Path:
        return self.file("metrics.jsonl")
