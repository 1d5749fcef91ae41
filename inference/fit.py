"""SVI training loop shared by every model in :mod:`bjepa.models`.

``fit`` runs :class:`pyro.infer.SVI` on a model's ``model``/``guide`` pair with Adam, then calls
the model's ``after_step`` hook (the EMA target update) after every optimiser step. Models with
a deterministic objective (the JEPA baseline) express it as a ``pyro.factor`` with an empty
guide, so every model trains through the same loop.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import SVI, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam

from bjepa._validation import check_choice, check_positive, check_positive_int

__all__ = ["ELBOS", "NonFiniteLossError", "TrainingHistory", "fit", "set_seed"]

logger = logging.getLogger(__name__)

ELBOS: dict[str, type] = {
    "meanfield": TraceMeanField_ELBO,
    "trace": Trace_ELBO,
    "jit-meanfield": JitTraceMeanField_ELBO,
    "jit-trace": JitTrace_ELBO,
}


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy, torch and Pyro from one integer."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    pyro.set_rng_seed(seed)


@dataclass
class TrainingHistory:
    """What :func:`fit` returns: one record per logged step, plus run facts."""

    records: list[dict[str, float]] = field(default_factory=list)
    elbo: str = "meanfield"
    seconds: float = 0.0
    stopped_early: bool = False

    @property
    def loss(self) -> list[float]:
        """Per-observation negative ELBO at each logged step."""
        return [r["loss"] for r in self.records]

    @property
    def final_loss(self) -> float:
        return self.records[-1]["loss"] if self.records else math.nan


def _resolve_device(device: str | torch.device | None, model: torch.nn.Module) -> torch.device:
    if device is None:
        return next(model.parameters()).device
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available; use 'cpu'")
    return device


def fit(
    model: Any,
    context: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    steps: int = 1000,
    lr: float = 1e-3,
    batch_size: int | None = None,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    elbo: str = "meanfield",
    num_particles: int = 1,
    warmup_steps: int | None = None,
    progress: bool = True,
    log_every: int = 1,
    metrics_path: str | Path | None = None,
    metrics_tags: dict[str, Any] | None = None,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
) -> TrainingHistory:
    """Train ``model`` on ``(context, target)`` pairs with SVI and Adam.

    :param model: a :class:`bjepa.models.base.WorldModel` (VJEPA, BJEPA, VAE, AR, JEPA).
    :param context: ``(N, obs_dim)`` context frames ``x_t``.
    :param target: ``(N, obs_dim)`` target frames ``x_{t+1}`` (``None`` for the VAE).
    :param steps: number of optimiser steps.
    :param lr: Adam learning rate.
    :param batch_size: mini-batch size drawn by ``pyro.plate(subsample_size=...)``;
        ``None`` trains full-batch.
    :param seed: seeds torch, NumPy and Pyro before training (``None`` leaves RNGs alone).
    :param device: moves model and data once before training.
    :param elbo: ``"meanfield"`` (analytic KL, default), ``"trace"``, or their ``"jit-"`` forms.
    :param warmup_steps: steps during which the encoder is held fixed while predictor and
        variance heads fit (protects a data-initialised encoder from a random head's
        gradients). Default: 10 % of ``steps`` when the model was initialised from data,
        else 0.
    :param log_every: record (and stream) metrics every this many steps.
    :param metrics_path: if given, append one JSON line per record to this file.
    :param metrics_tags: extra keys (e.g. model, seed) written into every streamed record.
    :param callback: ``callback(step, record)``; returning ``True`` stops training.
    :returns: the :class:`TrainingHistory`.
    """
    steps = check_positive_int("steps", steps)
    lr = check_positive("lr", lr)
    check_choice("elbo", elbo, ELBOS)
    check_positive_int("num_particles", num_particles)
    check_positive_int("log_every", log_every)
    context, target = model.check_inputs(context, target)
    n = context.shape[0]
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
        batch_size = None if batch_size >= n else batch_size
    dev = _resolve_device(device, model)
    model.to(dev)
    context = context.to(dev)
    target = None if target is None else target.to(dev)
    if seed is not None:
        set_seed(seed)

    data_init = getattr(model, "init", "random") == "cca" and target is not None
    if data_init:
        model.init_from_data(context, target)
    if warmup_steps is None:
        warmup_steps = steps // 10 if data_init else 0
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")

    loss_fn = ELBOS[elbo](num_particles=num_particles, vectorize_particles=num_particles > 1,
                          max_plate_nesting=1, ignore_jit_warnings=True) \
        if elbo.startswith("jit") else ELBOS[elbo](num_particles=num_particles,
                                                    max_plate_nesting=1)
    svi = SVI(model.model, model.guide, Adam({"lr": lr}), loss=loss_fn)
    history = TrainingHistory(elbo=elbo)
    sink = open(metrics_path, "a", encoding="utf-8") if metrics_path else None  # noqa: SIM115
    bar = _progress(steps, progress, type(model).__name__)
    start = time.perf_counter()
    was_training = model.training
    model.train()
    try:
        for step in range(steps):
            model.freeze_encoder = step < warmup_steps
            loss = svi.step(context, target, batch_size=batch_size)
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss {loss} at step {step}; lower lr or check the data")
            extra = model.after_step(step, steps)
            if step % log_every == 0 or step == steps - 1:
                record = {"step": step, "loss": loss / n, **extra,
                          "seconds": time.perf_counter() - start}
                history.records.append(record)
                if sink is not None:
                    sink.write(json.dumps({**(metrics_tags or {}), **record}) + "\n")
                if bar is not None and (step % 50 == 0 or step == steps - 1):
                    bar.set_postfix(loss=f"{loss / n:.4f}")
                if callback is not None and callback(step, record):
                    history.stopped_early = True
                    break
            if bar is not None:
                bar.update(1)
    finally:
        model.freeze_encoder = False
        model.train(was_training)
        if bar is not None:
            bar.close()
        if sink is not None:
            sink.close()
    history.seconds = time.perf_counter() - start
    logger.info("trained %s for %d steps in %.1fs (%s)", type(model).__name__, steps,
                history.seconds, elbo)
    return history


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
