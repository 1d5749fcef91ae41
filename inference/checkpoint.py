"""Checkpoints: one file that rebuilds a trained model, written atomically and loaded with
``torch.load(weights_only=True)`` (no arbitrary pickles are ever executed).

A checkpoint is a dict of tensors and plain Python values::

    {"format": "bjepa-checkpoint", "version": 1, "library_version": "...",
     "model_class": "VJEPA", "hparams": {...}, "state_dict": {...}, "meta": {...}}
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "load_checkpoint", "load_model", "save_checkpoint"]

FORMAT = "bjepa-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, unsafe or from an incompatible version."""


def _model_classes() -> dict[str, type]:
    from bjepa import models

    return {name: getattr(models, name) for name in models.__all__
            if isinstance(getattr(models, name), type)}


def save_checkpoint(path: str | Path, model: Any, *, meta: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (class, constructor arguments, parameters, EMA target) to ``path``.

    The file is written to a temporary name in the same folder, fsynced, then renamed, so a
    crash leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from bjepa import __version__

    payload = {
        "format": FORMAT, "version": VERSION, "library_version": __version__,
        "model_class": type(model).__name__, "hparams": dict(model.hparams),
        "state_dict": {k: v.detach().cpu() if torch.is_tensor(v) else v
                       for k, v in model.state_dict().items()},
        "meta": dict(meta or {}), **(extra or {}),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read a checkpoint dict safely; raise :class:`CheckpointError` with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # foreign pickles trip a protocol warning first
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} is not a safe bjepa checkpoint: it asks to run code or build objects "
            f"that weights-only loading refuses ({str(err).splitlines()[0]})") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is truncated or not a torch checkpoint ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bjepa checkpoint (missing format marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')}, this bjepa reads "
            f"version {VERSION}")
    return payload


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild the trained model stored in a checkpoint."""
    payload = load_checkpoint(path, map_location)
    classes = _model_classes()
    name = payload["model_class"]
    if name not in classes:
        raise CheckpointError(f"{path} holds unknown model class {name!r}")
    hparams = dict(payload["hparams"])
    if hparams.get("tau") == "custom":
        hparams["tau"] = 1.0  # the schedule only matters for further training
    model = classes[name](**hparams)
    model.load_state_dict(payload["state_dict"])
    return model.to(map_location)
