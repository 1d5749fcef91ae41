"""Encoder and decoder networks shared by every model in :mod:`bjepa.models`.

Networks are plain :class:`torch.nn.Module` factories; models convert them to
:class:`~pyro.nn.PyroModule` so Pyro tracks their parameters. A new encoder family is one
function added with :func:`register_encoder`.

An encoder is named by a *spec*: a registered family, optionally followed by the family's
options, ``"family:key=value,key=value"``. The ``"mlp"`` family takes ``depth`` (hidden
layers, default 2) and ``activation`` (``gelu`` by default, or ``tanh``, ``relu``, ``silu``,
``elu``); its width is the models' ``hidden_dim``::

    make_encoder("mlp", 20, 4)                                  # 2 × 64, GELU (the default)
    make_encoder("mlp:depth=1,activation=tanh", 20, 4, hidden_dim=32)  # 1 × 32, Tanh
    VJEPA(20, 4, encoder=mlp_spec(depth=1, activation="tanh"), hidden_dim=32)

A model stores its spec string and ``hidden_dim`` among its constructor arguments, so run
configs and checkpoints rebuild the same network. The decoders (:data:`DECODERS`) and
latent-space heads (:data:`HEAD_NETS`) of a spec are its family's, with the same options when
they are that same family: with ``"mlp:depth=1,activation=tanh"`` every network of a model is
a one-layer Tanh MLP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from bjepa._validation import check_choice, check_positive_int

__all__ = ["ACTIVATIONS", "DECODERS", "ENCODERS", "ENCODER_OPTIONS", "HEAD_NETS",
           "make_encoder", "make_mlp", "mlp_spec", "parse_encoder_spec", "register_encoder"]

EncoderFactory = Callable[..., nn.Module]
#: parses one option's text from a spec (e.g. ``"1"``) into the value the factory takes
OptionParser = Callable[[str], Any]


class _FamilyMap(dict[str, str]):
    """Family name → the family of its decoders (or heads); a spec with options maps to the
    same spec when the target is its own family, else to the target family as registered."""

    def __missing__(self, spec: str) -> str:
        family, sep, _ = spec.partition(":") if isinstance(spec, str) else (spec, "", "")
        if not sep or family not in self:
            raise KeyError(spec)
        parse_encoder_spec(spec)  # a bad option raises ValueError naming it
        target = self[family]
        return spec if target == family else target


ENCODERS: dict[str, EncoderFactory] = {}
#: for each encoder family, the network family used for maps *out of* the latent space
#: (decoders of the generative baselines) and for small heads on raw observations
DECODERS: dict[str, str] = _FamilyMap()
#: for each encoder family, the network family used for latent-to-latent heads (predictors)
HEAD_NETS: dict[str, str] = _FamilyMap()
#: for each family, the options its spec may carry and how each is parsed
ENCODER_OPTIONS: dict[str, dict[str, OptionParser]] = {}
#: activations of the ``"mlp"`` family, by spec name
ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "tanh": nn.Tanh, "relu": nn.ReLU,
                                           "silu": nn.SiLU, "elu": nn.ELU}
_RESERVED = ":,= "


def register_encoder(name: str, factory: EncoderFactory, *, decoder: str | None = None,
                     head_net: str | None = None,
                     options: Mapping[str, OptionParser] | None = None) -> None:
    """Register ``factory(in_dim, out_dim, *, hidden_dim, bias, **options) -> nn.Module``
    under ``name``.

    :param decoder: family used by VAE/AR decoders paired with this encoder (default: the
        same family).
    :param head_net: family used for latent-to-latent heads (predictors); default ``"mlp"``
        for anything but ``"linear"``.
    :param options: the keyword options a spec ``"name:key=value,..."`` may pass to
        ``factory``, each with a function that parses its text (and raises ``ValueError`` for
        a bad value).
    """
    if not isinstance(name, str) or not name or any(c in name for c in _RESERVED):
        raise ValueError(f"encoder name must be a non-empty string without ':', ',', '=' or "
                         f"spaces (they separate a spec's options), got {name!r}")
    ENCODERS[name] = factory
    DECODERS[name] = decoder or name
    HEAD_NETS[name] = head_net or ("linear" if name == "linear" else "mlp")
    ENCODER_OPTIONS[name] = dict(options or {})


def parse_encoder_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"family:key=value,..."`` into the registered family and its parsed options.

    :raises ValueError: naming the spec and the fix, for an unknown family, an option the
        family does not take, a repeated option or a bad value.
    """
    if not isinstance(spec, str):
        raise TypeError(f"encoder must be a string such as 'mlp' or "
                        f"'mlp:depth=1,activation=tanh', got {type(spec).__name__}")
    family, sep, rest = spec.partition(":")
    check_choice("encoder", family, ENCODERS)
    if not sep:
        return family, {}
    takes = ENCODER_OPTIONS.get(family, {})
    if not takes:
        raise ValueError(f"encoder {spec!r}: the {family!r} family takes no options; use "
                         f"encoder={family!r}")
    options: dict[str, Any] = {}
    for item in rest.split(","):
        key, eq, text = (part.strip() for part in item.partition("="))
        if not eq or not key or not text:
            raise ValueError(f"encoder {spec!r}: options are written key=value, separated by "
                             f"commas (e.g. '{family}:{_example(takes)}'), got {item!r}")
        if key not in takes:
            raise ValueError(f"encoder {spec!r}: the {family!r} family has no option {key!r}; "
                             f"it takes {', '.join(map(repr, takes))}")
        if key in options:
            raise ValueError(f"encoder {spec!r}: option {key!r} is given twice")
        try:
            options[key] = takes[key](text)
        except ValueError as err:
            raise ValueError(f"encoder {spec!r}: {err}") from None
    return family, options


