"""Sequences → ``(context, target)`` pairs, with episodes, frame stacks, a horizon and splits.

A pair at time ``t`` of one episode has

- context ``[x_{t−k+1}, …, x_t]`` — the ``k = context_frames`` latest frames, flattened oldest
  first (the frame stacks of the Atari set-up; ``k = 1`` is the frame itself), and
- target ``[x_{t−k+1+Δ}, …, x_{t+Δ}]`` — the same stack ``Δ = horizon`` steps later, so
  context and target have one width, ``k × D``, as the twin encoders of a JEPA need;
- optionally the action ``u_t`` taken after frame ``t`` (for the action-conditioned models).

No pair crosses an episode boundary or a split boundary. :class:`Pairs` never copies the frames:
it indexes into :class:`~bjepa.data.sources.Sequences` (a memory map stays one), and
:meth:`Pairs.batch` reads only the rows a mini-batch needs.

Example::

    data = load_pairs("sensors.csv", time_col="t", context_frames=2, val_frac=0.2)
    model = VJEPA(data.obs_dim, 4)
    model.standardizer = data.standardizer            # fitted on the training frames only
    fit(model, *data.train.tensors(), val=data.val.tensors())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bjepa.data.sources import DataError, Sequences, from_array, load
from bjepa.models.preprocess import Standardizer

__all__ = ["PairData", "Pairs", "load_pairs", "load_with_options", "make_pairs", "pairs_from_meta",
           "split_pairs", "stack_frames"]

SPLITS = ("auto", "episode", "time")
#: fewest training pairs accepted (a predictor's closed-form start needs a spread)
MIN_TRAIN_PAIRS = 3
NAMES = {"train": "training", "val": "validation", "test": "test"}


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise DataError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class Pairs:
    """``(context, target)`` pairs over row ranges (``segments``) of one :class:`Sequences`.

    :param seqs: the frames.
    :param segments: ``(S, 2)`` row ranges ``[a, b)``, each inside one episode.
    :param context_frames: ``k``, frames per context (and target) stack.
    :param horizon: ``Δ``, steps between the context's last frame and the target's.
    :param labels: a name per segment, for messages (e.g. ``"episode 3"``).
    """

    def __init__(self, seqs: Sequences, segments: Any, *, context_frames: int = 1,
                 horizon: int = 1, labels: Sequence[str] | None = None) -> None:
        self.seqs = seqs
        self.k = _check_int("context_frames", context_frames, 1)
        self.horizon = _check_int("horizon", horizon, 1)
        self.segments = np.asarray(segments, dtype=np.int64).reshape(-1, 2)
        self.labels = list(labels) if labels is not None else \
            [f"rows {a}–{b - 1}" for a, b in self.segments]
        need = self.k + self.horizon
        lengths = self.segments[:, 1] - self.segments[:, 0]
        short = np.flatnonzero(lengths < need)
        if len(short):
            i = int(short[0])
            raise DataError(
                f"{seqs.source}: {self.labels[i]} has {lengths[i]} frame(s), fewer than "
                f"context_frames + horizon = {self.k} + {self.horizon} = {need} that one pair "
                f"needs ({len(short)} such segment(s)); lower --context-frames/--horizon, "
                "change --val-frac, or drop short episodes")
        self.counts = lengths - need + 1
        self.cum = np.concatenate([[0], np.cumsum(self.counts)])
        self._offsets = np.arange(-self.k + 1, 1)

    # -- sizes --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.cum[-1])

    @property
    def frame_dim(self) -> int:
        return self.seqs.dim

    @property
    def obs_dim(self) -> int:
        """Width of a context (and target) row, ``k × D``."""
        return self.k * self.seqs.dim

    @property
    def action_dim(self) -> int:
        return 0 if self.seqs.actions is None else int(self.seqs.actions.shape[1])

    def frame_ranges(self) -> list[tuple[int, int]]:
        """The row ranges these pairs read (what a standardiser is fitted on)."""
        return [(int(a), int(b)) for a, b in self.segments]

    def describe(self) -> str:
        return (f"{len(self)} pairs from {len(self.segments)} segment(s) "
                f"({self.k} frame(s) × {self.seqs.dim} features, horizon {self.horizon})")

    # -- indexing -----------------------------------------------------------------------------
    def last_rows(self, idx: Any) -> np.ndarray:
        """Row (in ``seqs.values``) of each pair's last context frame ``x_t``."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"pair index out of range [0, {len(self)})")
        seg = np.searchsorted(self.cum, idx, side="right") - 1
        return self.segments[seg, 0] + self.k - 1 + (idx - self.cum[seg])

    def _stack(self, rows: np.ndarray, dtype: Any) -> np.ndarray:
        values = self.seqs.values
        if self.k == 1:
            return _take(values, rows, dtype)
        flat = (rows[:, None] + self._offsets).reshape(-1)
        return _take(values, flat, dtype).reshape(len(rows), self.k * values.shape[1])

    def batch(self, idx: Any, dtype: Any = np.float32
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(context, target, action)`` NumPy arrays for pair indices ``idx`` (``action`` is
        ``None`` without action columns). Reads only these rows from the frames."""
        t = self.last_rows(idx)
        ctx = self._stack(t, dtype)
        tgt = self._stack(t + self.horizon, dtype)
        act = None if self.seqs.actions is None else _take(self.seqs.actions, t, dtype)
        return ctx, tgt, act

    def tensors(self, dtype: torch.dtype = torch.float32
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """All pairs in memory as ``(context, target)`` tensors (raw values; the model's
        standardiser rescales them). With actions the context is ``[x_t stack, u_t]``, the
        packed layout of :meth:`bjepa.models.ActionVJEPA.pack`."""
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        ctx, tgt, act = self.batch(np.arange(len(self)), np_dtype)
        if act is not None:
            ctx = np.concatenate([ctx, act], axis=1)
        return torch.from_numpy(ctx), torch.from_numpy(tgt)

    def frames(self) -> np.ndarray:
        """The distinct frames these pairs read, ``(rows, D)`` (in memory)."""
        return np.concatenate([np.asarray(self.seqs.values[a:b]) for a, b in self.segments])

    def loader(self, batch_size: int, **kwargs: Any) -> torch.utils.data.DataLoader:
        """A shuffled mini-batch :class:`~torch.utils.data.DataLoader` over these pairs (see
        :func:`bjepa.data.streaming.make_loader`)."""
        from bjepa.data.streaming import make_loader

        return make_loader(self, batch_size, **kwargs)


def _take(values: np.ndarray, rows: np.ndarray, dtype: Any) -> np.ndarray:
    """``values[rows]`` as a new, writable ``dtype`` array (never a view of a read-only memory
    map); a contiguous run is read as one slice."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
        return np.array(values[rows[0]:rows[-1] + 1], dtype=dtype)
    return np.asarray(values[rows], dtype=dtype)


def make_pairs(data: Sequences | Any, *, context_frames: int = 1, horizon: int = 1,
               actions: Any = None) -> Pairs:
    """Pairs over every episode of ``data`` (a :class:`Sequences`, or anything
    :func:`~bjepa.data.sources.from_array` accepts: ``(T, D)``, ``(E, T, D)``, a list of
    episodes)."""
    seqs = data if isinstance(data, Sequences) else from_array(data, actions=actions)
    segments = np.stack([seqs.starts[:-1], seqs.starts[1:]], axis=1)
    labels = [f"episode {e}" for e in seqs.episode_ids]
    return Pairs(seqs, segments, context_frames=context_frames, horizon=horizon, labels=labels)


def stack_frames(x: Any, k: int) -> Any:
    """Rows of ``k`` consecutive frames ``[x_{t−k+1}, …, x_t]`` of one episode ``x`` ``(T, D)``:
    ``(T − k + 1, k × D)`` (a tensor for a tensor, else a NumPy array) — the input layout of a
    model trained with ``context_frames = k``."""
    k = _check_int("k", k, 1)
    is_tensor = isinstance(x, torch.Tensor)
    arr = x if is_tensor else np.asarray(x)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DataError(f"stack_frames needs one episode (T, D), got shape {tuple(arr.shape)}")
    if arr.shape[0] < k:
        raise DataError(f"stack_frames needs at least k = {k} frames, got {arr.shape[0]}")
    parts = [arr[i:arr.shape[0] - k + 1 + i] for i in range(k)]
    return torch.cat(parts, dim=1) if is_tensor else np.concatenate(parts, axis=1)


def split_pairs(seqs: Sequences, *, context_frames: int = 1, horizon: int = 1,
                val_frac: float = 0.1, test_frac: float = 0.0, by: str = "auto",
                seed: int = 0) -> dict[str, Pairs]:
    """Train/validation/test pairs.

    ``by="episode"`` puts whole episodes (a seeded random choice) into each split;
    ``by="time"`` cuts every episode in time: its first part trains, the next validates, the
    last tests (so validation and test lie in the future of training). ``"auto"`` splits by
    episode when every split can get at least one, else by time.

    :returns: ``{"train": ..., "val": ..., "test": ...}`` (a split with fraction 0 is absent).
    """
    for name, frac in (("val_frac", val_frac), ("test_frac", test_frac)):
        if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 <= frac < 1:
            raise DataError(f"{name} must be a number in [0, 1), got {frac!r}")
    if val_frac + test_frac >= 1:
        raise DataError(f"val_frac + test_frac must be < 1 (something must train), got "
                        f"{val_frac} + {test_frac}")
    if by not in SPLITS:
        raise DataError(f"unknown split {by!r}; choose one of {', '.join(SPLITS)}")
    fracs = {"val": val_frac, "test": test_frac}
    held = [s for s, f in fracs.items() if f > 0]
    e = seqs.num_episodes
    n_held = {s: max(1, round(e * fracs[s])) for s in held}
    if by == "auto":
        by = "episode" if e - sum(n_held.values()) >= 1 and e >= 3 else "time"
    opts = {"context_frames": context_frames, "horizon": horizon}
    if by == "episode":
        if e - sum(n_held.values()) < 1:
            raise DataError(f"{seqs.source}: {e} episode(s) cannot be split by episode into "
                            f"train + {' + '.join(held)}; split by time instead")
        order = np.random.default_rng(seed).permutation(e)
        chosen: dict[str, np.ndarray] = {}
        pos = 0
        for s in held:
            chosen[s] = np.sort(order[pos:pos + n_held[s]])
            pos += n_held[s]
        chosen["train"] = np.sort(order[pos:])
        out = {}
        for s in ("train", *held):
            eps = chosen[s]
            segs = np.stack([seqs.starts[eps], seqs.starts[eps + 1]], axis=1)
            out[s] = Pairs(seqs, segs, labels=[f"episode {seqs.episode_ids[i]} ({NAMES[s]} "
                                               "split)" for i in eps], **opts)
        return out
    bounds = {s: [] for s in ("train", *held)}
    labels = {s: [] for s in bounds}
    for i in range(e):
        a, b = int(seqs.starts[i]), int(seqs.starts[i + 1])
        n = b - a
        n_test = int(round(n * test_frac))
        n_val = int(round(n * val_frac))
        cut_val, cut_test = b - n_test - n_val, b - n_test
        parts = {"train": (a, cut_val), "val": (cut_val, cut_test), "test": (cut_test, b)}
        for s in bounds:
            bounds[s].append(parts[s])
            labels[s].append(f"the {NAMES[s]} part of episode {seqs.episode_ids[i]} (rows "
                             f"{parts[s][0]}–{parts[s][1] - 1})")
    return {s: Pairs(seqs, bounds[s], labels=labels[s], **opts) for s in bounds}


@dataclass
class PairData:
    """Pairs ready to train on: splits, the standardiser fitted on the training frames, and
    the settings that built them (what ``bjepa encode``/``predict`` need to build new pairs)."""

    train: Pairs
    val: Pairs | None
    test: Pairs | None
    standardizer: Standardizer
    settings: dict[str, Any]

    @property
    def obs_dim(self) -> int:
        return self.train.obs_dim

    @property
    def action_dim(self) -> int:
        return self.train.action_dim

    def describe(self) -> str:
        parts = [f"train {len(self.train)}"]
        for name in ("val", "test"):
            p = getattr(self, name)
            if p is not None:
                parts.append(f"{name} {len(p)}")
        return (f"{self.train.seqs.describe()}; pairs of {self.train.k} frame(s), horizon "
                f"{self.train.horizon}: {', '.join(parts)}")


def load_pairs(source: str | Path | Sequences | Any, *, context_frames: int = 1,
               horizon: int = 1, val_frac: float = 0.1, test_frac: float = 0.0,
               split: str = "auto", seed: int = 0, **load_kwargs: Any) -> PairData:
    """Load frames (a path, an array or :class:`Sequences`), split them, and fit the
    standardiser on the training frames only.

    :param load_kwargs: passed to :func:`~bjepa.data.sources.load` for a path (``columns``,
        ``time_col``, ``episode_col``, ``missing``, ``size``, ...), or ``missing``/``actions``
        to :func:`~bjepa.data.sources.from_array` for an array.
    """
    if isinstance(source, Sequences):
        seqs = source
    elif isinstance(source, str | Path):
        seqs = load(source, **load_kwargs)
    else:
        seqs = from_array(source, **load_kwargs)
    parts = split_pairs(seqs, context_frames=context_frames, horizon=horizon,
                        val_frac=val_frac, test_frac=test_frac, by=split, seed=seed)
    train = parts["train"]
    if len(train) < MIN_TRAIN_PAIRS:
        raise DataError(f"{seqs.source}: {len(train)} training pair(s), fewer than the "
                        f"{MIN_TRAIN_PAIRS} training pairs a model needs; give more frames or "
                        "lower --val-frac/--test-frac/--context-frames")
    std = Standardizer.fit(seqs.values, rows=train.frame_ranges(), columns=seqs.columns
                           ).with_frames(train.k)
    settings = {"context_frames": train.k, "horizon": train.horizon, "val_frac": val_frac,
                "test_frac": test_frac, "split": split, "seed": seed,
                "columns": list(seqs.columns), "frame_dim": seqs.dim,
                "action_columns": list(seqs.action_columns)}
    return PairData(train, parts.get("val"), parts.get("test"), std, settings)


def load_with_options(path: str | Path, options: dict[str, Any]) -> Sequences:
    """:func:`~bjepa.data.sources.load` with stored options (``columns``, ``time_col``,
    ``episode_col``, ``missing``, ``key``, ``size``, ``grayscale``, ``crop``), as a run folder's
    ``config.json`` keeps them."""
    return load(path, columns=options.get("columns"), time_col=options.get("time_col"),
                episode_col=options.get("episode_col"),
                missing=options.get("missing") or "raise", key=options.get("key"),
                grayscale=bool(options.get("grayscale")),
                size=tuple(options["size"]) if options.get("size") else None,
                crop=tuple(options["crop"]) if options.get("crop") else None)


def pairs_from_meta(meta: dict[str, Any]) -> PairData:
    """The pairs a ``bjepa train --data PATH`` run trained on, rebuilt from its checkpoint's
    ``meta`` (``path``, ``load`` options and ``pairs`` settings): same file, same splits."""
    path = meta.get("path")
    if not path or not Path(path).exists():
        raise DataError(f"the run was trained on {path}, which is not there any more; put the "
                        "file back (or pass new data to `bjepa encode`/`bjepa predict`)")
    settings = dict(meta.get("pairs") or {})
    seqs = load_with_options(path, dict(meta.get("load") or {}))
    return load_pairs(seqs, **{k: settings[k] for k in ("context_frames", "horizon", "val_frac",
                                                         "test_frac", "split", "seed")
                              if k in settings})
