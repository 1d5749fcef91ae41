"""Small helpers shared by the trainer, the models, the data generators, the diagnostics and
the experiment drivers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["nanmean", "progress_bar", "seeded", "torch_threads"]


def progress_bar(total: int, enabled: bool, desc: str, *, unit: str = "it",
                 leave: bool = True, initial: int = 0) -> Any:
    """A tqdm bar, or ``None`` when progress display is off (callers test for ``None``)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave,
                dynamic_ncols=True)


def nanmean(values: Any) -> float:
    """Mean of the finite entries, NaN when there are none (no RuntimeWarning)."""
    arr = np.asarray(values, dtype=float)
    return float(arr[np.isfinite(arr)].mean()) if np.isfinite(arr).any() else float("nan")


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | None = None, *,
           isolate: bool = False) -> Iterator[None]:
    """Run a block with torch's RNG seeded, restoring the caller's RNG state afterwards.

    ``seed=None`` leaves the RNG alone (the block draws from the caller's stream), or with
    ``isolate=True`` forks it unseeded so the caller's stream is not advanced."""
    if seed is None and not isolate:
        yield
        return
    devices = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with torch's intra-op thread count set to ``n`` (``None``: unchanged), and
    restore the caller's count afterwards."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
