"""Your own data as sequences of frames: arrays, ``.npy``/``.npz`` (memory-mapped), CSV and
Parquet tables, folders of images and video files.

Every loader returns :class:`Sequences`: one ``(N, D)`` array of frames (a read-only memory map
when the file allows it) cut into episodes by ``starts``, plus column names and where the data
came from. :func:`bjepa.data.make_pairs` turns them into ``(context, target)`` pairs.

Bad input raises :class:`DataError` (a ``ValueError``) with one line that names the file, the
column or the row, and the fix.

Example::

    seqs = load("prices.csv", columns=["open", "close"], time_col="date", missing="ffill")
    seqs = from_array(np.load("episodes.npy"))     # (episodes, T, D), (T, D) or a list
"""

from __future__ import annotations

import gc
import logging
import re
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bjepa.models.preprocess import release_pages

__all__ = [
    "IMAGE_SUFFIXES",
    "MISSING_POLICIES",
    "TABLE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "DataError",
    "Sequences",
    "from_array",
    "load",
    "load_frames",
    "load_npy",
    "load_table",
    "release_pages",
]

logger = logging.getLogger(__name__)

#: what to do with a missing value (NaN, empty cell) or an infinite one
MISSING_POLICIES = ("raise", "drop", "ffill", "interpolate")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".mpg", ".mpeg", ".m4v")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_PARQUET_MAGIC = b"PAR1"
#: rows scanned at a time when checking a memory-mapped array for NaN/inf
_SCAN_CHUNK = 1 << 18


class DataError(ValueError):
    """A data file or array cannot be used; the message names where and how to fix it."""


@dataclass
class Sequences:
    """Frames ``values`` ``(N, D)`` cut into episodes: episode ``e`` is
    ``values[starts[e]:starts[e + 1]]``.

    :param values: frames, one row each (float; possibly a read-only memory map).
    :param starts: ``(E + 1,)`` row offsets, ``starts[0] = 0`` and ``starts[-1] = N``.
    :param columns: a name per feature.
    :param source: where the frames came from (used in messages).
    :param episode_ids: a label per episode (used in messages).
    :param actions: optional ``(N, A)`` action per frame (the action taken after it).
    :param action_columns: names of the action features.
    """

    values: np.ndarray
    starts: np.ndarray
    columns: list[str]
    source: str = "data"
    episode_ids: list[str] = field(default_factory=list)
    actions: np.ndarray | None = None
    action_columns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.starts = np.asarray(self.starts, dtype=np.int64)
        if not self.episode_ids:
            self.episode_ids = [str(i) for i in range(len(self.starts) - 1)]

    @property
    def num_episodes(self) -> int:
        return len(self.starts) - 1

    @property
    def dim(self) -> int:
        """Features per frame, ``D``."""
        return int(self.values.shape[1])

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def episode(self, e: int) -> np.ndarray:
        return self.values[self.starts[e]:self.starts[e + 1]]

    def describe(self) -> str:
        lengths = self.lengths()
        return (f"{self.source}: {len(self)} frames × {self.dim} features in "
                f"{self.num_episodes} episode(s) of {lengths.min()}–{lengths.max()} frames")


# -- arrays --------------------------------------------------------------------------------------
def _float_array(name: str, x: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or arr.dtype == np.bool_):
        raise DataError(f"{name} holds {arr.dtype} values, not numbers; select numeric columns "
                        "or convert them first")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"{name} holds complex numbers; pass real and imaginary parts as columns")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return arr


