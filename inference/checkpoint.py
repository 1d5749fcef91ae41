"""Checkpoints: one file holds everything needed to rebuild a trained model — and, for training
checkpoints, everything the next optimiser step needs. Files are written atomically and read
only with ``torch.load(weights_only=True)``: no pickled code is ever executed.

A checkpoint is a dict of tensors and plain Python values::

    {"format": "bjepa-checkpoint", "version": 2, "library_version": "0.1.0",
     "model_class": "VJEPA", "hparams": {...},
     "priors": {...},                # BJEPA: each prior's registered name and arguments
     "state_dict": {...},            # parameters, guide parameters, EMA target (extra state)
     "meta": {...},                  # free-form plain values (e.g. the run's results row)
     "training": {                   # only in training checkpoints (written by ``fit``)
         "step": 400,                # optimiser steps completed
         "optimizer": {...},         # torch.optim.Adam state_dict
         "rng": {...},               # torch / CUDA / NumPy / Python RNG states as tensors
         "config": {...},            # the resolved fit arguments
         "history": {...}},          # the metrics recorded so far
     "digest": "sha256:..."}         # checksum of everything above

Every failure to read one — a missing, truncated or corrupted file, a pickle that asks to run
code, an unknown format version, a checkpoint of another model class — raises
:class:`CheckpointError` with the file and the reason.

Priors are stored without pickle: a BJEPA's structural and weight priors as their registered
names and constructor arguments (:func:`bjepa.priors.prior_spec`), their learnable state in the
state dict. Loading rebuilds them from this process's registry
(:func:`bjepa.priors.register_prior`), or takes replacements:
``load_model(path, prior=..., weight_prior=...)``.

Example::

    save_checkpoint("vjepa.pt", model, meta={"sigma": 8.0})
    model = load_model("vjepa.pt")
    model = load_model("runs/train-1")        # a run folder: its newest checkpoint
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bjepa._io import atomic_write
from bjepa.runs import DirectoryLock

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "TrainingState",
    "capture_rng_state",
    "find_latest_checkpoint",
    "load_checkpoint",
    "load_model",
    "restore_model_state",
    "restore_rng_state",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

FORMAT = "bjepa-checkpoint"
VERSION = 2
#: checkpoint versions this library reads (1: model only, no checksum)
READABLE_VERSIONS = (1, 2)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, unsafe, from an incompatible version or of a
    different model than the one it is loaded into."""


@dataclass
class TrainingState:
    """What a training checkpoint adds to the model: enough to take the next step exactly.

    :param step: optimiser steps completed.
    :param optimizer: ``optimizer.state_dict()``.
    :param rng: :func:`capture_rng_state` at the moment of saving.
    :param config: the resolved training arguments (plain values).
    :param history: the metrics recorded so far (plain values and tensors).
    """

    step: int
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    config: dict[str, Any]
    history: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer": self.optimizer, "rng": self.rng,
                "config": self.config, "history": self.history}


# -- plain values and checksums ------------------------------------------------------------------
_PLAIN = (type(None), bool, int, float, str)


def _plain(name: str, value: Any) -> Any:
    """A copy of ``value`` that weights-only loading reads back exactly: NumPy scalars become
    Python numbers; anything else that is not a number, string, list, tuple, dict or tensor is
    refused with a ``TypeError`` naming where it is (fail at save, not at load)."""
    if type(value) in _PLAIN or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.generic) and isinstance(value.item(), _PLAIN):
        return value.item()
    if isinstance(value, list | tuple):
        items = [_plain(f"{name}[{i}]", v) for i, v in enumerate(value)]
        return tuple(items) if type(value) is tuple else items
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if type(k) not in (str, int):
                raise TypeError(f"{name} has a key {k!r} of type {type(k).__name__}; "
                                "checkpoint keys must be str or int")
            out[k] = _plain(f"{name}[{k!r}]", v)
        return out
    raise TypeError(f"{name} holds a {type(value).__name__}, which a checkpoint cannot store "
                    "safely; use plain numbers, strings, lists, dicts or tensors")


def _digest(value: Any) -> str:
    """A SHA-256 over every tensor's bytes and every plain value, in a canonical order."""
    h = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(v, dict):
            h.update(b"D%d" % len(v))
            for k in sorted(v, key=repr):
                h.update(repr(k).encode())
                feed(v[k])
        elif isinstance(v, list | tuple):
            h.update(b"L%d" % len(v))
            for x in v:
                feed(x)
        else:
            h.update(f"{type(v).__name__}:{v!r}".encode())

    feed(value)
    return "sha256:" + h.hexdigest()


