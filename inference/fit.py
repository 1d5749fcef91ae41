"""SVI training loop shared by every model in :mod:`bjepa.models`.

``fit`` runs :class:`FusedSVI` — Pyro's :class:`~pyro.infer.SVI` with one fused
``torch.optim.Adam`` over the model's parameters — on a model's ``model``/``guide`` pair, then
calls the model's ``after_step`` hook (the EMA target update) after every optimiser step. The
loss always comes out of one of Pyro's ELBO classes. Models with a deterministic objective (the
JEPA baseline) express it as a ``pyro.factor`` with an empty guide, so every model trains
through the same loop.

Reliability (see ``docs/reliability.md``):

- ``checkpoint_dir=`` keeps training checkpoints (model, guide, EMA target, optimiser, step,
  RNG states, config, metrics) written atomically; ``resume=True`` continues from the newest
  one, and on CPU ``N`` steps + resume + ``N`` steps equals ``2N`` steps bit for bit (with an
  eager ELBO; the compiled one agrees to float rounding).
- a non-finite loss or gradient raises :class:`NonFiniteLossError` naming the step and the last
  good checkpoint, or skips the step with ``on_nonfinite="skip"`` (counted in the metrics).
- Ctrl-C is deferred to the end of the current step; a checkpoint is written, the metrics are
  flushed, and :class:`KeyboardInterrupt` is re-raised.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.abstract_infer import TracePosterior
from pyro.infer.elbo import ELBO
from pyro.infer.util import torch_item

from bjepa._util import progress_bar, seeded
from bjepa._validation import (
    check_choice,
    check_nonnegative_int,
    check_positive,
    check_positive_int,
)
from bjepa.inference.checkpoint import (
    CheckpointError,
    CheckpointManager,
    TrainingState,
    capture_rng_state,
    load_checkpoint,
    restore_model_state,
    restore_rng_state,
)

__all__ = [
    "ELBOS",
    "SVI",
    "FusedSVI",
    "NonFiniteLossError",
    "TrainingHistory",
    "fit",
    "make_elbo",
    "set_seed",
]

logger = logging.getLogger(__name__)

ELBOS: dict[str, type] = {
    "meanfield": TraceMeanField_ELBO,
    "trace": Trace_ELBO,
    "jit-meanfield": TraceMeanField_ELBO,
    "jit-trace": Trace_ELBO,
}
#: ``elbo="auto"`` (the default): ``"jit-meanfield"`` for a model that can be compiled and runs
#: at least this many steps (compiling costs about as much as this many eager steps), else
#: ``"meanfield"``. Both give the same numbers to float rounding (see :mod:`.jit`).
JIT_MIN_STEPS = 200
ELBO_CHOICES = ("auto", *ELBOS)
ON_NONFINITE = ("raise", "skip")
#: ``fit(strategy=...)``: this process, or DistributedDataParallel across a torchrun job
STRATEGIES = ("single", "ddp")
#: with ``on_nonfinite="skip"``, this many non-finite steps in a row stop training anyway
MAX_CONSECUTIVE_SKIPS = 50


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss, gradient or parameter."""


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy, torch and Pyro from one integer."""
    seed = check_nonnegative_int("seed", seed)
    if seed >= 2**32:
        raise ValueError(f"seed must be < 2**32 (NumPy's limit), got {seed}")
    pyro.set_rng_seed(seed)


def make_elbo(elbo: str = "meanfield", num_particles: int = 1, max_plate_nesting: int = 1,
              *, strict: bool = True) -> ELBO:
    """The Pyro ELBO named ``elbo`` (see :data:`ELBOS`) with ``num_particles`` particles
    (``max_plate_nesting=2`` for replica stacks: replicas × data). ``"jit-"`` names give a
    :class:`~bjepa.inference.jit.CompiledELBO`; with ``strict=False`` it falls back to the
    eager ELBO (logging why) when the program cannot be compiled."""
    check_choice("elbo", elbo, ELBOS)
    check_positive_int("num_particles", num_particles)
    base = ELBOS[elbo](num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                       vectorize_particles=num_particles > 1 and elbo.startswith("jit-"))
    if elbo.startswith("jit-"):
        from bjepa.inference.jit import CompiledELBO

        return CompiledELBO(base, strict=strict)
    return base


def per_row_loss(loss_fn: ELBO, model: Any, context: torch.Tensor,
                 target: torch.Tensor | None, *, seed: int | None = None,
                 chunk: int | None = None) -> float:
    """``loss_fn``'s negative ELBO of ``model`` per row of ``(context, target)``, without
    gradients, on a fork of torch's RNG seeded with ``seed`` (``None``: unseeded; the caller's
    stream is not advanced either way), ``chunk`` rows at a time (``None``: all at once)."""
    n = context.shape[0]
    step = chunk or n
    total = 0.0
    with torch.no_grad(), seeded(seed, context.device, isolate=True):
        for i in range(0, n, step):
            tgt = None if target is None else target[i:i + step]
            total += float(loss_fn.loss(model.model, model.guide, context[i:i + step], tgt))
    return total / n


def data_start(model: Any, context: torch.Tensor, target: torch.Tensor | None, steps: int,
               warmup_steps: int | None) -> int:
    """Give ``model`` its data-dependent start (``init="cca"`` and a target) and return the
    encoder warm-up: ``warmup_steps``, or by default 10 % of ``steps`` after a data start and
    none otherwise."""
    data_init = getattr(model, "init", "random") == "cca" and target is not None
    if data_init:
        model.init_from_data(context, target)
    if warmup_steps is None:
        warmup_steps = steps // 10 if data_init else 0
    return warmup_steps


def resolve_elbo(elbo: str, model: Any, steps: int) -> str:
    """The ELBO name ``"auto"`` stands for with this model and step count."""
    check_choice("elbo", elbo, ELBO_CHOICES)
    if elbo != "auto":
        return elbo
    compile_ok = getattr(model, "jit_safe", True) and steps >= JIT_MIN_STEPS
    return "jit-meanfield" if compile_ok else "meanfield"


class FusedSVI(SVI):
    """:class:`~pyro.infer.SVI` whose step updates one ``torch.optim`` optimiser (by default a
    fused ``Adam(foreach=True)``) over a fixed list of parameters.

    Unlike :class:`pyro.optim.PyroOptim`, which builds one optimiser per parameter the first
    time it sees it, the optimiser exists before the first step, so its state can be saved and
    restored at any step (including step 0). Every parameter that the model or guide touches
    must be in the list: a stray global ``pyro.param`` raises instead of silently not training.

    ``step`` raises :class:`NonFiniteLossError` *without* changing any parameter when the loss
    or a gradient is NaN or infinite.

    :param model: the Pyro model.
    :param guide: the Pyro guide.
    :param params: the parameters to train (e.g. ``module.parameters()``).
    :param loss: a Pyro :class:`~pyro.infer.elbo.ELBO` instance.
    :param lr: Adam learning rate (ignored when ``optimizer`` is given).
    :param optimizer: a ready ``torch.optim.Optimizer`` over ``params`` instead of Adam.

    Example::

        svi = FusedSVI(m.model, m.guide, m.parameters(), TraceMeanField_ELBO(), lr=1e-3)
        loss = svi.step(x_c, x_t)
    """

    def __init__(self, model: Callable, guide: Callable, params: Iterable[torch.nn.Parameter],
                 loss: ELBO, *, lr: float = 1e-3,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        if not isinstance(loss, ELBO):
            raise TypeError(f"loss must be a pyro.infer ELBO instance, got {type(loss).__name__}")
        TracePosterior.__init__(self)
        self.model, self.guide = model, guide
        self.num_steps, self.num_samples = 0, 0
        self.loss, self.loss_and_grads = loss.loss, loss.loss_and_grads
        params = [p for p in params]
        if optimizer is None:
            optimizer = torch.optim.Adam(params, lr=check_positive("lr", lr), foreach=True)
        self.optim = optimizer
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self._known = {id(p) for p in self.params}
        self._checked = False

    def step(self, *args: Any, **kwargs: Any) -> float:
        """One gradient step on the ELBO; returns the loss (a float)."""
        # the first step also records which parameters the program touches (a static program
        # touches the same ones every step, so later steps skip that bookkeeping)
        capture = poutine.trace(param_only=True) if not self._checked else None
        try:
            with capture or contextlib.nullcontext(), warnings.catch_warnings():
                # a NaN loss is reported below as NonFiniteLossError, not as Pyro's warning
                warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
                loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        except ValueError as err:
            if not _is_nonfinite_validation_error(err):
                raise
            self.optim.zero_grad(set_to_none=True)
            first = (str(err).splitlines() or [""])[0]
            raise NonFiniteLossError(f"non-finite values in a distribution ({first})") from err
        if capture is not None:
            for name, site in capture.trace.nodes.items():
                if id(site["value"].unconstrained()) not in self._known:
                    self.optim.zero_grad(set_to_none=True)
                    raise RuntimeError(
                        f"parameter {name!r} is used by the model or guide but is not one of the "
                        "parameters given to FusedSVI (a global pyro.param, or a guide built "
                        "lazily?); make it an attribute of the model so it is trained and "
                        "checkpointed")
            self._checked = True
        loss = torch_item(loss)
        bad = self._nonfinite(loss)
        if bad:
            self.optim.zero_grad(set_to_none=True)
            raise NonFiniteLossError(bad)
        try:
            self.optim.step()
        except RuntimeError as err:  # e.g. lr / bias correction beyond float range
            self.optim.zero_grad(set_to_none=True)
            if "overflow" not in str(err):
                raise
            raise NonFiniteLossError(f"the optimiser step overflowed ({err}); lower lr") from err
        self.optim.zero_grad(set_to_none=True)
        return loss

    def _nonfinite(self, loss: float) -> str:
        """A description of what is not finite, or ``""``."""
        if not math.isfinite(loss):
            return f"non-finite loss {loss}"
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return ""
        # fast path: one fused norm per gradient (NaN/inf anywhere makes it non-finite); only a
        # non-finite norm, which huge finite values can also give, is checked element-wise
        if bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            return ""
        if not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            return "non-finite gradient"
        return ""


def _is_nonfinite_validation_error(err: ValueError) -> bool:
    """Whether ``err`` is torch/Pyro argument validation refusing NaN or infinite values (how a
    diverged forward pass usually surfaces while validation is on, the default)."""
    text = str(err)
    return "found invalid values" in text and (
        "Real()" in text or re.search(r"\b(nan|inf)\b", text) is not None)


@dataclass
class TrainingHistory:
    """What :func:`fit` returns: one record per logged step, plus run facts."""

    records: list[dict[str, float]] = field(default_factory=list)
    elbo: str = "meanfield"
    seconds: float = 0.0
    stopped_early: bool = False
    #: steps skipped because of a non-finite loss or gradient (``on_nonfinite="skip"``)
    skipped_steps: int = 0
    #: global step this call started from (> 0 when it resumed a checkpoint)
    resumed_from: int = 0
    #: the newest checkpoint written or read, if any
    last_checkpoint: Path | None = None

    @property
    def loss(self) -> list[float]:
        """Per-observation negative ELBO at each logged step."""
        return [r["loss"] for r in self.records]

    @property
    def final_loss(self) -> float:
        return self.records[-1]["loss"] if self.records else math.nan

    def state(self) -> dict[str, Any]:
        """Plain values and tensors for a checkpoint: the records stored column-wise."""
        keys: list[str] = []
        for r in self.records:
            keys += [k for k in r if k not in keys]
        columns = {k: torch.tensor([float(r.get(k, math.nan)) for r in self.records],
                                   dtype=torch.float64) for k in keys}
        return {"keys": keys, "columns": columns, "elbo": self.elbo, "seconds": self.seconds,
                "stopped_early": self.stopped_early, "skipped_steps": self.skipped_steps}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TrainingHistory:
        cols = state["columns"]
        n = len(cols[state["keys"][0]]) if state["keys"] else 0
        records = []
        for i in range(n):
            rec = {k: float(cols[k][i]) for k in state["keys"]}
            rec = {k: (int(v) if k == "step" else v) for k, v in rec.items()
                   if not (math.isnan(v) and k != "loss")}
            records.append(rec)
        return cls(records=records, elbo=state["elbo"], seconds=float(state["seconds"]),
                   stopped_early=bool(state["stopped_early"]),
                   skipped_steps=int(state["skipped_steps"]))


def _resolve_device(device: str | torch.device | None, model: torch.nn.Module) -> torch.device:
    if device is None:
        dev = next(model.parameters()).device
    else:
        if not isinstance(device, str | torch.device):
            raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"device {device!r} is not a torch device; use 'cpu' or 'cuda'"
                             ) from err
    if dev.type == "meta":
        raise ValueError("device is 'meta' (tensors without data); train on 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but CUDA is not available; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA "
                             "devices are visible")
    return dev


def _fingerprint(*tensors: torch.Tensor | None) -> str:
    """SHA-256 of the training data, so a resumed run can tell it got the same data."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _finite_params(model: torch.nn.Module) -> bool:
    tensors = list(model.parameters())
    target = getattr(model, "target_encoder", None)
    if isinstance(target, torch.nn.Module):
        tensors += list(target.parameters())
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()}


