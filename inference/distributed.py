"""Multi-process training with ``torch.distributed``: :func:`fit_ddp`, the ``"ddp"`` strategy.

Launched with ``torchrun --nproc_per_node=N ...`` (one process per GPU, or several CPU
processes with the ``gloo`` backend), every process runs :func:`fit_ddp` on the same model and
the same data; together they take exactly the optimiser steps that single-process
:func:`~bjepa.inference.fit` takes on the same global mini-batches. Without ``torchrun``
(``WORLD_SIZE`` unset) everything here falls back to one process: distributed set-up is never
mandatory.

**What is sharded.** Each step, a global mini-batch of ``B`` row indices is drawn from the torch
generator, which is seeded identically on every rank and advanced identically (so every rank
draws the *same* indices, exactly as Pyro's ``pyro.plate(subsample_size=B)`` draws them in a
single process). Rank ``r`` of ``W`` keeps the ``r``-th contiguous slice (``B // W`` rows, one
more for the first ``B % W`` ranks) — a ``DistributedSampler`` for tensors, drawn per step.
The random numbers of the guide's per-row sample sites are drawn for the whole global batch on
every rank and sliced the same way, so rank ``r`` sees the very values a single process would
draw for its rows. Global sites (e.g. BJEPA's predictor weights) are drawn identically
everywhere. Each process holds the full data tensors; only the work is split.

**Gradient averaging and Pyro's plate scaling.** Each rank evaluates
``elbo.differentiable_loss(model.model, model.guide, ...)`` on its ``b_r`` rows with
``pyro.plate(..., subsample_size=b_r)``, so Pyro scales its per-row terms by ``N / b_r`` (not
``N / B``). That loss is additionally multiplied by ``W · b_r / B`` (with ``poutine.scale``;
the factor is 1 when ``W`` divides ``B``). The rank's loss is then
``W · [(b_r / B) · G + (N / B) · Σ_{i ∈ shard r} ℓ_i]`` where ``G`` are the global terms (the KL
of global latents), and ``DistributedDataParallel`` *averages* gradients over the ``W`` ranks,
which yields exactly the gradient of ``G + (N / B) · Σ_{i ∈ batch} ℓ_i``, the single-process
loss. The loss reported in the metrics is the same average, so it matches single-process
training too. Parameters that get no gradient in a phase (the encoder during the warm-up of a
data-initialised model, a prior that ``gamma=0`` leaves out) are found by one trial evaluation
and left out of that phase's DDP wrapper, so ``find_unused_parameters`` is never needed and
they keep ``grad=None`` (Adam skips them, as in one process).

**Objectives that are not sums over rows.** A term computed from the whole mini-batch at once
(JEPA's VICReg variance and covariance terms) is evaluated on each shard separately; the
update then differs from single-process training. :func:`fit_ddp` detects such sites (observed
or factor sites outside the data plate) and logs a warning.

**EMA target.** After each optimiser step every rank applies the model's ``after_step`` hook
(``θ' ← τ θ' + (1 − τ) θ``). It is a deterministic function of the online weights, which
``DistributedDataParallel`` keeps identical, so the target is identical on every rank; this is
verified (with the parameters and the RNG state) whenever a checkpoint is written.

**Rank 0 writes.** Only rank 0 writes the metrics file, checkpoints, logs and progress bar.
A checkpoint holds the *global* state (model, guide, EMA target, optimiser, step, RNG state,
config, metrics), never per-rank state, so a run can resume on any number of processes, and a
checkpoint written by :func:`fit_ddp` resumes with single-process :func:`~bjepa.inference.fit`
and vice versa.

Example::

    # torchrun --nproc_per_node=2 train.py
    init_distributed()
    history = fit_ddp(model, x[:-1], x[1:], steps=2000, batch_size=256, checkpoint_dir="ck")
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch import nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from bjepa._validation import check_choice, check_positive
from bjepa.inference.checkpoint import CheckpointError, capture_rng_state, restore_rng_state
from bjepa.inference.engine import Strategy
from bjepa.inference.svi import (
    ELBO_CHOICES,
    NonFiniteLossError,
    apply_gradients,
    is_nonfinite_validation_error,
)

__all__ = [
    "DDPStrategy",
    "DistributedContext",
    "agree",
    "broadcast",
    "fit_ddp",
    "init_distributed",
    "is_rank_zero",
    "shutdown_distributed",
]

logger = logging.getLogger(__name__)

#: exception types that cross process boundaries by name (others become RuntimeError)
_PORTABLE_ERRORS: dict[str, type[BaseException]] = {
    e.__name__: e for e in (ValueError, TypeError, FileExistsError, FileNotFoundError,
                            CheckpointError, NonFiniteLossError, RuntimeError)}


# -- process group -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its ``rank`` among ``world_size`` processes, its
    ``local_rank`` on this machine (which GPU it drives), and the process-group ``backend``
    (``None`` when running as a single process without a process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        """Whether a process group is up (possibly of size 1 under ``torchrun``)."""
        return self.backend is not None


def _env_int(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set; launch with torchrun "
                             "(it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)")
        return default
    try:
        return int(text)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from err


def _current_context() -> DistributedContext:
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                              local_rank=_env_int("LOCAL_RANK", 0),
                              backend=str(dist.get_backend()))


def init_distributed(device: str | torch.device | None = None, *, backend: str | None = None,
                     timeout: float | None = None) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

    Idempotent: when a process group is already up it only reports it. When ``WORLD_SIZE`` is
    unset (a plain ``python`` run) it does nothing and reports a single process.

    :param device: the kind of device this process trains on (``"cpu"``, ``"cuda"``); default:
        CUDA when available. On CUDA each process drives ``cuda:LOCAL_RANK``.
    :param backend: ``"gloo"`` or ``"nccl"``; default ``"nccl"`` on CUDA, ``"gloo"`` on CPU.
    :param timeout: seconds a collective may wait for the other processes before failing
        (default: PyTorch's, 10 to 30 minutes).
    :returns: the :class:`DistributedContext` of this process.
    :raises ValueError: for a malformed environment or device, naming it.
    """
    if not dist.is_available():
        if "WORLD_SIZE" in os.environ and _env_int("WORLD_SIZE") > 1:
            raise ValueError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
        return DistributedContext()
    if dist.is_initialized():
        return _current_context()
    if "WORLD_SIZE" not in os.environ:
        return DistributedContext()
    world = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set; launch with torchrun")
    if timeout is not None:
        check_positive("timeout", timeout)
    kind = (torch.device(device).type if device is not None
            else "cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: distributed training runs on 'cpu' or 'cuda'")
    if backend is None:
        backend = "nccl" if kind == "cuda" else "gloo"
    check_choice("backend", backend, ["gloo", "nccl"])
    kwargs: dict[str, Any] = {}
    if timeout is not None:
        kwargs["timeout"] = timedelta(seconds=timeout)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but CUDA is not available; use 'cpu'")
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA "
                             "devices are visible; use --nproc_per_node <= the GPU count")
        torch.cuda.set_device(local)
        if backend == "nccl":
            kwargs["device_id"] = torch.device("cuda", local)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                            **kwargs)
    if rank == 0:
        logger.info("process group up: %d processes, backend %s", world, backend)
    return DistributedContext(rank=rank, world_size=world, local_rank=local, backend=backend)


