"""The one training loop: :class:`Trainer` runs any model that follows the training protocol
(:class:`bjepa.models.base.WorldModel`) under a :class:`Strategy`.

The loop owns what every way of training shares — the step counter, the encoder warm-up, the
EMA hook, resume, periodic and final checkpoints, the non-finite policy, Ctrl-C deferral,
records (with the ELBO's parts and a validation loss) and callbacks. A strategy supplies only
what differs between one process (:class:`SingleProcess`, also used for replica stacks) and
DistributedDataParallel (:class:`bjepa.inference.distributed.DDPStrategy`): device and set-up,
how one step computes the loss and gradients, how processes agree and share values, which
process writes, the RNG state a checkpoint holds, and the check before a save.

Most users call :func:`bjepa.inference.fit`, which builds the trainer.
"""

from __future__ import annotations

import hashlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.elbo import ELBO

from bjepa.inference.callbacks import Callback
from bjepa.inference.checkpoint import (
    CheckpointError,
    CheckpointManager,
    TrainingState,
    capture_rng_state,
    load_checkpoint,
    restore_model_state,
    restore_rng_state,
)
from bjepa.inference.svi import FusedSVI, NonFiniteLossError, is_nonfinite_validation_error
from bjepa.models.base import per_row_loss

__all__ = [
    "MAX_CONSECUTIVE_SKIPS",
    "Batches",
    "FitSettings",
    "SingleProcess",
    "Strategy",
    "Trainer",
    "TrainingHistory",
    "check_resume_config",
    "data_fingerprint",
    "deferred_sigint",
    "params_finite",
]

logger = logging.getLogger(__name__)

#: with ``on_nonfinite="skip"``, this many non-finite steps in a row stop training anyway
MAX_CONSECUTIVE_SKIPS = 50


@dataclass
class TrainingHistory:
    """What :func:`~bjepa.inference.fit` returns: one record per logged step, plus run facts."""

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


@dataclass
class FitSettings:
    """The loop's options (validated by :func:`~bjepa.inference.fit`)."""

    steps: int = 1000
    lr: float = 1e-3
    batch_size: int | None = None
    seed: int | None = 0
    elbo: str = "meanfield"
    num_particles: int = 1
    warmup_steps: int | None = None
    log_every: int = 1
    #: steps between evaluations of the ELBO's parts and the validation loss (and the last)
    eval_every: int = 1
    checkpoint_every: int | None = None
    keep_last: int = 3
    resume: bool = False
    on_nonfinite: str = "raise"

    def resume_keys(self) -> dict[str, Any]:
        return asdict(self)


