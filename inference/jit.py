"""A TorchScript-compiled ELBO that is safe inside :func:`bjepa.inference.fit`.

Pyro's ``JitTrace_ELBO`` / ``JitTraceMeanField_ELBO`` compile the loss with
:func:`pyro.ops.jit.trace`. Three things make them unsafe or slow in a trainer, and
:class:`CompiledELBO` fixes each:

1. ``JitTraceMeanField_ELBO`` (pyro 1.9) checks a cache attribute it never sets, so it
   re-traces on **every** step (10-16x slower than eager on a small VJEPA; see
   ``benchmarks/README.md``). Here the compiled function is built once.
2. The trace is keyed only on the number of arguments and the keyword values, while Python
   state read inside the program (the encoder warm-up flag, tensor shapes) is baked into the
   graph. Here the key also holds every argument's shape, dtype and device, the ids of model
   and guide, and the model's ``freeze_encoder`` flag, so each variant gets its own graph.
3. Tracing runs the program (twice: a parameter capture, then the trace) and so draws random
   numbers. Here compilation runs on a forked RNG, so compiled training draws exactly the
   noise that eager training draws; Gaussian noise is drawn with ``torch.randn`` while tracing
   (the same kernel and stream as eager ``Normal.rsample``), not ``torch.normal`` (PyTorch's
   tracing fallback, a different stream). Compiled and eager training therefore agree to
   float rounding, and checkpoint/resume stays exact.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pyro.ops.jit
import torch
import torch.distributions.multivariate_normal as _mvn_module
import torch.distributions.normal as _normal_module
from pyro.infer.elbo import ELBO
from pyro.infer.util import torch_item

__all__ = ["CompiledELBO"]

logger = logging.getLogger(__name__)


def _randn(shape: Any, dtype: torch.dtype | None, device: Any) -> torch.Tensor:
    return torch.randn(shape, dtype=dtype, device=device)


@contextlib.contextmanager
def _traceable_gaussian_noise() -> Iterator[None]:
    """While tracing, draw standard normals with ``torch.randn`` (recorded as a random op)."""
    saved = _normal_module._standard_normal, _mvn_module._standard_normal
    _normal_module._standard_normal = _mvn_module._standard_normal = _randn
    try:
        yield
    finally:
        _normal_module._standard_normal, _mvn_module._standard_normal = saved


@contextlib.contextmanager
def forked_rng(tensors: Any) -> Iterator[None]:
    """Fork torch's RNG — on the CPU and on every CUDA device holding one of ``tensors`` — for
    a block whose draws must not move the caller's streams (tracing runs the program)."""
    devices = sorted({t.device for t in tensors if isinstance(t, torch.Tensor)
                      and t.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=devices):
        yield


def _signature(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype), str(value.device))
    if isinstance(value, list | tuple):
        return tuple(_signature(v) for v in value)
    return repr(value)


def _identity(fn: Callable) -> Any:
    """A stable identity for a function or bound method (``m.model`` is a new object each
    time it is looked up)."""
    owner = getattr(fn, "__self__", None)
    return (id(owner), id(fn.__func__)) if owner is not None else id(fn)


class WrappedELBO(ELBO):
    """An ELBO that computes what ``base`` computes by another route (the compiled ELBOs):
    same particles and plate nesting, the base's traces; ``strict=False`` lets a subclass
    fall back to the eager base (``fallen_back``) when compiling fails."""

    def __init__(self, base: ELBO, *, strict: bool = True) -> None:
        super().__init__(num_particles=base.num_particles,
                         max_plate_nesting=base.max_plate_nesting,
                         vectorize_particles=base.vectorize_particles)
        self.base = base
        self.strict = strict
        self.fallen_back = False

    def _get_trace(self, model: Callable, guide: Callable, args: Any, kwargs: Any) -> Any:
        return self.base._get_trace(model, guide, args, kwargs)


class CompiledELBO(WrappedELBO):
    """Compile ``base``'s loss (any eager Pyro ELBO) with :func:`pyro.ops.jit.trace`.

    The model and guide must have a static structure for a given key (shapes, flags), which
    holds for every model in :mod:`bjepa.models`.

    Example::

        elbo = CompiledELBO(TraceMeanField_ELBO(max_plate_nesting=1))
        svi = FusedSVI(m.model, m.guide, m.parameters(), elbo)
    """

    def __init__(self, base: ELBO, *, strict: bool = True) -> None:
        super().__init__(base, strict=strict)
        self._fn: Callable[..., torch.Tensor] | None = None
        self._compiled_keys: set[str] = set()
        self._current: tuple[Callable, Callable] | None = None

    def _build(self) -> Callable[..., torch.Tensor]:
        weakself = weakref.ref(self)

        @pyro.ops.jit.trace(ignore_warnings=True)
        def loss_fn(*args: Any, **kwargs: Any) -> torch.Tensor:
            kwargs.pop("_bjepa_key")
            me = weakself()
            model, guide = me._current
            return me.base.differentiable_loss(model, guide, *args, **kwargs)

        return loss_fn

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any,
                            **kwargs: Any) -> torch.Tensor:
        if self.fallen_back:
            return self.base.differentiable_loss(model, guide, *args, **kwargs)
        if self._fn is None:
            self._fn = self._build()
        owner = getattr(model, "__self__", None)
        key = repr((_identity(model), _identity(guide), getattr(owner, "freeze_encoder", None),
                    _signature(args), sorted((k, _signature(v)) for k, v in kwargs.items())))
        self._current = (model, guide)
        keyed = {**kwargs, "_bjepa_key": key}
        if key not in self._compiled_keys:
            try:
                with forked_rng(args), _traceable_gaussian_noise(), \
                        warnings.catch_warnings():
                    # pyro.ops.jit is built on torch.jit.trace, which recent torch marks deprecated
                    warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* deprecated",
                                            category=DeprecationWarning)
                    self._fn(*args, **keyed)  # compiles; its random draws are discarded
            except Exception as err:
                if self.strict:
                    raise RuntimeError(f"the model/guide could not be compiled ({err}); use an "
                                       "eager ELBO ('meanfield' or 'trace')") from err
                logger.warning("compiling the ELBO failed (%s); training eagerly instead", err)
                self.fallen_back = True
                return self.base.differentiable_loss(model, guide, *args, **kwargs)
            self._compiled_keys.add(key)
        return self._fn(*args, **keyed)

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any,
                       **kwargs: Any) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return torch_item(loss)
