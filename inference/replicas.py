"""Train many models of one architecture as one batched SVI program (``fit(models, ...)``).

:class:`ReplicaStack` turns a list of identically built world models (different seeds, different
data) into one Pyro program whose parameters carry a leading replica dimension:

- every ``nn.Linear`` becomes a :class:`ReplicaLinear` with weight ``(R, out, in)`` (one
  ``torch.baddbmm`` for all replicas);
- every other parameter of shape ``S`` becomes ``(R, 1, *S)``, so it broadcasts over the
  ``(replica, row)`` batch dims exactly as it broadcast over rows alone;
- the EMA target encoder is stacked the same way (its update stays one ``_foreach`` op).

The stack's ``model``/``guide`` run the member's own program inside
``pyro.plate("replicas", R, dim=-2)`` on data of shape ``(R, N, D)``. Pyro sums the ELBO over
replicas; since no parameter is shared, each replica's gradient is exactly its own, and Adam is
element-wise, so a replica follows the trajectory it would follow alone. Each replica's
mini-batch rows (drawn before the step by :meth:`ReplicaStack.step_inputs` and passed to model
and guide alike) and its Gaussian guide noise (:class:`ReplicaNoise`) come from a per-replica
generator seeded like the global RNG of a run alone, so even the Monte Carlo noise is the same
numbers; the agreement is to float rounding. :func:`fit_replicas` trains chunks of stacks with
the one training loop and copies the values back (:func:`unstack_into`).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.nn import PyroModule
from pyro.nn.module import _Context
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal
from torch.distributions.multivariate_normal import _batch_mv

from bjepa._util import progress_bar
from bjepa._validation import check_choice, check_positive_int, check_tensor, resolve_device
from bjepa.inference.callbacks import Callback, LambdaCallback, MetricsLogger, ProgressBar
from bjepa.inference.engine import Batches, FitSettings, Trainer
from bjepa.inference.svi import make_elbo, resolve_elbo, set_seed
from bjepa.models.base import TrainingHints, WorldModel, per_row_loss

__all__ = ["NoiseTape", "ReplicaLinear", "ReplicaNoise", "ReplicaStack", "auto_chunk",
           "draw_replica_noise", "fit_replicas", "per_replica_rsample", "unstack_into"]

#: default memory budget for one chunk's data and activations (bytes)
CHUNK_BYTES = 1 << 30

_stack_ids = itertools.count()


class ReplicaLinear(nn.Module):
    """``R`` linear maps applied to ``R`` batches at once: ``x (R, ..., in) → (R, ..., out)``.

    A plain module (the EMA copy must stay outside Pyro); :class:`ReplicaStack` converts the
    ones in the trained tree to :class:`~pyro.nn.PyroModule`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (R, out, in)
        self.bias = None if bias is None else nn.Parameter(bias.unsqueeze(1))  # (R, 1, out)

    @classmethod
    def stack(cls, layers: Sequence[nn.Linear]) -> ReplicaLinear:
        weight = torch.stack([layer.weight.detach() for layer in layers]).clone()
        has_bias = layers[0].bias is not None
        bias = torch.stack([layer.bias.detach() for layer in layers]).clone() if has_bias else None
        out = cls(weight, bias)
        out.weight.requires_grad_(layers[0].weight.requires_grad)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, out_dim, in_dim = self.weight.shape
        if x.ndim < 2 or x.shape[0] != r:
            raise ValueError(f"a replicated layer needs input (R={r}, ..., {in_dim}), got "
                             f"{tuple(x.shape)}")
        flat = x.reshape(r, -1, in_dim)
        w = self.weight.transpose(1, 2)
        y = torch.bmm(flat, w) if self.bias is None else torch.baddbmm(self.bias, flat, w)
        return y.reshape(x.shape[:-1] + (out_dim,))

    def extra_repr(self) -> str:
        r, out_dim, in_dim = self.weight.shape
        return f"replicas={r}, in_features={in_dim}, out_features={out_dim}"


