"""Shared machinery of every world model: Pyro scoping, data checks, the EMA target, and the
data-dependent canonical-correlation initialisation of the encoder's last linear layer."""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Any

import pyro.nn
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.elbo import ELBO
from pyro.nn import PyroModule
from torch import nn

from bjepa._util import seeded
from bjepa._validation import check_choice, check_tensor
from bjepa.metrics import canonical_directions, predictive_information
from bjepa.models.ema import (
    EMATarget,
    TauSchedule,
    constant_tau,
    cosine_tau,
    make_tau_schedule,
)
from bjepa.models.preprocess import (
    Standardizer,
    UnstandardizedDataWarning,
    is_standardized,
    looks_unstandardized,
)

__all__ = [
    "HOOK_GUARD_EVALUATIONS",
    "TrainingHints",
    "WorldModel",
    "canonical_directions",
    "init_input_layer",
    "last_layer_inputs",
    "last_linear",
    "per_row_loss",
    "rows",
]

_instance_ids = itertools.count()

#: a model whose encoder got this many gradient evaluations (train mode) without
#: :meth:`WorldModel.after_step` — or without :meth:`WorldModel.prepare` when it asks for a data
#: start — warns once, naming the hook (see docs/pyro.md)
HOOK_GUARD_EVALUATIONS = 100


@dataclass(frozen=True)
class TrainingHints:
    """What a model tells the trainer about itself (instead of the trainer probing attributes).

    :param min_batch_size: rows a training step needs at least (VICReg's variance needs 2).
    :param jit_safe: whether ``elbo="auto"`` may compile the program (static structure, no
        Python-side randomness or state).
    :param max_plate_nesting: the deepest nesting of plates in the program (2 for a replica
        stack: replicas × data).
    :param replicas: how many models the program trains at once (the loss per observation is
        divided by rows × replicas).
    :param stackable: whether several models of this class can train as one replica stack
        (sequence models that read their data as one time series cannot).
    :param inductor_safe: whether ``elbo="inductor"`` may compile the program (``None``: as
        ``jit_safe``; a replica stack with per-replica noise generators is inductor-safe but
        not jit-safe).
    """

    min_batch_size: int = 1
    jit_safe: bool = True
    max_plate_nesting: int = 1
    replicas: int = 1
    stackable: bool = True
    inductor_safe: bool | None = None

    @property
    def compilable_by_inductor(self) -> bool:
        return self.jit_safe if self.inductor_safe is None else self.inductor_safe


def per_row_loss(loss_fn: ELBO, model: Any, context: torch.Tensor,
                 target: torch.Tensor | None, *, seed: int | None = None,
                 chunk: int | None = None, **model_kwargs: Any) -> float:
    """``loss_fn``'s negative ELBO of ``model`` per row of ``(context, target)``, without
    gradients, on a fork of torch's RNG seeded with ``seed`` (``None``: unseeded; the caller's
    stream is not advanced either way), ``chunk`` rows at a time (``None``: all at once).
    ``model_kwargs`` (per-row tensors such as a prior's ``eta``) are chunked with the data."""
    n = context.shape[-2]
    step = chunk or n
    total = 0.0
    with torch.no_grad(), seeded(seed, context.device, isolate=True):
        for i in range(0, n, step):
            tgt = None if target is None else target[..., i:i + step, :]
            kw = {k: (v[..., i:i + step, :] if isinstance(v, torch.Tensor) and v.ndim >= 2
                      and v.shape[-2] == n else v) for k, v in model_kwargs.items()}
            total += float(loss_fn.loss(model.model, model.guide, context[..., i:i + step, :],
                                        tgt, **kw))
    return total / n


def to_pyro(module: nn.Module) -> nn.Module:
    """Convert a plain network (recursively) so Pyro tracks its parameters."""
    pyro.nn.module.to_pyro_module_(module)
    return module


def rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The rows ``idx`` of ``x`` along dim -2 (the data dim; a leading dim, if any, holds
    replicas). A full plate's ``arange`` returns ``x`` itself, without a copy."""
    return x if idx.shape[0] == x.shape[-2] else x.index_select(-2, idx)


def last_linear(module: nn.Module) -> nn.Linear:
    """The final ``nn.Linear`` of a network (the layer that maps features to latents)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the encoder has no nn.Linear layer to initialise")
    return linears[-1]


def last_layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Inputs of the final linear layer (``x`` itself for a linear encoder)."""
    last = last_linear(module)
    captured: list[torch.Tensor] = []
    handle = last.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            module(x)
    finally:
        handle.remove()
    return captured[0].reshape(x.shape[0], -1)