def from_array(x: Any, *, actions: Any = None, columns: Sequence[str] | None = None,
               missing: str = "raise", source: str = "array") -> Sequences:
    """Sequences from an array, a tensor or a list of episodes.

    :param x: ``(T,)`` one series; ``(T, D)`` one episode; ``(E, T, D)`` ``E`` episodes of equal
        length; or a list of ``(T_e, D)`` (or ``(T_e,)``) episodes of any lengths. A memory
        map stays one (no copy).
    :param actions: the same layout with ``A`` action features per frame (optional).
    :param columns: a name per feature (default ``x0, x1, ...``).
    :param missing: policy for NaN/inf values (see :data:`MISSING_POLICIES`).
    """
    _check_missing(missing)
    if isinstance(x, list | tuple):
        if not x:
            raise DataError(f"{source} is an empty list of episodes")
        eps = [_as_2d(f"{source}[{i}]", _float_array(f"{source}[{i}]", e))
               for i, e in enumerate(x)]
        dims = {e.shape[1] for e in eps}
        if len(dims) > 1:
            first = eps[0].shape[1]
            bad = next(i for i, e in enumerate(eps) if e.shape[1] != first)
            raise DataError(f"{source}: episode 0 has {first} features but episode {bad} has "
                            f"{eps[bad].shape[1]}; every episode needs the same columns")
        lengths = [len(e) for e in eps]
        values = np.concatenate(eps, axis=0)
        starts = np.concatenate([[0], np.cumsum(lengths)])
    else:
        arr = _float_array(source, x)
        if arr.ndim == 3:
            e, t, d = arr.shape
            values = arr.reshape(e * t, d)
            starts = np.arange(e + 1) * t
        else:
            values = _as_2d(source, arr)
            starts = np.array([0, len(values)])
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise DataError(f"{source} is empty (shape {values.shape}); it needs frames × features")
    acts, act_cols = None, []
    if actions is not None:
        a = from_array(actions, missing=missing, source=f"{source} actions")
        if len(a) != len(values) or not np.array_equal(a.starts, starts):
            raise DataError(f"{source}: actions have {len(a)} frames in {a.num_episodes} "
                            f"episode(s), the data {len(values)} in {len(starts) - 1}; give one "
                            "action per frame")
        acts, act_cols = a.values, [f"u{i}" for i in range(a.dim)]
    cols = list(columns) if columns is not None else [f"x{i}" for i in range(values.shape[1])]
    if len(cols) != values.shape[1]:
        raise DataError(f"{source}: {len(cols)} column names for {values.shape[1]} features")
    seqs = Sequences(values, starts, cols, source=source, actions=acts, action_columns=act_cols)
    return apply_missing(seqs, missing)


