"""Input standardisation stored with a model: users pass raw observations, the model rescales.

A :class:`Standardizer` holds one mean and one scale per observed feature, fitted on the
training frames only (:meth:`Standardizer.fit`, which streams over memory-mapped data in
chunks). A model carries it as ``model.standardizer``; it is saved in the model's extra state, so
``save_checkpoint`` → ``load_model`` gives back a model that accepts raw input, and
``model.check_inputs`` / ``model.encode`` / ``model.predict`` apply it.

With stacked frames (``frames = k`` past frames flattened into one context row, see
:func:`bjepa.data.make_pairs`) the per-feature statistics are tiled ``k`` times, so one
standardiser serves every stack width built from the same columns.

Example::

    std = Standardizer.fit(train_frames)         # (N, D) array, tensor or memmap
    model.standardizer = std
    model.encode(raw_frames)                     # standardised inside
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["Standardizer", "UnstandardizedDataWarning", "is_standardized", "looks_unstandardized",
           "mark_standardized", "release_pages"]

#: rows read at a time when fitting on a (memory-mapped) array
_CHUNK = 1 << 16
#: a feature whose spread is below this (relative to its mean) is treated as constant
_TINY = 1e-8
_MARK = "_bjepa_standardized"


def release_pages(values: Any) -> None:
    """Drop the pages of a memory-mapped array from this process's resident set (they stay in
    the OS page cache), so that reading a file larger than RAM keeps memory bounded. A no-op
    for arrays in memory."""
    base: Any = values
    while base is not None:
        mm = getattr(base, "_mmap", None)
        if isinstance(mm, mmap.mmap):
            with contextlib.suppress(AttributeError, OSError, ValueError):  # platforms
                mm.madvise(mmap.MADV_DONTNEED)
            return
        base = getattr(base, "base", None)


class UnstandardizedDataWarning(UserWarning):
    """Training data look unstandardised and the model has no standardiser."""


def mark_standardized(x: torch.Tensor) -> torch.Tensor:
    """Mark ``x`` as already standardised by a model (so the model does not do it twice)."""
    setattr(x, _MARK, True)
    return x


def is_standardized(x: torch.Tensor) -> bool:
    """Whether ``x`` came out of a model's standardiser (:func:`mark_standardized`)."""
    return bool(getattr(x, _MARK, False))