def init_input_layer(encoder: nn.Module, context: torch.Tensor, target: torch.Tensor) -> None:
    """Give the encoder's input layer its data-dependent start, if it has one (the conv
    encoder's patch CCA, :meth:`bjepa.models.conv.FrameStackEncoder.init_first_layer`)."""
    hook = getattr(encoder, "init_first_layer", None)
    if hook is not None:
        hook(context, target)


class WorldModel(PyroModule):
    """Base class: a Pyro model/guide pair over ``(context, target)`` pairs.

    Subclasses implement ``model`` and ``guide`` with identical signatures
    ``(context, target, batch_size=None)`` and ``encode``. ``probe_offset`` says which true
    state a representation of ``x_t`` is probed against (0: ``s_t``, 1: ``s_{t+1}``).
    """

    probe_offset: int = 1
    needs_target: bool = True
    #: set by the trainer during warm-up: the encoder gets no gradient.
    freeze_encoder: bool = False
    #: whether ``elbo="auto"`` may compile this model's program (static structure)
    jit_safe: bool = True
    #: whether ``elbo="inductor"`` may compile it (``None``: as ``jit_safe``); it records
    #: below Python, so a constrained ``PyroParam`` that TorchScript cannot follow is fine
    inductor_safe: bool | None = None
    #: rows a training step needs at least
    min_batch_size: int = 1
    #: whether several models of this class can train as one replica stack
    stackable: bool = True
    #: ``"cca"``: :meth:`prepare` gives the encoder its data-dependent start; ``"random"``: none
    init: str = "random"

    def __init__(self, obs_dim: int, latent_dim: int) -> None:
        super().__init__(name=f"{type(self).__name__.lower()}{next(_instance_ids)}")
        self.obs_dim = obs_dim
        self.latent_dim = latent_dim
        self._ema: EMATarget | None = None
        #: constructor arguments, enough to rebuild the model from a checkpoint
        self.hparams: dict[str, Any] = {}
        self.tau_schedule: TauSchedule | None = None
        #: fitted on the training data (:class:`~bjepa.models.preprocess.Standardizer`):
        #: ``check_inputs``, ``encode`` and ``predict`` apply it to raw observations, and it
        #: is saved with the model's extra state
        self.standardizer: Standardizer | None = None
        self._warned_unstandardized = False
        # the hook guard (see HOOK_GUARD_EVALUATIONS): training evaluations since the last
        # after_step, whether the data start ran, and which warnings were given
        self._evals_since_step = 0
        self._started = False
        self._hook_warned: set[str] = set()

    # -- data -------------------------------------------------------------------------------
    def check_inputs(self, context: torch.Tensor, target: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validate a ``(context, target)`` pair against this model; raise naming the argument.

        With a :attr:`standardizer` the pair is taken as raw observations and returned
        standardised; without one, data that look unstandardised draw one warning per model."""
        if isinstance(context, torch.Tensor) and context.dim() == 3:
            raise ValueError(
                f"context must have 2 dimensions, got shape {tuple(context.shape)}; for "
                "episodes (episodes, T, D) build pairs that do not cross episodes with "
                "bjepa.data.make_pairs(x).tensors() (a list of episodes of any lengths works too)")
        self._check_width("context", context)
        check_tensor("context", context, ndim=2, last_dim=self.obs_dim)
        self._check_latent_dim()
        if target is None:
            if self.needs_target:
                raise ValueError(f"{type(self).__name__} needs a target (the next frames)")
            return self._standardized("context", context), None
        self._check_width("target", target)
        check_tensor("target", target, ndim=2, last_dim=self.obs_dim)
        if target.shape[0] != context.shape[0]:
            raise ValueError(
                f"context and target must have the same number of rows, got "
                f"{context.shape[0]} and {target.shape[0]}"
            )
        if target.device != context.device:
            raise ValueError("context and target must be on the same device")
        return self._standardized("context", context), self._standardized("target", target)

    @property
    def standardizer(self) -> Standardizer | None:
        """The input standardiser (``None``: inputs are used as given)."""
        return self.__dict__.get("_standardizer")

    @standardizer.setter
    def standardizer(self, value: Standardizer | None) -> None:
        if value is not None:
            if not isinstance(value, Standardizer):
                raise TypeError("standardizer must be a bjepa.models.preprocess.Standardizer "
                                f"or None, got {type(value).__name__}")
            if value.width != self.obs_dim:
                raise ValueError(f"the standardizer reads rows of {value.width} values, the "
                                 f"model's obs_dim is {self.obs_dim}")
        self.__dict__["_standardizer"] = value

    def _check_width(self, name: str, x: Any) -> None:
        if self.standardizer is not None and isinstance(x, torch.Tensor):
            self.standardizer.check_width(name, x)

    def _check_latent_dim(self) -> None:
        """A bias-free linear encoder cannot make more latent dimensions than it reads."""
        if self.hparams.get("encoder") == "linear" and self.latent_dim > self.obs_dim:
            k = -(-self.latent_dim // self.obs_dim)
            raise ValueError(
                f"latent_dim={self.latent_dim} > obs_dim={self.obs_dim}: a linear encoder cannot "
                f"make {self.latent_dim} latent dimensions from {self.obs_dim} value(s) per row; "
                f"stack k >= {k} past frames per context (bjepa.data.make_pairs(x, "
                f"context_frames={k}), or `bjepa train --context-frames {k}`), or use "
                f"latent_dim <= {self.obs_dim}")

    def _standardized(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.standardizer is None:
            if not self._warned_unstandardized:
                reason = looks_unstandardized(x)
                if reason is not None:
                    self._warned_unstandardized = True
                    warnings.warn(
                        f"{name} looks unstandardised ({reason}): train on standardised data, "
                        "e.g. model.standardizer = bjepa.data.Standardizer.fit(train_frames) "
                        "before fit (bjepa.data.load_pairs and `bjepa train --data` do this "
                        "for you)", UnstandardizedDataWarning, stacklevel=3)
            return x
        return x if is_standardized(x) else self.standardizer(x)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- EMA target -------------------------------------------------------------------------
    def _init_ema(self, source: nn.Module, tau: float | str | TauSchedule) -> None:
        self.tau_schedule = make_tau_schedule(tau)
        self._ema = EMATarget(source)

    @property
    def target_encoder(self) -> nn.Module | None:
        """The EMA copy of the context encoder (no gradients), or ``None``."""
        return None if self._ema is None else self._ema.module

    # -- the training protocol (the trainer and a plain Pyro loop call the same hooks) --------
    def training_hints(self) -> TrainingHints:
        """What the trainer needs to know about this model."""
        return TrainingHints(min_batch_size=self.min_batch_size, jit_safe=self.jit_safe,
                             stackable=self.stackable, inductor_safe=self.inductor_safe)

    def step_inputs(self, context: torch.Tensor, target: torch.Tensor | None,
                    batch_size: int | None, **model_kwargs: Any
                    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments of ``model``/``guide`` for one training step on in-memory data: the
        whole tensors, with ``pyro.plate(subsample_size=batch_size)`` drawing the rows."""
        return (context, target), {"batch_size": batch_size, **model_kwargs}

    def prepare(self, context: torch.Tensor, target: torch.Tensor | None) -> bool:
        """Call once before training: the data-dependent start when the model asks for one
        (``init="cca"`` and a target; :meth:`init_from_data`). Returns whether it ran (the
        trainer then holds the encoder fixed for a warm-up, 10 % of the steps by default)."""
        if self.init != "cca" or target is None:
            self._started = True
            return False
        self.init_from_data(context, target)
        return True

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Call after every optimiser step ``step`` of ``total_steps`` (0-based): moves the EMA
        target ``θ' ← τ(step) θ' + (1 − τ(step)) θ``. Returns values worth logging (τ)."""
        self._evals_since_step = 0
        if self._ema is None or self.tau_schedule is None:
            return {}
        tau = float(self.tau_schedule(step, total_steps))
        self._ema.update(self.context_encoder, tau)
        return {"tau": tau}

    def _guard_hooks(self) -> None:
        """Count a gradient evaluation; warn once when the hooks are evidently not called."""
        self._evals_since_step += 1
        if self._evals_since_step != HOOK_GUARD_EVALUATIONS:
            return
        name = type(self).__name__
        if self.init == "cca" and not self._started and "prepare" not in self._hook_warned:
            self._hook_warned.add("prepare")
            warnings.warn(
                f"{name} (init='cca') has taken {HOOK_GUARD_EVALUATIONS} gradient steps "
                "without its data-dependent start: call model.prepare(context, target) once "
                "before training (fit and with_hooks do; see docs/pyro.md), or build it with "
                "init='random'", UserWarning, stacklevel=3)
        if self._ema is not None and "after_step" not in self._hook_warned:
            self._hook_warned.add("after_step")
            warnings.warn(
                f"{name} has taken {HOOK_GUARD_EVALUATIONS} gradient steps without an EMA "
                "target update: call model.after_step(step, total_steps) after every optimiser "
                "step (or wrap your SVI with with_hooks, docs/pyro.md); a stale target lets "
                "the predicted variance collapse", UserWarning, stacklevel=3)

    def _apply(self, fn: Any, recurse: bool = True):  # moves the EMA copy with .to()/.double()
        super()._apply(fn, recurse)
        if self._ema is not None:
            self._ema.module._apply(fn, recurse)
        return self

    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {} if self._ema is None else dict(self._ema.module.state_dict())
        if self.standardizer is not None:
            state["standardizer"] = self.standardizer.state()
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._started = True  # restored weights are trained (or were started) already
        state = dict(state or {})  # checkpoints before the standardiser hold the EMA alone
        std = state.pop("standardizer", None)
        self.standardizer = None if std is None else Standardizer.from_state(std)
        if self._ema is not None and state:
            self._ema.module.load_state_dict(state)

    # -- initialisation ---------------------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self, context: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Point the context encoder's last linear layer at the leading canonical directions
        between features of ``context`` and ``target`` (and copy it to the EMA target). An
        encoder with an ``init_first_layer(context, target)`` method (the conv encoder) gets its
        input layer started the same way first.

        Returns the canonical correlations found.
        """
        encoder = self.context_encoder
        init_input_layer(encoder, context, target)
        a, b = last_layer_inputs(encoder, context), last_layer_inputs(encoder, target)
        if a.shape[1] < self.latent_dim:
            raise ValueError(
                f"init='cca' needs latent_dim <= the encoder's feature size {a.shape[1]}, got "
                f"latent_dim={self.latent_dim}; use init='random' or a smaller latent_dim")
        weight, rho = canonical_directions(a, b, self.latent_dim)
        layer = last_linear(encoder)
        layer.weight.copy_(weight.to(layer.weight))
        if layer.bias is not None:
            layer.bias.copy_(-(a.mean(0) @ weight.T.to(a)).to(layer.bias))
        if self._ema is not None:
            self._ema.update(encoder, 0.0)
        self._started = True
        self._init_head(encoder(context), self._ema(target) if self._ema else encoder(target))
        return rho

    def _init_head(self, z_context: torch.Tensor, z_target: torch.Tensor) -> None:
        """Give the predictor head its closed-form start, if it has one."""
        head = getattr(self, "predictor", None)
        values = head.init_values(z_context, z_target) if hasattr(head, "init_values") else None
        for name, value in (values or {}).items():
            head.get_parameter(name).copy_(value)

    # -- public API -------------------------------------------------------------------------
    def as_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Validate observations ``x`` (named ``name`` in errors) and cast them to the model's
        dtype; data on another device than the model is refused. Raw observations are
        standardised with :attr:`standardizer` (once: tensors that
        :meth:`check_inputs` returned are not standardised again)."""
        p = next(self.parameters())
        self._check_width(name, x)
        check_tensor(name, x, ndim=2, last_dim=self.obs_dim, device=p.device)
        if self.standardizer is not None and not is_standardized(x):
            x = self.standardizer(x)  # in the input's precision, then cast
        return x.to(p.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The representation used by probes, ``(N, latent_dim)``, without gradients."""
        x = self.as_input("x", x)
        with torch.no_grad():
            return self._encode(x)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.context_encoder(x)

    def context_latent(self, x: torch.Tensor) -> torch.Tensor:
        """``f_θ(x)`` for training: detached while the encoder is frozen (warm-up)."""
        z = self.context_encoder(x)
        if self.freeze_encoder:
            return z.detach()
        if self.training and z.requires_grad:  # counts gradient steps, not mere evaluations
            z.register_hook(self._on_backward)
        return z

    def _on_backward(self, grad: torch.Tensor) -> None:
        self._guard_hooks()

    @torch.no_grad()
    def selection_score(self, context: torch.Tensor, target: torch.Tensor | None = None, *,
                        chunk: int = 2048, seed: int = 0) -> float:
        """A label-free score of this trained model on ``(context, target)`` — higher is better —
        that is comparable across training restarts on the same data
        (``fit_restarts`` keeps the best restart).

        Models with an EMA target encoder (VJEPA, BJEPA, JEPA) score the predictive information
        ``I(f_θ(x_C); f_θ'(x_T))`` (nats, Gaussian estimate,
        :func:`bjepa.metrics.predictive_information`): their training objectives are not
        comparable across restarts — VJEPA's falls without bound as the latent scale shrinks, so
        collapsed restarts have the *lowest* loss — while this score is scale-invariant and 0 for
        a collapsed or unpredictable representation. Other models score the ELBO per row (one
        ``Trace_ELBO`` particle on a fork of the RNG seeded with ``seed``, ``chunk`` rows at a
        time).
        """
        context, target = self.check_inputs(context, target)
        if self._ema is not None and target is not None:
            return predictive_information(self.encode(context).double(),
                                          self._ema(self.as_input("target", target)).double())
        return -per_row_loss(Trace_ELBO(), self, context, target, seed=seed, chunk=chunk)


def tau_spec(tau: Any) -> float | str:
    """A JSON/checkpoint-friendly description of a τ setting."""
    if isinstance(tau, int | float | str):
        return tau
    if isinstance(tau, cosine_tau):
        return f"cosine:{tau.start}:{tau.end}"
    if isinstance(tau, constant_tau):
        return tau.tau
    return "custom"  # a user callable: load_model asks for it again


def validated_init(init: str) -> str:
    return check_choice("init", init, ["random", "cca"])
