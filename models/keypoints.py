"""A keypoint encoder for frame stacks: where each filter fires, as coordinates.

The DQN-style CNN of :mod:`bjepa.models.conv` codes an object's position by *which* units fire;
a fast-moving object then lands on different units in the context and the target stacks, so
its position is neither linearly predictable from one stack to the next nor linearly readable
from the latent. A spatial soft-argmax (the "deep spatial autoencoder" readout of Finn et al.
2016 and Levine et al. 2016) turns every feature map into the *expected coordinates* of its
response: an object that a filter picks out gives a keypoint that moves with it, linearly in
its position. The motion of such a coordinate is smooth and linearly predictable, which is
what the CCA start and VJEPA's Gaussian predictor reward; and a linear latent of the keypoints
holds the positions linearly.

The network: one convolution (the conv encoder's first layer, kernel/stride 8/4 for frames of
side >= 36, 4/2 below), then per channel a softmax over the positions of its response divided
by ``temperature``, and of the negated response (a CCA filter's sign is arbitrary, so each
channel gives the keypoint of its largest and of its smallest response): ``4 · channels``
coordinates ``(x, y)`` in frame units (−1 … 1 from the first to the last pixel, at the centres
of the receptive fields), then one ``Linear`` to ``out_dim``. Its last two parameters are that
layer's weight and bias (VJEPA's variance head relies on it). With a model's ``init="cca"`` the
convolution starts at the patch CCA of :meth:`bjepa.models.conv.FrameStackEncoder.init_first_layer`
(filters white on the data, so ``temperature`` is in units of a filter's standard deviation),
then the linear layer at the canonical directions of the keypoints.

The encoder is registered as the family ``"keypoints"`` with options ``channels`` (default 64),
``temperature`` (default 0.2) and ``frames`` (default: inferred from ``obs_dim`` as for
``"conv"``, :func:`bjepa.models.conv.infer_frame_shape`)::

    import bjepa.models.keypoints  # registers "keypoints"
    m = VJEPA(2 * 48 * 48, 8, encoder="keypoints:channels=64,temperature=0.2")

Used by ``bjepa atari --encoder keypoints`` (docs/atari.md#with-actions).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bjepa._validation import check_positive, check_positive_int
from bjepa.models.conv import FrameStackEncoder, _layer_plan, infer_frame_shape
from bjepa.models.encoders import register_encoder

__all__ = [
    "DEFAULT_KEYPOINT_CHANNELS",
    "DEFAULT_TEMPERATURE",
    "KeypointEncoder",
    "keypoint_factory",
    "keypoint_spec",
    "spatial_soft_argmax",
]

#: filters of the convolution (each gives two keypoints, four coordinates)
DEFAULT_KEYPOINT_CHANNELS = 64
#: softmax temperature, in units of a filter's standard deviation after the CCA start
DEFAULT_TEMPERATURE = 0.2


def spatial_soft_argmax(maps: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    """Expected ``(x, y)`` of each map under ``softmax(map / temperature)`` over its positions.

    ``maps`` ``(N, C, h, w)``, ``xs`` ``(w,)`` and ``ys`` ``(h,)`` the coordinates of the
    columns and rows; returns ``(N, 2C)``: the ``C`` expected x, then the ``C`` expected y.
    """
    n, c, h, w = maps.shape
    p = torch.softmax(maps.reshape(n, c, h * w) / temperature, dim=-1).reshape(n, c, h, w)
    return torch.cat([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], dim=1)


class KeypointEncoder(nn.Module):
    """Convolution → spatial soft-argmax of each filter's two poles → ``Linear``:
    ``(..., k·H·W) → (..., out_dim)``.

    :param frames: frames per stack ``k`` (input channels).
    :param height: frame height ``H``.
    :param width: frame width ``W``.
    :param out_dim: output size (the latent dimension).
    :param channels: filters of the convolution.
    :param temperature: softmax temperature (> 0) on the filter responses.
    :param bias: whether the final linear layer has a bias.
    :param hidden_dim: accepted for the encoder-factory interface; unused (the keypoints are
        read out linearly).
    """

    def __init__(self, frames: int, height: int, width: int, out_dim: int, *,
                 channels: int = DEFAULT_KEYPOINT_CHANNELS,
                 temperature: float = DEFAULT_TEMPERATURE, bias: bool = True,
                 hidden_dim: int | None = None) -> None:
        super().__init__()
        self.frames = check_positive_int("frames", frames)
        self.height = check_positive_int("height", height)
        self.width = check_positive_int("width", width)
        check_positive_int("out_dim", out_dim)
        check_positive_int("channels", channels)
        self.temperature = _temperature(temperature)
        kernel, stride = _layer_plan(height, width)[0]
        # ``features[0]`` is the convolution, as in FrameStackEncoder (its patch CCA reads it)
        self.features = nn.Sequential(nn.Conv2d(frames, channels, kernel, stride))
        self.register_buffer("xs", _centres(width, kernel, stride), persistent=False)
        self.register_buffer("ys", _centres(height, kernel, stride), persistent=False)
        self.head = nn.Sequential(nn.Linear(4 * channels, out_dim, bias=bias))

    @property
    def in_dim(self) -> int:
        return self.frames * self.height * self.width

    @property
    def channels(self) -> int:
        return int(self.features[0].out_channels)

    def init_first_layer(self, context: torch.Tensor, target: torch.Tensor,
                         **kwargs: float) -> torch.Tensor:
        """The conv encoder's patch CCA start of the convolution
        (:meth:`bjepa.models.conv.FrameStackEncoder.init_first_layer`, same arguments);
        returns the canonical correlations of the filters set."""
        return FrameStackEncoder.init_first_layer(self, context, target,  # type: ignore[arg-type]
                                                  **kwargs)

    def keypoints(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 4·channels)``: x then y of every filter's largest response, then x then y of its
        smallest, for flat stacks ``x`` ``(N, k·H·W)``."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"x must have last dimension {self.in_dim} "
                             f"({self.frames}×{self.height}×{self.width}), got {tuple(x.shape)}")
        f = self.features(x.reshape(-1, self.frames, self.height, self.width))
        return torch.cat([spatial_soft_argmax(f, self.xs, self.ys, self.temperature),
                          spatial_soft_argmax(-f, self.xs, self.ys, self.temperature)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        return self.head(self.keypoints(x)).reshape(*lead, -1)


def _centres(side: int, kernel: int, stride: int) -> torch.Tensor:
    """Centres of the receptive fields along one side, in frame units (−1 … 1)."""
    n = (side - kernel) // stride + 1
    pixel = torch.arange(n, dtype=torch.float32) * stride + (kernel - 1) / 2
    return pixel / max(side - 1, 1) * 2 - 1


def _temperature(value: float | str) -> float:
    try:
        t = float(value)
    except ValueError:
        raise ValueError(f"temperature must be a finite number > 0, got {value!r}") from None
    return check_positive("temperature", t)


def _whole(name: str, text: str) -> int:
    try:
        c = int(text)
    except ValueError:
        c = 0
    if c < 1 or str(c) != text.strip():
        raise ValueError(f"{name} must be a whole number >= 1, got {text!r}")
    return c


def _channels(text: str) -> int:
    return _whole("channels", text)


def _frames(text: str) -> int:
    return _whole("frames", text)


def keypoint_factory(in_dim: int, out_dim: int, *, hidden_dim: int = 256, bias: bool = True,
                     channels: int = DEFAULT_KEYPOINT_CHANNELS,
                     temperature: float = DEFAULT_TEMPERATURE,
                     frames: int | None = None) -> KeypointEncoder:
    """The ``"keypoints"`` encoder family: the geometry ``(k, H, W)`` is read from ``in_dim``
    as for ``"conv"`` (square frames), with ``frames`` fixing ``k`` when given."""
    if frames is None:
        k, h, w = infer_frame_shape(in_dim)
    else:
        check_positive_int("frames", frames)
        side = math.isqrt(in_dim // frames)
        if frames * side * side != in_dim:
            raise ValueError(f"obs_dim {in_dim} is not {frames} square frames")
        k, h, w = frames, side, side
    return KeypointEncoder(k, h, w, out_dim, channels=channels, temperature=temperature,
                           bias=bias, hidden_dim=hidden_dim)


def keypoint_spec(channels: int = DEFAULT_KEYPOINT_CHANNELS,
                  temperature: float = DEFAULT_TEMPERATURE, frames: int | None = None) -> str:
    """The encoder spec of a ``"keypoints"`` encoder with these options, checked:
    ``keypoint_spec(64, 0.2)`` is ``"keypoints:channels=64,temperature=0.2"``."""
    parts = [f"channels={_channels(str(channels))}",
             f"temperature={_temperature(temperature):g}"]
    if frames is not None:
        parts.append(f"frames={_frames(str(frames))}")
    return "keypoints:" + ",".join(parts)


register_encoder("keypoints", keypoint_factory, decoder="deconv",
                 options={"channels": _channels, "temperature": _temperature,
                          "frames": _frames})
