"""The step primitive: Pyro's SVI with one fused optimiser, the ELBOs the trainer uses, the parts
of an ELBO, and :func:`with_hooks` for users who write their own Pyro loop.

Everything here works on any model that follows the training protocol of
:class:`bjepa.models.base.WorldModel`: ``model``/``guide`` with one signature, ``prepare``
before training, ``after_step`` after every optimiser step, ``training_hints()``.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.abstract_infer import TracePosterior
from pyro.infer.elbo import ELBO
from pyro.infer.util import torch_item
from torch.distributions import kl_divergence

from bjepa._util import seeded
from bjepa._validation import (
    check_choice,
    check_nonnegative_int,
    check_positive,
    check_positive_int,
)

__all__ = [
    "ELBOS",
    "COMPILED_ELBOS",
    "ELBO_CHOICES",
    "INDUCTOR_MIN_WORK",
    "JIT_MIN_STEPS",
    "FusedSVI",
    "HookedSVI",
    "NonFiniteLossError",
    "apply_gradients",
    "elbo_parts",
    "is_nonfinite_validation_error",
    "make_elbo",
    "nonfinite",
    "resolve_elbo",
    "set_seed",
    "with_hooks",
]

ELBOS: dict[str, type] = {
    "meanfield": TraceMeanField_ELBO,
    "trace": Trace_ELBO,
    "jit-meanfield": TraceMeanField_ELBO,
    "jit-trace": Trace_ELBO,
}
#: ``elbo="auto"`` (the default): ``"jit-meanfield"`` for a model that can be compiled and runs
#: at least this many steps (compiling costs about as much as this many eager steps), else
#: ``"meanfield"``. Both give the same numbers to float rounding (see :mod:`.jit`).
JIT_MIN_STEPS = 200
#: ``elbo="inductor"``: the whole step (the mean-field ELBO's loss and gradients, the NaN
#: screen, Adam) compiled by TorchInductor into one graph (:mod:`bjepa.inference.inductor`)
COMPILED_ELBOS = ("inductor",)
#: ``elbo="auto"`` compiles with TorchInductor from this much work (rows per step × steps ×
#: replicas). Compiling takes ~3-6 s on a 2-core CPU the first time; later processes load the
#: compiled code from Inductor's disk cache in about a second, and a step then costs 0.4-0.8×
#: a TorchScript step (benchmarks/README.md). Measured at 23 M row-steps (the batched Noisy TV
#: table's stacks, 90 replicas × 1000 steps × 256 rows; one thread): the first run on a
#: machine costs a few per cent more than TorchScript, every later run saves 10-40 % of the
#: stack's training time, so the floor sits where a compile pays back from the second run.
#: The same floor holds for programs TorchScript cannot compile (the VAE), which would run
#: eagerly instead.
INDUCTOR_MIN_WORK = 15_000_000
ELBO_CHOICES = ("auto", *ELBOS, *COMPILED_ELBOS)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss, gradient or parameter."""


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy, torch and Pyro from one integer."""
    seed = check_nonnegative_int("seed", seed)
    if seed >= 2**32:
        raise ValueError(f"seed must be < 2**32 (NumPy's limit), got {seed}")
    pyro.set_rng_seed(seed)


def make_elbo(elbo: str = "meanfield", num_particles: int = 1, max_plate_nesting: int = 1,
              *, strict: bool = True) -> ELBO:
    """The Pyro ELBO named ``elbo`` (see :data:`ELBOS`) with ``num_particles`` particles
    (``max_plate_nesting=2`` for replica stacks: replicas × data). ``"jit-"`` names give a
    :class:`~bjepa.inference.jit.CompiledELBO`; with ``strict=False`` it falls back to the
    eager ELBO (logging why) when the program cannot be compiled."""
    check_choice("elbo", elbo, (*ELBOS, *COMPILED_ELBOS))
    check_positive_int("num_particles", num_particles)
    if elbo == "inductor":
        from bjepa.inference.inductor import InductorELBO

        return InductorELBO(TraceMeanField_ELBO(num_particles=num_particles,
                                                max_plate_nesting=max_plate_nesting),
                            strict=strict)
    base = ELBOS[elbo](num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                       vectorize_particles=num_particles > 1 and elbo.startswith("jit-"))
    if elbo.startswith("jit-"):
        from bjepa.inference.jit import CompiledELBO

        return CompiledELBO(base, strict=strict)
    return base


def _cpp_compiler() -> bool:
    """Whether TorchInductor's CPU backend finds a C++ compiler."""
    import os
    import shutil

    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++")
               if c)