def is_rank_zero() -> bool:
    """True in the process that writes files (rank 0), and in any single-process run."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def shutdown_distributed() -> None:
    """Leave the process group, if one is up (a no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree(ctx: DistributedContext, error: BaseException | None) -> None:
    """Make every process fail together when one of them failed (so none waits forever at the
    next collective). The failing process re-raises its own error; the others raise one of the
    same type naming the failing rank."""
    if ctx.world_size == 1:
        if error is not None:
            raise error
        return
    mine = None if error is None else (type(error).__name__, str(error))
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, mine)
    if error is not None:
        raise error
    for rank, item in enumerate(gathered):
        if item is not None:
            kind = _PORTABLE_ERRORS.get(item[0], RuntimeError)
            raise kind(f"process {rank} failed: {item[1]}")


def broadcast(ctx: DistributedContext, value: Any) -> Any:
    """Rank 0's ``value`` on every process."""
    if ctx.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# -- sharding the guide's randomness -------------------------------------------------------------
@dataclass(frozen=True)
class _Shard:
    """This rank's slice ``[offset, offset + count)`` of a global batch of ``batch`` rows drawn
    from ``rows`` data rows."""

    rows: int
    batch: int
    offset: int
    count: int
    world_size: int

    @property
    def scale(self) -> float:
        """``W · b_r / B``: turns Pyro's ``N / b_r`` plate scale into the global ``N / B``
        after DDP's averaging over ``W`` ranks."""
        return self.world_size * self.count / self.batch