# -- RNG states ----------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU and, when in use, CUDA), NumPy and Python RNG states as tensors and plain
    values, so that ``torch.load(weights_only=True)`` reads them back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    cuda = (list(torch.cuda.get_rng_state_all())
            if torch.cuda.is_available() and torch.cuda.is_initialized() else [])
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; raises :class:`CheckpointError` if malformed."""
    try:
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
        if state["cuda"]:
            if torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
                torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in state["cuda"]])
            else:
                logger.warning("checkpoint holds %d CUDA RNG states; this machine has %d CUDA "
                               "devices, CUDA randomness is not restored", len(state["cuda"]),
                               torch.cuda.device_count() if torch.cuda.is_available() else 0)
        npy = state["numpy"]
        np.random.set_state((npy["kind"], npy["keys"].cpu().numpy().astype(np.uint32),
                             int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached"])))
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(x) for x in py["internal"].tolist()),
                         py["gauss_next"]))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        raise CheckpointError(f"the checkpoint's RNG state is malformed ({err})") from err


# -- writing -------------------------------------------------------------------------------------
def _atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` through :func:`bjepa._io.atomic_write`: a crash leaves the old file or
    the new one, never a torn one."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)

    atomic_write(path, write)


def save_checkpoint(path: str | Path, model: Any, *, meta: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None,
                    training: TrainingState | None = None) -> Path:
    """Write ``model`` (class, constructor arguments, parameters, guide, EMA target) and, if
    given, the training state to ``path`` atomically.

    :param meta: plain values stored under ``"meta"`` (e.g. the data settings, a results row).
    :param extra: further top-level entries (plain values or tensors).
    :param training: optimiser state, step, RNG states, config and history (see :func:`fit`).
    :raises TypeError: if ``meta``/``extra``/``hparams`` hold objects that weights-only loading
        could not read back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from bjepa import __version__

    payload: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "library_version": __version__,
        "model_class": type(model).__name__,
        "hparams": _plain("hparams", dict(getattr(model, "hparams", {}))),
        "pyro_name": str(getattr(model, "_pyro_name", "")),
        **_prior_entry(model),
        "state_dict": _to_cpu(model.state_dict()),
        "meta": _plain("meta", dict(meta or {})), **_plain("extra", dict(extra or {})),
    }
    if training is not None:
        t = training.as_dict()
        t["config"] = _plain("training.config", t["config"])
        t["history"] = _plain("training.history", t["history"])
        payload["training"] = _to_cpu(t)
    payload["digest"] = _digest(payload)
    _atomic_torch_save(payload, path)
    return path


def _prior_entry(model: Any) -> dict[str, Any]:
    """``{"priors": {...}}`` for a model with priors (``prior_specs()``), else nothing."""
    specs = getattr(model, "prior_specs", None)
    return {"priors": _to_cpu(_plain("priors", specs()))} if callable(specs) else {}


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