# -- data fed to each step ---------------------------------------------------------------------
class Batches:
    """What each step evaluates: in-memory ``(context, target)`` subsampled by the model's
    ``pyro.plate`` (the model's :meth:`~bjepa.models.base.WorldModel.step_inputs`), or batches
    streamed from a ``DataLoader`` with the ELBO scaled by rows / batch."""

    def __init__(self, model: Any, context: Any, target: torch.Tensor | None,
                 batch_size: int | None, device: torch.device, dtype: torch.dtype,
                 model_kwargs: dict[str, Any], seed: int | None = 0) -> None:
        self.model, self.batch_size, self.device, self.dtype = model, batch_size, device, dtype
        self.model_kwargs = model_kwargs
        self.loader = None if isinstance(context, torch.Tensor) else context
        if self.loader is None:
            self.context, self.target = context, target
            self.rows = context.shape[-2]
        else:
            self.context = self.target = None
            self.rows = len(self.loader.dataset)
            self._it: Iterator[Any] | None = None
            # the loader (its shuffling, its workers' seeds) draws from a stream of its own, so
            # it never shifts the guide's noise and a seeded run repeats exactly
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0 if seed is None else seed + 0x5EED)
                self._loader_rng = torch.get_rng_state()

    def _next_loaded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        for _ in range(2):
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(self._loader_rng)
                if self._it is None:
                    self._it = iter(self.loader)
                try:
                    batch = next(self._it)
                except StopIteration:
                    batch = None
                    self._it = None
                self._loader_rng = torch.get_rng_state()
            if batch is None:
                continue
            ctx, tgt = (batch if isinstance(batch, list | tuple) else (batch, None))[:2]
            pin = self.device.type == "cuda"
            ctx = ctx.to(device=self.device, dtype=self.dtype, non_blocking=pin)
            tgt = None if tgt is None else tgt.to(device=self.device, dtype=self.dtype,
                                                  non_blocking=pin)
            return ctx, tgt
        raise ValueError("the data loader yielded no batch; it must yield (context, target)")

    def next(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` for the model and guide of the next step."""
        if self.loader is None:
            return self.model.step_inputs(self.context, self.target, self.batch_size,
                                          **self.model_kwargs)
        ctx, tgt = self._next_loaded()
        return (ctx, tgt), {"_scale": self.rows / ctx.shape[-2]}

    def full(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The whole in-memory data (for the data start)."""
        return (self.context, self.target), dict(self.model_kwargs)


def scaled(fn: Callable) -> Callable:
    """``fn`` taking an extra ``_scale`` keyword: the ELBO of a streamed batch of ``B`` of ``N``
    rows, scaled by ``N / B`` as ``pyro.plate(subsample_size=B)`` scales it in memory."""

    def run(*args: Any, _scale: float = 1.0, **kwargs: Any) -> Any:
        with poutine.scale(scale=_scale):
            return fn(*args, **kwargs)

    return run


# -- strategies ---------------------------------------------------------------------------------
class Strategy:
    """How the loop runs on this machine: the single-process default. Subclasses override what
    differs (see :class:`bjepa.inference.distributed.DDPStrategy`)."""

    name = "single"
    rank, world_size = 0, 1

    @property
    def is_writer(self) -> bool:
        """Whether this process writes files and runs callbacks."""
        return self.rank == 0

    def agree(self, error: BaseException | None) -> None:
        """Fail every process together when one failed; here: re-raise ``error``."""
        if error is not None:
            raise error

    def broadcast(self, value: Any) -> Any:
        """The writer's ``value`` on every process."""
        return value

    def any_flag(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any process."""
        return flag

    def prepare(self, model: Any, rows: int, batch_size: int | None, device: torch.device
                ) -> torch.device:
        """Set-up before the data moves; returns this process's device."""
        return device

    def after_restore(self, model: Any, device: torch.device) -> None:
        """After the model state was restored or initialised (processes share rank 0's)."""

    def build(self, model: Any, programs: tuple[Callable, Callable], loss_fn: ELBO, lr: float
              ) -> None:
        """Create the optimiser (and anything else a step needs)."""
        from bjepa.inference.inductor import InductorELBO, InductorSVI

        if isinstance(loss_fn, InductorELBO):
            self.svi: FusedSVI = InductorSVI(programs[0], programs[1], model.parameters(),
                                             loss_fn, lr=lr)
        else:
            self.svi = FusedSVI(programs[0], programs[1], model.parameters(), loss_fn, lr=lr)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.svi.optim

    def begin(self, trainer: Trainer) -> None:
        """Once before the first step (e.g. find parameters without gradients)."""

    def step(self, step: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
        """One optimiser step; returns the summed loss or raises :class:`NonFiniteLossError`
        leaving the parameters unchanged."""
        return self.svi.step(*args, **kwargs)

    def capture_rng(self) -> dict[str, Any]:
        return capture_rng_state()

    def restore_rng(self, state: dict[str, Any]) -> None:
        restore_rng_state(state)

    def before_save(self, model: Any, step: int) -> None:
        """Checks run on every process before a checkpoint is written."""

    def end(self) -> None:
        """Release what :meth:`build` made."""


class SingleProcess(Strategy):
    """This process trains the model (also a replica stack) on its device."""


# -- small shared helpers -----------------------------------------------------------------------
def data_fingerprint(*tensors: torch.Tensor | None) -> str:
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


def params_finite(model: torch.nn.Module) -> bool:
    """Whether every floating parameter of ``model`` and of its EMA target is finite."""
    tensors = list(model.parameters())
    target = getattr(model, "target_encoder", None)
    if isinstance(target, torch.nn.Module):
        tensors += list(target.parameters())
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


@contextmanager
def deferred_sigint(enabled: bool) -> Iterator[Callable[[], bool]]:
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


def check_resume_config(saved: dict[str, Any], now: dict[str, Any], warmup_steps: int | None,
                        path: Path) -> None:
    """Refuse to resume when an argument that changes the trajectory differs."""
    names = {"rows": "the data's row count", "data_sha256": "the training data",
             "lr": "lr", "batch_size": "batch_size", "elbo": "elbo",
             "num_particles": "num_particles"}

    def same(key: str) -> bool:  # compiled and eager forms of one ELBO give the same numbers
        if key == "elbo":
            def plain(name: Any) -> str:
                return {"inductor": "meanfield"}.get(str(name), str(name).removeprefix("jit-"))

            return plain(saved.get(key)) == plain(now[key])
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


# -- the loop -----------------------------------------------------------------------------------
class Trainer:
    """Train ``model`` on ``batches`` under ``strategy`` with ``settings``.

    :param model: a model following the training protocol (``model``/``guide``,
        ``check_inputs``, ``prepare``, ``after_step``, ``training_hints``, ``freeze_encoder``).
    :param batches: the data each step evaluates (:class:`Batches`).
    :param settings: the loop's options.
    :param strategy: one process (default) or DDP.
    :param callbacks: run by the writing process (metrics, progress, early stopping, ...).
    :param checkpoint_dir: folder for training checkpoints (the writer keeps them).
    :param loss_fn: the Pyro ELBO of the steps.
    :param val: ``(context, target)`` held-out pairs scored at evaluation steps.
    :param config: extra plain values stored in each checkpoint's configuration.
    """

    def __init__(self, model: Any, batches: Batches, settings: FitSettings, *,
                 strategy: Strategy | None = None, callbacks: list[Callback] | None = None,
                 checkpoint_dir: str | Path | None = None, loss_fn: ELBO,
                 val: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.model, self.batches, self.settings = model, batches, settings
        self.strategy = strategy or SingleProcess()
        self.callbacks = list(callbacks or []) if self.strategy.is_writer else []
        self.stoppers = any(cb.can_stop for cb in (callbacks or []))
        self.checkpoint_dir = checkpoint_dir
        self.loss_fn, self.val = loss_fn, val
        self.config = dict(config or {})
        self.history = TrainingHistory(elbo=settings.elbo)
        self.start_step = 0
        self.step = 0
        #: the model/guide arguments of the step in progress (or the last one)
        self.last_inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.manager: CheckpointManager | None = None
        self._saved_at = -1
        self._elapsed = 0.0
        self._t0 = time.perf_counter()

    # -- checkpoints ----------------------------------------------------------------------------
    def _open_manager(self) -> None:
        error = None
        if self.strategy.is_writer and self.checkpoint_dir is not None:
            try:
                self.manager = CheckpointManager(self.checkpoint_dir,
                                                 keep_last=self.settings.keep_last)
            except Exception as err:  # noqa: BLE001 - shared with every process by agree()
                error = err
        self.strategy.agree(error)

    def _read_latest(self) -> tuple[Path | None, dict[str, Any] | None]:
        """The newest checkpoint (read by the writer, shared with every process)."""
        found, error = None, None
        if self.manager is not None:
            try:
                latest = self.manager.latest()
                if latest is not None and not self.settings.resume:
                    raise ValueError(
                        f"checkpoint_dir {self.manager.directory} already holds checkpoints "
                        f"(newest {latest.name}); pass resume=True to continue that run or "
                        "choose an empty folder")
                found = None if latest is None else (str(latest), load_checkpoint(latest))
            except Exception as err:  # noqa: BLE001 - shared with every process by agree()
                error = err
        self.strategy.agree(error)
        found = self.strategy.broadcast(found)
        return (None, None) if found is None else (Path(found[0]), found[1])

    def save(self, step: int) -> None:
        """Write a checkpoint after ``step`` steps (once per step; every process checks)."""
        if self.checkpoint_dir is None or self._saved_at == step:
            return
        self.strategy.before_save(self.model, step)
        if not params_finite(self.model):
            raise NonFiniteLossError(
                f"parameters became non-finite by step {step}; not checkpointing them. Last "
                f"good checkpoint: {self.history.last_checkpoint or 'none'}")
        self.history.seconds = self._elapsed + time.perf_counter() - self._t0
        if self.manager is not None:
            for cb in self.callbacks:
                cb.before_checkpoint(self)
            state = TrainingState(step=step, optimizer=self.strategy.optimizer.state_dict(),
                                  rng=self.strategy.capture_rng(), config=self.config,
                                  history=self.history.state())
            path = self.manager.save(self.model, state,
                                     meta={"finished": step >= self.settings.steps})
            self.history.last_checkpoint = path
            for cb in self.callbacks:
                cb.on_checkpoint(self, path)
        self._saved_at = step

    # -- set-up ---------------------------------------------------------------------------------
    def _start(self) -> int:
        """Resume or give the model its data start; returns the warm-up length."""
        s = self.settings
        latest, payload = self._read_latest()
        if payload is None:
            warmup = s.warmup_steps
            if self.batches.loader is None:
                (ctx, tgt), _ = self.batches.full()
                started = self.model.prepare(ctx, tgt)
            else:
                started = self.model.prepare(*self.batches._next_loaded())
                self.batches._it = None
            return (s.steps // 10 if started else 0) if warmup is None else warmup
        training = payload.get("training")
        if not isinstance(training, dict):
            raise CheckpointError(f"{latest} is a model checkpoint without training state")
        restore_model_state(payload, self.model, latest)
        self.model.to(self.batches.device)
        if int(training.get("step", 0)) > s.steps:
            raise ValueError(f"steps={s.steps} is below the step the checkpoint {latest} "
                             f"reached ({training['step']}); pass steps >= it")
        check_resume_config(training["config"], self.config, s.warmup_steps, latest)
        self._payload, self._latest = training, latest
        return int(training["config"]["warmup_steps"])

    def _restore_training(self) -> None:
        training, latest = self._payload, self._latest
        try:
            opt = self.strategy.optimizer
            opt.load_state_dict(training["optimizer"])
            for group in opt.param_groups:
                group["lr"] = self.settings.lr
            history = TrainingHistory.from_state(training["history"])
            self.start_step = int(training["step"])
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as err:
            raise CheckpointError(f"{latest} has an optimiser or history that does not fit "
                                  f"this model ({err})") from err
        history.elbo = self.settings.elbo
        history.resumed_from = self.start_step
        history.last_checkpoint = latest
        self.history = history
        self._elapsed = history.seconds
        self._saved_at = self.start_step
        self.strategy.restore_rng(training["rng"])
        if self.strategy.is_writer:
            logger.info("resuming %s from %s (step %d of %d)", type(self.model).__name__,
                        latest, self.start_step, self.settings.steps)

    # -- evaluation -----------------------------------------------------------------------------
    def step_parts(self) -> dict[str, float]:
        """The ELBO's parts (per observation) of the last step's inputs, evaluated now on a fork
        of the RNG — for callbacks that steer training (e.g. an adaptive β); ``{}`` before the
        first step or when the model diverged."""
        if self.last_inputs is None:
            return {}
        return self.evaluate(*self.last_inputs, self.step, validation=False)

    def evaluate(self, args: tuple[Any, ...], kwargs: dict[str, Any], step: int, *,
                 validation: bool = True) -> dict[str, float]:
        """The ELBO's parts on this step's inputs and the validation loss, per observation, on
        forks of the RNG (the training trajectory does not change)."""
        from bjepa.inference.svi import elbo_parts

        out: dict[str, float] = {}
        n = self.batches.rows * self.model.training_hints().replicas
        seed = (self.settings.seed or 0) * 1_000_003 + step
        model_fn, guide_fn = self.programs
        holder = _Programs(model_fn, guide_fn)
        was = self.model.training
        self.model.eval()
        try:
            try:
                out.update({k: v / n for k, v in elbo_parts(holder, *args, seed=seed,
                                                              **kwargs).items()})
            except ValueError as err:  # a diverging model: the step's own policy handles it
                if not is_nonfinite_validation_error(err):
                    raise
            if validation and self.val is not None:
                vc, vt = self.val
                out["val_loss"] = per_row_loss(TraceMeanField_ELBO(), self.model, vc, vt,
                                               seed=self.settings.seed or 0)
        finally:
            self.model.train(was)
        return out

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> TrainingHistory:
        s, model, strategy = self.settings, self.model, self.strategy
        self._open_manager()
        try:
            return self._run(s, model, strategy)
        finally:
            if self.manager is not None:
                self.manager.close()

    def _run(self, s: FitSettings, model: Any, strategy: Strategy) -> TrainingHistory:
        self._payload = None
        warmup = self._start()
        self.config["warmup_steps"] = warmup
        self.programs = (model.model, model.guide) if self.batches.loader is None else \
            (scaled(model.model), scaled(model.guide))
        strategy.build(model, self.programs, self.loss_fn, s.lr)
        if self._payload is not None:
            self._restore_training()
        strategy.after_restore(model, self.batches.device)
        n = self.batches.rows * model.training_hints().replicas
        strategy.begin(self)
        self._t0 = time.perf_counter()
        was_training = model.training
        model.train()
        completed, in_step, consecutive = self.start_step, False, 0
        defer = self.checkpoint_dir is not None
        for cb in self.callbacks:
            cb.on_fit_start(self)
        try:
            with deferred_sigint(defer) as interrupted:
                if self._saved_at < 0:
                    self.save(0)
                for step in range(self.start_step, s.steps):
                    if defer and strategy.any_flag(interrupted()):
                        raise KeyboardInterrupt
                    self.step, in_step = step, True
                    model.freeze_encoder = step < warmup
                    args, kwargs = self.batches.next()
                    self.last_inputs = (args, kwargs)
                    try:
                        loss = strategy.step(step, args, kwargs)
                    except NonFiniteLossError as err:
                        if s.on_nonfinite == "raise":
                            last = self.history.last_checkpoint or \
                                "none (pass checkpoint_dir= to keep one)"
                            raise NonFiniteLossError(
                                f"{err} at step {step}; last good checkpoint: {last}; lower "
                                "lr, check the data, or pass on_nonfinite='skip'") from None
                        self.history.skipped_steps += 1
                        consecutive += 1
                        if consecutive >= MAX_CONSECUTIVE_SKIPS:
                            raise NonFiniteLossError(
                                f"{consecutive} non-finite steps in a row up to step {step} "
                                f"({err}); last good checkpoint: "
                                f"{self.history.last_checkpoint or 'none'}") from None
                        loss, extra = math.nan, {}
                    else:
                        consecutive = 0
                        extra = model.after_step(step, s.steps)
                    completed, in_step = step + 1, False
                    for cb in self.callbacks:
                        cb.on_step_end(self, completed)
                    last_step = step == s.steps - 1
                    stop = False
                    if step % s.log_every == 0 or last_step:
                        record = {"step": step, "loss": loss / n, **extra}
                        if strategy.is_writer and (step % s.eval_every == 0 or last_step):
                            record.update(self.evaluate(args, kwargs, step))
                        record["seconds"] = self._elapsed + time.perf_counter() - self._t0
                        if s.on_nonfinite == "skip":
                            record["skipped"] = self.history.skipped_steps
                        self.history.records.append(record)
                        for cb in self.callbacks:
                            stop = bool(cb.on_record(self, record)) or stop
                        if self.stoppers:
                            stop = bool(strategy.broadcast(stop))
                        self.history.stopped_early = stop
                    if stop:
                        break
                    if s.checkpoint_every and completed % s.checkpoint_every == 0 \
                            and completed < s.steps:
                        self.save(completed)
                if not params_finite(model):
                    raise NonFiniteLossError(
                        f"parameters became non-finite during training (by step {completed}); "
                        f"last good checkpoint: {self.history.last_checkpoint or 'none'}; "
                        "lower lr")
                self.save(completed)
                last = strategy.broadcast(None if self.history.last_checkpoint is None
                                          else str(self.history.last_checkpoint))
                self.history.last_checkpoint = None if last is None else Path(last)
                if defer and strategy.any_flag(interrupted()):  # Ctrl-C in the last step
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            if self.checkpoint_dir is not None and not in_step:
                try:
                    self.save(completed)
                    logger.warning("interrupted at step %d; checkpoint %s", completed,
                                   self.history.last_checkpoint)
                except NonFiniteLossError as err:
                    logger.error("interrupted at step %d; no checkpoint written: %s (last "
                                 "good checkpoint: %s)", completed, err,
                                 self.history.last_checkpoint or "none")
            raise
        finally:
            model.freeze_encoder = False
            model.train(was_training)
            strategy.end()
            for cb in self.callbacks:
                cb.on_fit_end(self)
        self.history.seconds = self._elapsed + time.perf_counter() - self._t0
        if strategy.is_writer:
            logger.info("trained %s for %d steps in %.1fs (%s, %s)", type(model).__name__,
                        completed - self.start_step, self.history.seconds, s.elbo,
                        strategy.name)
        return self.history


@dataclass
class _Programs:
    """A model/guide pair as an object (what :func:`~bjepa.inference.svi.elbo_parts` takes)."""

    model: Callable
    guide: Callable