def _shards(rows: int, batch: int, world_size: int) -> list[_Shard]:
    base, extra = divmod(batch, world_size)
    out, offset = [], 0
    for r in range(world_size):
        count = base + (1 if r < extra else 0)
        out.append(_Shard(rows, batch, offset, count, world_size))
        offset += count
    return out


def _pad(x: torch.Tensor, axis: int, before: int, after: int) -> torch.Tensor:
    """``x`` with ``before`` and ``after`` filler rows (copies of its first row, detached) around
    it along ``axis``; the filler only shapes the random draw and is sliced away."""
    if before == after == 0:
        return x
    edge = x.detach().narrow(axis, 0, 1)
    parts = []
    for size in (before, after):
        shape = list(x.shape)
        shape[axis] = size
        parts.append(edge.expand(shape) if size else None)
    return torch.cat([p for p in (parts[0], x, parts[1]) if p is not None], dim=axis)


class _UnsupportedError(Exception):
    """A distribution whose draw cannot be widened to the global batch."""


def _widen(d: Distribution, axis: int, before: int, after: int) -> Distribution:
    """The distribution of the whole global batch as far as drawing goes: ``d``'s rows sit at
    ``[before, before + rows)`` along batch axis ``axis`` (counted from the left). Drawing from
    it consumes the generator exactly as a single process drawing for the global batch does."""
    bs = tuple(d.batch_shape)
    if isinstance(d, Independent):
        return type(d)(_widen(d.base_dist, axis, before, after), d.reinterpreted_batch_ndims)
    if isinstance(d, MaskedDistribution):  # the mask does not change the draw
        return _widen(d.base_dist, axis, before, after)
    if isinstance(d, ExpandedDistribution):
        base = d.base_dist
        new_shape = list(bs)
        new_shape[axis] += before + after
        base_axis = axis - (len(bs) - len(base.batch_shape))
        if base_axis >= 0 and base.batch_shape[base_axis] != 1:
            base = _widen(base, base_axis, before, after)
        return type(d)(base, torch.Size(new_shape))
    if isinstance(d, Normal):
        return type(d)(_pad(d.loc.expand(bs), axis, before, after),
                       _pad(d.scale.expand(bs), axis, before, after))
    if isinstance(d, MultivariateNormal):
        ev = tuple(d.event_shape)
        return type(d)(_pad(d.loc.expand(bs + ev), axis, before, after),
                       scale_tril=_pad(d._unbroadcasted_scale_tril.expand(bs + ev + ev), axis,
                                       before, after))
    if isinstance(d, Categorical):
        k = (d._num_events,)
        if d._param is d.__dict__.get("logits"):
            return type(d)(logits=_pad(d.logits.expand(bs + k), axis, before, after))
        return type(d)(probs=_pad(d.probs.expand(bs + k), axis, before, after))
    if isinstance(d, MixtureSameFamily):
        return type(d)(_widen(d.mixture_distribution, axis, before, after),
                       _widen(d.component_distribution, axis, before, after))
    raise _UnsupportedError(type(d).__name__)


