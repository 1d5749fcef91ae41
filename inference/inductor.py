"""An ELBO whose loss *and gradients* run as one graph compiled by TorchInductor (``elbo=
"inductor"``; what ``elbo="auto"`` picks for large runs on the CPU).

Pyro's programs cannot go through ``torch.compile`` (its effect handlers break the graph into
hundreds of pieces and recompile on every loss value), and TorchScript, which
:class:`~bjepa.inference.jit.CompiledELBO` uses, runs each operation as its own kernel. Here the
Pyro ELBO is instead traced *below* Python, at the level of PyTorch's operators
(:func:`torch.fx.experimental.proxy_tensor.make_fx`): the model, guide, plates and
``poutine.scale`` run once as ordinary Python, and what is recorded is the arithmetic they
produce — the loss and, through :func:`torch.autograd.grad`, its gradients with respect to the
model's parameters — as one FX graph. TorchInductor compiles that graph to fused C++ loops.
In training (:class:`InductorSVI`, what ``fit`` uses) the graph also holds the screen for NaN/inf
and Adam's update, so a whole step is one call: it takes the data, the parameters, the EMA
target's weights and Adam's state and returns the loss, a finite flag and the new values, which
are written back only when everything was finite. The numbers are the mean-field ELBO's, still
out of Pyro's ``TraceMeanField_ELBO``, and the optimiser state is torch's ``Adam`` state (a
checkpoint resumes with any ELBO). Compiled graphs are shared within a process by their code,
constants and input shapes, so the next seed of a model pays only for the tracing.

Random numbers (the guide's reparameterised noise, mini-batch indices) are drawn by the eager
kernels from torch's generator (Inductor's ``fallback_random``), so a compiled run draws what an
eager run draws and agrees with it to float rounding (tested). A graph is compiled per argument
shapes (in training one graph covers the encoder warm-up and what follows: a mask input keeps
the frozen parameters where they are); compiling takes seconds (tens of seconds on a busy
2-core machine), so it pays off on long runs — ``benchmarks/bench_reference.py`` measures it.
It needs a C++ compiler (Inductor's CPU backend); without one, or for a program that cannot be
traced, it falls back to the eager ELBO with a logged warning (``elbo="auto"``) or raises
(``elbo="inductor"``). Models that declare themselves untraceable
(``training_hints().compilable_by_inductor`` false: BJEPA with a weight prior, the RSSM) are
refused. The VAE, whose constrained parameter TorchScript
cannot follow, compiles here; so do replica stacks, whose per-replica noise is drawn outside
the graph (:class:`~bjepa.inference.replicas.NoiseTape`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import operator
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pyro
import torch
from pyro import poutine
from pyro.infer.elbo import ELBO
from pyro.infer.util import torch_item

from bjepa.inference.jit import WrappedELBO, forked_rng
from bjepa.inference.replicas import NoiseTape
from bjepa.inference.svi import FusedSVI, NonFiniteLossError, is_nonfinite_validation_error

__all__ = ["InductorELBO", "InductorSVI"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _pyro_traceable() -> Iterator[None]:
    """While recording: Pyro's ELBOs turn the loss into a Python float (``.item()``) and check
    it for NaN, and argument validation asks whether values satisfy constraints; none of this
    can happen on a traced value, so the loss stays a tensor and validation is off (the data
    were validated by ``fit``; a NaN still stops training through the loss screen)."""
    import pyro.infer.trace_elbo as trace_elbo
    import pyro.infer.trace_mean_field_elbo as mean_field

    def keep(x: Any, *args: Any, **kwargs: Any) -> Any:
        return x

    def detach(x: Any) -> Any:
        return x.detach() if isinstance(x, torch.Tensor) else x

    with pyro.validation_enabled(False), \
            mock.patch.object(trace_elbo, "warn_if_nan", keep), \
            mock.patch.object(trace_elbo, "torch_item", detach), \
            mock.patch.object(mean_field, "torch_item", detach), \
            mock.patch.object(mean_field, "warn_if_nan", keep, create=True):
        yield


def _linear_pieces(graph: torch.fx.Graph, src: torch.fx.Node, size: int
                   ) -> Callable[[int], torch.fx.Node] | None:
    """For ``src``, the output of a linear layer — ``mm(x, t(W)) [+ b]`` or a replica stack's
    ``view(baddbmm(b, x, transpose(W, 1, 2)))`` / ``bmm`` — a function that emits piece ``i``
    of its last dimension (``size`` wide) as a layer of its own; ``None`` for anything else."""
    aten = torch.ops.aten

    def call(target: Any, *args: Any) -> torch.fx.Node:
        return graph.call_function(target, args)

    def shape_of(n: Any) -> tuple[int, ...] | None:
        val = getattr(n, "meta", {}).get("val")
        return None if val is None else tuple(val.shape)

    def is_op(n: Any, target: Any) -> bool:
        return isinstance(n, torch.fx.Node) and n.op == "call_function" and n.target is target

    if is_op(src, aten.view.default) and (is_op(src.args[0], aten.baddbmm.default)
                                          or is_op(src.args[0], aten.bmm.default)):
        out_shape = list(src.args[1])
        mm = src.args[0]
        bias, x, wt = mm.args if mm.target is aten.baddbmm.default else (None, *mm.args)
        if mm.kwargs or not (is_op(wt, aten.transpose.int) and tuple(wt.args[1:]) == (1, 2)):
            return None
        weight = wt.args[0]
        w_shape = shape_of(weight)
        if w_shape is None or len(w_shape) != 3 or w_shape[1] % size or \
                (bias is not None and shape_of(bias) != (w_shape[0], 1, w_shape[1])):
            return None

        def piece(i: int) -> torch.fx.Node:
            lo, hi = i * size, (i + 1) * size
            w_i = call(aten.transpose.int, call(aten.slice.Tensor, weight, 1, lo, hi), 1, 2)
            y = call(aten.bmm.default, x, w_i) if bias is None else \
                call(aten.baddbmm.default, call(aten.slice.Tensor, bias, 2, lo, hi), x, w_i)
            return call(aten.view.default, y, [*out_shape[:-1], size])

        return piece
    bias = None
    if is_op(src, aten.add.Tensor) and is_op(src.args[0], aten.mm.default):
        mm, bias = src.args
    elif is_op(src, aten.mm.default):
        mm = src
    else:
        return None
    x, wt = mm.args
    if not is_op(wt, aten.t.default):
        return None
    weight = wt.args[0]
    w_shape = shape_of(weight)
    if w_shape is None or len(w_shape) != 2 or w_shape[0] % size or \
            (bias is not None and shape_of(bias) != (w_shape[0],)):
        return None

    def piece2(i: int) -> torch.fx.Node:
        lo, hi = i * size, (i + 1) * size
        out = call(aten.mm.default, x, call(aten.t.default,
                                            call(aten.slice.Tensor, weight, 0, lo, hi)))
        return out if bias is None else \
            call(aten.add.Tensor, out, call(aten.slice.Tensor, bias, 0, lo, hi))

    return piece2


def _flatten_total_sums(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Rewrite ``sum(c * sum(Y, -1))`` — an ELBO term: a log-density summed over the event
    dimension, scaled, then over rows — as ``c * sum(Y)``. Inductor runs the nested form as a
    scalar loop over rows with the event dimension unrolled (a libm ``log`` per element);
    one total sum over a contiguous ``Y`` becomes one vectorised loop. Same sum, another
    order: results agree to float rounding."""
    aten = torch.ops.aten
    graph = gm.graph

    def shape_of(n: Any) -> tuple[int, ...] | None:
        val = getattr(n, "meta", {}).get("val")
        return None if val is None else tuple(val.shape)

    for node in list(graph.nodes):
        if not (node.op == "call_function" and node.target is aten.sum.default
                and len(node.args) == 1 and not node.kwargs):
            continue
        cur, scales = node.args[0], []
        while isinstance(cur, torch.fx.Node) and cur.op == "call_function" \
                and len(cur.users) == 1:
            if cur.target is aten.expand.default and \
                    shape_of(cur) == shape_of(cur.args[0]) is not None:
                cur = cur.args[0]
            elif cur.target is aten.mul.Tensor and isinstance(cur.args[1], int | float) \
                    and not isinstance(cur.args[1], bool):
                scales.append(cur.args[1])
                cur = cur.args[0]
            else:
                break
        if not (isinstance(cur, torch.fx.Node) and cur.op == "call_function"
                and cur.target is aten.sum.dim_IntList and len(cur.users) == 1
                and not cur.kwargs and len(cur.args) == 2):
            continue
        y, dims = cur.args
        ndim = len(shape_of(y) or ())
        if ndim == 0 or [d % ndim for d in dims] != [ndim - 1]:
            continue
        with graph.inserting_before(node):
            new = graph.call_function(aten.sum.default, (y,))
            for c in scales:
                new = graph.call_function(aten.mul.Tensor, (new, c))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _orient_weight_gradients(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Rewrite a matrix product whose contraction runs over many rows into a small output —
    a layer's weight gradient ``Xᵀ G`` of shape ``(in, out)`` — so that the smaller output
    dimension comes first: ``(Gᵀ X)ᵀ``. The BLAS kernels are much faster in that orientation
    (measured on one thread, 6 000 rows, ``(20, 4)``: 37 → 15 µs; ten replicas batched,
    465 → 210 µs). Torch's backward of ``mm`` already picks it for a transposed weight; the
    backward of ``bmm`` — every replica stack's layer — does not. The transposed result is a
    view that the weight's Adam update reads as it read the original. Same products, another
    summation order: results agree to float rounding."""
    aten = torch.ops.aten
    graph = gm.graph
    for node in list(graph.nodes):
        if not (node.op == "call_function" and node.target in (aten.mm.default, aten.bmm.default)
                and len(node.args) == 2 and not node.kwargs):
            continue
        a, b = node.args
        va, vb = (getattr(n, "meta", {}).get("val") for n in (a, b))
        if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)):
            continue
        m, k, p = va.shape[-2], va.shape[-1], vb.shape[-1]
        if not (m > p and k >= 4 * m):
            continue
        last = (0, 2, 1) if node.target is aten.bmm.default else (1, 0)
        with graph.inserting_before(node):
            bt = graph.call_function(aten.permute.default, (b, list(last)))
            at = graph.call_function(aten.permute.default, (a, list(last)))
            prod = graph.call_function(node.target, (bt, at))
            out = graph.call_function(aten.permute.default, (prod, list(last)))
        node.replace_all_uses_with(out)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _split_linear_layers(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Rewrite the recorded graph so that TorchInductor's loops vectorise better: a layer whose
    output is split along its last dimension (a head's location and scale)
    becomes one matrix product per piece, so that each piece is a contiguous tensor: Inductor
    vectorises a loop over ``(rows, piece)`` along the piece, and reads with the stride of the
    whole output cost it masked loads and a second pass (measured: the fused loops of a
    linear VJEPA step take 40 % less time). ``addmm`` is first written as ``mm + bias`` to
    find such layers; Inductor fuses each piece back into an ``addmm``.

    Same arithmetic, other kernels: results agree to float rounding."""
    aten = torch.ops.aten
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is aten.addmm.default \
                and len(node.args) == 3 and not node.kwargs:
            bias, x, w = node.args
            with graph.inserting_before(node):
                mm = graph.call_function(aten.mm.default, (x, w))
                add = graph.call_function(aten.add.Tensor, (mm, bias))
            node.replace_all_uses_with(add)
            graph.erase_node(node)
    for node in list(graph.nodes):
        if not (node.op == "call_function" and node.target is aten.split.Tensor):
            continue
        src, size = node.args[0], node.args[1]
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if dim != -1 or not isinstance(size, int):
            continue
        pieces = _linear_pieces(graph, src, size)
        users = list(node.users)
        if pieces is None or not all(u.op == "call_function" and u.target is operator.getitem
                                     for u in users):
            continue
        for u in users:
            with graph.inserting_before(u):
                out = pieces(u.args[1])
            u.replace_all_uses_with(out)
            graph.erase_node(u)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()
    return gm


@contextlib.contextmanager
def _static_tracing() -> Iterator[None]:
    """One fake-tensor mode with a (static) shape environment for tracing and compiling.
    Around ``compile_fx`` it lets Inductor use its on-disk FX graph cache, which it bypasses
    without one ("No shape env"), so a new process would generate and compile the C++ again
    (seconds per program) instead of loading it; around ``make_fx`` it lets every node's
    metadata share that mode instead of building a fresh one (and a stack trace) per node."""
    from torch._guards import TracingContext, tracing
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with tracing(TracingContext(FakeTensorMode(shape_env=ShapeEnv()))):
        yield


#: compiled graphs of this process, newest last (:meth:`InductorELBO._compile`)
_COMPILED: OrderedDict[str, Callable] = OrderedDict()
_COMPILED_MAX = 32


def _graph_key(graph: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> str:
    """What a compiled graph depends on: its code (Python values the program read are
    literals in it), the tensors it holds as constants, and its inputs' shapes, strides,
    dtypes and devices. Two traces with equal keys compute the same function."""
    h = hashlib.sha256(graph.code.encode())
    for t in inputs:
        h.update(repr((tuple(t.shape), t.stride(), t.dtype, t.device)).encode())
    for node in graph.graph.nodes:
        if node.op == "get_attr":
            value = getattr(graph, node.target)
            h.update(node.target.encode())
            if isinstance(value, torch.Tensor):
                c = value.detach().cpu().contiguous()
                h.update(repr((tuple(c.shape), c.dtype)).encode())
                h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes())
            else:
                h.update(repr(value).encode())
    return h.hexdigest()


class InductorELBO(WrappedELBO):
    """``base``'s loss and gradients as one TorchInductor-compiled graph (see the module
    docstring): ``loss_and_grads(model, guide, *args, **kwargs)`` writes the gradients to
    ``.grad``; ``loss_and_update(model, guide, optim, ...)`` (what :class:`InductorSVI` calls)
    takes Adam's whole step in the graph. ``model`` must be a bound method of a torch module (a
    bjepa world model). Buffers are constants of the graph: a model whose buffers change during
    training needs an eager ELBO."""

    def __init__(self, base: ELBO, *, strict: bool = True) -> None:
        super().__init__(base, strict=strict)
        self._graphs: dict[tuple, tuple[Any, ...]] = {}
        self._lr: tuple[float, torch.Tensor] | None = None
        self._owners: dict[int, tuple[torch.nn.Module, list[torch.Tensor], list[torch.Tensor]]] = {}

    # -- eager forms (evaluation, diagnostics) -----------------------------------------------
    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        return self.base.loss(model, guide, *args, **kwargs)

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any,
                            **kwargs: Any) -> torch.Tensor:
        return self.base.differentiable_loss(model, guide, *args, **kwargs)

    # -- the compiled step ----------------------------------------------------------------------
    @staticmethod
    def _state(owner: torch.nn.Module) -> tuple[list[str], list[torch.Tensor], Any, list[str]]:
        names = [n for n, _ in owner.named_parameters()]
        target = getattr(owner, "target_encoder", None)
        target_names = [] if target is None else [n for n, _ in target.named_parameters()]
        return names, [p for _, p in owner.named_parameters()], target, target_names

    def _trace(self, owner: torch.nn.Module, model: Callable, guide: Callable,
               args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> tuple[torch.fx.GraphModule, list[bool], list[torch.Tensor], NoiseTape]:
        """The FX graph ``(data, parameters, EMA weights, noise) -> (loss, *gradients)``, which
        parameters get a gradient, the example inputs (detached) and the tape of the noise
        the program draws from its own generators (usually none)."""
        with warnings.catch_warnings():  # torch's own deprecations, raised on first import
            warnings.simplefilter("ignore")
            from torch.fx.experimental.proxy_tensor import make_fx
            from torch.nn.utils.stateless import _reparametrize_module

        names, params, target, target_names = self._state(owner)
        tensor_pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        n_data, n_par = len(tensor_pos), len(params)
        n_target = 0 if target is None else len(target_names)
        used: list[bool] = []
        # what the program draws from generators of its own (a replica stack's per-replica
        # noise): learned on one eager evaluation, then fed to the graph as inputs
        tape = NoiseTape()
        with tape.recording(), torch.no_grad(), forked_rng(args), _pyro_traceable(), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.base.differentiable_loss(model, guide, *args, **kwargs)

        def step(*flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
            data, ps = flat[:n_data], flat[n_data:n_data + n_par]
            ts = flat[n_data + n_par:n_data + n_par + n_target]
            noise = flat[n_data + n_par + n_target:]
            full = list(args)
            for i, t in zip(tensor_pos, data, strict=True):
                full[i] = t
            stack = contextlib.ExitStack()
            with stack:
                if tape.specs:
                    stack.enter_context(tape.replaying(noise))
                stack.enter_context(_reparametrize_module(owner, dict(zip(names, ps,
                                                                          strict=True))))
                if target is not None:
                    stack.enter_context(_reparametrize_module(
                        target, dict(zip(target_names, ts, strict=True))))
                loss = self.base.differentiable_loss(model, guide, *full, **kwargs)
            grads = torch.autograd.grad(loss, [p for p in ps if p.requires_grad],
                                        allow_unused=True)
            it = iter(grads)
            grads_all = [next(it) if p.requires_grad else None for p in ps]
            used.clear()
            used.extend(g is not None for g in grads_all)
            return (loss.detach(), *[g for g in grads_all if g is not None])

        inputs = [args[i] for i in tensor_pos] + \
            [p.detach().requires_grad_(p.requires_grad) for p in params] + \
            ([] if target is None else [p.detach() for p in target.parameters()]) + \
            tape.examples()
        with forked_rng(args), _pyro_traceable(), warnings.catch_warnings(), _static_tracing():
            warnings.simplefilter("ignore")
            graph = _flatten_total_sums(_orient_weight_gradients(
                _split_linear_layers(make_fx(step)(*inputs))))
        return graph, list(used), [t.detach() for t in inputs], tape

    @staticmethod
    def _compile(graph: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> Callable:
        """Compile ``graph`` with TorchInductor — as a plain function of tensors that need no
        gradient: the graph already holds the gradients, so no autograd wrapper and no
        activations kept for a second backward. Compiled functions are shared within the
        process by :func:`_graph_key` (the next seed of one model reuses the first one's)."""
        key = _graph_key(graph, inputs)
        if key in _COMPILED:
            _COMPILED.move_to_end(key)
            return _COMPILED[key]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch._inductor import config as inductor_config
            from torch._inductor.compile_fx import compile_fx
        with inductor_config.patch(fallback_random=True), warnings.catch_warnings(), \
                torch.no_grad(), _static_tracing():
            warnings.simplefilter("ignore")
            compiled = compile_fx(graph, inputs)
        _COMPILED[key] = compiled
        while len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
        return compiled

    def _build(self, owner: torch.nn.Module, model: Callable, guide: Callable,
               args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> tuple[Callable, list[bool], NoiseTape]:
        graph, used, inputs, tape = self._trace(owner, model, guide, args, kwargs)
        return self._compile(graph, inputs), used, tape

    def _build_update(self, owner: torch.nn.Module, model: Callable, guide: Callable,
                      args: tuple[Any, ...], kwargs: dict[str, Any],
                      optim: torch.optim.Optimizer
                      ) -> tuple[Callable, list[bool], NoiseTape, dict[bool, torch.Tensor]]:
        """One graph for a whole optimiser step: the loss and gradients (:meth:`_trace`), the
        screen for non-finite values, and Adam's update of every parameter that has a
        gradient. It returns the new values; the caller writes them only when everything was
        finite, so a bad step changes nothing."""
        from torch.fx.experimental.proxy_tensor import make_fx

        # one graph serves the encoder warm-up too: it is traced with the encoder training,
        # and a mask input keeps the parameters that get no gradient while the encoder is
        # frozen (found by tracing that variant, not compiling it) where they are
        if hasattr(owner, "freeze_encoder"):
            flag = owner.freeze_encoder
            try:
                owner.freeze_encoder = True
                learns_frozen = self._trace(owner, model, guide, args, kwargs)[1]
                owner.freeze_encoder = False
                graph, used, inputs, tape = self._trace(owner, model, guide, args, kwargs)
            finally:
                owner.freeze_encoder = flag
        else:
            graph, used, inputs, tape = self._trace(owner, model, guide, args, kwargs)
            learns_frozen = used
        if any(f and not u for f, u in zip(learns_frozen, used, strict=True)):
            raise RuntimeError("a parameter learns only while the encoder is frozen")
        group = optim.param_groups[0]
        beta1, beta2 = (float(b) for b in group["betas"])
        eps = float(group["eps"])
        n_in, k = len(inputs), sum(used)
        n_data = sum(isinstance(a, torch.Tensor) for a in args)
        params_at = [n_data + i for i, u in enumerate(used) if u]

        def update(*flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = graph(*flat[:n_in])
            loss, grads = out[0], out[1:]
            m, v, steps = flat[n_in:n_in + k], flat[n_in + k:n_in + 2 * k], \
                flat[n_in + 2 * k:n_in + 3 * k]
            lr, active = flat[-2], flat[-1]
            ok = torch.isfinite(loss)
            for j, g in enumerate(grads):  # a parameter that does not move is not screened
                ok = ok & (torch.isfinite(g).all() | ~active[j])
            new_p, new_m, new_v, new_s = [], [], [], []
            for j, g in enumerate(grads):  # torch.optim.Adam's arithmetic, bias-corrected
                p, a = flat[params_at[j]], active[j]
                step = steps[j] + 1
                m1 = m[j].lerp(g, 1 - beta1)
                v1 = v[j] * beta2 + (1 - beta2) * g * g
                t = step.double()
                step_size = lr / (1 - torch.pow(beta1, t))
                root_bc2 = torch.sqrt(1 - torch.pow(beta2, t))
                p1 = p - (step_size * m1 / (v1.sqrt() / root_bc2 + eps)).to(p.dtype)
                new_p.append(torch.where(a, p1, p))  # a frozen parameter keeps its value and
                new_m.append(torch.where(a, m1, m[j]))  # its state, as Adam skips a
                new_v.append(torch.where(a, v1, v[j]))  # parameter without a gradient
                new_s.append(torch.where(a, step, steps[j]))
            return (loss, ok, *new_p, *new_m, *new_v, *new_s)

        state = [self._adam_state(inputs[i]) for i in params_at]
        device = inputs[n_data].device if len(inputs) > n_data else torch.device("cpu")
        masks = {frozen: torch.tensor([f if frozen else True for f, u
                                       in zip(learns_frozen, used, strict=True) if u],
                                      dtype=torch.bool, device=device)
                 for frozen in (False, True)}
        extra = [s["exp_avg"] for s in state] + [s["exp_avg_sq"] for s in state] + \
            [s["step"] for s in state] + [torch.tensor(float(group["lr"]),
                                                       dtype=torch.float64), masks[False]]
        with forked_rng(inputs), warnings.catch_warnings(), _static_tracing():
            warnings.simplefilter("ignore")  # tracing runs the ops: keep the draws off the RNG
            full = make_fx(update)(*inputs, *extra)
        return self._compile(full, [*inputs, *extra]), used, tape, masks

    @staticmethod
    def _adam_state(p: torch.Tensor) -> dict[str, torch.Tensor]:
        """Example Adam state of the shape torch's ``Adam(fused=True)`` creates for ``p``."""
        return {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def _key(self, owner: torch.nn.Module, model: Callable, guide: Callable,
             args: tuple[Any, ...], kwargs: dict[str, Any], *extra: Any,
             frozen: bool | None = True) -> tuple:
        """What selects a graph: the programs, the warm-up flag (``frozen=None``: a graph for
        both phases), the arguments' shapes, dtypes and devices (other arguments by value),
        and which parameters train."""
        def sig(a: Any) -> Any:
            if isinstance(a, torch.Tensor):
                return (tuple(a.shape), a.dtype, a.device)
            try:
                hash(a)
            except TypeError:
                return repr(a)
            return (type(a), a)

        params, _ = self._params(owner)
        phase = None if frozen is None else bool(getattr(owner, "freeze_encoder", False))
        return (id(owner), id(model.__func__), id(guide.__func__), phase,
                tuple(sig(a) for a in args),
                tuple(sorted((k, sig(v)) for k, v in kwargs.items())),
                tuple(p.requires_grad for p in params), *extra)

    def _params(self, owner: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The model's parameters and its EMA target's, listed once per model (a training run
        does not change which tensors they are)."""
        found = self._owners.get(id(owner))
        if found is None or found[0] is not owner:
            target = getattr(owner, "target_encoder", None)
            found = (owner, list(owner.parameters()),
                     [] if target is None else list(target.parameters()))
            self._owners[id(owner)] = found
        return found[1], found[2]

    def _get(self, key: tuple, build: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...] | None:
        """The compiled graph under ``key`` (built on first use); ``None`` when compiling
        failed and ``strict`` is off (the caller then trains eagerly)."""
        if key not in self._graphs:
            try:
                self._graphs[key] = build()
            except Exception as err:  # noqa: BLE001 - reported, then eager (or raised)
                if self.strict:
                    raise RuntimeError(f"the ELBO could not be compiled with TorchInductor "
                                       f"({type(err).__name__}: {err}); use elbo='auto' or "
                                       "'meanfield'") from err
                logger.warning("compiling the ELBO with TorchInductor failed (%s); training "
                               "eagerly instead", err)
                self.fallen_back = True
                return None
        return self._graphs[key]

    def _inputs(self, owner: torch.nn.Module, args: tuple[Any, ...]) -> list[torch.Tensor]:
        params, targets = self._params(owner)
        return [a for a in args if isinstance(a, torch.Tensor)] + \
            [p.detach() for p in params] + [p.detach() for p in targets]

    def loss_and_update(self, model: Callable, guide: Callable, optim: torch.optim.Optimizer,
                        *args: Any, **kwargs: Any) -> tuple[float, bool] | None:
        """One whole optimiser step as one compiled graph: returns ``(loss, finite)``, where
        ``finite`` false means the loss or a gradient was NaN/inf and nothing changed; ``None``
        when this step cannot be compiled (not a plain Adam, not a bjepa model, or compiling
        failed): the caller then takes the step with :meth:`loss_and_grads`."""
        owner = getattr(model, "__self__", None)
        group = optim.param_groups[0] if len(optim.param_groups) == 1 else {}
        plain_adam = type(optim) is torch.optim.Adam and bool(group) and \
            not group.get("amsgrad") and not group.get("maximize") and \
            not group.get("weight_decay") and not group.get("differentiable") and \
            not isinstance(group.get("lr"), torch.Tensor)
        if self.fallen_back or not plain_adam or not isinstance(owner, torch.nn.Module):
            return None
        params, _ = self._params(owner)
        if [id(p) for p in group["params"]] != [id(p) for p in params]:
            return None
        key = self._key(owner, model, guide, args, kwargs, "adam", tuple(group["betas"]),
                        group["eps"], frozen=None)
        built = self._get(key, lambda: self._build_update(owner, model, guide, args, kwargs,
                                                          optim))
        if built is None:
            return None
        compiled, used, tape, masks = built
        active = masks[bool(getattr(owner, "freeze_encoder", False))]
        moved = [p for p, u in zip(params, used, strict=True) if u]
        for p in moved:  # Adam's state, created as torch creates it on a first step
            if not optim.state[p]:
                optim.state[p].update(self._adam_state(p))
        state = [optim.state[p] for p in moved]
        extra = [s["exp_avg"] for s in state] + [s["exp_avg_sq"] for s in state] + \
            [s["step"] for s in state]
        if self._lr is None or self._lr[0] != group["lr"]:
            self._lr = (group["lr"], torch.tensor(float(group["lr"]), dtype=torch.float64))
        out = compiled(*self._inputs(owner, args), *tape.draw_all(), *extra, self._lr[1],
                       active)
        finite = bool(out[1])
        if finite:
            with torch.no_grad():
                torch._foreach_copy_([p.detach() for p in moved] + extra, list(out[2:]))
        return torch_item(out[0]), finite

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any,
                       **kwargs: Any) -> float:
        owner = getattr(model, "__self__", None)
        if self.fallen_back or not isinstance(owner, torch.nn.Module):
            return self.base.loss_and_grads(model, guide, *args, **kwargs)
        built = self._get(self._key(owner, model, guide, args, kwargs),
                          lambda: self._build(owner, model, guide, args, kwargs))
        if built is None:
            return self.base.loss_and_grads(model, guide, *args, **kwargs)
        compiled, used, tape = built
        params, _ = self._params(owner)
        out = compiled(*self._inputs(owner, args), *tape.draw_all())
        loss, grads = out[0], iter(out[1:])
        for p, has in zip(params, used, strict=True):
            if has:
                g = next(grads)
                p.grad = g if p.grad is None else p.grad + g
        return torch_item(loss)


class InductorSVI(FusedSVI):
    """:class:`~bjepa.inference.svi.FusedSVI` whose whole step — the mean-field ELBO's loss and
    gradients, the screen for NaN/inf and Adam's update — is one TorchInductor graph
    (:meth:`InductorELBO.loss_and_update`): one call per step, no ``.grad`` tensors, no
    per-parameter optimiser kernels. Same contract as ``FusedSVI``: the first step checks that
    every parameter the program touches is being trained, and a non-finite loss or gradient
    raises :class:`~bjepa.inference.svi.NonFiniteLossError` leaving the parameters and Adam's
    state unchanged. Where the step cannot be compiled whole (another optimiser), it takes
    ``FusedSVI``'s step with the compiled gradients."""

    def __init__(self, model: Callable, guide: Callable, params: Any, loss: InductorELBO, *,
                 lr: float = 1e-3, optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__(model, guide, params, loss, lr=lr, optimizer=optimizer, fused=True)
        self.elbo = loss

    def step(self, *args: Any, **kwargs: Any) -> float:
        if not self._checked:  # what FusedSVI's first step checks, on an eager evaluation
            # (noise a replica stack would draw from its own generators is not drawn: zeros
            # stand in, so the check moves no random stream)
            with poutine.trace(param_only=True) as capture, torch.no_grad(), \
                    forked_rng(args), NoiseTape().recording(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Encountered NaN",
                                        category=UserWarning)
                try:
                    self.elbo.base.differentiable_loss(self.model, self.guide, *args, **kwargs)
                except ValueError as err:
                    if not is_nonfinite_validation_error(err):
                        raise
            self.check_params(capture.trace)
        result = self.elbo.loss_and_update(self.model, self.guide, self.optim, *args, **kwargs)
        if result is None:
            return super().step(*args, **kwargs)
        loss, finite = result
        if not finite:
            raise NonFiniteLossError(f"non-finite loss {loss}" if not math.isfinite(loss)
                                     else "non-finite gradient")
        return loss
