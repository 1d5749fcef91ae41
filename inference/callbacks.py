"""Callbacks of the training loop: metrics (JSON lines, TensorBoard), the progress bar, early
stopping, and user functions.

A callback sees the :class:`~bjepa.inference.engine.Trainer` (its ``model``, ``history``,
``settings``, ``step``) at four moments: the start, every record (a logged step; returning
``True`` from :meth:`Callback.on_record` stops training), every checkpoint, and the end. Only
the process that writes files (rank 0 under DDP) runs callbacks; a stop decision is sent to the
other processes by the loop.

Example::

    from bjepa.inference import EarlyStopping, TensorBoardLogger, fit

    fit(m, x_c, x_t, steps=5000, val=(v_c, v_t), log_every=50,
        callbacks=[EarlyStopping(patience=5), TensorBoardLogger("runs/tb")])
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bjepa._util import progress_bar
from bjepa._validation import check_choice, check_nonnegative, check_positive_int

if TYPE_CHECKING:
    from bjepa.inference.engine import Trainer

__all__ = [
    "Callback",
    "EarlyStopping",
    "LambdaCallback",
    "MetricsLogger",
    "ProgressBar",
    "TensorBoardLogger",
    "jsonable",
]


def jsonable(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with non-finite floats as ``None`` (JSON has no NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()}


class Callback:
    """Base class: override the moments you need."""

    #: whether :meth:`on_record` may stop training (the loop then shares its decision with
    #: every process)
    can_stop: bool = False
    #: whether it changes the model's Python-side settings during training (e.g. β): a compiled
    #: ELBO would keep the values it was traced with, so ``elbo="auto"`` then stays eager and
    #: an explicit ``"jit-…"`` ELBO is refused
    needs_eager_elbo: bool = False

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step (after a resume restored the state)."""

    def on_record(self, trainer: Trainer, record: dict[str, float]) -> bool | None:
        """After a logged step; ``record`` holds ``step``, ``loss`` (per observation), the
        ELBO's parts (``nll_*``, ``kl_*``) and ``val_loss`` on evaluation steps, the model's
        values (``tau``), ``seconds``. Return ``True`` to stop."""
        return None

    def on_step_end(self, trainer: Trainer, completed: int) -> None:
        """After every optimiser step (``completed`` steps are done); keep it cheap."""

    def before_checkpoint(self, trainer: Trainer) -> None:
        """Just before a checkpoint is written (flush what the checkpoint's records cover)."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """After a checkpoint was written to ``path``."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last step, also when training stops with an error."""


class LambdaCallback(Callback):
    """``fn(step, record)`` after every record; returning ``True`` stops training (what
    ``fit(callback=...)`` takes)."""

    can_stop = True

    def __init__(self, fn: Callable[[int, dict[str, float]], bool | None]) -> None:
        if not callable(fn):
            raise TypeError(f"callback must be callable, got {type(fn).__name__}")
        self.fn = fn

    def on_record(self, trainer: Trainer, record: dict[str, float]) -> bool | None:
        return bool(self.fn(int(record["step"]), record))


class MetricsLogger(Callback):
    """Append one JSON line per record to ``path``, with ``tags`` (e.g. model, seed) in every
    line. On resume the lines of steps that will be re-run are dropped first."""

    def __init__(self, path: str | Path, tags: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"metrics_path {str(path)!r} is a folder; pass a file path such "
                             "as RUN_DIR/metrics.jsonl")
        self.tags = dict(tags or {})
        self._sink: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.start_step > 0:
            rewind_metrics(self.path, self.tags, trainer.start_step)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sink = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed at the end

    def on_record(self, trainer: Trainer, record: dict[str, float]) -> None:
        self._sink.write(json.dumps({**self.tags, **jsonable(record)}) + "\n")

    def before_checkpoint(self, trainer: Trainer) -> None:
        if self._sink is not None:
            self._sink.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None


class TensorBoardLogger(Callback):
    """Write every numeric value of each record (loss, ELBO parts, validation loss, τ) as a
    TensorBoard scalar under ``prefix/`` in ``log_dir``. Needs the optional ``tensorboard``
    package (``pip install 'bjepa[tensorboard]'``)."""

    def __init__(self, log_dir: str | Path, prefix: str = "train") -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("TensorBoardLogger needs the tensorboard package: pip install "
                              "'bjepa[tensorboard]' (or pip install tensorboard)") from err
        self.log_dir = Path(log_dir)
        self.prefix = prefix
        self._writer: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=trainer.start_step
                                     if trainer.start_step > 0 else None)

    def on_record(self, trainer: Trainer, record: dict[str, float]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                self._writer.add_scalar(f"{self.prefix}/{key}", float(value), step)

    def before_checkpoint(self, trainer: Trainer) -> None:
        if self._writer is not None:
            self._writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ProgressBar(Callback):
    """A tqdm bar over the steps, showing the loss."""

    def __init__(self, desc: str | None = None) -> None:
        self.desc = desc
        self._bar: Any = None
        self._at = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        self._bar = progress_bar(trainer.settings.steps, True,
                                 self.desc or type(trainer.model).__name__, leave=False,
                                 initial=trainer.start_step)
        self._at = trainer.start_step

    def on_step_end(self, trainer: Trainer, completed: int) -> None:
        self._bar.update(completed - self._at)
        self._at = completed

    def on_record(self, trainer: Trainer, record: dict[str, float]) -> None:
        self._bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class EarlyStopping(Callback):
    """Stop when ``monitor`` (default ``"val_loss"``, present when ``fit(val=...)`` is given)
    has not improved by more than ``min_delta`` for ``patience`` evaluations in a row."""

    can_stop = True

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "min") -> None:
        self.monitor = monitor
        self.patience = check_positive_int("patience", patience)
        self.min_delta = check_nonnegative("min_delta", min_delta)
        self.mode = check_choice("mode", mode, ["min", "max"])
        self.best = math.inf
        self.bad = 0
        self.stopped_at: int | None = None

    def on_record(self, trainer: Trainer, record: dict[str, float]) -> bool:
        value = record.get(self.monitor)
        if value is None or not math.isfinite(value):
            return False
        value = value if self.mode == "min" else -value
        if value < self.best - self.min_delta:
            self.best, self.bad = value, 0
            return False
        self.bad += 1
        if self.bad >= self.patience:
            self.stopped_at = int(record["step"])
            return True
        return False


def rewind_metrics(path: Path, tags: dict[str, Any], from_step: int) -> None:
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