class _ShardGuide(Messenger):
    """Effect handler around the guide: replaces the data plate's subsample indices by this
    rank's slice of the global batch, and draws each per-row sample site for the global batch
    before keeping this rank's rows (see the module docstring)."""

    def __init__(self, shard: _Shard, seed: int, rank: int, device: torch.device) -> None:
        super().__init__()
        self.shard = shard
        self.seed, self.rank, self.device = seed, rank, device
        self.step = -1
        self.plates: set[str] = set()
        self.fallback_sites: set[str] = set()
        self._draws: dict[str, int] = {}

    def start_step(self, step: int) -> None:
        """Tell the handler which optimiser step the next evaluation belongs to."""
        self.step = step
        self._draws.clear()

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["value"] is not None or msg["is_observed"] or msg.get("done"):
            return
        fn, s = msg["fn"], self.shard
        if isinstance(fn, _Subsample):
            if fn.size != s.rows:
                return
            if s.batch < s.rows:  # what _Subsample.sample draws for subsample_size=B
                idx = torch.randperm(s.rows, device=fn.device)[:s.batch].clone()
            else:
                idx = torch.arange(s.rows, device=fn.device)
            msg["value"] = idx[s.offset:s.offset + s.count]
            self.plates.add(msg["name"])
            return
        frame = next((f for f in msg["cond_indep_stack"] if f.name in self.plates), None)
        if frame is None or frame.dim is None:
            return  # a global site: every rank draws the same value, as one process would
        axis = len(fn.batch_shape) + frame.dim
        if axis < 0 or fn.batch_shape[axis] != s.count:
            return
        before, after = s.offset, s.batch - s.offset - s.count
        if before == after == 0:
            return  # one process: its own draw is the global draw
        try:
            wide = _widen(fn, axis, before, after)
        except _UnsupportedError:
            msg["value"] = self._private_draw(msg)
            return
        value = wide(*msg["args"], **msg["kwargs"])
        lead = value.dim() - len(wide.batch_shape) - len(wide.event_shape)
        msg["value"] = value.narrow(lead + axis, before, s.count)

    def _private_draw(self, msg: dict[str, Any]) -> torch.Tensor:
        """A draw for a distribution :func:`_widen` does not know, from a generator private to
        this rank, step and site, leaving the shared generator untouched (statistically sound,
        but not the single-process draw)."""
        name = msg["name"]
        if name not in self.fallback_sites and self.rank == 0:
            logger.warning("site %r: cannot draw %s for the global batch; each process draws "
                           "its rows from its own generator (training is not bit-identical "
                           "to single-process training)", name, type(msg["fn"]).__name__)
        self.fallback_sites.add(name)
        self._draws[name] = self._draws.get(name, 0) + 1
        key = f"{self.seed}:{self.step}:{self.rank}:{name}:{self._draws[name]}".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") % 2**63
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.manual_seed(seed)
            return msg["fn"](*msg["args"], **msg["kwargs"])


