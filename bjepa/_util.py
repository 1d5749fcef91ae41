"""Small helpers shared by the trainer, the data generators and the experiment drivers."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["nanmean", "progress_bar"]


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