def _as_2d(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 1:
        return arr[:, None]
    if arr.ndim != 2:
        raise DataError(f"{name} has shape {arr.shape}; expected (T,), (T, D), (episodes, T, D) "
                        "or a list of (T, D) episodes")
    return arr


# -- missing values ------------------------------------------------------------------------------
def _check_missing(missing: str) -> None:
    if missing not in MISSING_POLICIES:
        raise DataError(f"unknown missing-value policy {missing!r}; choose one of "
                        f"{', '.join(MISSING_POLICIES)}")


def _first_bad(values: np.ndarray) -> tuple[int, int] | None:
    """``(row, column)`` of the first NaN/inf, scanning a memory map in chunks."""
    for i in range(0, len(values), _SCAN_CHUNK):
        block = np.asarray(values[i:i + _SCAN_CHUNK])
        release_pages(values)
        bad = ~np.isfinite(block)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            return i + int(r), int(c)
    return None


def apply_missing(seqs: Sequences, missing: str, *, row_label: Any = None) -> Sequences:
    """Apply the missing-value policy to ``seqs`` (NaN and ±inf count as missing).

    ``raise`` names the first bad row and column; ``drop`` removes rows with any missing value;
    ``ffill`` carries the last valid value forward within an episode (then back-fills its
    start); ``interpolate`` fills linearly in time within an episode (ends: nearest value).

    :param row_label: maps a row number to how the file numbers it (e.g. a CSV line).
    """
    _check_missing(missing)
    arrays = [("", seqs.values, seqs.columns)]
    if seqs.actions is not None:
        arrays.append(("action ", seqs.actions, seqs.action_columns))
    found = [(kind, cols, _first_bad(a)) for kind, a, cols in arrays]
    found = [(kind, cols, rc) for kind, cols, rc in found if rc is not None]
    if not found:
        return seqs
    kind, cols, (row, col) = found[0]
    label = row_label(row) if row_label is not None else f"row {row}"
    if missing == "raise":
        value = (seqs.values if not kind else seqs.actions)[row, col]
        what = "missing (NaN)" if np.isnan(value) else f"infinite ({value})"
        raise DataError(f"{seqs.source}: {kind}column {cols[col]!r} is {what} at {label}; "
                        "choose a policy with missing='drop'|'ffill'|'interpolate' (CLI: "
                        "--missing) or clean the data")
    logger.info("%s: filling missing values (%s), first at %s column %s", seqs.source, missing,
                label, cols[col])
    values = np.array(seqs.values, dtype=np.float32 if seqs.values.dtype == np.float32
                      else np.float64)  # a copy in memory: memory maps are read-only
    acts = None if seqs.actions is None else np.array(seqs.actions, dtype=np.float64)
    if missing == "drop":
        keep = np.isfinite(values).all(1)
        if acts is not None:
            keep &= np.isfinite(acts).all(1)
        kept_per_ep = np.add.reduceat(keep.astype(np.int64), seqs.starts[:-1]) \
            if len(values) else np.zeros(0, np.int64)
        starts = np.concatenate([[0], np.cumsum(kept_per_ep)])
        ids = list(seqs.episode_ids)
        nonempty = kept_per_ep > 0
        if not nonempty.any():
            raise DataError(f"{seqs.source}: every row has a missing value, nothing is left "
                            "after missing='drop'; try 'ffill' or 'interpolate'")
        starts = np.concatenate([[0], np.cumsum(kept_per_ep[nonempty])])
        ids = [i for i, ok in zip(ids, nonempty, strict=True) if ok]
        return Sequences(values[keep], starts, seqs.columns, source=seqs.source,
                         episode_ids=ids, actions=None if acts is None else acts[keep],
                         action_columns=seqs.action_columns)
    for arr, cols_ in [(values, seqs.columns)] + ([(acts, seqs.action_columns)]
                                                   if acts is not None else []):
        for e in range(seqs.num_episodes):
            a, b = seqs.starts[e], seqs.starts[e + 1]
            _fill(arr[a:b], missing, seqs, seqs.episode_ids[e], cols_)
    return Sequences(values, seqs.starts, seqs.columns, source=seqs.source,
                     episode_ids=seqs.episode_ids, actions=acts,
                     action_columns=seqs.action_columns)


def _fill(block: np.ndarray, missing: str, seqs: Sequences, episode: str,
          columns: list[str]) -> None:
    """Fill one episode's NaN/inf in place, column by column."""
    t = np.arange(len(block))
    for j in range(block.shape[1]):
        col = block[:, j]
        ok = np.isfinite(col)
        if ok.all():
            continue
        if not ok.any():
            raise DataError(f"{seqs.source}: column {columns[j]!r} has no valid value in "
                            f"episode {episode}, so missing={missing!r} cannot fill it; drop "
                            "the column or the episode")
        if missing == "ffill":
            idx = np.where(ok, t, 0)
            np.maximum.accumulate(idx, out=idx)
            first = int(np.argmax(ok))
            idx[:first] = first
            col[:] = col[idx]
        else:
            col[~ok] = np.interp(t[~ok], t[ok], col[ok])


# -- files ---------------------------------------------------------------------------------------
def _head(path: Path, n: int = 8) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _not_what_it_says(path: Path, kind: str, fix: str) -> DataError:
    head = _head(path, 12)
    return DataError(f"{path} is not a {kind} file (it starts with {head!r}); {fix}")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path} does not exist; check the path")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); point --data at a file with frames")