class _ELBOLoss(nn.Module):
    """``forward(context, target)`` returns the rank's differentiable ELBO loss (the module that
    :class:`~torch.nn.parallel.DistributedDataParallel` wraps)."""

    def __init__(self, model: nn.Module, elbo: Any, shard: _Shard, seed: int, rank: int,
                 device: torch.device) -> None:
        super().__init__()
        self.world_model = model
        self.elbo = elbo
        self.shard = shard
        self.sharder = _ShardGuide(shard, seed, rank, device)

    def programs(self) -> tuple[Callable, Callable]:
        """The model and guide as this rank runs them: scaled and sharded."""
        model, guide = self.world_model.model, self.world_model.guide
        if self.shard.scale != 1.0:
            model = poutine.scale(model, scale=self.shard.scale)
            guide = poutine.scale(guide, scale=self.shard.scale)
        return model, self.sharder(guide)

    def forward(self, context: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        model, guide = self.programs()
        return self.elbo.differentiable_loss(model, guide, context, target,
                                             batch_size=self.shard.count)


# -- helpers run on every rank -------------------------------------------------------------------
def _state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every tensor of the model's state (parameters, guide, buffers, EMA target), in place."""
    return [t for t in model.state_dict(keep_vars=True).values() if isinstance(t, torch.Tensor)] \
        + ([] if getattr(model, "target_encoder", None) is None
           else list(model.target_encoder.state_dict(keep_vars=True).values()))


@torch.no_grad()
def _broadcast_model(ctx: DistributedContext, model: nn.Module) -> None:
    """Copy rank 0's model state (including the EMA target) to every rank."""
    if ctx.world_size == 1:
        return
    for t in _state_tensors(model):
        dist.broadcast(t.data, src=0)


def _rng_states(dev: torch.device) -> list[torch.Tensor]:
    states = [torch.get_rng_state()]
    if dev.type == "cuda":
        states.append(torch.cuda.get_rng_state(dev))
    return states


def _sync_rng(ctx: DistributedContext, dev: torch.device) -> None:
    """Give every rank rank 0's torch generator state (the shared stream of batch indices and
    noise)."""
    if ctx.world_size == 1:
        return
    states = broadcast(ctx, _rng_states(dev))
    torch.set_rng_state(states[0])
    if dev.type == "cuda":
        torch.cuda.set_rng_state(states[1], dev)


@torch.no_grad()
def _check_in_sync(ctx: DistributedContext, model: nn.Module, dev: torch.device,
                   step: int) -> None:
    """Raise if any rank's parameters, EMA target or generator state differ from rank 0's."""
    if ctx.world_size == 1:
        return
    rows = []
    for t in _state_tensors(model) + [s.to(dev) for s in _rng_states(dev)]:
        x = t.detach().reshape(-1).to(device=dev, dtype=torch.float64)
        ramp = torch.linspace(1.0, 2.0, x.numel(), device=dev, dtype=torch.float64)
        rows.append(torch.stack([x.sum(), (x * x).sum(), (x * ramp).sum()]))
    mine = torch.stack(rows).reshape(-1)
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError(f"processes disagree on the model, EMA target or generator state at "
                           f"step {step}; this is a bug in bjepa's ddp strategy, please report")


def _trial(loss_module: _ELBOLoss, context: torch.Tensor, target: torch.Tensor | None,
           dev: torch.device) -> tuple[set[nn.Parameter], list[str], list[str]]:
    """One trial evaluation (the random state is restored afterwards). Returns the parameters
    that get no gradient, the model's observed/factor sites outside the data plate (terms that
    are not sums over rows), and its per-row latent sites that the guide does not draw."""
    model_fn, guide_fn = loss_module.programs()
    model_tracer, guide_tracer = poutine.trace(model_fn), poutine.trace(guide_fn)
    params = [p for p in loss_module.parameters() if p.requires_grad]
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        loss = loss_module.elbo.differentiable_loss(model_tracer, guide_tracer, context, target,
                                                    batch_size=loss_module.shard.count)
        grads = (torch.autograd.grad(loss, params, allow_unused=True)
                 if isinstance(loss, torch.Tensor) and loss.requires_grad
                 else [None] * len(params))
    unused = {p for p, g in zip(params, grads, strict=True) if g is None}
    plates = loss_module.sharder.plates
    guide_sites = guide_tracer.msngr.trace.nodes
    batch_level, uncovered = [], []
    for name, site in model_tracer.msngr.trace.nodes.items():
        if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
            continue
        in_plate = any(f.name in plates for f in site["cond_indep_stack"])
        if site["is_observed"] and not in_plate:
            batch_level.append(name)
        elif not site["is_observed"] and in_plate and name not in guide_sites:
            uncovered.append(name)
    return unused, batch_level, uncovered


@contextmanager
def _trainable(params: list[nn.Parameter], frozen: set[nn.Parameter]) -> Iterator[None]:
    """Within the block, ``frozen`` parameters do not require gradients (so DDP does not wait
    for them); the original flags are restored afterwards."""
    before = [p.requires_grad for p in params]
    try:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag and p not in frozen)
        yield
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)