# -- reading -------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    model_class: str | type | None = None) -> dict[str, Any]:
    """Read a checkpoint dict safely (``weights_only=True``) and verify its format, version and
    checksum; with ``model_class``, also that it holds that model.

    :raises CheckpointError: with the file and the reason, for every way this can fail.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # foreign pickles trip a protocol warning first
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = (str(err).splitlines() or [""])[0]
        if "global" in str(err).lower() or _starts_with_pickle(path):
            raise CheckpointError(
                f"{path} is not a safe bjepa checkpoint: it asks to run code or build objects "
                f"that weights-only loading refuses ({_unsafe_reason(err)})") from err
        detail = re.search(r"Unsupported operand \d+", str(err))
        raise CheckpointError(f"{path} is truncated, corrupt or not a torch checkpoint "
                              f"({detail.group(0) if detail else first})") from err
    except Exception as err:  # noqa: BLE001 - torch raises many types for torn files
        raise CheckpointError(
            f"{path} is truncated, corrupt or not a torch checkpoint "
            f"({type(err).__name__}: {(str(err).splitlines() or [''])[0]})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bjepa checkpoint (missing format marker)")
    version = payload.get("version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has checkpoint version {version!r}; this bjepa "
            f"({_library_version()}) reads versions {list(READABLE_VERSIONS)}")
    if version >= 2:
        stored = payload.pop("digest", None)
        if stored != _digest(payload):
            raise CheckpointError(f"{path} is corrupt: its checksum does not match its contents")
    for key, kind in [("model_class", str), ("hparams", dict), ("state_dict", dict),
                      ("meta", dict)]:
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"{path} is malformed: {key!r} missing or not a {kind.__name__}")
    if model_class is not None:
        want = model_class if isinstance(model_class, str) else model_class.__name__
        if payload["model_class"] != want:
            raise CheckpointError(
                f"{path} holds a {payload['model_class']} model, not a {want}")
    return payload


def _starts_with_pickle(path: Path) -> bool:
    """A raw pickle stream (protocol >= 2 begins with the PROTO opcode), not a torch zip."""
    try:
        with open(path, "rb") as fh:
            return fh.read(1) == b"\x80"
    except OSError:
        return False


def _unsafe_reason(err: Exception) -> str:
    text = str(err)
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if match:
        return f"it references {match.group(1)}"
    return (text.splitlines() or [""])[0][:200]


def _library_version() -> str:
    from bjepa import __version__

    return f"bjepa {__version__}"


def _model_classes() -> dict[str, type]:
    from bjepa import models

    return {name: getattr(models, name) for name in models.__all__
            if isinstance(getattr(models, name), type)}


def restore_model_state(payload: dict[str, Any], model: Any, path: str | Path = "checkpoint"
                        ) -> None:
    """Load the payload's parameters into ``model`` after checking that class and constructor
    arguments match; raises :class:`CheckpointError` otherwise."""
    if payload["model_class"] != type(model).__name__:
        raise CheckpointError(
            f"{path} holds a {payload['model_class']} model, not a {type(model).__name__}")
    mine = dict(getattr(model, "hparams", {}))
    diff = sorted(k for k in set(mine) | set(payload["hparams"])
                  if mine.get(k) != payload["hparams"].get(k))
    if diff:
        detail = ", ".join(f"{k}={payload['hparams'].get(k)!r} (model has {mine.get(k)!r})"
                           for k in diff)
        raise CheckpointError(f"{path} was written by a model with different settings: {detail}")
    stored, specs = payload.get("priors"), getattr(model, "prior_specs", None)
    if isinstance(stored, dict) and callable(specs):
        mine_specs = _plain("priors", specs())
        for role in sorted(set(stored) | set(mine_specs)):
            if _digest(stored.get(role)) != _digest(mine_specs.get(role)):
                logger.warning("%s: the model's %s was built with other arguments than the "
                               "checkpoint's; its saved state is loaded into it", path, role)
    state = _rename_scope(payload["state_dict"], payload.get("pyro_name") or "",
                          str(getattr(model, "_pyro_name", "")))
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{path} does not fit this {type(model).__name__}: "
            f"{(str(err).splitlines() or [''])[0]}") from err


def _rename_scope(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """Rename the model's Pyro scope inside state-dict keys.

    Every model instance has its own Pyro scope (``vjepa0``, ``bjepa3``, ...), and autoguides
    name their parameters after the sites they guide (``weight_guide.locs.bjepa3.predictor.
    net.weight``), so a checkpoint is loaded into a fresh instance by renaming that one
    dot-separated component.
    """
    if not old or not new or old == new:
        return state
    return {".".join(new if part == old else part for part in key.split(".")): value
            for key, value in state.items()}


def find_latest_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: the file itself, or for a folder its newest one —
    of ``model.pt`` (a finished run) and the highest ``step-*.pt`` in the folder or its
    ``checkpoints/``, whichever was written last; else its only ``*.pt`` file.

    :raises CheckpointError: when there is none, or several unrelated ones to choose from.
    """
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise CheckpointError(f"no checkpoint at {path}")
        return path
    folders = [path, path / "checkpoints"]
    steps = sorted((int(m.group(1)), p) for d in folders if d.is_dir() for p in d.iterdir()
                   if (m := CheckpointManager.PATTERN.match(p.name)))
    candidates = [p for p in (path / "model.pt", steps[-1][1] if steps else None)
                  if p is not None and p.is_file()]
    if candidates:
        return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name == "model.pt"))
    others = sorted(p for d in folders if d.is_dir() for p in d.glob("*.pt"))
    if len(others) == 1:
        return others[0]
    if not others:
        raise CheckpointError(f"no checkpoint in {path}: expected model.pt, step-*.pt or one "
                              f"*.pt file there or in {path / 'checkpoints'}")
    names = ", ".join(str(p.relative_to(path)) for p in others[:12])
    raise CheckpointError(f"{path} holds several models ({names}); pass one of these files")