def load_npy(path: str | Path, *, key: str | None = None, mmap_mode: str | None = "r",
             missing: str = "raise", episodes: Any = None) -> Sequences:
    """A ``.npy`` file (memory-mapped), or one array of a ``.npz`` (memory-mapped when stored
    uncompressed). ``(T,)``, ``(T, D)`` and ``(E, T, D)`` arrays are accepted.

    :param key: which array of a ``.npz`` (default: its only array, or ``x``/``data``/``obs``).
    :param episodes: optional ``(N,)`` episode ids per row (rows of one episode contiguous), or
        for a ``.npz`` the name of an array holding them.
    """
    path = Path(path)
    _check_file(path)
    head = _head(path)
    if path.suffix == ".npz":
        if not head.startswith(_ZIP_MAGIC):
            raise _not_what_it_says(path, ".npz (zip)", "save it with np.savez")
        arr, ep, key = _load_npz_member(path, key, mmap_mode, episodes)
        name = f"{path}[{key}]"
    else:
        if not head.startswith(_NPY_MAGIC):
            raise _not_what_it_says(path, "NumPy .npy", "save it with np.save, or give it the "
                                    "extension of what it is (.csv, .parquet, ...)")
        try:
            arr = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
        except ValueError as err:  # object arrays, truncated headers
            raise DataError(f"{path} cannot be read as a numeric array ({err}); save numbers "
                            "with np.save(path, x.astype(np.float32))") from err
        ep, name = episodes, str(path)
    if arr.size == 0:
        raise DataError(f"{path} holds an empty array (shape {arr.shape})")
    seqs = from_array(arr, missing=missing, source=name)
    if ep is not None:
        seqs = _cut_episodes(seqs, np.asarray(ep), name)
    return seqs


def _cut_episodes(seqs: Sequences, ids: np.ndarray, name: str) -> Sequences:
    if seqs.num_episodes != 1 or ids.shape != (len(seqs),):
        raise DataError(f"{name}: episode ids must have one entry per row ({len(seqs)}), got "
                        f"shape {ids.shape}")
    change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    starts = np.concatenate([[0], change, [len(seqs)]])
    labels = [str(ids[s]) for s in starts[:-1]]
    if len(set(labels)) != len(labels):
        dup = next(lab for lab in labels if labels.count(lab) > 1)
        raise DataError(f"{name}: the rows of episode {dup!r} are not contiguous; sort the "
                        "data by episode (then time) first")
    return Sequences(seqs.values, starts, seqs.columns, source=seqs.source, episode_ids=labels,
                     actions=seqs.actions, action_columns=seqs.action_columns)


def _load_npz_member(path: Path, key: str | None, mmap_mode: str | None,
                     episodes: Any) -> tuple[np.ndarray, Any, str]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            if not names:
                raise DataError(f"{path} holds no arrays")
            if key is None:
                data_names = [n for n in names if n not in ("episodes", "episode")]
                pick = [n for n in ("x", "data", "obs", "frames") if n in data_names]
                if len(data_names) == 1:
                    key = data_names[0]
                elif pick:
                    key = pick[0]
                else:
                    raise DataError(f"{path} holds several arrays ({', '.join(names)}); choose "
                                    "one with key=... (CLI: --columns KEY)")
            if key not in names:
                raise DataError(f"{path} has no array {key!r}; it holds {', '.join(names)}")
            info = zf.getinfo(f"{key}.npy")
            stored = info.compress_type == zipfile.ZIP_STORED
            ep = episodes
            if isinstance(episodes, str) or (episodes is None and "episodes" in names):
                ep_name = episodes if isinstance(episodes, str) else "episodes"
                if ep_name not in names:
                    raise DataError(f"{path} has no array {ep_name!r} of episode ids")
                with zf.open(f"{ep_name}.npy") as fh:
                    ep = np.lib.format.read_array(fh, allow_pickle=False)
            if not stored or mmap_mode is None:
                if not stored:
                    logger.info("%s[%s] is compressed: read into memory (save with np.savez, "
                                "not savez_compressed, to memory-map it)", path, key)
                with zf.open(info) as fh:
                    return np.lib.format.read_array(fh, allow_pickle=False), ep, key
        return _mmap_stored_member(path, info), ep, key
    except zipfile.BadZipFile as err:
        raise DataError(f"{path} is not a valid .npz (zip) file ({err})") from err
    except ValueError as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}[{key}] cannot be read as a numeric array ({err})") from err