class Standardizer:
    """``(x − mean) / scale`` per feature, tiled over ``frames`` stacked frames.

    :param mean: ``(D,)`` per-feature means.
    :param scale: ``(D,)`` per-feature standard deviations (> 0; constant features get 1).
    :param frames: frames per stacked row (a row has ``frames × D`` values).
    :param columns: optional feature names (used in messages and by the CLI).
    """

    def __init__(self, mean: Any, scale: Any, *, frames: int = 1,
                 columns: Sequence[str] | None = None) -> None:
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float64)).reshape(-1)
        scale = torch.as_tensor(np.asarray(scale, dtype=np.float64)).reshape(-1)
        if mean.shape != scale.shape or mean.numel() == 0:
            raise ValueError(f"mean and scale must be non-empty vectors of one size, got "
                             f"{tuple(mean.shape)} and {tuple(scale.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(scale).all()
                and (scale > 0).all()):
            raise ValueError("mean must be finite and scale finite and > 0")
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be an int >= 1, got {frames!r}")
        if columns is not None and len(columns) != mean.numel():
            raise ValueError(f"columns names {len(columns)} features, the statistics have "
                             f"{mean.numel()}")
        self.mean, self.scale, self.frames = mean, scale, frames
        self.columns = None if columns is None else [str(c) for c in columns]
        self._cache: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- fitting ------------------------------------------------------------------------------
    @classmethod
    def fit(cls, x: Any, *, frames: int = 1, columns: Sequence[str] | None = None,
            rows: Sequence[tuple[int, int]] | None = None) -> Standardizer:
        """Fit on ``x`` ``(N, D)`` (array, memmap or tensor), reading ``rows`` — a list of
        ``(start, stop)`` row ranges, e.g. the training split — in chunks (bounded memory).

        Statistics are accumulated in float64 with a shifted sum of squares (the first row as
        shift), which stays accurate for data with a large offset (values around 10⁴).
        """
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x) if not isinstance(x, np.ndarray) else x
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(f"Standardizer.fit needs (rows, features) data, got shape {x.shape}")
        ranges = [(0, x.shape[0])] if rows is None else [(int(a), int(b)) for a, b in rows]
        n = sum(max(b - a, 0) for a, b in ranges)
        if n < 2:
            raise ValueError(f"Standardizer.fit needs at least 2 rows, got {n}")
        shift = np.asarray(x[ranges[0][0]], dtype=np.float64)
        s1 = np.zeros(x.shape[1])
        s2 = np.zeros(x.shape[1])
        for a, b in ranges:
            for i in range(a, b, _CHUNK):
                block = np.asarray(x[i:min(i + _CHUNK, b)], dtype=np.float64) - shift
                s1 += block.sum(0)
                s2 += np.square(block).sum(0)
                release_pages(x)  # a memory map: keep the resident set bounded
        mean_shifted = s1 / n
        var = np.maximum(s2 / n - np.square(mean_shifted), 0.0) * n / (n - 1)
        mean = mean_shifted + shift
        scale = np.sqrt(var)
        const = scale <= _TINY * np.maximum(np.abs(mean), 1.0)
        scale[const] = 1.0
        return cls(mean, scale, frames=frames, columns=columns)

    def with_frames(self, frames: int) -> Standardizer:
        """The same statistics for rows of ``frames`` stacked frames."""
        return Standardizer(self.mean, self.scale, frames=frames, columns=self.columns)

    # -- applying -----------------------------------------------------------------------------
    @property
    def num_features(self) -> int:
        """Features per frame, ``D``."""
        return int(self.mean.numel())

    @property
    def width(self) -> int:
        """Values per row, ``frames × D``."""
        return self.frames * self.num_features

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = (self.mean.repeat(self.frames).to(like.device, like.dtype),
                                self.scale.repeat(self.frames).to(like.device, like.dtype))
        return self._cache[key]

    def check_width(self, name: str, x: torch.Tensor) -> None:
        """Raise naming ``name`` when ``x`` does not have ``frames × D`` columns."""
        if x.dim() >= 1 and x.shape[-1] == self.width:
            return
        got = tuple(x.shape)
        if self.frames > 1 and x.dim() >= 1 and x.shape[-1] == self.num_features:
            raise ValueError(
                f"{name} has one frame per row (shape {got}) but this model reads stacks of "
                f"{self.frames} frames ({self.frames} × {self.num_features} = {self.width} "
                f"values); build them with bjepa.data.stack_frames({name}, {self.frames})")
        raise ValueError(f"{name} must have last dimension {self.width} ({self.frames} frame(s) "
                         f"× {self.num_features} features), got shape {got}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − mean) / scale`` on ``x``'s device and dtype (marked as standardised)."""
        self.check_width("x", x)
        mean, scale = self._stats(x)
        return mark_standardized((x - mean) / scale)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Back to the data's units: ``z · scale + mean``."""
        self.check_width("z", z)
        mean, scale = self._stats(z)
        return z * scale + mean

    def apply_numpy(self, x: np.ndarray, out_dtype: Any = np.float32) -> np.ndarray:
        """The same on a NumPy block (used by data-loader workers)."""
        mean = self.mean.repeat(self.frames).numpy().astype(out_dtype)
        scale = self.scale.repeat(self.frames).numpy().astype(out_dtype)
        out = np.asarray(x, dtype=out_dtype) - mean
        out /= scale
        return out

    # -- storage ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Plain values and tensors that ``torch.load(weights_only=True)`` reads back."""
        out: dict[str, Any] = {"mean": self.mean.clone(), "scale": self.scale.clone(),
                               "frames": self.frames}
        if self.columns is not None:
            out["columns"] = list(self.columns)
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Standardizer:
        try:
            return cls(state["mean"], state["scale"], frames=int(state.get("frames", 1)),
                       columns=state.get("columns"))
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed standardizer state ({err})") from err

    def __repr__(self) -> str:
        return (f"Standardizer(features={self.num_features}, frames={self.frames}, "
                f"mean∈[{float(self.mean.min()):.3g}, {float(self.mean.max()):.3g}], "
                f"scale∈[{float(self.scale.min()):.3g}, {float(self.scale.max()):.3g}])")


def looks_unstandardized(x: torch.Tensor, *, max_rows: int = 4096) -> str | None:
    """A one-line reason why ``x`` ``(N, D)`` looks unstandardised, or ``None``.

    Flags a feature whose mean is far from 0 (``|mean| > 10`` and > 3 standard deviations) or whose
    spread is large (standard deviation > 100), or features whose spreads differ by more than
    10⁴ — the cases in which a bias-free linear encoder trains to a meaningless loss.
    """
    if x.dim() != 2 or x.shape[0] < 2 or not x.is_floating_point():
        return None
    sample = x[:max_rows].detach().double()
    mean, std = sample.mean(0), sample.std(0)
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
        return None
    offset = mean.abs() / (std + 1e-12)
    j = int(torch.argmax(mean.abs()))
    if float(mean[j].abs()) > 10 and float(offset[j]) > 3:
        return f"column {j} has mean {float(mean[j]):.4g} and standard deviation " \
               f"{float(std[j]):.3g}"
    k = int(torch.argmax(std))
    if float(std[k]) > 100:
        return f"column {k} has standard deviation {float(std[k]):.4g}"
    live = std[std > 0]
    if live.numel() > 1 and float(live.max() / live.min()) > 1e4:
        return (f"the columns' standard deviations range from {float(live.min()):.3g} to "
                f"{float(live.max()):.3g}")
    return None