def load_model(path: str | Path, map_location: str | torch.device = "cpu", *,
               model_class: str | type | None = None, prior: Any = None,
               weight_prior: Any = None) -> Any:
    """Rebuild the trained model stored in a checkpoint (see :func:`load_checkpoint`).

    :param path: a checkpoint file, or a run or checkpoint folder (its newest checkpoint, see
        :func:`find_latest_checkpoint`).
    :param prior: a structural prior to use instead of the saved one (BJEPA); needed when the
        saved one's class is not registered in this process or holds a Python callable. Its
        learnable state is overwritten by the checkpoint's.
    :param weight_prior: the same for the weight prior.
    :raises CheckpointError: with the file and the reason (e.g. an unregistered prior class,
        and how to register it).
    """
    path = find_latest_checkpoint(path)
    payload = load_checkpoint(path, map_location, model_class=model_class)
    classes = _model_classes()
    name = payload["model_class"]
    if name not in classes:
        raise CheckpointError(f"{path} holds unknown model class {name!r}; this library has "
                              f"{', '.join(sorted(classes))}")
    hparams = dict(payload["hparams"])
    if hparams.get("tau") == "custom":
        hparams["tau"] = 1.0  # the schedule only matters for further training
    _rebuild_priors(path, name, hparams, payload.get("priors"),
                    {"prior": prior, "weight_prior": weight_prior})
    try:
        model = classes[name](**hparams)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} holds constructor arguments this {name} refuses: {err}"
                              ) from err
    overridden = prior is not None or weight_prior is not None
    restore_model_state({**payload, "hparams": dict(getattr(model, "hparams", hparams)),
                         "priors": None if overridden else payload.get("priors")}, model, path)
    return model.to(map_location)


def _rebuild_priors(path: Path, name: str, hparams: dict[str, Any], specs: Any,
                    given: dict[str, Any]) -> None:
    """Put prior objects into ``hparams``: the caller's, else rebuilt from the checkpoint."""
    from bjepa.priors import PriorError, build_prior

    specs = specs if isinstance(specs, dict) else {}
    for role, obj in given.items():
        if obj is not None:
            if role not in hparams:
                raise CheckpointError(f"{path} holds a {name}, which takes no {role}")
            hparams[role] = obj
        elif specs.get(role) is not None:
            try:
                hparams[role] = build_prior(specs[role], role=role)
            except PriorError as err:
                raise CheckpointError(f"{path}: {err}") from err
        elif isinstance(hparams.get(role), str) and hparams[role].startswith("custom"):
            raise CheckpointError(
                f"{path} was written by a bjepa that did not record the {role} object it was "
                f"trained with; pass it again: load_model(path, {role}=...)")


# -- a folder of training checkpoints ------------------------------------------------------------
class CheckpointManager:
    """A folder of training checkpoints ``step-000000400.pt``, newest kept, oldest pruned.

    Holds an exclusive lock on ``<directory>/.lock`` while open, so two trainings never write
    into the same folder, and removes temp files left by a process killed mid-write.

    :param directory: the folder (created if missing).
    :param keep_last: how many checkpoints to keep (>= 1).
    """

    PATTERN = re.compile(r"^step-(\d{9,})\.pt$")

    def __init__(self, directory: str | Path, *, keep_last: int = 3) -> None:
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self._lock = DirectoryLock(self.directory, what="checkpoint_dir")
        for stale in self.directory.glob(".step-*.tmp"):
            stale.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the folder's lock."""
        self._lock.release()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def path_for(self, step: int) -> Path:
        return self.directory / f"step-{step:09d}.pt"

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        found = [(int(m.group(1)), p) for p in self.directory.iterdir()
                 if (m := self.PATTERN.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The newest checkpoint file, or ``None``."""
        paths = self.paths()
        return paths[-1] if paths else None

    def save(self, model: Any, training: TrainingState, *, meta: dict[str, Any] | None = None
             ) -> Path:
        """Write the checkpoint for ``training.step`` and prune all but the last ``keep_last``."""
        path = save_checkpoint(self.path_for(training.step), model, meta=meta,
                               training=training)
        for old in self.paths()[:-self.keep_last]:
            old.unlink(missing_ok=True)
        return path