def _example(takes: Mapping[str, OptionParser]) -> str:
    return ",".join(f"{k}=..." for k in takes)


def make_mlp(in_dim: int, out_dim: int, hidden_dim: int = 64, depth: int = 2,
             bias: bool = True, activation: str = "gelu") -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden_dim``, each followed by ``activation`` (a name
    in :data:`ACTIVATIONS`), then a linear read-out (with a bias if ``bias``)."""
    check_positive_int("depth", depth)
    act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden_dim), act()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim, bias=bias))
    return nn.Sequential(*layers)


def mlp_spec(depth: int | None = None, activation: str | None = None) -> str:
    """The encoder spec of an ``"mlp"`` with these options (``None``: the default, 2 and
    ``"gelu"``), checked and written in one canonical form: ``mlp_spec()`` is ``"mlp"``,
    ``mlp_spec(1, "tanh")`` is ``"mlp:depth=1,activation=tanh"``."""
    parts = []
    if depth is not None:
        parts.append(f"depth={_depth(str(depth))}")
    if activation is not None:
        parts.append(f"activation={_activation(str(activation))}")
    return "mlp" + (":" + ",".join(parts) if parts else "")


def _depth(text: str) -> int:
    try:
        depth = int(text)
    except ValueError:
        depth = 0
    if depth < 1 or str(depth) != text.strip():
        raise ValueError(f"depth must be a whole number of hidden layers >= 1, got {text!r} "
                         "(for no hidden layer use encoder='linear')")
    return depth


def _activation(text: str) -> str:
    name = text.strip().lower()
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {text!r}; choose one of "
                         f"{', '.join(map(repr, ACTIVATIONS))}")
    return name


def _linear(in_dim: int, out_dim: int, *, hidden_dim: int = 64, bias: bool = False) -> nn.Module:
    return nn.Linear(in_dim, out_dim, bias=bias)


def _mlp(in_dim: int, out_dim: int, *, hidden_dim: int = 64, bias: bool = True,
         depth: int = 2, activation: str = "gelu") -> nn.Module:
    return make_mlp(in_dim, out_dim, hidden_dim=hidden_dim, depth=depth, bias=bias,
                    activation=activation)


register_encoder("linear", _linear)
register_encoder("mlp", _mlp, options={"depth": _depth, "activation": _activation})


def make_encoder(kind: str, in_dim: int, out_dim: int, *, hidden_dim: int = 64,
                 bias: bool = False) -> nn.Module:
    """Build a network of spec ``kind`` (``"linear"``: one bias-free linear map by default;
    ``"mlp"``: two GELU hidden layers; ``"mlp:depth=1,activation=tanh"``: one Tanh hidden
    layer; see the module docstring)."""
    family, options = parse_encoder_spec(kind)
    check_positive_int("obs_dim", in_dim)
    check_positive_int("latent_dim", out_dim)
    check_positive_int("hidden_dim", hidden_dim)
    return ENCODERS[family](in_dim, out_dim, hidden_dim=hidden_dim, bias=bias, **options)