def _rewind_metrics(path: Path, tags: dict[str, Any], from_step: int) -> None:
    """Drop this run's streamed records at steps >= ``from_step`` (they will be re-run) and any
    line torn by a crash, keeping everything else."""
    if not path.exists():
        return
    from bjepa.runs import atomic_write_text

    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        mine = isinstance(rec, dict) and all(rec.get(k) == v for k, v in tags.items())
        if mine and rec.get("step", -1) >= from_step:
            continue
        kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


@contextmanager
def _deferred_sigint(enabled: bool) -> Iterator[Callable[[], bool]]:
    """Within the block, a first Ctrl-C only sets a flag (checked between steps); a second one
    interrupts at once. Yields a function telling whether Ctrl-C was pressed."""
    pressed = [False]
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if pressed[0]:
            raise KeyboardInterrupt
        pressed[0] = True
        logger.warning("interrupt: finishing the current step and writing a checkpoint "
                       "(press Ctrl-C again to stop at once)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: pressed[0]
    finally:
        signal.signal(signal.SIGINT, previous)



def check_fit_args(model: Any, context: torch.Tensor, target: torch.Tensor | None, *,
                   steps: int, lr: float, elbo: str, num_particles: int, log_every: int,
                   on_nonfinite: str, seed: int | None, warmup_steps: int | None,
                   checkpoint_every: int | None, keep_last: int, resume: bool,
                   checkpoint_dir: Any, metrics_tags: Any, callback: Any,
                   batch_size: int | None) -> tuple[int, float, torch.Tensor,
                                                    torch.Tensor | None, int | None]:
    """Validate :func:`fit`'s arguments (shared with the ddp strategy), naming the bad one.

    Returns ``(steps, lr, context, target, batch_size)`` with ``batch_size`` set to ``None``
    when it covers the whole data set.
    """
    steps = check_positive_int("steps", steps)
    lr = check_positive("lr", lr)
    check_choice("elbo", elbo, ELBO_CHOICES)
    check_positive_int("num_particles", num_particles)
    check_positive_int("log_every", log_every)
    check_choice("on_nonfinite", on_nonfinite, ON_NONFINITE)
    if seed is not None:
        check_nonnegative_int("seed", seed)
    if warmup_steps is not None:
        check_nonnegative_int("warmup_steps", warmup_steps)
    if checkpoint_every is not None:
        check_positive_int("checkpoint_every", checkpoint_every)
    check_positive_int("keep_last", keep_last)
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {type(resume).__name__}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (the folder to resume from)")
    if metrics_tags is not None and not isinstance(metrics_tags, dict):
        raise TypeError(f"metrics_tags must be a dict, got {type(metrics_tags).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "check_inputs"):
        raise TypeError(f"model must be a bjepa world model, got {type(model).__name__}")
    context, target = model.check_inputs(context, target)
    n = context.shape[0]
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
        batch_size = None if batch_size >= n else batch_size
    return steps, lr, context, target, batch_size


def fit(
    model: Any,
    context: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    steps: int = 1000,
    lr: float = 1e-3,
    batch_size: int | None = None,
    seed: int | list[int] | None = 0,
    device: str | torch.device | None = None,
    elbo: str = "auto",
    num_particles: int = 1,
    warmup_steps: int | None = None,
    progress: bool = True,
    log_every: int = 1,
    metrics_path: str | Path | None = None,
    metrics_tags: dict[str, Any] | None = None,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    keep_last: int = 3,
    resume: bool = False,
    on_nonfinite: str = "raise",
    strategy: str = "single",
    replicas: int | None = None,
    replica_batches: str = "own",
) -> TrainingHistory | list[TrainingHistory]:
    """Train ``model`` on ``(context, target)`` pairs with SVI and Adam.

    :param model: a :class:`bjepa.models.base.WorldModel` (VJEPA, BJEPA, VAE, AR, JEPA), or a
        list of ``R`` of them built with the same arguments (different seeds, different data):
        they train as one batched program (:func:`bjepa.inference.replicas.fit_replicas`) and
        ``fit`` returns one history per model.
    :param context: ``(N, obs_dim)`` context frames ``x_t`` (for a list of models:
        ``(R, N, obs_dim)`` or a list of ``R`` such tensors).
    :param target: ``(N, obs_dim)`` target frames ``x_{t+1}`` (``None`` for the VAE).
    :param steps: total number of optimiser steps (a resumed run trains the remainder).
    :param lr: Adam learning rate.
    :param batch_size: mini-batch size drawn by ``pyro.plate(subsample_size=...)``;
        ``None`` trains full-batch.
    :param seed: seeds torch, NumPy and Pyro before training (``None`` leaves RNGs alone; a
        resumed run restores the RNG states of its checkpoint instead).
    :param device: moves model and data once before training (data is also cast to the
        model's dtype).
    :param elbo: ``"meanfield"`` (analytic KL), ``"trace"`` (Monte Carlo KL), their compiled
        ``"jit-"`` forms (:class:`~bjepa.inference.jit.CompiledELBO`, same numbers, less Python
        overhead per step), or ``"auto"`` (default): ``"jit-meanfield"`` when the model can be
        compiled and ``steps >= JIT_MIN_STEPS``, else ``"meanfield"``.
    :param warmup_steps: steps during which the encoder is held fixed while predictor and
        variance heads fit (protects a data-initialised encoder from a random head's
        gradients). Default: 10 % of ``steps`` when the model was initialised from data,
        else 0.
    :param log_every: record (and stream) metrics every this many steps.
    :param metrics_path: if given, append one JSON line per record to this file.
    :param metrics_tags: extra keys (e.g. model, seed) written into every streamed record.
    :param callback: ``callback(step, record)``; returning ``True`` stops training.
    :param checkpoint_dir: folder for training checkpoints ``step-NNNNNNNNN.pt`` (locked while
        training). One is written before the first step, every ``checkpoint_every`` steps, at
        the end, and on Ctrl-C.
    :param checkpoint_every: steps between checkpoints (default: only start and end).
    :param keep_last: how many checkpoints to keep in ``checkpoint_dir``.
    :param resume: continue from the newest checkpoint in ``checkpoint_dir`` (start fresh if it
        has none). Model class and settings, data, ``lr``, ``batch_size``, ``elbo`` and
        ``num_particles`` must match the checkpoint; ``steps`` may grow.
    :param on_nonfinite: ``"raise"`` (default) stops with :class:`NonFiniteLossError` naming the
        step and the last good checkpoint; ``"skip"`` leaves the parameters unchanged for that
        step and counts it (``"skipped"`` in the records), failing after
        :data:`MAX_CONSECUTIVE_SKIPS` in a row.
    :param strategy: ``"single"`` (this process) or ``"ddp"``: every process of a ``torchrun``
        job trains its shard of each global mini-batch and DistributedDataParallel averages the
        gradients (:func:`bjepa.inference.distributed.fit_ddp`; ``batch_size`` is the global
        batch; without ``torchrun`` it trains in this one process). See ``docs/scaling.md``.
    :param replicas: with a list of models, at most this many are batched at once (default:
        as many as fit in about 1 GiB); ``seed`` may then be one seed per model.
    :param replica_batches: with a list of models and ``batch_size``: ``"own"`` mini-batches
        per model (each matches its run alone) or ``"shared"`` (one draw per step, faster).
    :returns: the :class:`TrainingHistory` (for a resumed run, including the earlier records).
    :raises ValueError, TypeError: for bad arguments, naming them.
    :raises CheckpointError: when a checkpoint to resume is unreadable or does not match.
    :raises NonFiniteLossError: on divergence (see ``on_nonfinite``).
    """
    check_choice("strategy", strategy, STRATEGIES)
    if isinstance(model, list | tuple):
        if strategy != "single" or checkpoint_dir is not None or resume:
            raise ValueError("a list of models trains as one batched program in this process, "
                             "without checkpoints: pass strategy='single' and no "
                             "checkpoint_dir/resume, or fit the models one at a time")
        from bjepa.inference.replicas import fit_replicas

        return fit_replicas(model, context, target, seed=seed, replicas=replicas, steps=steps,
                            lr=lr, batch_size=batch_size, device=device, elbo=elbo,
                            num_particles=num_particles, warmup_steps=warmup_steps,
                            progress=progress, log_every=log_every, metrics_path=metrics_path,
                            metrics_tags=metrics_tags, callback=callback,
                            on_nonfinite=on_nonfinite, replica_batches=replica_batches)
    if replicas is not None or replica_batches != "own":
        raise ValueError("replicas= and replica_batches= batch a list of models; pass "
                         "model=[m1, m2, ...] with stacked data, or drop them")
    if strategy == "ddp":
        from bjepa.inference.distributed import fit_ddp

        return fit_ddp(model, context, target, steps=steps, lr=lr, batch_size=batch_size,
                       seed=seed, device=device, elbo=elbo, num_particles=num_particles,
                       warmup_steps=warmup_steps, progress=progress, log_every=log_every,
                       metrics_path=metrics_path, metrics_tags=metrics_tags, callback=callback,
                       checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                       keep_last=keep_last, resume=resume, on_nonfinite=on_nonfinite)
    steps, lr, context, target, batch_size = check_fit_args(
        model, context, target, steps=steps, lr=lr, elbo=elbo, num_particles=num_particles,
        log_every=log_every, on_nonfinite=on_nonfinite, seed=seed, warmup_steps=warmup_steps,
        checkpoint_every=checkpoint_every, keep_last=keep_last, resume=resume,
        checkpoint_dir=checkpoint_dir, metrics_tags=metrics_tags, callback=callback,
        batch_size=batch_size)
    n = context.shape[0]
    need = int(getattr(model, "min_batch_size", 1))
    if (batch_size or n) < need:
        raise ValueError(
            f"{type(model).__name__} needs at least {need} rows per step, got "
            f"{'batch_size=' + str(batch_size) if batch_size else f'{n} rows of context'}")
    dev = _resolve_device(device, model)
    model.to(dev)
    dtype = next(model.parameters()).dtype
    context = context.to(device=dev, dtype=dtype)
    target = None if target is None else target.to(device=dev, dtype=dtype)
    if seed is not None:
        set_seed(seed)

    manager = CheckpointManager(checkpoint_dir, keep_last=keep_last) if checkpoint_dir else None
    try:
        return _fit(model, context, target, manager, steps=steps, lr=lr, batch_size=batch_size,
                    seed=seed, elbo=elbo, num_particles=num_particles,
                    warmup_steps=warmup_steps, progress=progress, log_every=log_every,
                    metrics_path=Path(metrics_path) if metrics_path else None,
                    metrics_tags=dict(metrics_tags or {}), callback=callback,
                    checkpoint_every=checkpoint_every, resume=resume,
                    on_nonfinite=on_nonfinite)
    finally:
        if manager is not None:
            manager.close()


def _fit(model: Any, context: torch.Tensor, target: torch.Tensor | None,
         manager: CheckpointManager | None, *, steps: int, lr: float, batch_size: int | None,
         seed: int | None, elbo: str, num_particles: int, warmup_steps: int | None,
         progress: bool, log_every: int, metrics_path: Path | None,
         metrics_tags: dict[str, Any], callback: Callable | None,
         checkpoint_every: int | None, resume: bool, on_nonfinite: str) -> TrainingHistory:
    # per-observation loss; a replica stack sums R replicas' ELBOs: report their mean
    n = context.shape[-2] * getattr(model, "num_replicas", 1)
    requested, elbo = elbo, resolve_elbo(elbo, model, steps)
    config: dict[str, Any] = {
        "steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed, "elbo": elbo,
        "num_particles": num_particles, "log_every": log_every,
        "checkpoint_every": checkpoint_every, "on_nonfinite": on_nonfinite,
        "rows": context.shape[-2],
        "data_sha256": _fingerprint(context, target) if manager else "",
    }
    payload = None
    latest = manager.latest() if manager else None
    if latest is not None:
        if not resume:
            raise ValueError(
                f"checkpoint_dir {manager.directory} already holds checkpoints (newest "
                f"{latest.name}); pass resume=True to continue that run or choose an empty "
                "folder")
        payload = load_checkpoint(latest)
        if not isinstance(payload.get("training"), dict):
            raise CheckpointError(f"{latest} is a model checkpoint without training state")
        restore_model_state(payload, model, latest)
        if int(payload["training"].get("step", 0)) > steps:
            raise ValueError(f"steps={steps} is below the step the checkpoint {latest} "
                             f"reached ({payload['training']['step']}); pass steps >= it")
        _check_resume_config(payload["training"]["config"], config, warmup_steps, latest)
        warmup_steps = payload["training"]["config"]["warmup_steps"]
    else:
        warmup_steps = data_start(model, context, target, steps, warmup_steps)
    config["warmup_steps"] = warmup_steps

    loss_fn = make_elbo(elbo, num_particles, getattr(model, "max_plate_nesting", 1),
                        strict=requested != "auto")
    svi = FusedSVI(model.model, model.guide, model.parameters(), loss_fn, lr=lr)
    history = TrainingHistory(elbo=elbo)
    start_step, elapsed = 0, 0.0
    if payload is not None:
        training = payload["training"]
        try:
            svi.optim.load_state_dict(training["optimizer"])
            for group in svi.optim.param_groups:
                group["lr"] = lr
            history = TrainingHistory.from_state(training["history"])
            start_step = int(training["step"])
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as err:
            raise CheckpointError(f"{latest} has an optimiser or history that does not fit "
                                  f"this model ({err})") from err
        history.stopped_early = False
        elapsed = history.seconds
        history.resumed_from = start_step
        history.last_checkpoint = latest
        restore_rng_state(training["rng"])
        logger.info("resuming %s from %s (step %d of %d)", type(model).__name__, latest,
                    start_step, steps)
        if metrics_path is not None:
            _rewind_metrics(metrics_path, metrics_tags, start_step)

    saved_at = [start_step if payload is not None else -1]

    def save(step: int) -> None:
        if manager is None or saved_at[0] == step:
            return
        if sink is not None:
            sink.flush()
        if not _finite_params(model):
            raise NonFiniteLossError(
                f"parameters became non-finite by step {step}; not checkpointing them. Last "
                f"good checkpoint: {history.last_checkpoint or 'none'}")
        history.seconds = elapsed + time.perf_counter() - t0
        state = TrainingState(step=step, optimizer=svi.optim.state_dict(),
                              rng=capture_rng_state(), config=config, history=history.state())
        history.last_checkpoint = manager.save(model, state, meta={"finished": step >= steps})
        saved_at[0] = step

    sink = open(metrics_path, "a", encoding="utf-8") if metrics_path else None  # noqa: SIM115
    bar = progress_bar(steps, progress, type(model).__name__, leave=False, initial=start_step)
    t0 = time.perf_counter()
    was_training = model.training
    model.train()
    completed, in_step = start_step, False
    consecutive = 0
    try:
        with _deferred_sigint(manager is not None) as interrupted:
            if payload is None:
                save(0)
            for step in range(start_step, steps):
                if interrupted():
                    raise KeyboardInterrupt
                in_step = True
                model.freeze_encoder = step < warmup_steps
                try:
                    loss = svi.step(context, target, batch_size=batch_size)
                except NonFiniteLossError as err:
                    if on_nonfinite == "raise":
                        last = history.last_checkpoint or "none (pass checkpoint_dir= to keep one)"
                        raise NonFiniteLossError(
                            f"{err} at step {step}; last good checkpoint: {last}; lower lr, "
                            "check the data, or pass on_nonfinite='skip'") from None
                    history.skipped_steps += 1
                    consecutive += 1
                    if consecutive >= MAX_CONSECUTIVE_SKIPS:
                        raise NonFiniteLossError(
                            f"{consecutive} non-finite steps in a row up to step {step} ({err}); "
                            f"last good checkpoint: {history.last_checkpoint or 'none'}") from None
                    loss, extra = math.nan, {}
                else:
                    consecutive = 0
                    extra = model.after_step(step, steps)
                completed, in_step = step + 1, False
                stop = False
                if step % log_every == 0 or step == steps - 1:
                    record = {"step": step, "loss": loss / n, **extra,
                              "seconds": elapsed + time.perf_counter() - t0}
                    if on_nonfinite == "skip":
                        record["skipped"] = history.skipped_steps
                    history.records.append(record)
                    if sink is not None:
                        sink.write(json.dumps({**metrics_tags, **_jsonable(record)}) + "\n")
                    if bar is not None and (step % 50 == 0 or step == steps - 1):
                        bar.set_postfix(loss=f"{loss / n:.4f}")
                    if callback is not None and callback(step, record):
                        history.stopped_early = stop = True
                if bar is not None:
                    bar.update(1)
                if stop:
                    break
                if checkpoint_every and completed % checkpoint_every == 0 and completed < steps:
                    save(completed)
            if not _finite_params(model):
                raise NonFiniteLossError(
                    f"parameters became non-finite during training (by step {completed}); "
                    f"last good checkpoint: {history.last_checkpoint or 'none'}; lower lr")
            save(completed)
            if interrupted():  # Ctrl-C during the last step: still stop the caller
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        if manager is not None and not in_step:
            try:
                save(completed)
                logger.warning("interrupted at step %d; checkpoint %s", completed,
                               history.last_checkpoint)
            except NonFiniteLossError:
                pass
        raise
    finally:
        model.freeze_encoder = False
        model.train(was_training)
        if bar is not None:
            bar.close()
        if sink is not None:
            sink.close()
    history.seconds = elapsed + time.perf_counter() - t0
    logger.info("trained %s for %d steps in %.1fs (%s)", type(model).__name__,
                completed - start_step, history.seconds, elbo)
    return history


def _check_resume_config(saved: dict[str, Any], now: dict[str, Any], warmup_steps: int | None,
                         path: Path) -> None:
    """Refuse to resume when an argument that changes the trajectory differs."""
    names = {"rows": "the data's row count", "data_sha256": "the training data",
             "lr": "lr", "batch_size": "batch_size", "elbo": "elbo",
             "num_particles": "num_particles"}
    def same(key: str) -> bool:  # compiled and eager forms of one ELBO give the same numbers
        if key == "elbo":
            return str(saved.get(key)).removeprefix("jit-") == str(now[key]).removeprefix("jit-")
        return saved.get(key) == now[key]

    diff = [f"{label} ({saved.get(key)!r} in the checkpoint, {now[key]!r} now)"
            for key, label in names.items() if not same(key)]
    if warmup_steps is not None and saved.get("warmup_steps") != warmup_steps:
        diff.append(f"warmup_steps ({saved.get('warmup_steps')!r} in the checkpoint, "
                    f"{warmup_steps!r} now)")
    if diff:
        raise CheckpointError(
            f"cannot resume from {path}: it was trained with different settings: "
            f"{'; '.join(diff)}. Pass the same arguments or use a fresh checkpoint_dir")


