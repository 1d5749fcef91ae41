"""An ELBO whose loss *and gradients* run as one graph compiled by TorchInductor (``elbo=
"inductor"``, opt-in).

Pyro's programs cannot go through ``torch.compile`` (its effect handlers break the graph into
hundreds of pieces and recompile on every loss value), and TorchScript, which
:class:`~bjepa.inference.jit.CompiledELBO` uses, runs each operation as its own kernel. Here the
Pyro ELBO is instead traced *below* Python, at the level of PyTorch's operators
(:func:`torch.fx.experimental.proxy_tensor.make_fx`): the model, guide, plates and
``poutine.scale`` run once as ordinary Python, and what is recorded is the arithmetic they
produce — the loss and, through :func:`torch.autograd.grad`, its gradients with respect to the
model's parameters — as one FX graph. TorchInductor compiles that graph to fused C++ loops. Per
step, the compiled graph takes the data, the parameters and the EMA target's weights as inputs
and returns the loss and the gradients, which are written to ``.grad`` for the optimiser; so the
numbers are the mean-field ELBO's, still out of Pyro's ``TraceMeanField_ELBO``.

Random numbers (the guide's reparameterised noise, mini-batch indices) are drawn by the eager
kernels from torch's generator (Inductor's ``fallback_random``), so a compiled run draws what an
eager run draws and agrees with it to float rounding (tested). A graph is compiled per (argument
shapes, warm-up flag); compiling takes seconds (tens of seconds on a busy 2-core machine), so it
pays off on long runs — ``benchmarks/bench_reference.py`` measures it. It needs a C++ compiler
(Inductor's CPU backend); without one, or for a program that cannot be traced, it falls back to
the eager ELBO with a logged warning. Models that declare themselves untraceable (the VAE,
replica stacks, BJEPA with a weight prior) are refused, as for ``"jit-*"``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pyro
import torch
from pyro.infer.elbo import ELBO
from pyro.infer.util import torch_item

from bjepa.inference.jit import WrappedELBO

__all__ = ["InductorELBO"]

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


class InductorELBO(WrappedELBO):
    """``base``'s loss and gradients as one TorchInductor-compiled graph (see the module
    docstring). ``loss_and_grads(model, guide, *args, **kwargs)`` needs ``model`` to be a bound
    method of a torch module (a bjepa world model)."""

    def __init__(self, base: ELBO, *, strict: bool = True) -> None:
        super().__init__(base, strict=strict)
        self._graphs: dict[str, tuple[Callable, list[bool]]] = {}

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

    def _build(self, owner: torch.nn.Module, model: Callable, guide: Callable,
               args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Callable, list[bool]]:
        with warnings.catch_warnings():  # torch's own deprecations, raised on first import
            warnings.simplefilter("ignore")
            from torch._inductor import config as inductor_config
            from torch._inductor.compile_fx import compile_fx
            from torch.fx.experimental.proxy_tensor import make_fx
            from torch.nn.utils.stateless import _reparametrize_module

        names, params, target, target_names = self._state(owner)
        tensor_pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        n_data, n_par = len(tensor_pos), len(params)
        used: list[bool] = []

        def step(*flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
            data, ps, ts = flat[:n_data], flat[n_data:n_data + n_par], flat[n_data + n_par:]
            full = list(args)
            for i, t in zip(tensor_pos, data, strict=True):
                full[i] = t
            stack = contextlib.ExitStack()
            with stack:
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
            ([] if target is None else [p.detach() for p in target.parameters()])
        devices = sorted({a.device for a in inputs if a.device.type == "cuda"}, key=str)
        with torch.random.fork_rng(devices=devices), _pyro_traceable(), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = make_fx(step)(*inputs)
        with inductor_config.patch(fallback_random=True), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = compile_fx(graph, inputs)
        return compiled, list(used)

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any,
                       **kwargs: Any) -> float:
        owner = getattr(model, "__self__", None)
        if self.fallen_back or not isinstance(owner, torch.nn.Module):
            return self.base.loss_and_grads(model, guide, *args, **kwargs)
        key = repr((id(owner), id(model.__func__), id(guide.__func__),
                    bool(getattr(owner, "freeze_encoder", False)),
                    [(tuple(a.shape), str(a.dtype), str(a.device)) if isinstance(a, torch.Tensor)
                     else repr(a) for a in args], sorted((k, repr(v)) for k, v in kwargs.items()),
                    [p.requires_grad for p in owner.parameters()]))
        if key not in self._graphs:
            try:
                self._graphs[key] = self._build(owner, model, guide, args, kwargs)
            except Exception as err:  # noqa: BLE001 - reported, then eager (or raised)
                if self.strict:
                    raise RuntimeError(f"the ELBO could not be compiled with TorchInductor "
                                       f"({type(err).__name__}: {err}); use elbo='auto' or "
                                       "'meanfield'") from err
                logger.warning("compiling the ELBO with TorchInductor failed (%s); training "
                               "eagerly instead", err)
                self.fallen_back = True
                return self.base.loss_and_grads(model, guide, *args, **kwargs)
        compiled, used = self._graphs[key]
        _, params, target, _ = self._state(owner)
        inputs = [a for a in args if isinstance(a, torch.Tensor)] + \
            [p.detach() for p in params] + \
            ([] if target is None else [p.detach() for p in target.parameters()])
        out = compiled(*inputs)
        loss, grads = out[0], iter(out[1:])
        for p, has in zip(params, used, strict=True):
            if has:
                g = next(grads)
                p.grad = g if p.grad is None else p.grad + g
        return torch_item(loss)
