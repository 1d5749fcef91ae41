"""Convolutional encoders and decoders for frame stacks (Atari, docs/method.md#natural-video-atari).

Every model in :mod:`bjepa.models` takes *flat* observations ``(N, obs_dim)``. A frame stack of
``k`` grayscale frames of ``H × W`` pixels is passed flat, ``obs_dim = k·H·W``, in C order
(frame, row, column) — ``frames.reshape(N, -1)`` of an ``(N, k, H, W)`` array. The networks
here reshape it back to ``(N, k, H, W)`` and treat the ``k`` frames as input channels, as the
DQN does.

Two ways to fix the geometry:

- ``encoder="conv"`` infers it from ``obs_dim``: square frames, and the *smallest* ``k`` in
  ``1..16`` for which ``obs_dim / k`` is a perfect square of at least ``16²``. This is
  unambiguous for the common stacks (``2·48²``, ``2·64²``, ``3·64²``, ``4·84²``...) but not
  for all: ``4·32² = 64²`` reads as one 64 × 64 frame. :func:`infer_frame_shape` says what a
  given ``obs_dim`` means.
- :func:`register_conv` registers an explicit geometry under its own name (e.g.
  ``"conv4x32x32"``, with decoder ``"deconv4x32x32"``) and returns that name; use it for any
  stack that ``"conv"`` would misread, and call it again before loading a checkpoint that used
  it. :func:`conv_encoder_name` picks ``"conv"`` when the inference is right and registers an
  explicit name otherwise.

The encoder is the DQN network (Mnih et al. 2015) — convolutions 8×8/4, 4×4/2, 3×3/1 with
ReLU — for frames of side >= 36, and 4×4/2, 3×3/2, 3×3/1 for smaller frames (side >= 16),
then ``Linear(features, hidden_dim) → ReLU → Linear(hidden_dim, out_dim)``. Its last two
parameter tensors are the final linear layer's weight and bias (VJEPA's variance head relies
on that to start homoscedastic). With a model's ``init="cca"`` its first convolution starts at
the canonical directions between co-located context and target patches
(:meth:`FrameStackEncoder.init_first_layer`) before the last layer gets its CCA start.
The decoder (``"deconv"``) mirrors it: two linear layers up to the last feature map, then
transposed convolutions back to ``k × H × W``, returned flat.

Example::

    import bjepa.models.conv  # registers "conv" and "deconv"
    m = VAE(obs_dim=2 * 48 * 48, latent_dim=8, encoder="conv")   # 2 frames of 48 × 48
    m.encode(stacks.reshape(len(stacks), -1)).shape              # (N, 8)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from bjepa._validation import check_positive_int
from bjepa.models.encoders import EncoderFactory, register_encoder

__all__ = [
    "DEFAULT_CHANNELS",
    "FrameStackDecoder",
    "FrameStackEncoder",
    "conv_encoder_name",
    "conv_factory",
    "deconv_factory",
    "infer_frame_shape",
    "register_conv",
]

#: channels of the three convolutions (the DQN's widths)
DEFAULT_CHANNELS: tuple[int, int, int] = (32, 64, 64)
_MAX_FRAMES = 16
_MIN_SIDE = 16
_DQN_LAYERS = ((8, 4), (4, 2), (3, 1))  # (kernel, stride) per convolution
_SMALL_LAYERS = ((4, 2), (3, 2), (3, 1))
#: patches (rows × positions) entering the first layer's CCA start, and its relative ridge
PATCH_CCA_MAX_PATCHES = 65536
PATCH_CCA_RIDGE = 1e-3


def _layer_plan(height: int, width: int) -> tuple[tuple[int, int], ...]:
    if min(height, width) < _MIN_SIDE:
        raise ValueError(f"frames must be at least {_MIN_SIDE} pixels on each side for the "
                         f"conv encoder, got {height} × {width}")
    return _DQN_LAYERS if min(height, width) >= 36 else _SMALL_LAYERS


def _sizes(side: int, plan: Sequence[tuple[int, int]]) -> list[int]:
    """Spatial size before each convolution and after the last one."""
    out = [side]
    for kernel, stride in plan:
        out.append((out[-1] - kernel) // stride + 1)
    return out


def _check_channels(channels: Sequence[int]) -> tuple[int, int, int]:
    if len(channels) != 3:
        raise ValueError(f"channels must list 3 widths (one per convolution), got {channels!r}")
    for c in channels:
        check_positive_int("channels", c)
    return (int(channels[0]), int(channels[1]), int(channels[2]))


def infer_frame_shape(obs_dim: int) -> tuple[int, int, int]:
    """``(k, H, W)`` that the ``"conv"`` encoder reads a flat ``obs_dim`` as.

    Square frames, smallest ``k`` in ``1..16`` with ``obs_dim / k`` a perfect square of side
    at least 16. Raises ``ValueError`` naming ``obs_dim`` if there is none.
    """
    check_positive_int("obs_dim", obs_dim)
    for k in range(1, _MAX_FRAMES + 1):
        if obs_dim % k:
            continue
        side = math.isqrt(obs_dim // k)
        if side * side * k == obs_dim and side >= _MIN_SIDE:
            return k, side, side
    raise ValueError(
        f"obs_dim {obs_dim} is not k·s² for any k <= {_MAX_FRAMES} and square frames of side "
        f">= {_MIN_SIDE}; register the geometry with bjepa.models.conv.register_conv(...)")


class FrameStackEncoder(nn.Module):
    """DQN-style CNN on flat frame stacks: ``(..., k·H·W) → (..., out_dim)``.

    :param frames: frames per stack ``k`` (input channels).
    :param height: frame height ``H``.
    :param width: frame width ``W``.
    :param out_dim: output size (the latent dimension).
    :param hidden_dim: width of the fully connected hidden layer.
    :param bias: whether the final linear layer has a bias.
    :param channels: widths of the three convolutions.
    """

    def __init__(self, frames: int, height: int, width: int, out_dim: int, *,
                 hidden_dim: int = 256, bias: bool = True,
                 channels: Sequence[int] = DEFAULT_CHANNELS) -> None:
        super().__init__()
        self.frames = check_positive_int("frames", frames)
        self.height = check_positive_int("height", height)
        self.width = check_positive_int("width", width)
        check_positive_int("out_dim", out_dim)
        check_positive_int("hidden_dim", hidden_dim)
        chans = _check_channels(channels)
        plan = _layer_plan(height, width)
        layers: list[nn.Module] = []
        c_in = frames
        for c_out, (kernel, stride) in zip(chans, plan, strict=True):
            layers += [nn.Conv2d(c_in, c_out, kernel, stride), nn.ReLU()]
            c_in = c_out
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        n_feat = chans[-1] * _sizes(height, plan)[-1] * _sizes(width, plan)[-1]
        self.head = nn.Sequential(nn.Linear(n_feat, hidden_dim), nn.ReLU(),
                                  nn.Linear(hidden_dim, out_dim, bias=bias))

    @property
    def in_dim(self) -> int:
        return self.frames * self.height * self.width

    @torch.no_grad()
    def init_first_layer(self, context: torch.Tensor, target: torch.Tensor, *,
                         max_patches: int = PATCH_CCA_MAX_PATCHES,
                         ridge: float = PATCH_CCA_RIDGE) -> torch.Tensor:
        """Point the first convolution's filters at the leading canonical directions between
        co-located patches of the ``context`` and ``target`` stacks (flat ``(N, k·H·W)``).

        Part of the CCA start (``init="cca"``): the same past–future argument as for the last
        linear layer, one level down. Each filter becomes a direction of a ``k × K × K`` context
        patch that is maximally correlated with the same patch of the target stack, whitened
        (unit variance on the data, bias centring it). Structure that persists from context to
        target (paddles, ball, walls) gets filters; noise that is new in every frame (a noisy
        TV) gets none — with a random first layer every feature mixes the two. Filters beyond
        the patch dimension keep their random start. At most ``max_patches`` patches (from
        evenly spaced rows) enter the CCA, with ``ridge`` (relative to the largest variance) on
        the covariances. Returns the canonical correlations of the filters set.
        """
        from bjepa.metrics import canonical_directions

        conv = self.features[0]
        shape = (-1, self.frames, self.height, self.width)
        positions = math.prod(_sizes(self.height, [(conv.kernel_size[0], conv.stride[0])])[1:]
                              + _sizes(self.width, [(conv.kernel_size[1], conv.stride[1])])[1:])
        n = context.shape[0]
        rows = max(1, min(n, max_patches // positions))
        idx = torch.linspace(0, n - 1, rows, device=context.device).round().long()

        def patches(x: torch.Tensor) -> torch.Tensor:
            cols = nn.functional.unfold(x[idx].reshape(shape), conv.kernel_size,
                                        stride=conv.stride)     # (rows, k·K·K, positions)
            return cols.transpose(1, 2).reshape(-1, cols.shape[1])

        a, b = patches(context), patches(target)
        k = min(conv.out_channels, a.shape[1])
        weight, rho = canonical_directions(a, b, k, ridge=ridge)
        weight = weight.to(conv.weight)
        conv.weight[:k].copy_(weight.reshape(k, *conv.weight.shape[1:]))
        conv.bias[:k].copy_(-(a.mean(0).to(weight) @ weight.T))
        return rho

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"x must have last dimension {self.in_dim} "
                             f"({self.frames}×{self.height}×{self.width}), got {tuple(x.shape)}")
        lead = x.shape[:-1]
        y = self.features(x.reshape(-1, self.frames, self.height, self.width))
        return self.head(y).reshape(*lead, -1)


class FrameStackDecoder(nn.Module):
    """The encoder's mirror: ``(..., in_dim) → (..., k·H·W)`` with transposed convolutions.

    Output padding is chosen per layer so the output is exactly ``H × W`` (the strided
    convolutions of the encoder floor their sizes).
    """

    def __init__(self, in_dim: int, frames: int, height: int, width: int, *,
                 hidden_dim: int = 256, bias: bool = True,
                 channels: Sequence[int] = DEFAULT_CHANNELS) -> None:
        super().__init__()
        check_positive_int("in_dim", in_dim)
        self.frames = check_positive_int("frames", frames)
        self.height = check_positive_int("height", height)
        self.width = check_positive_int("width", width)
        check_positive_int("hidden_dim", hidden_dim)
        chans = _check_channels(channels)
        plan = _layer_plan(height, width)
        hs, ws = _sizes(height, plan), _sizes(width, plan)
        self._map_shape = (chans[-1], hs[-1], ws[-1])
        self.head = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(),
                                  nn.Linear(hidden_dim, math.prod(self._map_shape)), nn.ReLU())
        layers: list[nn.Module] = []
        outs = [frames, *chans[:-1]]  # output channels of each transposed convolution
        for i in reversed(range(len(plan))):
            kernel, stride = plan[i]
            pad = ((hs[i] - kernel) % stride, (ws[i] - kernel) % stride)
            last = i == 0
            layers.append(nn.ConvTranspose2d(chans[i], outs[i], kernel, stride,
                                             output_padding=pad, bias=bias or not last))
            if not last:
                layers.append(nn.ReLU())
        self.deconv = nn.Sequential(*layers)

    @property
    def out_dim(self) -> int:
        return self.frames * self.height * self.width

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        y = self.head(z.reshape(-1, z.shape[-1])).reshape(-1, *self._map_shape)
        return self.deconv(y).reshape(*lead, self.out_dim)


def conv_factory(frames: int | None = None, height: int | None = None,
                 width: int | None = None, *,
                 channels: Sequence[int] = DEFAULT_CHANNELS) -> EncoderFactory:
    """An encoder factory ``(in_dim, out_dim, *, hidden_dim, bias) -> FrameStackEncoder``.

    With ``frames=None`` the geometry is inferred from ``in_dim`` by
    :func:`infer_frame_shape`; otherwise ``in_dim`` must equal ``frames·height·width``
    (``width`` defaults to ``height``).
    """
    chans = _check_channels(channels)
    shape = _fixed_shape(frames, height, width)

    def factory(in_dim: int, out_dim: int, *, hidden_dim: int = 256,
                bias: bool = True) -> nn.Module:
        k, h, w = _resolve(shape, in_dim, "obs_dim")
        return FrameStackEncoder(k, h, w, out_dim, hidden_dim=hidden_dim, bias=bias,
                                 channels=chans)

    return factory


def deconv_factory(frames: int | None = None, height: int | None = None,
                   width: int | None = None, *,
                   channels: Sequence[int] = DEFAULT_CHANNELS) -> EncoderFactory:
    """A decoder factory ``(in_dim, out_dim, *, hidden_dim, bias) -> FrameStackDecoder``
    mapping latents to flat stacks; the geometry is read from ``out_dim`` as for
    :func:`conv_factory`."""
    chans = _check_channels(channels)
    shape = _fixed_shape(frames, height, width)

    def factory(in_dim: int, out_dim: int, *, hidden_dim: int = 256,
                bias: bool = True) -> nn.Module:
        k, h, w = _resolve(shape, out_dim, "obs_dim")
        return FrameStackDecoder(in_dim, k, h, w, hidden_dim=hidden_dim, bias=bias,
                                 channels=chans)

    return factory


def _fixed_shape(frames: int | None, height: int | None, width: int | None
                 ) -> tuple[int, int, int] | None:
    if frames is None:
        if height is not None or width is not None:
            raise ValueError("give frames together with height (and optionally width)")
        return None
    if height is None:
        raise ValueError("height is required when frames is given")
    width = height if width is None else width
    shape = (check_positive_int("frames", frames), check_positive_int("height", height),
             check_positive_int("width", width))
    _layer_plan(shape[1], shape[2])
    return shape


def _resolve(shape: tuple[int, int, int] | None, flat_dim: int, name: str
             ) -> tuple[int, int, int]:
    if shape is None:
        return infer_frame_shape(flat_dim)
    if math.prod(shape) != flat_dim:
        k, h, w = shape
        raise ValueError(f"{name} must be frames·height·width = {k}·{h}·{w} = {k * h * w} for "
                         f"this conv encoder, got {flat_dim}")
    return shape


def register_conv(frames: int, height: int, width: int | None = None, *,
                  channels: Sequence[int] = DEFAULT_CHANNELS, name: str | None = None) -> str:
    """Register a conv encoder (and its deconv decoder) for a fixed geometry; return its name.

    The default name is ``"conv{k}x{H}x{W}"`` (plus ``"-c{c1}.{c2}.{c3}"`` for non-default
    channels); the decoder is registered as ``"de" + name``. Registering the same name again
    replaces the entry with an identical one, so calling this before every use is safe.
    """
    width = height if width is None else width
    chans = _check_channels(channels)
    if name is None:
        name = f"conv{frames}x{height}x{width}"
        if chans != DEFAULT_CHANNELS:
            name += "-c" + ".".join(map(str, chans))
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    register_encoder("de" + name, deconv_factory(frames, height, width, channels=chans))
    register_encoder(name, conv_factory(frames, height, width, channels=chans),
                     decoder="de" + name)
    return name


def conv_encoder_name(frames: int, height: int, width: int | None = None, *,
                      channels: Sequence[int] = DEFAULT_CHANNELS) -> str:
    """``"conv"`` when it reads ``frames·height·width`` as this geometry (and default
    channels), else the name :func:`register_conv` registers for it."""
    width = height if width is None else width
    flat = frames * height * width
    try:
        inferred = infer_frame_shape(flat)
    except ValueError:
        inferred = None
    if inferred == (frames, height, width) and _check_channels(channels) == DEFAULT_CHANNELS:
        return "conv"
    return register_conv(frames, height, width, channels=channels)


register_encoder("deconv", deconv_factory())
register_encoder("conv", conv_factory(), decoder="deconv")

# the ViT encoder ("vit") uses this module's geometry rules; importing it here registers it
# wherever the conv encoders are registered
from bjepa.models import vit as _vit  # noqa: E402, F401