def resolve_elbo(elbo: str, model: Any, steps: int, *, rows_per_step: int | None = None
                 ) -> str:
    """The ELBO name ``"auto"`` stands for with this model and run. A ``"jit-"`` name
    for a model that declares itself untraceable (``training_hints().jit_safe`` false: the VAE,
    replica stacks with their own noise, BJEPA with a weight prior) is refused, and so is
    ``"inductor"`` for one that is not inductor-safe.

    ``"auto"`` is ``"inductor"`` for runs large enough to pay for compiling (on the CPU with a
    C++ compiler, in-memory data: ``rows_per_step`` given): ``rows_per_step × steps ×
    replicas`` of at least :data:`INDUCTOR_MIN_WORK` (for programs TorchScript cannot
    compile as well, which would otherwise run eagerly); else
    ``"jit-meanfield"`` for traceable models and at least :data:`JIT_MIN_STEPS` steps; else
    ``"meanfield"``."""
    check_choice("elbo", elbo, ELBO_CHOICES)
    hints = model.training_hints()
    jit_safe = hints.jit_safe
    if elbo == "auto":
        if rows_per_step is not None and hints.compilable_by_inductor:
            work = rows_per_step * steps * hints.replicas
            params = list(model.parameters())
            on_cpu = bool(params) and all(p.device.type == "cpu" for p in params)
            if work >= INDUCTOR_MIN_WORK and on_cpu and _cpp_compiler():
                return "inductor"
        return "jit-meanfield" if jit_safe and steps >= JIT_MIN_STEPS else "meanfield"
    if (elbo.startswith("jit-") and not jit_safe) or \
            (elbo in COMPILED_ELBOS and not hints.compilable_by_inductor):
        raise ValueError(f"elbo={elbo!r}: {type(model).__name__} cannot be compiled (its "
                         "program is not static); use elbo='auto', 'meanfield' or 'trace'")
    return elbo


def is_nonfinite_validation_error(err: ValueError) -> bool:
    """Whether ``err`` is torch/Pyro argument validation refusing NaN or infinite values (how a
    diverged forward pass usually surfaces while validation is on, the default)."""
    text = str(err)
    return "found invalid values" in text and (
        "Real()" in text or re.search(r"\b(nan|inf)\b", text) is not None)


