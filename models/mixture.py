"""Mixture-density predictor head: a multimodal ``p_φ(z_T | z_C)``.

See docs/method.md#predictor-heads and docs/method.md#multimodal-hallway.

A single Gaussian head can only put its mass around one point; when the future branches (an
agent at a fork turns left or right) its mean falls between the branches. The mixture density
network (MDN, Bishop 1994) predicts ``K`` diagonal Gaussians and their weights instead::

    logits, m_1..m_K, r_1..r_K = net(z_C)
    π      = softmax(logits)                                # computed as a log-softmax
    s_k    = softplus(r_k) + min_scale                      # positive, bounded away from 0
    z_T | z_C ~ Σ_k π_k N(m_k, diag s_k²)                   # MixtureSameFamily

Importing this module registers the head as ``"mdn"`` (``K = 5``), so every model that takes
``head=...`` can use it, e.g. ``VJEPA(obs_dim, 2, head="mdn")``; the VJEPA ELBO only needs
``log_prob`` and ``mean``, which the mixture provides. Another ``K`` is one line, either
through :func:`register_mdn` or directly with :func:`functools.partial`::

    register_mdn(3)                                    # registers "mdn3"
    register_head("mdn-wide", functools.partial(MixtureDensityHead, n_components=8,
                                                min_scale=1e-2))

A model saved with a head registered this way is rebuilt by name, so register the same name
before loading its checkpoint.
"""

from __future__ import annotations

import functools

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution

from bjepa._validation import check_nonnegative, check_positive, check_positive_int
from bjepa.models.encoders import make_encoder
from bjepa.models.heads import HEADS, HeadFactory, register_head

__all__ = ["DEFAULT_COMPONENTS", "MixtureDensityHead", "mdn_factory", "register_mdn"]

#: number of components of the head registered as ``"mdn"``
DEFAULT_COMPONENTS = 5


class MixtureDensityHead(nn.Module):
    """``z_T | z_C ~ Σ_k π_k(z_C) N(m_k(z_C), diag s_k(z_C)²)`` read from one network.

    :param in_dim: size of the context latent ``z_C``.
    :param latent_dim: size of the predicted target latent ``z_T``.
    :param net: network family (``"linear"`` or ``"mlp"``, see :mod:`.encoders`).
    :param hidden_dim: width of the hidden layers of an ``"mlp"`` network.
    :param n_components: number of mixture components ``K``.
    :param min_scale: floor added to every component scale (keeps components from shrinking
        onto single points, the classic MDN degeneracy).
    :param init_spread: standard deviation of the random offsets given to the component means
        at initialisation, so that components start apart and can specialise to different modes
        (``0`` starts them together; symmetry is then broken only by the random weights).

    Example::

        head = MixtureDensityHead(2, 2, net="mlp", n_components=3)
        pred = head(torch.randn(10, 2))     # batch (10,), event (2,)
        pred.log_prob(torch.randn(10, 2))   # (10,)
    """

    def __init__(self, in_dim: int, latent_dim: int, *, net: str = "linear", hidden_dim: int = 64,
                 n_components: int = DEFAULT_COMPONENTS, min_scale: float = 1e-3,
                 init_spread: float = 0.5) -> None:
        super().__init__()
        check_positive_int("in_dim", in_dim)
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.n_components = check_positive_int("n_components", n_components)
        self.min_scale = check_positive("min_scale", min_scale)
        init_spread = check_nonnegative("init_spread", init_spread)
        k, d = self.n_components, self.latent_dim
        self.net = make_encoder(net, in_dim, k + 2 * k * d, hidden_dim=hidden_dim, bias=True)
        last = [m for m in self.net.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.bias[:k].zero_()  # equal weights to start
            last.bias[k:k + k * d].normal_(0.0, 1.0).mul_(init_spread)

    def mixture_params(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log_weights, loc, scale)`` with shapes ``(..., K)``, ``(..., K, D)``, ``(..., K, D)``.

        ``log_weights`` is normalised (a log-softmax), so ``log_weights.exp().sum(-1) == 1``.
        """
        k, d = self.n_components, self.latent_dim
        logits, loc, raw = self.net(z).split([k, k * d, k * d], dim=-1)
        log_weights = F.log_softmax(logits, dim=-1)
        loc = loc.unflatten(-1, (k, d))
        scale = F.softplus(raw.unflatten(-1, (k, d))) + self.min_scale
        return log_weights, loc, scale

    def forward(self, z: torch.Tensor) -> Distribution:
        log_weights, loc, scale = self.mixture_params(z)
        return dist.MixtureSameFamily(dist.Categorical(logits=log_weights),
                                      dist.Normal(loc, scale).to_event(1))


def mdn_factory(n_components: int, *, min_scale: float = 1e-3,
                init_spread: float = 0.5) -> HeadFactory:
    """A head factory (for :func:`register_head`) building a ``K``-component MDN."""
    check_positive_int("n_components", n_components)
    check_positive("min_scale", min_scale)
    check_nonnegative("init_spread", init_spread)
    return functools.partial(MixtureDensityHead, n_components=n_components, min_scale=min_scale,
                             init_spread=init_spread)


def register_mdn(n_components: int, name: str | None = None) -> str:
    """Register a ``K``-component MDN head (as ``"mdn<K>"`` unless ``name`` is given).

    Registering the same name twice is harmless. Returns the name to pass as ``head=``.
    """
    check_positive_int("n_components", n_components)
    name = name or f"mdn{n_components}"
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    existing = HEADS.get(name)
    if existing is not None:
        same = (isinstance(existing, functools.partial)
                and existing.func is MixtureDensityHead
                and existing.keywords.get("n_components") == n_components)
        if not same:
            raise ValueError(f"head name {name!r} is already registered as a different head; "
                             "pass another name")
        return name
    register_head(name, mdn_factory(n_components))
    return name


register_head("mdn", mdn_factory(DEFAULT_COMPONENTS))