# -- the strategy ----------------------------------------------------------------------------------
class DDPStrategy(Strategy):
    """The loop's strategy under ``torchrun``: every process evaluates its shard of each global
    mini-batch and :class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients
    (the module docstring says what is sharded and how the loss is scaled). Rank 0 writes
    checkpoints, metrics and logs; a checkpoint holds the global state, so it resumes on any
    number of processes and with the single-process strategy. Without ``torchrun`` it trains in
    this one process."""

    name = "ddp"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.ctx = DistributedContext()

    @property
    def rank(self) -> int:  # type: ignore[override]
        return self.ctx.rank

    @property
    def world_size(self) -> int:  # type: ignore[override]
        return self.ctx.world_size

    @staticmethod
    def resolve_elbo(elbo: str) -> str:
        """``"auto"`` is the eager mean-field ELBO here; compiled ELBOs are refused."""
        check_choice("elbo", elbo, ELBO_CHOICES)
        if elbo == "auto":  # the compiled form cannot shard its random draws
            return "meanfield"
        if elbo.startswith("jit") or elbo == "inductor":
            raise ValueError(f"elbo={elbo!r} is not supported by the ddp strategy (a compiled "
                             "loss cannot shard its random draws); use 'meanfield' or 'trace'")
        return elbo

    def agree(self, error: BaseException | None) -> None:
        agree(self.ctx, error)

    def broadcast(self, value: Any) -> Any:
        return broadcast(self.ctx, value)

    def any_flag(self, flag: bool) -> bool:
        if self.ctx.world_size == 1:
            return flag
        box = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(box)
        return bool(box.item() > 0)

    def prepare(self, model: Any, rows: int, batch_size: int | None, device: torch.device
                ) -> torch.device:
        self.ctx = init_distributed(device.type)
        self.shard = _shards(rows, batch_size or rows, self.ctx.world_size)[self.ctx.rank]
        smallest = (batch_size or rows) // self.ctx.world_size
        need = max(model.training_hints().min_batch_size, 1)
        if smallest < need:
            raise ValueError(
                f"{'batch_size=' + str(batch_size) if batch_size else f'{rows} rows of context'}"
                f" split over {self.ctx.world_size} processes leaves {smallest} rows on some; "
                f"{type(model).__name__} needs at least {need} per process: raise batch_size or "
                "use fewer processes")
        self.device = _rank_device(device, self.ctx)
        return self.device

    def after_restore(self, model: Any, device: torch.device) -> None:
        _broadcast_model(self.ctx, model)
        _sync_rng(self.ctx, device)

    def build(self, model: Any, programs: tuple[Callable, Callable], loss_fn: Any, lr: float
              ) -> None:
        self.model = model
        self.loss_module = _ELBOLoss(model, loss_fn, self.shard, self.seed, self.ctx.rank,
                                     self.device)
        self.params = list(self.loss_module.parameters())
        self.optim = torch.optim.Adam(self.params, lr=lr, foreach=True)
        self.engine: nn.Module | None = None
        self.engine_frozen: bool | None = None
        self.status = torch.zeros(3, dtype=torch.float64, device=self.device)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.optim

    def begin(self, trainer: Any) -> None:
        """Find, per warm-up phase, the parameters without gradients (left out of DDP, so
        ``find_unused_parameters`` is never needed) and warn about sites DDP cannot split."""
        model, args = self.model, trainer.batches.full()[0]
        warmup = trainer.config["warmup_steps"]
        self.unused: dict[bool, set[nn.Parameter]] = {}
        for frozen in ([True] if trainer.start_step < warmup else []) + [False]:
            model.freeze_encoder = frozen
            self.unused[frozen], batch_level, uncovered = _trial(self.loss_module, *args,
                                                                 self.device)
        model.freeze_encoder = False
        if self.ctx.rank == 0 and self.ctx.world_size > 1 and batch_level:
            logger.warning(
                "%s: site(s) %s are computed from the whole mini-batch, not summed over rows "
                "(e.g. VICReg's variance and covariance); under ddp each of the %d processes "
                "evaluates them on its own shard, so updates differ from single-process "
                "training", type(model).__name__, ", ".join(batch_level), self.ctx.world_size)
        if self.ctx.rank == 0 and uncovered:
            logger.warning("%s: latent site(s) %s are sampled in the model, not the guide; each "
                           "process draws them for its own rows", type(model).__name__,
                           ", ".join(uncovered))

    def step(self, step: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
        frozen = bool(self.model.freeze_encoder)
        if self.engine is None or self.engine_frozen != frozen:
            self.engine = None  # release the previous DDP wrapper (and its gradient hooks)
            self.engine = _make_engine(self.loss_module, self.params, self.unused[frozen],
                                       self.ctx, self.device)
            self.engine_frozen = frozen
        self.loss_module.sharder.start_step(step)
        loss, desc, error = math.nan, "", None
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Encountered NaN",
                                        category=UserWarning)
                loss_t = self.engine(args[0], args[1])
            loss = float(loss_t.detach())
        except ValueError as err:
            if not is_nonfinite_validation_error(err):
                error = err
            desc = "non-finite values in a distribution ({})".format(
                (str(err).splitlines() or [""])[0])
        except Exception as err:  # noqa: BLE001 - re-raised below after the others know
            error = err
        status = self.status
        status[0] = loss if math.isfinite(loss) else 0.0
        status[1] = 0.0 if math.isfinite(loss) else 1.0
        status[2] = 1.0 if error is not None else 0.0
        if self.ctx.world_size > 1:
            dist.all_reduce(status)
        if status[2] > 0:
            self.optim.zero_grad(set_to_none=True)
            if error is not None:
                raise error
            raise RuntimeError(f"another process failed at step {step}; see its error")
        if status[1] > 0:
            self.optim.zero_grad(set_to_none=True)
            raise NonFiniteLossError(desc or (f"non-finite loss {loss}" if not math.isfinite(
                loss) else "non-finite loss on another process"))
        loss = float(status[0]) / self.ctx.world_size
        loss_t.backward()
        return apply_gradients(self.optim, self.params, loss)

    def capture_rng(self) -> dict[str, Any]:
        """:func:`capture_rng_state` plus the state of this rank's own CUDA device (rank 0's,
        which every rank shares), so a resume on other GPUs restores the stream in use."""
        return _capture_rng(self.device)

    def restore_rng(self, state: dict[str, Any]) -> None:
        _restore_rng(state, self.device)

    def before_save(self, model: Any, step: int) -> None:
        _check_in_sync(self.ctx, model, self.device, step)

    def end(self) -> None:
        self.engine = None


