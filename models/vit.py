"""A small Vision Transformer encoder for flat frame stacks (``encoder="vit"``).

Same input convention as the conv encoder (:mod:`bjepa.models.conv`): a stack of ``k`` frames of
``H × W`` pixels is passed flat, ``(N, k·H·W)`` in C order, and the ``k`` frames are the input
channels. The network (Dosovitskiy et al. 2021, pre-norm blocks):

1. patch embedding: non-overlapping ``patch × patch`` patches of all ``k`` channels, each mapped
   linearly to ``dim`` values (a strided convolution), plus a learned position embedding;
2. ``depth`` transformer blocks ``x ← x + MHA(LN(x))``, ``x ← x + MLP(LN(x))`` with ``heads``
   attention heads and a GELU MLP of width ``mlp_ratio · dim``;
3. a final LayerNorm, the mean over patches (``pool="mean"``) or a learned CLS token
   (``pool="cls"``), then ``Linear(dim, hidden_dim) → ReLU → Linear(hidden_dim, out_dim)``.

Its last two parameter tensors are the final linear layer's weight and bias, like the conv and
MLP encoders' (VJEPA's variance head relies on that to start homoscedastic), and a model's
``init="cca"`` start points that last layer at the canonical directions between context and
target features.

Selecting it:

- ``encoder="vit"`` infers the geometry from ``obs_dim`` exactly as ``"conv"`` does
  (:func:`bjepa.models.conv.infer_frame_shape`) and uses patch 4, width 64, depth 2, 4 heads;
- :func:`register_vit` registers an explicit geometry and any patch size, width, depth and
  head count under its own name (returned), with the matching transposed-convolution decoder for
  the generative baselines.

Example::

    name = register_vit(2, 32, patch=4, dim=64, depth=2, heads=4)
    m = VJEPA(obs_dim=2 * 32 * 32, latent_dim=16, encoder=name)
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from bjepa._validation import check_choice, check_positive_int
from bjepa.models.conv import infer_frame_shape, register_conv
from bjepa.models.encoders import EncoderFactory, register_encoder

__all__ = ["DEFAULT_VIT", "TransformerBlock", "VisionTransformerEncoder", "register_vit",
           "vit_factory"]

#: patch size, width, depth and heads of ``encoder="vit"``
DEFAULT_VIT: dict[str, int] = {"patch": 4, "dim": 64, "depth": 2, "heads": 4}


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: multi-head self-attention and a GELU MLP, both residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("heads", heads)
        if dim % heads:
            raise ValueError(f"heads must divide dim (the width), got dim={dim}, heads={heads}")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        width = max(1, int(round(mlp_ratio * dim)))
        self.mlp = nn.Sequential(nn.Linear(dim, width), nn.GELU(), nn.Linear(width, dim))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over the tokens of ``x`` ``(B, P, dim)``."""
        b, p, d = x.shape
        q, k, v = self.qkv(x).reshape(b, p, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)                  # (B, heads, P, d/heads)
        return self.proj(y.transpose(1, 2).reshape(b, p, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformerEncoder(nn.Module):
    """ViT on flat frame stacks: ``(..., k·H·W) → (..., out_dim)`` (see the module docstring).

    :param frames: frames per stack ``k`` (input channels).
    :param height: frame height ``H`` (a multiple of ``patch``).
    :param width: frame width ``W`` (a multiple of ``patch``).
    :param out_dim: output size (the latent dimension).
    :param patch: side of the square patches.
    :param dim: token width.
    :param depth: number of transformer blocks.
    :param heads: attention heads (must divide ``dim``).
    :param hidden_dim: width of the read-out's hidden layer.
    :param bias: whether the final linear layer has a bias.
    :param pool: ``"mean"`` (mean over patch tokens) or ``"cls"`` (a learned class token).
    :param mlp_ratio: MLP width as a multiple of ``dim``.
    """

    def __init__(self, frames: int, height: int, width: int, out_dim: int, *,
                 patch: int = DEFAULT_VIT["patch"], dim: int = DEFAULT_VIT["dim"],
                 depth: int = DEFAULT_VIT["depth"], heads: int = DEFAULT_VIT["heads"],
                 hidden_dim: int = 256, bias: bool = True, pool: str = "mean",
                 mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.frames = check_positive_int("frames", frames)
        self.height = check_positive_int("height", height)
        self.width = check_positive_int("width", width)
        check_positive_int("out_dim", out_dim)
        check_positive_int("hidden_dim", hidden_dim)
        self.patch = _check_patch(patch, height, width)
        check_positive_int("dim", dim)
        check_positive_int("depth", depth)
        check_positive_int("heads", heads)
        if dim % heads:
            raise ValueError(f"heads must divide dim (the width), got dim={dim}, heads={heads}")
        self.pool = check_choice("pool", pool, ["mean", "cls"])
        self.patches = (height // patch) * (width // patch)
        self.embed = nn.Conv2d(frames, dim, patch, stride=patch)
        tokens = self.patches + (1 if pool == "cls" else 0)
        self.position = nn.Parameter(0.02 * torch.randn(1, tokens, dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(),
                                  nn.Linear(hidden_dim, out_dim, bias=bias))

    @property
    def in_dim(self) -> int:
        return self.frames * self.height * self.width

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Token sequence ``(B, patches [+1], dim)`` after the last block and LayerNorm, for
        flat stacks ``x`` ``(B, k·H·W)``."""
        y = self.embed(x.reshape(-1, self.frames, self.height, self.width))
        y = y.flatten(2).transpose(1, 2)                                # (B, patches, dim)
        if self.cls is not None:
            y = torch.cat([self.cls.expand(y.shape[0], -1, -1), y], dim=1)
        y = y + self.position
        for block in self.blocks:
            y = block(y)
        return self.norm(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"x must have last dimension {self.in_dim} "
                             f"({self.frames}×{self.height}×{self.width}), got {tuple(x.shape)}")
        lead = x.shape[:-1]
        y = self.tokens(x.reshape(-1, self.in_dim))
        pooled = y[:, 0] if self.cls is not None else y.mean(1)
        return self.head(pooled).reshape(*lead, -1)


def _check_patch(patch: int, height: int, width: int) -> int:
    check_positive_int("patch", patch)
    if height % patch or width % patch:
        raise ValueError(f"patch must divide the frame size {height} × {width}, got "
                         f"patch={patch}; choose a divisor such as "
                         f"{math.gcd(height, width)}")
    return patch


def vit_factory(frames: int | None = None, height: int | None = None,
                width: int | None = None, *, patch: int = DEFAULT_VIT["patch"],
                dim: int = DEFAULT_VIT["dim"], depth: int = DEFAULT_VIT["depth"],
                heads: int = DEFAULT_VIT["heads"], pool: str = "mean") -> EncoderFactory:
    """An encoder factory ``(in_dim, out_dim, *, hidden_dim, bias) ->
    VisionTransformerEncoder``; with ``frames=None`` the geometry is inferred from ``in_dim``
    (:func:`bjepa.models.conv.infer_frame_shape`)."""
    for name, value in (("patch", patch), ("dim", dim), ("depth", depth), ("heads", heads)):
        check_positive_int(name, value)
    if dim % heads:
        raise ValueError(f"heads must divide dim (the width), got dim={dim}, heads={heads}")
    check_choice("pool", pool, ["mean", "cls"])
    shape = None
    if frames is not None:
        if height is None:
            raise ValueError("height is required when frames is given")
        width = height if width is None else width
        shape = (check_positive_int("frames", frames), check_positive_int("height", height),
                 check_positive_int("width", width))
        _check_patch(patch, shape[1], shape[2])
    elif height is not None or width is not None:
        raise ValueError("give frames together with height (and optionally width)")

    def factory(in_dim: int, out_dim: int, *, hidden_dim: int = 256,
                bias: bool = True) -> nn.Module:
        if shape is None:
            k, h, w = infer_frame_shape(in_dim)
        else:
            k, h, w = shape
            if k * h * w != in_dim:
                raise ValueError(f"obs_dim must be frames·height·width = {k}·{h}·{w} = "
                                 f"{k * h * w} for this ViT encoder, got {in_dim}")
        return VisionTransformerEncoder(k, h, w, out_dim, patch=patch, dim=dim, depth=depth,
                                        heads=heads, hidden_dim=hidden_dim, bias=bias,
                                        pool=pool)

    return factory


def register_vit(frames: int, height: int, width: int | None = None, *,
                 patch: int = DEFAULT_VIT["patch"], dim: int = DEFAULT_VIT["dim"],
                 depth: int = DEFAULT_VIT["depth"], heads: int = DEFAULT_VIT["heads"],
                 pool: str = "mean", name: str | None = None) -> str:
    """Register a ViT encoder for a fixed geometry and architecture; return its name.

    The default name is ``"vit{k}x{H}x{W}-p{patch}-d{dim}-l{depth}-h{heads}"`` (plus ``"-cls"``
    for CLS pooling). The generative baselines pair it with the transposed-convolution decoder
    of the same geometry (registered by :func:`bjepa.models.conv.register_conv`). Registering
    the same name again replaces the entry with an identical one, so calling this before every
    use (and before loading a checkpoint that used it) is safe.
    """
    width = height if width is None else width
    factory = vit_factory(frames, height, width, patch=patch, dim=dim, depth=depth,
                          heads=heads, pool=pool)
    if name is None:
        name = (f"vit{frames}x{height}x{width}-p{patch}-d{dim}-l{depth}-h{heads}"
                + ("-cls" if pool == "cls" else ""))
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    try:
        conv = register_conv(frames, height, width)
        decoder = "de" + conv
    except ValueError:  # frames too small for the conv decoder: an MLP decoder
        decoder = "mlp"
    register_encoder(name, factory, decoder=decoder)
    return name


register_encoder("vit", vit_factory(), decoder="deconv")