class FusedSVI(SVI):
    """:class:`~pyro.infer.SVI` whose step updates one ``torch.optim`` optimiser (by default a
    fused ``Adam(foreach=True)``) over a fixed list of parameters.

    Unlike :class:`pyro.optim.PyroOptim`, which builds one optimiser per parameter the first
    time it sees it, the optimiser exists before the first step, so its state can be saved and
    restored at any step (including step 0). Every parameter that the model or guide touches
    must be in the list: a stray global ``pyro.param`` raises instead of silently not training.

    ``step`` raises :class:`NonFiniteLossError` *without* changing any parameter when the loss
    or a gradient is NaN or infinite.

    :param model: the Pyro model.
    :param guide: the Pyro guide.
    :param params: the parameters to train (e.g. ``module.parameters()``).
    :param loss: a Pyro :class:`~pyro.infer.elbo.ELBO` instance.
    :param lr: Adam learning rate (ignored when ``optimizer`` is given).
    :param optimizer: a ready ``torch.optim.Optimizer`` over ``params`` instead of Adam.
    :param fused: Adam's single fused kernel instead of its foreach form (the same update to
        float rounding, fewer kernel launches; what ``elbo="inductor"`` uses).

    Example::

        svi = FusedSVI(m.model, m.guide, m.parameters(), TraceMeanField_ELBO(), lr=1e-3)
        loss = svi.step(x_c, x_t)
    """

    def __init__(self, model: Callable, guide: Callable, params: Iterable[torch.nn.Parameter],
                 loss: ELBO, *, lr: float = 1e-3,
                 optimizer: torch.optim.Optimizer | None = None, fused: bool = False) -> None:
        if not isinstance(loss, ELBO):
            raise TypeError(f"loss must be a pyro.infer ELBO instance, got {type(loss).__name__}")
        TracePosterior.__init__(self)
        self.model, self.guide = model, guide
        self.num_steps, self.num_samples = 0, 0
        self.loss, self.loss_and_grads = loss.loss, loss.loss_and_grads
        params = list(params)
        if optimizer is None:
            kind = {"fused": True} if fused else {"foreach": True}
            optimizer = torch.optim.Adam(params, lr=check_positive("lr", lr), **kind)
        self.optim = optimizer
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self._known = {id(p) for p in self.params}
        self._checked = False

    def step(self, *args: Any, **kwargs: Any) -> float:
        """One gradient step on the ELBO; returns the loss (a float)."""
        # the first step also records which parameters the program touches (a static program
        # touches the same ones every step, so later steps skip that bookkeeping)
        capture = poutine.trace(param_only=True) if not self._checked else None
        try:
            with capture or contextlib.nullcontext(), warnings.catch_warnings():
                # a NaN loss is reported below as NonFiniteLossError, not as Pyro's warning
                warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
                loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        except ValueError as err:
            if not is_nonfinite_validation_error(err):
                raise
            self.optim.zero_grad(set_to_none=True)
            first = (str(err).splitlines() or [""])[0]
            raise NonFiniteLossError(f"non-finite values in a distribution ({first})") from err
        if capture is not None:
            self.check_params(capture.trace)
        loss = torch_item(loss)
        return self.apply_gradients(loss)

    def check_params(self, trace: Any) -> None:
        """Refuse a program that touches a parameter this SVI does not train (``trace``: a
        ``poutine.trace(param_only=True)`` of one evaluation); later steps skip the check."""
        for name, site in trace.nodes.items():
            if id(site["value"].unconstrained()) not in self._known:
                self.optim.zero_grad(set_to_none=True)
                raise RuntimeError(
                    f"parameter {name!r} is used by the model or guide but is not one of the "
                    "parameters given to FusedSVI (a global pyro.param, or a guide built "
                    "lazily?); make it an attribute of the model so it is trained and "
                    "checkpointed")
        self._checked = True

    def apply_gradients(self, loss: float) -> float:
        """:func:`apply_gradients` with this SVI's optimiser and parameters."""
        return apply_gradients(self.optim, self.params, loss)


def nonfinite(loss: float, params: Sequence[torch.Tensor]) -> str:
    """A description of what is not finite in ``loss`` or the gradients of ``params``, or
    ``""``."""
    if not math.isfinite(loss):
        return f"non-finite loss {loss}"
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return ""
    # fast path: one fused norm per gradient (NaN/inf anywhere makes it non-finite); only a
    # non-finite norm, which huge finite values can also give, is checked element-wise
    if bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
        return ""
    if not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
        return "non-finite gradient"
    return ""


def apply_gradients(optim: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                    loss: float) -> float:
    """Screen ``loss`` and the gradients now in ``.grad``, then take the optimiser step — or
    raise :class:`NonFiniteLossError` leaving the parameters unchanged. Gradients are cleared
    either way. Returns ``loss``."""
    try:
        bad = nonfinite(loss, params)
        if bad:
            raise NonFiniteLossError(bad)
        try:
            optim.step()
        except RuntimeError as err:  # e.g. lr / bias correction beyond float range
            if "overflow" not in str(err):
                raise
            raise NonFiniteLossError(f"the optimiser step overflowed ({err}); lower lr") from err
    finally:
        optim.zero_grad(set_to_none=True)
    return loss


