"""Encoder and decoder networks shared by every model in :mod:`bjepa.models`.

Networks are plain :class:`torch.nn.Module` factories; models convert them to
:class:`~pyro.nn.PyroModule` so Pyro tracks their parameters. A new encoder family is one
function added with :func:`register_encoder`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bjepa._validation import check_choice, check_positive_int

__all__ = ["DECODERS", "ENCODERS", "HEAD_NETS", "make_encoder", "make_mlp", "register_encoder"]

EncoderFactory = Callable[..., nn.Module]
ENCODERS: dict[str, EncoderFactory] = {}
#: for each encoder family, the network family used for maps *out of* the latent space
#: (decoders of the generative baselines) and for small heads on raw observations
DECODERS: dict[str, str] = {}
HEAD_NETS: dict[str, str] = {}


def register_encoder(name: str, factory: EncoderFactory, *, decoder: str | None = None,
                     head_net: str | None = None) -> None:
    """Register ``factory(in_dim, out_dim, *, hidden_dim, bias) -> nn.Module`` under ``name``.

    :param decoder: family used by VAE/AR decoders paired with this encoder (default: the
        same family).
    :param head_net: family used for latent-to-latent heads (predictors); default ``"mlp"``
        for anything but ``"linear"``.
    """
    ENCODERS[name] = factory
    DECODERS[name] = decoder or name
    HEAD_NETS[name] = head_net or ("linear" if name == "linear" else "mlp")


def make_mlp(in_dim: int, out_dim: int, hidden_dim: int = 64, depth: int = 2,
             bias: bool = True) -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden_dim`` with GELU, then a linear read-out."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden_dim), nn.GELU()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim, bias=bias))
    return nn.Sequential(*layers)


def _linear(in_dim: int, out_dim: int, *, hidden_dim: int = 64, bias: bool = False) -> nn.Module:
    return nn.Linear(in_dim, out_dim, bias=bias)


def _mlp(in_dim: int, out_dim: int, *, hidden_dim: int = 64, bias: bool = True) -> nn.Module:
    return make_mlp(in_dim, out_dim, hidden_dim=hidden_dim, bias=bias)


register_encoder("linear", _linear)
register_encoder("mlp", _mlp)


def make_encoder(kind: str, in_dim: int, out_dim: int, *, hidden_dim: int = 64,
                 bias: bool = False) -> nn.Module:
    """Build a network of family ``kind`` (``"linear"``: one bias-free linear map by default;
    ``"mlp"``: two GELU hidden layers)."""
    check_choice("encoder", kind, ENCODERS)
    check_positive_int("obs_dim", in_dim)
    check_positive_int("latent_dim", out_dim)
    check_positive_int("hidden_dim", hidden_dim)
    return ENCODERS[kind](in_dim, out_dim, hidden_dim=hidden_dim, bias=bias)
