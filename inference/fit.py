"""``fit``: train any bjepa model with SVI — the public façade of the one training loop.

``fit`` validates its arguments, resolves the device once (before anything is written),
chooses the strategy (this process, a replica-batched program for a list of models, or
DistributedDataParallel under ``torchrun``), builds the callbacks (progress bar, JSON-lines
metrics, TensorBoard, early stopping, user functions) and runs the
:class:`~bjepa.inference.engine.Trainer`. Every loss comes out of one of Pyro's ELBO classes
(:mod:`bjepa.inference.svi`); the model's training hooks (``prepare``, ``after_step``) are the
ones a plain Pyro loop calls through :func:`~bjepa.inference.svi.with_hooks`.

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

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bjepa._validation import (
    check_choice,
    check_nonnegative_int,
    check_positive,
    check_positive_int,
    resolve_device,
)
from bjepa.inference.callbacks import (
    Callback,
    LambdaCallback,
    MetricsLogger,
    ProgressBar,
    TensorBoardLogger,
)
from bjepa.inference.engine import (
    MAX_CONSECUTIVE_SKIPS,
    Batches,
    FitSettings,
    SingleProcess,
    Strategy,
    Trainer,
    TrainingHistory,
    data_fingerprint,
)
from bjepa.inference.svi import (
    ELBO_CHOICES,
    ELBOS,
    JIT_MIN_STEPS,
    FusedSVI,
    NonFiniteLossError,
    make_elbo,
    resolve_elbo,
    set_seed,
)
from bjepa.models.base import per_row_loss

__all__ = [
    "ELBOS",
    "JIT_MIN_STEPS",
    "MAX_CONSECUTIVE_SKIPS",
    "FusedSVI",
    "NonFiniteLossError",
    "TrainingHistory",
    "check_fit_args",
    "fit",
    "make_elbo",
    "per_row_loss",
    "resolve_elbo",
    "set_seed",
]

ON_NONFINITE = ("raise", "skip")
#: ``fit(strategy=...)``: this process, or DistributedDataParallel across a torchrun job
STRATEGIES = ("single", "ddp")


def _is_loader(data: Any) -> bool:
    return not isinstance(data, torch.Tensor) and hasattr(data, "__iter__") \
        and hasattr(data, "dataset")


def check_fit_args(model: Any, context: Any, target: torch.Tensor | None, *,
                   steps: int, lr: float, elbo: str, num_particles: int, log_every: int,
                   on_nonfinite: str, seed: int | None, warmup_steps: int | None,
                   checkpoint_every: int | None, keep_last: int, resume: bool,
                   checkpoint_dir: Any, metrics_tags: Any, callback: Any,
                   batch_size: int | None, metrics_path: Any = None
                   ) -> tuple[int, float, Any, torch.Tensor | None, int | None]:
    """Validate :func:`fit`'s arguments, naming the bad one.

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
    for name, path in (("checkpoint_dir", checkpoint_dir), ("metrics_path", metrics_path)):
        if path is not None and not isinstance(path, str | Path):
            raise TypeError(f"{name} must be a path (str or pathlib.Path), got "
                            f"{type(path).__name__}")
    if checkpoint_dir is not None and Path(checkpoint_dir).exists() \
            and not Path(checkpoint_dir).is_dir():
        raise ValueError(f"checkpoint_dir {str(checkpoint_dir)!r} is a file; pass a folder "
                         "(it is created if missing)")
    if metrics_path is not None and Path(metrics_path).is_dir():
        raise ValueError(f"metrics_path {str(metrics_path)!r} is a folder; pass a file path "
                         "such as RUN_DIR/metrics.jsonl")
    if metrics_tags is not None and not isinstance(metrics_tags, dict):
        raise TypeError(f"metrics_tags must be a dict, got {type(metrics_tags).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "training_hints"):
        raise TypeError(f"model must be a bjepa world model, got {type(model).__name__}")
    if _is_loader(context):
        if target is not None or batch_size is not None:
            raise ValueError("with a DataLoader as context, pass neither target nor batch_size "
                             "(the loader yields (context, target) batches of its own size)")
        if len(context.dataset) < 1:
            raise ValueError("the DataLoader's dataset is empty")
        return steps, lr, context, None, None
    context, target = model.check_inputs(context, target)
    n = context.shape[-2]
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
        batch_size = None if batch_size >= n else batch_size
    return steps, lr, context, target, batch_size


def fit(
    model: Any,
    context: Any,
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
    eval_every: int | None = None,
    metrics_path: str | Path | None = None,
    metrics_tags: dict[str, Any] | None = None,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
    callbacks: Sequence[Callback] = (),
    val: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    tensorboard_dir: str | Path | None = None,
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
        ``(R, N, obs_dim)`` or a list of ``R`` such tensors), or a ``torch.utils.data.DataLoader``
        (any re-iterable with a ``dataset`` of known length) yielding ``(context, target)``
        batches: the loop cycles it and scales each batch's ELBO by rows / batch, as in-memory
        mini-batches are scaled (``target`` and ``batch_size`` are then not given).
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
    :param eval_every: steps between evaluations of the ELBO's parts (``nll_<site>``,
        ``kl_<site>`` in the record, per observation, on that step's mini-batch) and of the
        validation loss; default: about ``steps // 20`` (20 evaluations a run, each costing
        about a third of a step), rounded up to a multiple of ``log_every``.
        The last step is always evaluated. Evaluations run on a fork of the RNG.
    :param metrics_path: if given, append one JSON line per record to this file.
    :param metrics_tags: extra keys (e.g. model, seed) written into every streamed record.
    :param callback: ``callback(step, record)``; returning ``True`` stops training.
    :param callbacks: :class:`~bjepa.inference.callbacks.Callback` objects (e.g.
        :class:`~bjepa.inference.callbacks.EarlyStopping`, your own).
    :param val: held-out ``(context, target)`` pairs; their negative ELBO per row
        (``val_loss``, analytic KL, a fixed seed) is in every evaluated record.
    :param model_kwargs: extra keyword arguments of the model's ``model``/``guide`` every step,
        e.g. ``{"eta": tensor}`` (per-row tensors are passed whole; the model subsamples them
        with its plate's indices).
    :param tensorboard_dir: also write each record as TensorBoard scalars there (needs the
        ``tensorboard`` extra).
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
        if strategy != "single" or checkpoint_dir is not None or resume or val is not None \
                or model_kwargs or callbacks or tensorboard_dir is not None:
            raise ValueError("a list of models trains as one batched program in this process, "
                             "without checkpoints, validation data, model_kwargs or callback "
                             "objects: pass strategy='single' and none of checkpoint_dir, "
                             "resume, val, model_kwargs, callbacks, tensorboard_dir — or fit "
                             "the models one at a time")
        from bjepa.inference.replicas import fit_replicas

        return fit_replicas(model, context, target, seed=seed, replicas=replicas, steps=steps,
                            lr=lr, batch_size=batch_size, device=device, elbo=elbo,
                            num_particles=num_particles, warmup_steps=warmup_steps,
                            progress=progress, log_every=log_every, eval_every=eval_every,
                            metrics_path=metrics_path, metrics_tags=metrics_tags,
                            callback=callback, on_nonfinite=on_nonfinite,
                            replica_batches=replica_batches)
    if replicas is not None or replica_batches != "own":
        raise ValueError("replicas= and replica_batches= batch a list of models; pass "
                         "model=[m1, m2, ...] with stacked data, or drop them")
    steps, lr, context, target, batch_size = check_fit_args(
        model, context, target, steps=steps, lr=lr, elbo=elbo, num_particles=num_particles,
        log_every=log_every, on_nonfinite=on_nonfinite, seed=seed, warmup_steps=warmup_steps,
        checkpoint_every=checkpoint_every, keep_last=keep_last, resume=resume,
        checkpoint_dir=checkpoint_dir, metrics_tags=metrics_tags, callback=callback,
        batch_size=batch_size, metrics_path=metrics_path)
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
    dev = resolve_device(device, model)
    if strategy == "ddp":
        if _is_loader(context):
            raise ValueError("streaming from a DataLoader is not supported with "
                             "strategy='ddp' yet; pass tensors (each process holds the data)")
        from bjepa.inference.distributed import DDPStrategy

        runner: Strategy = DDPStrategy(seed=0 if seed is None else seed)
        elbo = runner.resolve_elbo(elbo)
    else:
        runner = SingleProcess()
    loader = _is_loader(context)
    rows = len(context.dataset) if loader else context.shape[-2]
    hints = model.training_hints()
    need = hints.min_batch_size
    if not loader and (batch_size or rows) < need:
        raise ValueError(
            f"{type(model).__name__} needs at least {need} rows per step, got "
            f"{'batch_size=' + str(batch_size) if batch_size else f'{rows} rows of context'}")
    dev = runner.prepare(model, rows, batch_size, dev)
    model.to(dev)
    dtype = next(model.parameters()).dtype
    if not loader:
        context = context.to(device=dev, dtype=dtype)
        target = None if target is None else target.to(device=dev, dtype=dtype)
    if val is not None:
        if not isinstance(val, tuple | list) or len(val) != 2:
            raise TypeError("val must be a (context, target) pair of tensors")
        vc, vt = model.check_inputs(*val)
        val = (vc.to(device=dev, dtype=dtype), None if vt is None else vt.to(dev, dtype))
    kwargs = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v)
              for k, v in (model_kwargs or {}).items()}
    if seed is not None:
        set_seed(seed)
    requested, elbo = elbo, resolve_elbo(elbo, model, steps,
                                         rows_per_step=None if loader else (batch_size or rows))
    if loader and elbo.startswith("jit-") and requested == "auto":
        elbo = elbo.removeprefix("jit-")  # streamed batches may change size: stay eager
    steering = [type(cb).__name__ for cb in callbacks if cb.needs_eager_elbo]
    if steering and (elbo.startswith("jit-") or elbo == "inductor"):
        if requested != "auto":
            raise ValueError(f"elbo={requested!r}: {', '.join(steering)} change(s) the model "
                             "during training, which a compiled ELBO would not see; use "
                             "elbo='auto' or 'meanfield'")
        elbo = "meanfield" if elbo == "inductor" else elbo.removeprefix("jit-")
    if loader and elbo == "inductor":
        raise ValueError("elbo='inductor' compiles one graph per batch shape; stream with "
                         "elbo='auto' or 'meanfield'")
    if eval_every is None:
        eval_every = -(-max(steps // 20, 1) // log_every) * log_every  # a multiple of it
    settings = FitSettings(steps=steps, lr=lr, batch_size=batch_size, seed=seed, elbo=elbo,
                           num_particles=num_particles, warmup_steps=warmup_steps,
                           log_every=log_every, eval_every=check_positive_int(
                               "eval_every", eval_every),
                           checkpoint_every=checkpoint_every, keep_last=keep_last,
                           resume=resume, on_nonfinite=on_nonfinite)
    config: dict[str, Any] = {
        "steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed, "elbo": elbo,
        "num_particles": num_particles, "log_every": log_every,
        "checkpoint_every": checkpoint_every, "on_nonfinite": on_nonfinite, "rows": rows,
        "data_sha256": "" if checkpoint_dir is None else
        (f"stream:{rows}" if loader else data_fingerprint(context, target)),
        **({"strategy": "ddp", "world_size": runner.world_size} if strategy == "ddp" else {}),
    }
    hooks: list[Callback] = []
    if progress:
        hooks.append(ProgressBar(type(model).__name__))
    if metrics_path is not None:
        hooks.append(MetricsLogger(metrics_path, metrics_tags))
    if tensorboard_dir is not None:
        hooks.append(TensorBoardLogger(tensorboard_dir))
    if callback is not None:
        hooks.append(LambdaCallback(callback))
    hooks += list(callbacks)
    loss_fn = make_elbo(elbo, num_particles, hints.max_plate_nesting,
                        strict=requested != "auto")
    trainer = Trainer(model, Batches(model, context, target, batch_size, dev, dtype, kwargs,
                                     seed=seed),
                      settings, strategy=runner, callbacks=hooks, checkpoint_dir=checkpoint_dir,
                      loss_fn=loss_fn, val=val, config=config)
    return trainer.run()
