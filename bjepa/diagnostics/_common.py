"""Helpers shared by the diagnostics modules (not public API)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bjepa._io import atomic_write

__all__: list[str] = []


def import_arviz():
    """Import ArviZ without its one-off "major refactor" FutureWarning banner."""
    from bjepa.diagnostics._arviz import import_arviz as _import

    return _import()


def jsonable(value: Any) -> Any:
    """Plain-JSON form of numbers, arrays and nested containers (non-finite floats → None)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def model_label(model: Any) -> str:
    """``"VJEPA (β = 0.01)"``-style label."""
    name = type(model).__name__
    beta = getattr(model, "beta", None)
    return f"{name} (β = {beta:g})" if isinstance(beta, int | float) else name


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
