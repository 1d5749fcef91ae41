"""Train many models of one architecture as one batched SVI program (``fit(models, ...)``).

Each chunk of up to ``replicas`` models is stacked into a
:class:`~bjepa.models.replicas.ReplicaStack` (parameters with a leading replica dim, a
``pyro.plate("replicas")``), trained by the same loop as a single model, and copied back. Each
replica follows the trajectory of the same seed trained alone, full-batch or mini-batch: its
mini-batch rows and its Gaussian guide noise come from a per-replica generator seeded like the
global RNG of a run alone, drawn in the same order; the matrix products are batched, so the
agreement is to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch

from bjepa._util import progress_bar
from bjepa._validation import check_positive_int

__all__ = ["auto_chunk", "fit_replicas"]

#: default memory budget for one chunk's data and activations (bytes)
CHUNK_BYTES = 1 << 30


def auto_chunk(n_models: int, rows: int, obs_dim: int, *, budget: int = CHUNK_BYTES) -> int:
    """How many replicas to batch so that data and activations stay within ``budget`` bytes
    (a coarse estimate: about 16 float32 copies of each replica's ``(rows, obs_dim)`` data)."""
    per_replica = max(rows * max(obs_dim, 16) * 4 * 16, 1)
    return max(1, min(n_models, budget // per_replica))


def _as_stack(name: str, data: torch.Tensor | Sequence[torch.Tensor] | None,
              n_models: int) -> torch.Tensor | None:
    if data is None:
        return None
    if isinstance(data, torch.Tensor):
        if data.ndim != 3:
            raise ValueError(f"{name} for replicas must be (R, N, obs_dim) or a list of R "
                             f"(N, obs_dim) tensors, got shape {tuple(data.shape)}")
        stacked = data
    else:
        items = list(data)
        shapes = {tuple(t.shape) for t in items}
        if len(shapes) > 1:
            raise ValueError(f"{name}: every replica needs data of one shape (N, obs_dim), got "
                             f"{sorted(shapes)}; trim them to a common N")
        stacked = torch.stack(items)
    if stacked.shape[0] != n_models:
        raise ValueError(f"{name} holds {stacked.shape[0]} data sets for {n_models} models")
    return stacked


def fit_replicas(models: Sequence[Any], context: torch.Tensor | Sequence[torch.Tensor],
                 target: torch.Tensor | Sequence[torch.Tensor] | None = None, *,
                 seed: int | Sequence[int] | None = 0, replicas: int | None = None,
                 steps: int = 1000, lr: float = 1e-3, batch_size: int | None = None,
                 device: str | torch.device | None = None, elbo: str = "auto",
                 num_particles: int = 1, warmup_steps: int | None = None,
                 progress: bool = True, log_every: int = 1,
                 metrics_path: str | Path | None = None,
                 metrics_tags: dict[str, Any] | None = None,
                 callback: Callable[[int, dict[str, float]], bool | None] | None = None,
                 on_nonfinite: str = "raise", replica_batches: str = "own") -> list[Any]:
    """Train ``models`` (same class and arguments) on their own data, batched.

    :param models: ``R`` world models, e.g. one per seed and σ.
    :param context: ``(R, N, obs_dim)`` or a list of ``R`` tensors ``(N, obs_dim)``.
    :param target: the same for targets (``None`` for the VAE).
    :param seed: one seed per model (or one for all): replica ``r``'s guide noise is the noise
        of ``fit(models[r], ..., seed=seed[r])``.
    :param replicas: at most this many models per batched program (default: as many as fit in
        about 1 GiB of activations).
    :param replica_batches: with ``batch_size``: ``"own"`` (each replica's own rows, so it
        matches its run alone) or ``"shared"`` (one draw for the chunk per step, ~30 % faster
        for many replicas; see :class:`~bjepa.models.replicas.ReplicaStack`).
    Other arguments are those of :func:`bjepa.inference.fit` (per replica: ``lr``, ``steps``,
    ``batch_size``...). Checkpointing and resuming are per model: use ``fit`` one model at a
    time for them.
    :returns: one :class:`~bjepa.inference.fit.TrainingHistory` per model. During training the
        records hold the loss averaged over the chunk's replicas; the last record of each
        history holds that replica's own final loss.
    """
    from bjepa.inference.fit import (  # here, not at the top: bjepa.models imports inference
        _fit,
        _resolve_device,
        check_fit_args,
        data_start,
        make_elbo,
        per_row_loss,
        resolve_elbo,
        set_seed,
    )
    from bjepa.models.replicas import ReplicaStack, unstack_into

    models = list(models)
    if not models:
        raise ValueError("models must hold at least one model")
    r_total = len(models)
    seeds = [seed] * r_total if seed is None or isinstance(seed, int) else list(seed)
    if len(seeds) != r_total:
        raise ValueError(f"seed has {len(seeds)} entries for {r_total} models")
    ctx_all = _as_stack("context", context, r_total)
    tgt_all = _as_stack("target", target, r_total)
    checked = batch_size
    for i, m in enumerate(models):  # every replica's arguments and data, naming the bad one
        steps, lr, _, _, checked = check_fit_args(
            m, ctx_all[i], None if tgt_all is None else tgt_all[i], steps=steps, lr=lr,
            elbo=elbo, num_particles=num_particles, log_every=log_every,
            on_nonfinite=on_nonfinite, seed=seeds[i], warmup_steps=warmup_steps,
            checkpoint_every=None, keep_last=1, resume=False, checkpoint_dir=None,
            metrics_tags=metrics_tags, callback=callback, batch_size=batch_size)
    batch_size = checked  # None when it covers the whole data set
    n = ctx_all.shape[1]
    chunk = auto_chunk(r_total, n, ctx_all.shape[2]) if replicas is None else \
        check_positive_int("replicas", replicas)
    dev = _resolve_device(device, models[0])

    histories: list[Any] = []
    bar = progress_bar(r_total, progress and r_total > chunk, "replica chunks", unit="model")
    try:
        for lo in range(0, r_total, chunk):
            members = models[lo:lo + chunk]
            for m in members:
                m.to(dev)
            dtype = next(members[0].parameters()).dtype
            ctx = ctx_all[lo:lo + chunk].to(device=dev, dtype=dtype)
            tgt = None if tgt_all is None else tgt_all[lo:lo + chunk].to(device=dev,
                                                                          dtype=dtype)
            for i, m in enumerate(members):  # same class and arguments: the same warm-up
                warmup = data_start(m, ctx[i], None if tgt is None else tgt[i], steps,
                                    warmup_steps)
            chunk_seeds = seeds[lo:lo + chunk]
            stack = ReplicaStack(members, None if None in chunk_seeds else chunk_seeds,
                                 replica_batches)
            if chunk_seeds[0] is not None:
                set_seed(chunk_seeds[0])
            # the data were validated per model above; inside the loop Pyro's argument checks
            # cost ~10 % of a step, and a NaN still stops training through the loss check
            with pyro.validation_enabled(False):
                hist = _fit(stack, ctx, tgt, None, steps=steps, lr=lr, batch_size=batch_size,
                            seed=chunk_seeds[0], elbo=elbo, num_particles=num_particles,
                            warmup_steps=warmup, progress=progress and r_total <= chunk,
                            log_every=log_every,
                            metrics_path=Path(metrics_path) if metrics_path else None,
                            metrics_tags={**(metrics_tags or {}),
                                          "replicas": f"{lo}-{lo + len(members) - 1}"},
                            callback=callback, checkpoint_every=None, resume=False,
                            on_nonfinite=on_nonfinite)
            unstack_into(stack, members)
            loss_fn = make_elbo(resolve_elbo(elbo, stack, steps), num_particles)
            for i, m in enumerate(members):
                own = per_row_loss(loss_fn, m, ctx[i], None if tgt is None else tgt[i],
                                   seed=chunk_seeds[i])
                h = type(hist)(records=[dict(rec) for rec in hist.records], elbo=hist.elbo,
                               seconds=hist.seconds / len(members),
                               stopped_early=hist.stopped_early,
                               skipped_steps=hist.skipped_steps)
                if h.records:
                    h.records[-1]["loss"] = own
                histories.append(h)
            if bar is not None:
                bar.update(len(members))
    finally:
        if bar is not None:
            bar.close()
    return histories