def fit_ddp(model: Any, context: torch.Tensor, target: torch.Tensor | None = None,
            **kwargs: Any) -> Any:
    """:func:`~bjepa.inference.fit` with ``strategy="ddp"``: call it on every process of a
    ``torchrun`` job with the same model, data and arguments. ``batch_size`` is the *global*
    mini-batch; with the same ``seed`` the run takes the same steps as single-process ``fit``
    (to float rounding), on any number of processes; ``device="cuda"`` means
    ``cuda:LOCAL_RANK``; the ``"jit-*"`` ELBOs are refused; only rank 0 writes files and runs
    callbacks (its stop decision is sent to the others)."""
    from bjepa.inference.fit import fit

    return fit(model, context, target, strategy="ddp", **kwargs)


def _rank_device(device: torch.device, ctx: DistributedContext) -> torch.device:
    """On CUDA under torchrun each process drives ``cuda:LOCAL_RANK``."""
    if device.type != "cuda" or not ctx.is_distributed:
        return device
    if device.index is not None and ctx.world_size > 1 and device.index != ctx.local_rank:
        raise ValueError(f"device={str(device)!r}: under torchrun each process uses "
                         f"cuda:LOCAL_RANK (here cuda:{ctx.local_rank}); pass device='cuda'")
    return torch.device("cuda", ctx.local_rank)


def _make_engine(loss_module: _ELBOLoss, params: list[nn.Parameter],
                 frozen: set[nn.Parameter], ctx: DistributedContext, dev: torch.device
                 ) -> nn.Module:
    """The loss module itself on one process, else wrapped in DDP over the parameters that get
    gradients in this phase (all of them, or all but the encoder during warm-up)."""
    if ctx.world_size == 1:
        return loss_module
    with _trainable(params, frozen):
        return nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=False)


def _capture_rng(dev: torch.device) -> dict[str, Any]:
    """:func:`capture_rng_state` plus the state of this rank's own CUDA device (rank 0's, which
    every rank shares), so a resume on other GPUs restores the stream that was in use."""
    rng = capture_rng_state()
    if dev.type == "cuda":
        rng["cuda_device"] = torch.cuda.get_rng_state(dev)
    return rng


def _restore_rng(rng: dict[str, Any], dev: torch.device) -> None:
    restore_rng_state(rng)
    if dev.type == "cuda":
        state = rng.get("cuda_device")
        if state is None and rng.get("cuda"):
            state = rng["cuda"][0]
        if state is not None:
            torch.cuda.set_rng_state(state.cpu().to(torch.uint8), dev)