@torch.no_grad()
def elbo_parts(model: Any, *args: Any, seed: int | None = None, **kwargs: Any
               ) -> dict[str, float]:
    """The negative ELBO of one evaluation of ``model.model``/``model.guide`` on ``args``,
    split by sample site: ``"nll_<site>"`` for observed and factor sites (the dynamics term,
    a decoder's likelihood, VICReg's terms), ``"kl_<site>"`` for latent sites (analytic KL
    where torch knows it, else the one-sample estimate), each with its scale (β, γ, the
    mini-batch's ``N / B``) applied. The parts sum to the mean-field ELBO's loss.

    Runs on a fork of torch's RNG seeded with ``seed``, so calling it never changes the
    training trajectory."""
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    with seeded(seed, device, isolate=True), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        guide_tr = poutine.trace(model.guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(
            *args, **kwargs)
    parts: dict[str, float] = {}
    for name, site in model_tr.nodes.items():
        if site["type"] != "sample" or type(site["fn"]).__name__ == "_Subsample":
            continue
        scale = site["scale"]
        if site["is_observed"]:
            value = -(site["fn"].log_prob(site["value"]) * scale).sum()
            parts[f"nll_{name}"] = float(value)
            continue
        if name not in guide_tr.nodes:
            continue
        g = guide_tr.nodes[name]
        try:
            kl = kl_divergence(g["fn"], site["fn"])
        except NotImplementedError:
            kl = g["fn"].log_prob(g["value"]) - site["fn"].log_prob(site["value"])
        parts[f"kl_{name}"] = float((kl * scale).sum())
    for name, site in guide_tr.nodes.items():  # guide-only latents (auxiliary) count too
        if site["type"] == "sample" and not site["is_observed"] and name not in model_tr.nodes \
                and type(site["fn"]).__name__ != "_Subsample":
            parts[f"kl_{name}"] = float((site["fn"].log_prob(site["value"]) * site["scale"]).sum())
    return parts


class HookedSVI:
    """A Pyro :class:`~pyro.infer.SVI` (or any object with ``step``) that also runs a bjepa
    model's training hooks — the same ones :func:`~bjepa.inference.fit` runs: the data start
    (:meth:`~bjepa.models.base.WorldModel.prepare`) before the first step, the encoder warm-up,
    and the EMA target update (:meth:`~bjepa.models.base.WorldModel.after_step`) after every
    step. Build it with :func:`with_hooks`."""

    def __init__(self, svi: Any, model: Any, steps: int, warmup_steps: int | None = None
                 ) -> None:
        if not callable(getattr(svi, "step", None)):
            raise TypeError(f"svi must have a step method (a pyro.infer.SVI), got "
                            f"{type(svi).__name__}")
        for hook in ("prepare", "after_step"):
            if not callable(getattr(model, hook, None)):
                raise TypeError(f"model must be a bjepa world model (it has no {hook}), got "
                                f"{type(model).__name__}")
        self.svi, self.model = svi, model
        self.steps = check_positive_int("steps", steps)
        self.warmup_steps = None if warmup_steps is None else check_nonnegative_int(
            "warmup_steps", warmup_steps)
        self.step_count = 0

    def step(self, context: torch.Tensor, target: torch.Tensor | None = None, *args: Any,
             **kwargs: Any) -> float:
        """``svi.step(context, target, *args, **kwargs)`` with the hooks around it."""
        if self.step_count == 0 and self.warmup_steps is None:
            started = self.model.prepare(context, target)
            self.warmup_steps = self.steps // 10 if started else 0
        elif self.step_count == 0:
            self.model.prepare(context, target)
        self.model.freeze_encoder = self.step_count < self.warmup_steps
        try:
            loss = self.svi.step(context, target, *args, **kwargs)
        finally:
            self.model.freeze_encoder = False
        self.model.after_step(self.step_count, self.steps)
        self.step_count += 1
        return loss

    def __getattr__(self, name: str) -> Any:  # evaluate_loss, optim, ... of the wrapped SVI
        return getattr(self.svi, name)


def with_hooks(svi: Any, model: Any, steps: int, *, warmup_steps: int | None = None
               ) -> HookedSVI:
    """Wrap a plain Pyro ``svi`` so that its ``step`` also runs ``model``'s training hooks.

    ``steps`` is the total number of steps you will take (the EMA schedule and the default
    warm-up, 10 % of ``steps`` after a data start, depend on it). Example::

        svi = with_hooks(SVI(m.model, m.guide, ClippedAdam({"lr": 3e-3}),
                             TraceMeanField_ELBO()), m, steps=1000)
        for _ in range(1000):
            svi.step(x, x_next, 256)
    """
    return HookedSVI(svi, model, steps, warmup_steps)
