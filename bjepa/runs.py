"""Run folders: every run writes its config, metrics, results and figures into one folder.

A run holds an exclusive lock on ``<folder>/.lock`` (``fcntl.flock``) for as long as it runs, so
two processes pointed at the same folder never interleave their files: the second is refused
with the first one's process id. The kernel drops the lock when the holder exits or is killed,
so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import csv
import json
import math
import os
import weakref
from datetime import datetime
from pathlib import Path
from typing import Any

from bjepa._io import atomic_write

try:  # POSIX advisory locks; on other platforms folders are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["DirectoryLock", "RunFolder", "append_jsonl", "atomic_write_text", "default_run_dir"]


class DirectoryLock:
    """An exclusive, non-blocking lock on ``<directory>/.lock`` held until :meth:`release` (or
    until the process ends, however it ends).

    :param directory: the folder to lock (created if missing).
    :param what: how error messages call the folder (e.g. ``"--out"``).
    :raises FileExistsError: if another process (or another open lock in this process) holds it.
    """

    def __init__(self, directory: str | Path, *, what: str = "folder") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / ".lock"
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = self._holder()
                os.close(self._fd)
                self._fd = None
                raise FileExistsError(
                    f"{what} {self.directory} is in use by another bjepa process"
                    f"{f' (pid {holder})' if holder else ''}; wait for it to finish or choose "
                    "another folder") from err
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        self._finalizer = weakref.finalize(self, os.close, self._fd)

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:  # pragma: no cover
            return ""

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            self._finalizer()  # closes the descriptor, which releases the flock
            self._fd = None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`bjepa._io.atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def append_jsonl(path: str | Path | None, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to the JSON-lines file ``path`` (its folder made if missing) as soon as
    they exist, so an interrupted run keeps what it finished; ``path=None`` does nothing."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


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
    """One experiment's output folder, locked for this process while open.

    Refuses a folder that another process is writing to (always), and one that already holds a
    run (a ``config.json``) unless ``overwrite=True`` (start again: the old metrics are removed)
    or ``resume=True`` (continue it: everything is kept). Use it as a context manager, or call
    :meth:`close`, to release the lock; it is released anyway when the process exits.

    Example::

        with RunFolder("runs/demo") as folder:
            folder.write_json("config.json", cfg)
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False,
                 resume: bool = False) -> None:
        if overwrite and resume:
            raise ValueError("overwrite and resume exclude each other: resume continues the run "
                             "in the folder, overwrite starts a new one")
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"--out {self.path} exists and is not a folder")
        self._lock = DirectoryLock(self.path, what="--out")
        try:
            if (self.path / "config.json").exists() and not (overwrite or resume):
                raise FileExistsError(
                    f"{self.path} already holds a run (config.json exists); choose another "
                    "--out, pass --resume to continue it or --overwrite to start again")
        except BaseException:
            self._lock.release()
            raise
        self.resumed = resume and (self.path / "config.json").exists()
        if not resume:
            (self.path / "metrics.jsonl").unlink(missing_ok=True)

    def close(self) -> None:
        """Release the folder's lock."""
        self._lock.release()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_json(self, name: str) -> Any:
        """Parse ``<folder>/<name>``."""
        return json.loads(self.file(name).read_text(encoding="utf-8"))

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

        def write_csv(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.file(f"{stem}.csv"), write_csv)

    @property
    def metrics_path(self) -> Path:
        return self.file("metrics.jsonl")
