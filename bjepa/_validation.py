"""Argument checks used at the public boundary.

Every helper raises :class:`ValueError` or :class:`TypeError` with a message that names the
argument and says how to fix it, so that bad input never surfaces as a traceback from deep
inside torch or Pyro.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch

__all__ = [
    "check_choice",
    "check_nonnegative",
    "check_nonnegative_int",
    "check_positive",
    "check_positive_int",
    "check_tensor",
    "check_unit_interval",
    "resolve_device",
]


def check_tensor(
    name: str,
    value: Any,
    *,
    ndim: int | None = None,
    last_dim: int | None = None,
    min_rows: int = 1,
    finite: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Validate a floating-point data tensor and return it.

    :param name: the argument's name, used in error messages.
    :param ndim: required number of dimensions (``None`` accepts any).
    :param last_dim: required size of the last dimension (``None`` accepts any).
    :param min_rows: minimum size of the leading dimension.
    :param finite: reject NaN and infinite values.
    :param device: if given, the device the tensor must be on (e.g. the model's).
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(value).__name__}; "
            f"convert it with torch.as_tensor({name}, dtype=torch.float32)"
        )
    if value.device.type == "meta":
        raise ValueError(
            f"{name} is on the 'meta' device (a tensor without data); pass real data on "
            "'cpu' or 'cuda'"
        )
    if device is not None and value.device != torch.device(device):
        raise ValueError(
            f"{name} is on {value.device} but the model is on {torch.device(device)}; "
            f"move it with {name}.to({str(torch.device(device))!r})"
        )
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must have a floating-point dtype, got {value.dtype}; use {name}.float()"
        )
    if ndim is not None and value.dim() != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}"
        )
    if last_dim is not None and (value.dim() == 0 or value.shape[-1] != last_dim):
        raise ValueError(
            f"{name} must have last dimension {last_dim} (the model's obs_dim), "
            f"got shape {tuple(value.shape)}"
        )
    if value.dim() > 0 and value.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {value.shape[0]}")
    if finite and value.numel() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite values; clean or impute them")
    return value


def check_positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_nonnegative(name: str, value: Any) -> float:
    """A finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def check_positive_int(name: str, value: Any) -> int:
    """An integer >= 1 (Python or NumPy integer)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_nonnegative_int(name: str, value: Any) -> int:
    """An integer >= 0 (Python or NumPy integer)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def check_unit_interval(name: str, value: Any) -> float:
    """A number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """One of a fixed set of names."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


def resolve_device(device: Any, model: torch.nn.Module | None = None) -> torch.device:
    """The torch device that ``device`` names, checked to exist on this machine — the one place
    where every command and the trainer resolve ``--device`` / ``device=`` before anything is
    written. ``None`` means the model's device (or the CPU without a model)."""
    if device is None:
        params = [] if model is None else list(model.parameters())
        return params[0].device if params else torch.device("cpu")
    if not isinstance(device, str | torch.device):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {str(device)!r} is not a torch device; use 'cpu', 'cuda' or "
                         "'cuda:N'") from None
    if dev.type == "meta":
        raise ValueError("device is 'meta' (tensors without data); use 'cpu' or 'cuda'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r}: bjepa trains on 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was requested but CUDA is not available "
                             "on this machine (a CPU-only torch build or no GPU); use "
                             "--device cpu / device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA "
                             "device(s) are visible; use 'cuda' or a smaller index")
    return dev