def _mmap_stored_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray:
    """Memory-map an uncompressed member of a zip file (its bytes lie contiguous on disk)."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
    if dtype.hasobject:
        raise ValueError("object arrays cannot be memory-mapped")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


def load_table(path: str | Path, *, columns: Sequence[str] | None = None,
               time_col: str | None = None, episode_col: str | None = None,
               action_cols: Sequence[str] | None = None, missing: str = "raise",
               sep: str | None = None) -> Sequences:
    """A CSV/TSV or Parquet table: one row per time step.

    :param columns: feature columns (default: every numeric column other than the time,
        episode and action columns).
    :param time_col: rows are sorted by it within each episode (numbers or dates); duplicates
        are refused.
    :param episode_col: rows with equal values form one episode (in order of first appearance).
    :param action_cols: columns holding the action taken after each row.
    :param missing: policy for empty/NaN/inf cells (see :data:`MISSING_POLICIES`).
    """
    import pandas as pd

    path = Path(path)
    _check_file(path)
    _check_missing(missing)
    suffix = path.suffix.lower()
    wanted = None
    if columns is not None:
        wanted = list(dict.fromkeys([*columns, *(c for c in (time_col, episode_col) if c),
                                     *(action_cols or [])]))
    if suffix in (".parquet", ".pq"):
        if not _head(path, 4).startswith(_PARQUET_MAGIC):
            raise _not_what_it_says(path, "Parquet", "write it with DataFrame.to_parquet or "
                                    "give it the extension of what it is")
        try:
            df = pd.read_parquet(path, columns=wanted)
        except ImportError as err:
            raise DataError(f"reading {path} needs pyarrow: pip install 'bjepa[data]'") from err
        except Exception as err:  # noqa: BLE001 - pyarrow raises many types
            msg = (str(err).splitlines() or [""])[0]
            if wanted is not None and ("No match for" in msg or "not in" in msg
                                       or "FieldRef" in msg):
                raise DataError(f"{path}: {msg}; check --columns/--time-col/--episode-col "
                                "against the file's columns") from err
            raise DataError(f"{path} could not be read as Parquet ({msg})") from err
        line = lambda i: f"row {i}"  # noqa: E731
    else:
        head = _head(path, 512)
        if head.startswith((_NPY_MAGIC, _ZIP_MAGIC, _PARQUET_MAGIC)) or b"\x00" in head:
            raise _not_what_it_says(path, "text (CSV)", "give it the extension of what it is "
                                    "(.npy, .npz, .parquet)")
        delim = sep or {".tsv": "\t", ".txt": None}.get(suffix, ",")
        engine = "python" if delim is None else "c"
        try:
            if wanted is not None:
                header = [str(c) for c in pd.read_csv(path, sep=delim, engine=engine,
                                                       nrows=0).columns]
                absent = [c for c in wanted if c not in header]
                if absent:
                    raise DataError(f"{path} has no column {absent[0]!r}; its columns are "
                                    f"{', '.join(header)}")
            df = pd.read_csv(path, sep=delim, engine=engine, usecols=wanted)
        except pd.errors.EmptyDataError as err:
            raise DataError(f"{path} has no rows or columns; point --data at a CSV with a header "
                            "row and one row per time step") from err
        except pd.errors.ParserError as err:
            msg = (str(err).splitlines() or [""])[0]
            raise DataError(f"{path} is malformed CSV ({msg}); fix that line (a stray "
                            "delimiter or an unclosed quote) or pass the right separator") from err
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 text CSV ({err.reason} at byte "
                            f"{err.start}); save it as UTF-8 or give it the right "
                            "extension") from err
        except DataError:
            raise
        except ValueError as err:  # usecols not found
            msg = (str(err).splitlines() or [""])[0]
            raise DataError(f"{path}: {msg}; the file has other columns (see its header "
                            "line)") from err
        line = lambda i: f"row {i} (line {i + 2} of the file)"  # noqa: E731
    return _table_to_sequences(df, path, columns=columns, time_col=time_col,
                               episode_col=episode_col, action_cols=action_cols,
                               missing=missing, line=line)


def _table_to_sequences(df: Any, path: Path, *, columns: Sequence[str] | None,
                        time_col: str | None, episode_col: str | None,
                        action_cols: Sequence[str] | None, missing: str,
                        line: Any) -> Sequences:
    import pandas as pd

    if len(df) == 0 or df.shape[1] == 0:
        raise DataError(f"{path} has a header but no data rows")
    for name, col in (("--time-col", time_col), ("--episode-col", episode_col)):
        if col is not None and col not in df.columns:
            raise DataError(f"{path} has no column {col!r} for {name}; its columns are "
                            f"{', '.join(map(str, df.columns))}")
    acts = list(action_cols or [])
    for col in [*(columns or []), *acts]:
        if col not in df.columns:
            raise DataError(f"{path} has no column {col!r}; its columns are "
                            f"{', '.join(map(str, df.columns))}")
    reserved = {c for c in (time_col, episode_col) if c} | set(acts)
    if columns is None:
        feats = [c for c in df.columns if c not in reserved]
        non_numeric = [c for c in feats if not _numeric_like(df[c])]
        if non_numeric:
            c = non_numeric[0]
            raise DataError(f"{path}: column {c!r} is not numeric ({_bad_cell(df[c], line)}); "
                            "choose the numeric ones with --columns, or name it with "
                            "--time-col/--episode-col")
    else:
        feats = list(columns)
        if not feats:
            raise DataError(f"{path}: --columns is empty; name at least one feature column")
    order = np.arange(len(df))
    df = df.reset_index(drop=True)
    if episode_col is not None:
        codes, uniques = pd.factorize(df[episode_col], use_na_sentinel=True)
        if (codes < 0).any():
            r = int(np.argmax(codes < 0))
            raise DataError(f"{path}: episode column {episode_col!r} is empty at {line(r)}; "
                            "fill it or drop the row")
        ep_labels = [str(u) for u in uniques]
    else:
        codes, ep_labels = np.zeros(len(df), dtype=np.int64), ["0"]
    if time_col is not None:
        t = df[time_col]
        if not pd.api.types.is_numeric_dtype(t):
            t = _parse_times(t, path, time_col, line)
        tv = pd.Series(t).to_numpy()
        if pd.isna(tv).any():
            r = int(np.argmax(pd.isna(tv)))
            raise DataError(f"{path}: time column {time_col!r} is empty at {line(r)}")
        order = np.lexsort((tv, codes))
        ts, cs = tv[order], codes[order]
        dup = np.flatnonzero((ts[1:] == ts[:-1]) & (cs[1:] == cs[:-1]))
        if len(dup):
            r = int(order[dup[0] + 1])
            raise DataError(f"{path}: time {ts[dup[0]]} appears twice in episode "
                            f"{ep_labels[cs[dup[0]]]} (again at {line(r)}); remove duplicates "
                            "or give an --episode-col")
    elif episode_col is not None:
        order = np.argsort(codes, kind="stable")
    values = _numeric_block(df, feats, path, line)[order]
    actions = _numeric_block(df, acts, path, line)[order] if acts else None
    counts = np.bincount(codes, minlength=len(ep_labels))
    starts = np.concatenate([[0], np.cumsum(counts)])
    seqs = Sequences(values, starts, [str(c) for c in feats], source=str(path),
                     episode_ids=ep_labels, actions=actions,
                     action_columns=[str(c) for c in acts])
    return apply_missing(seqs, missing, row_label=lambda r: line(int(order[r])))


def _parse_times(t: Any, path: Path, col: str, line: Any) -> Any:
    """Dates (any format pandas reads without a deprecation), else periods such as
    ``1959Q1`` or ``1959-Q1``; a one-line error naming the first bad cell otherwise."""
    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no parsing that pandas is about to drop
            return pd.to_datetime(t, errors="raise", format="mixed")
    except (ValueError, TypeError, Warning):
        pass
    try:
        return pd.Series([pd.Period(str(v).replace("-Q", "Q")).to_timestamp() for v in t])
    except (ValueError, TypeError) as err:
        raise DataError(f"{path}: time column {col!r} holds values that are neither numbers nor "
                        f"dates ({_bad_cell(t, line)})") from err


def _numeric_like(s: Any) -> bool:
    import pandas as pd

    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        return True
    return bool(pd.to_numeric(s, errors="coerce").notna().sum() == s.notna().sum())


def _bad_cell(s: Any, line: Any) -> str:
    import pandas as pd

    num = pd.to_numeric(s, errors="coerce")
    bad = np.flatnonzero(num.isna().to_numpy() & s.notna().to_numpy())
    if len(bad):
        return f"{line(int(bad[0]))} holds {s.iloc[int(bad[0])]!r}"
    return f"dtype {s.dtype}"


def _numeric_block(df: Any, cols: list[Any], path: Path, line: Any) -> np.ndarray:
    import pandas as pd

    out = np.empty((len(df), len(cols)), dtype=np.float64)
    for j, c in enumerate(cols):
        s = df[c]
        if pd.api.types.is_bool_dtype(s):
            out[:, j] = s.to_numpy(dtype=np.float64)
            continue
        num = pd.to_numeric(s, errors="coerce")
        bad = num.isna().to_numpy() & s.notna().to_numpy()
        if bad.any():
            raise DataError(f"{path}: column {c!r} is not numeric ({_bad_cell(s, line)}); drop "
                            "it from --columns or fix the value")
        out[:, j] = num.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


# -- images and video ----------------------------------------------------------------------------
def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _prepare_frame(img: np.ndarray, *, size: tuple[int, int] | None, grayscale: bool,
                   crop: tuple[int, int, int, int] | None, where: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise DataError(f"{where}: a frame has shape {img.shape}, expected (H, W) or (H, W, C)")
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    else:
        img = img.astype(np.float32)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    if crop is not None:
        top, left, h, w = crop
        if top < 0 or left < 0 or top + h > img.shape[0] or left + w > img.shape[1]:
            raise DataError(f"{where}: crop (top={top}, left={left}, height={h}, width={w}) does "
                            f"not fit a {img.shape[0]}×{img.shape[1]} frame")
        img = img[top:top + h, left:left + w]
    if grayscale and img.shape[2] == 3:
        img = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        img = img[:, :, None]
    if size is not None and tuple(img.shape[:2]) != tuple(size):
        from PIL import Image

        chans = [np.asarray(Image.fromarray(img[:, :, c], mode="F").resize(
            (size[1], size[0]), Image.BILINEAR)) for c in range(img.shape[2])]
        img = np.stack(chans, axis=2)
    return img.reshape(-1)


def load_frames(path: str | Path, *, size: tuple[int, int] | None = None,
                grayscale: bool = False, crop: tuple[int, int, int, int] | None = None,
                max_frames: int | None = None) -> Sequences:
    """A folder of image frames (sorted by name, numbers in natural order) or a video file,
    each frame flattened to ``H × W × C`` values in [0, 1].

    :param size: ``(height, width)`` to resize to (after cropping).
    :param grayscale: convert RGB to one luminance channel.
    :param crop: ``(top, left, height, width)`` in pixels.
    :param max_frames: read at most this many frames.

    A folder whose sub-folders hold frames gives one episode per sub-folder.
    """
    path = Path(path)
    _check_file(path)
    opts = {"size": size, "grayscale": grayscale, "crop": crop}
    if path.is_dir():
        subdirs = sorted((p for p in path.iterdir() if p.is_dir()),
                         key=lambda p: _natural_key(p.name))
        if subdirs and not _image_files(path):
            eps = [(_read_image_folder(d, max_frames=max_frames, **opts)) for d in subdirs]
            seqs = from_array(eps, source=str(path))
            seqs.episode_ids = [d.name for d in subdirs]
            return seqs
        frames = _read_image_folder(path, max_frames=max_frames, **opts)
    else:
        frames = _read_video(path, max_frames=max_frames, **opts)
    return from_array(frames, source=str(path))


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: _natural_key(p.name))


def _read_image_folder(folder: Path, *, max_frames: int | None, **opts: Any) -> np.ndarray:
    try:
        import imageio.v3 as iio
    except ImportError as err:
        raise DataError(f"reading images from {folder} needs imageio: pip install "
                        "'bjepa[data]'") from err
    files = _image_files(folder)[:max_frames]
    if not files:
        raise DataError(f"{folder} holds no image frames ({', '.join(IMAGE_SUFFIXES)})")
    frames = []
    for f in files:
        try:
            img = iio.imread(f)
        except Exception as err:  # noqa: BLE001 - image plugins raise many types
            raise DataError(f"{f} could not be decoded as an image "
                            f"({(str(err).splitlines() or [''])[0][:120]}); remove or "
                            "re-save it") from err
        frames.append(_prepare_frame(img, where=str(f), **opts))
    shapes = {fr.shape for fr in frames}
    if len(shapes) > 1:
        raise DataError(f"{folder}: frames have different sizes; pass size=(H, W) (CLI: "
                        "--frame-size HxW) to resize them to one")
    return np.stack(frames)


def _read_video(path: Path, *, max_frames: int | None, **opts: Any) -> np.ndarray:
    try:
        import imageio.v3 as iio
    except ImportError as err:
        raise DataError(f"reading {path} needs imageio: pip install 'bjepa[data]'") from err
    frames: list[np.ndarray] = []
    failure = None
    with warnings.catch_warnings():  # a failed ffmpeg reader leaves its pipes to the GC
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            for i, img in enumerate(iio.imiter(path)):
                if max_frames is not None and i >= max_frames:
                    break
                frames.append(_prepare_frame(img, where=str(path), **opts))
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - video plugins raise many types
            failure = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
        gc.collect()
    if failure is not None:
        raise DataError(f"{path} could not be decoded as a video ({failure}); check the file, "
                        "re-encode it (ffmpeg -i in.mov out.mp4) or install a reader: pip "
                        "install 'imageio[ffmpeg]'")
    if not frames:
        raise DataError(f"{path} holds no video frames")
    return np.stack(frames)


# -- one entry point -----------------------------------------------------------------------------
def load(path: str | Path, *, columns: Sequence[str] | None = None,
         time_col: str | None = None, episode_col: str | None = None,
         action_cols: Sequence[str] | None = None, missing: str = "raise",
         key: str | None = None, size: tuple[int, int] | None = None, grayscale: bool = False,
         crop: tuple[int, int, int, int] | None = None,
         max_frames: int | None = None) -> Sequences:
    """Load frames from ``path``, choosing the reader by its extension (or a folder of images).

    ``.npy``/``.npz`` → :func:`load_npy`; ``.csv``/``.tsv``/``.txt``/``.parquet`` →
    :func:`load_table`; a folder or a video (``.mp4``, ``.gif``, ...) → :func:`load_frames`.
    """
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in VIDEO_SUFFIXES:
        if columns or time_col or episode_col:
            raise DataError(f"{path} holds frames: --columns, --time-col and --episode-col apply "
                            "to tables only")
        return load_frames(path, size=size, grayscale=grayscale, crop=crop,
                           max_frames=max_frames)
    if suffix in (".npy", ".npz"):
        seqs = load_npy(path, key=key, missing=missing,
                        episodes=episode_col if suffix == ".npz" else None)
        if columns:
            idx = _column_indices(seqs, columns, path)
            seqs = Sequences(seqs.values[:, idx], seqs.starts, [seqs.columns[i] for i in idx],
                             source=seqs.source, episode_ids=seqs.episode_ids)
        return seqs
    if suffix in TABLE_SUFFIXES:
        return load_table(path, columns=columns, time_col=time_col, episode_col=episode_col,
                          action_cols=action_cols, missing=missing)
    raise DataError(f"{path}: unknown data format {suffix or '(no extension)'!r}; use .npy, .npz, "
                    ".csv, .tsv, .parquet, a video ({', '.join(VIDEO_SUFFIXES[:3])}, ...) or a "
                    "folder of images")


def _column_indices(seqs: Sequences, columns: Sequence[str], path: Path) -> list[int]:
    out = []
    for c in columns:
        if c in seqs.columns:
            out.append(seqs.columns.index(c))
        elif str(c).isdigit() and int(c) < seqs.dim:
            out.append(int(c))
        else:
            raise DataError(f"{path} has no column {c!r}; an array's columns are numbered "
                            f"0–{seqs.dim - 1}")
    return out
