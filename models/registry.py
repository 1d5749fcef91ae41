"""One registry of the world models that the CLI and every experiment list and build.

A registered model is a name, a builder ``builder(obs_dim, latent_dim, **kwargs)`` (usually the
class itself), the experiment-wide settings it takes (``shared``: e.g. β and τ for the
predictive models, only the encoder for the VAE), a colour for figures and a one-line
description. Experiments build every model the same way::

    from bjepa.models.registry import available_models, build_model

    for name in available_models():
        m = build_model(name, obs_dim, 4, settings={"encoder": "mlp", "beta": 0.01})

Register your own (it then appears in ``--models`` of the experiment commands)::

    @register_model("mymodel", shared=("encoder",), description="my baseline")
    def build_mine(obs_dim, latent_dim, encoder="linear"):
        return MyModel(obs_dim, latent_dim, encoder=encoder)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelSpec", "available_models", "build_model", "model_color", "model_spec",
           "register_model"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: see the module docstring."""

    name: str
    builder: Callable[..., Any]
    shared: tuple[str, ...]
    color: str
    description: str


_REGISTRY: dict[str, ModelSpec] = {}
_PALETTE = [f"C{i}" for i in range(10)]


def register_model(name: str, *, shared: Sequence[str] = (), color: str | None = None,
                   description: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``builder(obs_dim, latent_dim, **kwargs)`` as model ``name``."""
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"model name must be a non-empty lower-case string, got {name!r}")

    def add(builder: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(builder):
            raise TypeError(f"builder for {name!r} must be callable")
        _REGISTRY[name] = ModelSpec(name, builder, tuple(shared),
                                    color or _PALETTE[len(_REGISTRY) % len(_PALETTE)],
                                    description)
        return builder

    return add


def available_models() -> list[str]:
    """Registered model names, in registration order."""
    return list(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name`` (an error lists the registered names)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {available_models()}") from None


def model_color(name: str) -> str:
    """The figure colour of ``name`` (grey for unknown names)."""
    spec = _REGISTRY.get(name)
    return spec.color if spec else "C7"


def build_model(name: str, obs_dim: int, latent_dim: int = 4, *,
                settings: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Build model ``name``: ``settings`` are experiment-wide options, of which it takes the
    ones it declares as ``shared`` (``None`` values are left at the model's default);
    ``kwargs`` are passed as they are."""
    spec = model_spec(name)
    taken = {k: v for k, v in (settings or {}).items() if k in spec.shared and v is not None}
    return spec.builder(obs_dim, latent_dim, **{**taken, **kwargs})


def _register_builtins() -> None:
    from bjepa.models.bjepa import BJEPA
    from bjepa.models.jepa import JEPA
    from bjepa.models.vae import VAE, AutoRegressive
    from bjepa.models.vjepa import VJEPA

    predictive = ("encoder", "hidden_dim", "beta", "tau", "init")
    for name, cls, shared, color, text in [
        ("vjepa", VJEPA, predictive, "C0", "variational JEPA (Gaussian predictive, EMA target)"),
        ("bjepa", BJEPA, predictive, "C1", "VJEPA with a structural prior (Bayesian JEPA)"),
        ("jepa", JEPA, ("encoder", "hidden_dim", "tau", "init"), "C2",
         "deterministic JEPA with VICReg terms"),
        ("vae", VAE, ("encoder", "hidden_dim"), "C3", "VAE reconstructing the frame"),
        ("ar", AutoRegressive, ("encoder", "hidden_dim"), "C4",
         "autoregressive VAE predicting the next frame"),
    ]:
        _check_shared(cls, shared)
        register_model(name, shared=shared, color=color, description=text)(cls)


def _check_shared(builder: Callable[..., Any], shared: Sequence[str]) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    missing = [s for s in shared if s not in params]
    if missing:  # a programming error in a registration, caught at import
        raise TypeError(f"{builder.__name__} does not take {missing}")


_register_builtins()