def _parent(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    head, _, leaf = path.rpartition(".")
    return (root.get_submodule(head) if head else root), leaf


def _replicate(stacked: nn.Module, members: Sequence[nn.Module]) -> nn.Module:
    """Give ``stacked`` (a copy of ``members[0]``) the members' values, stacked, in place;
    returns the root (a new module when the root itself is an ``nn.Linear``)."""
    linears = [path for path, m in stacked.named_modules() if isinstance(m, nn.Linear)]
    for path in linears:
        layers = [member.get_submodule(path) for member in members]
        layer = ReplicaLinear.stack(layers)
        if not path:
            return layer
        parent, leaf = _parent(stacked, path)
        if isinstance(parent, PyroModule):
            pyro.nn.module.to_pyro_module_(layer)
        setattr(parent, leaf, layer)
    for path, module in list(stacked.named_modules()):
        if isinstance(module, ReplicaLinear):
            continue
        for name, param in list(module.named_parameters(recurse=False)):
            full = f"{path}.{name}" if path else name
            values = [member.get_parameter(full).detach() for member in members]
            new = nn.Parameter(torch.stack(values).unsqueeze(1).clone(),
                               requires_grad=param.requires_grad)
            module._parameters[name] = new
    return stacked


def _check_same_architecture(members: Sequence[WorldModel]) -> None:
    first = members[0]
    shapes = {n: p.shape for n, p in first.named_parameters()}
    for i, m in enumerate(members[1:], 1):
        if type(m) is not type(first):
            raise ValueError(f"models[{i}] is a {type(m).__name__} but models[0] is a "
                             f"{type(first).__name__}; replicas must share one architecture")
        other = {n: p.shape for n, p in m.named_parameters()}
        if other != shapes or m.hparams != first.hparams:
            raise ValueError(f"models[{i}] has other settings or parameter shapes than "
                             "models[0]; replicas must be built with the same arguments")
    if not first.training_hints().stackable:
        raise ValueError(f"{type(first).__name__} models cannot be trained as one replica stack "
                         "(they read their data as one time series); fit them one at a time "
                         "(noisy-tv does so automatically)")
    if getattr(first, "weight_guide", None) is not None:
        raise ValueError("replicas do not support BJEPA weight priors (an autoguide per "
                         "replica); train those models one at a time")


def _rename(root: PyroModule, name: str) -> None:
    """Give a deep-copied PyroModule tree its own Pyro names (and a fresh shared context), so
    its parameters never collide with the original's in Pyro's parameter store."""
    context = _Context()
    for path, module in root.named_modules():
        if isinstance(module, PyroModule):
            module.__dict__["_pyro_name"] = f"{name}.{path}" if path else name
            module.__dict__["_pyro_context"] = context


class ReplicaNoise(Messenger):
    """Draw each replica's slice of a Gaussian guide sample from that replica's own
    ``torch.Generator`` — the same numbers, in the same order, that a run alone draws from the
    global RNG after ``torch.manual_seed(seed)``. Other distributions use the global RNG."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.generators = list(generators)

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["is_observed"] or msg["value"] is not None:
            return
        if not any(f.name == "replicas" for f in msg["cond_indep_stack"]):
            return
        value = per_replica_rsample(msg["fn"], self.generators)
        if value is not None:
            msg["value"] = value


#: numbers per replica from which CPU noise is drawn on several threads (below it, handing the
#: work to a thread costs more than the draw)
PARALLEL_NOISE_MIN = 4096
_noise_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (process id, workers, pool)


def _noise_threads(device: torch.device, replicas: int, numel: int) -> int:
    if device.type != "cpu" or numel < PARALLEL_NOISE_MIN:
        return 1
    return max(1, min(torch.get_num_threads(), replicas, 8))


def draw_replica_noise(shape: Sequence[int], dtype: torch.dtype, device: torch.device,
                       generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Standard normals ``(R, *shape)``, replica ``r``'s from ``generators[r]`` (each slice
    filled in place: the numbers a fresh ``torch.empty(shape).normal_(generator=g)`` holds).

    A generator fills its slice on one thread, so on the CPU large slices are drawn by up to
    ``torch.get_num_threads()`` threads at once, each with its own replicas' generators: the
    numbers do not depend on the threads."""
    global _noise_pool
    out = torch.empty((len(generators), *shape), dtype=dtype, device=device)
    threads = _noise_threads(out.device, len(generators), out[0].numel() if len(out) else 0)
    if threads == 1:
        for r, g in enumerate(generators):
            out[r].normal_(generator=g)
        return out
    if _noise_pool is None or _noise_pool[0] != os.getpid() or _noise_pool[1] < threads:
        # (a forked child inherits the pool object but not its threads: it gets its own)
        _noise_pool = (os.getpid(), threads,
                       ThreadPoolExecutor(threads, thread_name_prefix="bjepa-noise"))

    def fill(first: int) -> None:
        for r in range(first, len(generators), threads):
            out[r].normal_(generator=generators[r])

    for done in [_noise_pool[2].submit(fill, i) for i in range(threads)]:
        done.result()
    return out


class NoiseTape:
    """Per-replica guide noise drawn *outside* a compiled program and fed to it as inputs
    (``elbo="inductor"`` on a replica stack with its own generators: a compiled graph cannot
    hold ``torch.Generator`` objects). :meth:`recording` runs the program once to learn what it
    draws (zeros stand in, no generator moves); :meth:`replaying` hands the program given
    tensors in that order; :meth:`draw_all` draws them as the eager program would, in the same
    order from the same generators, so compiled and eager training see the same numbers."""

    def __init__(self) -> None:
        self.specs: list[tuple[tuple[int, ...], torch.dtype, torch.device,
                               list[torch.Generator]]] = []
        self._values: list[torch.Tensor] | None = None

    def draw(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device,
             generators: Sequence[torch.Generator]) -> torch.Tensor:
        if self._values is None:
            self.specs.append((tuple(shape), dtype, device, list(generators)))
            return torch.zeros((len(generators), *shape), dtype=dtype, device=device)
        if not self._values:
            raise RuntimeError("the program drew more replica noise than when it was recorded")
        return self._values.pop(0)

    @contextlib.contextmanager
    def recording(self) -> Iterator[NoiseTape]:
        self.specs, self._values = [], None
        token = _NOISE_TAPE.set(self)
        try:
            yield self
        finally:
            _NOISE_TAPE.reset(token)

    @contextlib.contextmanager
    def replaying(self, values: Sequence[torch.Tensor]) -> Iterator[NoiseTape]:
        self._values = list(values)
        token = _NOISE_TAPE.set(self)
        try:
            yield self
        finally:
            _NOISE_TAPE.reset(token)
            self._values = None

    def draw_all(self) -> list[torch.Tensor]:
        """This step's noise, one tensor per recorded draw."""
        return [draw_replica_noise(shape, dtype, device, gens)
                for shape, dtype, device, gens in self.specs]

    def examples(self) -> list[torch.Tensor]:
        """Tensors of the recorded shapes (for tracing), drawing nothing."""
        return [torch.zeros((len(gens), *shape), dtype=dtype, device=device)
                for shape, dtype, device, gens in self.specs]


_NOISE_TAPE: contextvars.ContextVar[NoiseTape | None] = contextvars.ContextVar(
    "bjepa_replica_noise_tape", default=None)


def per_replica_rsample(fn: Any, generators: Sequence[torch.Generator]
                        ) -> torch.Tensor | None:
    """A reparameterised draw from ``fn`` (leading batch dim = replicas) with replica ``r``'s
    noise from ``generators[r]``; ``None`` for distributions other than (independent)
    Normal / MultivariateNormal."""
    base = fn
    while isinstance(base, Independent):
        base = base.base_dist
    if not isinstance(base, Normal | MultivariateNormal):
        return None
    shape = fn.batch_shape + fn.event_shape
    if not shape or shape[0] != len(generators):
        return None
    dtype, device = base.loc.dtype, base.loc.device
    tape = _NOISE_TAPE.get()
    eps = draw_replica_noise(shape[1:], dtype, device, generators) if tape is None else \
        tape.draw(shape[1:], dtype, device, generators)
    if isinstance(base, Normal):
        return base.loc.expand(shape) + eps * base.scale.expand(shape)
    return base.loc.expand(shape) + _batch_mv(base._unbroadcasted_scale_tril, eps)


class ReplicaStack(PyroModule):
    """``R`` world models trained as one: see the module docstring.

    :param members: models of one class built with the same arguments (already initialised,
        e.g. by ``init_from_data``); they are not modified until :func:`unstack_into`.
    :param seeds: one seed per replica for its guide noise and mini-batches (``None``: the
        global RNG, as plain Pyro would).
    :param batches: ``"own"`` (default): each replica draws its own mini-batch rows and its own
        guide noise, exactly as it would alone; ``"shared"``: one row draw (from the first
        replica's generator) for all replicas per step and the guide noise from torch's
        generator (seeded with the first seed) — statistically the same training and still
        reproducible from the seeds, but a replica no longer matches its run alone. Without
        per-replica generators the program is static, so ``elbo="auto"`` compiles it (about
        2× faster per step than eager for 45 replicas of 256 rows).
    """

    def __init__(self, members: Sequence[WorldModel], seeds: Sequence[int] | None = None,
                 batches: str = "own") -> None:
        super().__init__(name=f"replicas{next(_stack_ids)}")
        if len(members) < 1:
            raise ValueError("models must hold at least one model")
        self.batches = check_choice("replica_batches", batches, ["own", "shared"])
        _check_same_architecture(members)
        inner = copy.deepcopy(members[0])
        _replicate(inner, members)
        ema = getattr(inner, "_ema", None)
        if ema is not None:
            ema.module = _replicate(ema.module, [m._ema.module for m in members])
            for p in ema.module.parameters():
                p.requires_grad_(False)
        _rename(inner, f"{self._pyro_name}.inner")
        self.inner = inner
        self.num_replicas = len(members)
        self.obs_dim = members[0].obs_dim
        self.needs_target = members[0].needs_target
        self.member_hints = members[0].training_hints()
        self.seeds = None if seeds is None else [int(s) for s in seeds]
        if self.seeds is not None and len(self.seeds) != self.num_replicas:
            raise ValueError(f"seeds has {len(self.seeds)} entries for {self.num_replicas} "
                             "models")
        #: per-replica generators, made on the data's device at first use
        self.generators: list[torch.Generator] | None = None

    # the warm-up flag and the EMA hook act on the batched member
    @property
    def freeze_encoder(self) -> bool:
        return self.inner.freeze_encoder

    @freeze_encoder.setter
    def freeze_encoder(self, value: bool) -> None:
        self.inner.freeze_encoder = value

    @property
    def target_encoder(self) -> nn.Module | None:
        return self.inner.target_encoder

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        return self.inner.after_step(step, total_steps)

    def training_hints(self) -> TrainingHints:
        """Two plates deep (replicas × data). With ``batches="own"`` ``elbo="auto"`` trains
        eagerly (TorchScript cannot trace the per-replica noise generators) and
        ``elbo="inductor"`` compiles the step with the noise drawn outside (:class:`NoiseTape`);
        with ``"shared"`` compiled like the member would be."""
        return TrainingHints(min_batch_size=self.member_hints.min_batch_size,
                             jit_safe=self.batches == "shared" and self.member_hints.jit_safe,
                             inductor_safe=self.member_hints.compilable_by_inductor,
                             max_plate_nesting=2, replicas=self.num_replicas)

    def prepare(self, context: torch.Tensor, target: torch.Tensor | None) -> bool:
        """Nothing to do: the members got their data start before they were stacked."""
        return False

    def _generators(self, device: torch.device) -> list[torch.Generator] | None:
        if self.seeds is not None and self.generators is None:
            self.generators = [torch.Generator(device=device).manual_seed(s)
                               for s in self.seeds]
        return self.generators

    def step_inputs(self, context: torch.Tensor, target: torch.Tensor | None,
                    batch_size: int | None, **model_kwargs: Any
                    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """One step's arguments: with seeds and ``batch_size``, each replica's own rows drawn
        from its generator (exactly as ``pyro.plate(subsample_size=...)`` draws them for a run
        alone) and the ELBO scale ``N / B``; otherwise the whole data."""
        if model_kwargs:
            raise ValueError("model_kwargs are not supported for replica stacks")
        gens = self._generators(context.device)
        n = context.shape[-2]
        if batch_size is None or batch_size >= n or gens is None:
            return (context, target), {"batch_size": batch_size}
        ctx, tgt = self._minibatch(context, target, batch_size, gens)
        return (ctx, tgt), {"scale": n / batch_size}

    def check_inputs(self, context: torch.Tensor, target: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validate stacked data ``(R, N, obs_dim)``."""
        r = self.num_replicas
        check_tensor("context", context, ndim=3, last_dim=self.obs_dim)
        if context.shape[0] != r:
            raise ValueError(f"context must stack one data set per replica: leading dim {r}, "
                             f"got {context.shape[0]}")
        if target is None:
            if self.needs_target:
                raise ValueError(f"{type(self.inner).__name__} needs a target (the next frames)")
            return context, None
        check_tensor("target", target, ndim=3, last_dim=self.obs_dim)
        if target.shape != context.shape:
            raise ValueError(f"context and target must have the same shape, got "
                             f"{tuple(context.shape)} and {tuple(target.shape)}")
        return context, target

    def _minibatch(self, context: torch.Tensor, target: torch.Tensor | None,
                   batch_size: int, gens: list[torch.Generator]
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = context.shape[-2]
        if self.batches == "shared":
            one = torch.randperm(n, generator=gens[0], device=context.device)[:batch_size]
            return (context.index_select(-2, one),
                    None if target is None else target.index_select(-2, one))
        idx = torch.stack([torch.randperm(n, generator=g, device=context.device)[:batch_size]
                           for g in gens])
        flat = (idx + n * torch.arange(self.num_replicas, device=idx.device)[:, None]).reshape(-1)

        def take(x: torch.Tensor) -> torch.Tensor:  # rows of a contiguous (R, N, D) tensor
            return x.reshape(-1, x.shape[-1]).index_select(0, flat).reshape(
                self.num_replicas, batch_size, x.shape[-1])

        return take(context), None if target is None else take(target)

    def model(self, context: torch.Tensor, target: torch.Tensor | None = None,
              batch_size: int | None = None, scale: float = 1.0) -> None:
        with pyro.plate("replicas", self.num_replicas, dim=-2), poutine.scale(scale=scale):
            self.inner.model(context, target, batch_size)

    def guide(self, context: torch.Tensor, target: torch.Tensor | None = None,
              batch_size: int | None = None, scale: float = 1.0) -> None:
        # with own batches in training mode each replica draws from its own generator; in eval
        # mode (the trainer's evaluations on a forked RNG) and with shared batches from torch's
        gens = self._generators(context.device) \
            if self.training and self.batches == "own" else None
        # outside the plate: messengers see a site innermost-first, so the noise is drawn
        # after the replicas plate has broadcast the distribution to (R, ...)
        noise = ReplicaNoise(gens) if gens else contextlib.nullcontext()
        with noise, pyro.plate("replicas", self.num_replicas, dim=-2), \
                poutine.scale(scale=scale):
            self.inner.guide(context, target, batch_size)


@torch.no_grad()
def unstack_into(stack: ReplicaStack, models: Sequence[WorldModel]) -> None:
    """Copy each replica's trained parameters (and EMA target) back into ``models``."""
    if len(models) != stack.num_replicas:
        raise ValueError(f"{len(models)} models for a stack of {stack.num_replicas}")
    pairs = [(stack.inner, list(models))]
    ema = getattr(stack.inner, "_ema", None)
    if ema is not None:
        pairs.append((ema.module, [m._ema.module for m in models]))
    for stacked, members in pairs:
        for path, module in stacked.named_modules():
            if isinstance(module, ReplicaLinear):
                for r, member in enumerate(members):
                    layer = member.get_submodule(path) if path else member
                    layer.weight.copy_(module.weight[r])
                    if layer.bias is not None:
                        layer.bias.copy_(module.bias[r, 0])
                continue
            for name, param in module.named_parameters(recurse=False):
                full = f"{path}.{name}" if path else name
                for r, member in enumerate(members):
                    member.get_parameter(full).copy_(param[r, 0])


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
                 progress: bool = True, log_every: int = 1, eval_every: int | None = None,
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
        for many replicas; see :class:`ReplicaStack`).

    Other arguments are those of :func:`bjepa.inference.fit` (per replica: ``lr``, ``steps``,
    ``batch_size``...). Checkpointing and resuming are per model: use ``fit`` one model at a
    time for them.
    :returns: one :class:`~bjepa.inference.fit.TrainingHistory` per model. During training the
        records hold the loss averaged over the chunk's replicas; the last record of each
        history holds that replica's own final loss.
    """
    from bjepa.inference.fit import check_fit_args  # fit imports this module lazily

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
    if eval_every is None:
        eval_every = -(-max(steps // 20, 1) // log_every) * log_every  # a multiple of it
    n = ctx_all.shape[1]
    chunk = auto_chunk(r_total, n, ctx_all.shape[2]) if replicas is None else \
        check_positive_int("replicas", replicas)
    dev = resolve_device(device, models[0])

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
            started = False
            for i, m in enumerate(members):  # same class and arguments: the same warm-up
                started = m.prepare(ctx[i], None if tgt is None else tgt[i])
            warmup = (steps // 10 if started else 0) if warmup_steps is None else warmup_steps
            chunk_seeds = seeds[lo:lo + chunk]
            stack = ReplicaStack(members, None if None in chunk_seeds else chunk_seeds,
                                 replica_batches)
            if chunk_seeds[0] is not None:
                set_seed(chunk_seeds[0])
            name = resolve_elbo(elbo, stack, steps, rows_per_step=batch_size or n)
            settings = FitSettings(steps=steps, lr=lr, batch_size=batch_size,
                                   seed=chunk_seeds[0], elbo=name,
                                   num_particles=num_particles, warmup_steps=warmup,
                                   log_every=log_every, eval_every=eval_every,
                                   on_nonfinite=on_nonfinite)
            hooks: list[Callback] = []
            if progress and r_total <= chunk:
                hooks.append(ProgressBar(f"{type(members[0]).__name__} ×{len(members)}"))
            if metrics_path is not None:
                hooks.append(MetricsLogger(metrics_path, {
                    **(metrics_tags or {}), "replicas": f"{lo}-{lo + len(members) - 1}"}))
            if callback is not None:
                hooks.append(LambdaCallback(callback))
            trainer = Trainer(stack, Batches(stack, ctx, tgt, batch_size, dev, dtype, {}),
                              settings, callbacks=hooks,
                              loss_fn=make_elbo(name, num_particles, 2, strict=elbo != "auto"))
            # the data were validated per model above; inside the loop Pyro's argument checks
            # cost ~10 % of a step, and a NaN still stops training through the loss check
            with pyro.validation_enabled(False):
                hist = trainer.run()
            unstack_into(stack, members)
            loss_fn = make_elbo(name.removeprefix("jit-"), num_particles)  # eager per member
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
