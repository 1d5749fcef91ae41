"""Moving digits: one digit bouncing on a larger canvas, with Gaussian pixel noise.

Each episode shows one digit image (side ``digit_size``) on a ``canvas × canvas`` black canvas.
Its top-left corner ``p_t = (row, col)`` moves with an integer velocity drawn uniformly from
``{-max_speed, …, max_speed}`` per axis and bounces off the walls (a reflection: the position
is mirrored back into ``[0, canvas − digit_size]`` and that velocity component flips)::

    p'      = p_{t-1} + u_{t-1}
    p_t     = reflect(p'),   u_t = u_{t-1} with the components that hit a wall negated
    x_t     = render(digit, p_t) + σ · ε_t,     ε_t ~ N(0, I) per pixel and frame

Labels per frame: the class, the position ``p_t`` and the velocity ``v_t = p_t − p_{t−1}`` (the
displacement one frame pair shows; it equals ``u_{t−1}`` except at a bounce). A single frame
tells the position but not the velocity; two consecutive frames tell both, which is why the
experiment (:mod:`bjepa.experiments.moving_digits`) stacks two frames as the context.

Digit images come from scikit-learn's 8×8 digits (upsampled bilinearly to ``digit_size``) or
the original MNIST files (:func:`bjepa.data.digits.load_mnist`). Every class's images are split
into a training and a test pool, so test episodes show images never seen in training.

Example::

    train, test = make_moving_digits(sigma=0.5, seed=0)
    train.frames.shape          # (episodes, T, canvas, canvas)
    ctx, tgt, idx = train.pairs(context_frames=2)   # flat stacks and their (episode, t) rows
    save_moving_digits("train.npz", train); load_moving_digits("train.npz")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bjepa._io import atomic_write
from bjepa._validation import check_nonnegative, check_nonnegative_int, check_positive_int
from bjepa.data.digits import DigitImages, load_digit_images

__all__ = ["MovingDigits", "bounce", "load_moving_digits", "make_moving_digits",
           "save_moving_digits"]

#: fraction of each class's images in the training pool (the rest are test images)
TRAIN_FRACTION = 0.7
_FORMAT = "bjepa-moving-digits-1"


@dataclass
class MovingDigits:
    """Episodes of a bouncing digit.

    :ivar frames: ``(E, T, canvas, canvas)`` float32 frames (noise included).
    :ivar label: ``(E,)`` the digit class of each episode.
    :ivar position: ``(E, T, 2)`` top-left corner ``(row, col)`` in pixels.
    :ivar velocity: ``(E, T, 2)`` ``p_t − p_{t−1}`` in pixels per frame.
    """

    frames: torch.Tensor
    label: torch.Tensor
    position: torch.Tensor
    velocity: torch.Tensor
    canvas: int
    digit_size: int
    sigma: float
    max_speed: int
    seed: int
    source: str

    @property
    def episodes(self) -> int:
        return int(self.frames.shape[0])

    @property
    def length(self) -> int:
        return int(self.frames.shape[1])

    def pairs(self, context_frames: int = 2, *, mean: torch.Tensor | None = None,
              scale: float | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat ``(context, target, index)`` for training and probing.

        The context is the ``k = context_frames`` frames ending at ``t`` (channels in time
        order), the target the *next* ``k`` frames ``t+1 … t+k`` (not the stack shifted by one:
        overlapping stacks would share their noise, which a predictor could then "predict").
        ``index`` ``(N, 2)`` holds each row's ``(episode, t)``; rows run episode by episode, in
        time order. Frames are standardised as ``(x − mean) / scale`` when given (per-pixel
        ``mean`` of shape ``(canvas, canvas)``).
        """
        k = check_positive_int("context_frames", context_frames)
        if self.length < 2 * k:
            raise ValueError(f"episodes of {self.length} frames are too short for "
                             f"context_frames={k}: need at least {2 * k}")
        x = self.frames
        if mean is not None:
            x = x - mean
        if scale is not None:
            x = x / scale
        t = torch.arange(k - 1, self.length - k)
        ctx = torch.stack([x[:, t - k + 1 + i] for i in range(k)], dim=2)   # (E, n, k, H, W)
        tgt = torch.stack([x[:, t + 1 + i] for i in range(k)], dim=2)
        e = torch.arange(self.episodes).repeat_interleave(len(t))
        index = torch.stack([e, t.repeat(self.episodes)], dim=1)
        return ctx.reshape(-1, k * self.canvas ** 2), tgt.reshape(-1, k * self.canvas ** 2), index

    def labels_at(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class ``(N,)``, position ``(N, 2)`` and velocity ``(N, 2)`` of rows ``(episode, t)``."""
        e, t = index[:, 0], index[:, 1]
        return {"class": self.label[e], "position": self.position[e, t],
                "velocity": self.velocity[e, t]}

    def meta(self) -> dict[str, Any]:
        return {"format": _FORMAT, "canvas": self.canvas, "digit_size": self.digit_size,
                "sigma": self.sigma, "max_speed": self.max_speed, "seed": self.seed,
                "source": self.source}


def bounce(position: np.ndarray, velocity: np.ndarray, steps: int, limit: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(steps + 1, 2)`` of a point starting at ``position`` with ``velocity`` that
    reflects off ``0`` and ``limit``, and the velocities ``(steps + 1, 2)`` it moves on with
    after each frame."""
    p = np.asarray(position, dtype=np.int64).copy()
    u = np.asarray(velocity, dtype=np.int64).copy()
    if limit < 1:
        raise ValueError(f"limit must be >= 1 (room to move), got {limit}")
    ps, us = [p.copy()], [u.copy()]
    for _ in range(steps):
        p = p + u
        for axis in range(2):
            # a reflection off either wall; speeds above the free range reflect repeatedly
            while p[axis] < 0 or p[axis] > limit:
                if p[axis] < 0:
                    p[axis] = -p[axis]
                else:
                    p[axis] = 2 * limit - p[axis]
                u[axis] = -u[axis]
        ps.append(p.copy())
        us.append(u.copy())
    return np.stack(ps), np.stack(us)


def _episodes(images: DigitImages, episodes: int, length: int, canvas: int, sigma: float,
              max_speed: int, rng: np.random.Generator, noise_rng: np.random.Generator
              ) -> dict[str, np.ndarray]:
    d = images.images.shape[-1]
    limit = canvas - d
    pick = rng.integers(len(images), size=episodes)
    frames = np.zeros((episodes, length, canvas, canvas), dtype=np.float32)
    position = np.zeros((episodes, length, 2), dtype=np.float32)
    velocity = np.zeros((episodes, length, 2), dtype=np.float32)
    pixels = images.images.numpy()
    for e in range(episodes):
        start = rng.integers(0, limit + 1, size=2)
        u0 = rng.integers(-max_speed, max_speed + 1, size=2)
        # one frame before the first, so the first frame has a velocity too
        ps, _ = bounce(start, u0, length, limit)
        position[e] = ps[1:]
        velocity[e] = ps[1:] - ps[:-1]
        for t, (r, c) in enumerate(ps[1:]):
            frames[e, t, r:r + d, c:c + d] = pixels[pick[e]]
    if sigma > 0:
        frames += sigma * noise_rng.standard_normal(frames.shape, dtype=np.float32)
    return {"frames": frames, "label": images.labels.numpy()[pick], "position": position,
            "velocity": velocity}


def _class_split(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cut = int(round(TRAIN_FRACTION * len(idx)))
        if cut < 1 or cut >= len(idx):
            raise ValueError(f"class {c} has too few images ({len(idx)}) for a train/test split")
        train += idx[:cut].tolist()
        test += idx[cut:].tolist()
    return np.sort(train), np.sort(test)


def make_moving_digits(sigma: float = 0.0, seed: int = 0, *, canvas: int = 32,
                       digit_size: int = 16, max_speed: int = 3, train_episodes: int = 160,
                       test_episodes: int = 60, length: int = 24,
                       source: str | Path = "sklearn", images: DigitImages | None = None
                       ) -> tuple[MovingDigits, MovingDigits]:
    """Training and test episodes of a bouncing digit (disjoint digit images).

    :param sigma: standard deviation σ >= 0 of the Gaussian pixel noise (pixels lie in [0, 1]).
    :param seed: seeds the image split, the image, start and velocity of every episode, and
        (from a separate stream, so every σ shows the same episodes) the noise.
    :param canvas: canvas side in pixels (must exceed ``digit_size``).
    :param digit_size: digit side in pixels (the 8×8 digits are upsampled bilinearly).
    :param max_speed: largest speed per axis in pixels per frame (velocities are integers in
        ``[-max_speed, max_speed]``).
    :param length: frames per episode.
    :param source: ``"sklearn"`` or a folder with the MNIST files.
    :param images: already loaded images of side ``digit_size`` (skips loading ``source``).
    """
    sigma = check_nonnegative("sigma", sigma)
    seed = check_nonnegative_int("seed", seed)
    for name, value in [("canvas", canvas), ("digit_size", digit_size),
                        ("train_episodes", train_episodes), ("test_episodes", test_episodes),
                        ("length", length)]:
        check_positive_int(name, value)
    max_speed = check_nonnegative_int("max_speed", max_speed)
    if digit_size >= canvas:
        raise ValueError(f"digit_size must be smaller than canvas to leave room to move, got "
                         f"digit_size={digit_size}, canvas={canvas}")
    images = images if images is not None else load_digit_images(source, size=digit_size)
    if images.images.shape[-1] != digit_size or images.images.shape[-2] != digit_size:
        raise ValueError(f"images must be {digit_size}×{digit_size} (digit_size), got "
                         f"{tuple(images.images.shape[-2:])}")
    # episodes and noise come from separate streams: every σ shows the same episodes
    rng, noise_rng = (np.random.default_rng([seed, stream]) for stream in (0, 1))
    train_idx, test_idx = _class_split(images.labels.numpy(), rng)
    out = []
    for idx, n in ((train_idx, train_episodes), (test_idx, test_episodes)):
        pool = DigitImages(images.images[idx], images.labels[idx], images.source)
        arrays = _episodes(pool, n, length, canvas, sigma, max_speed, rng, noise_rng)
        out.append(MovingDigits(frames=torch.from_numpy(arrays["frames"]),
                                label=torch.from_numpy(arrays["label"]).long(),
                                position=torch.from_numpy(arrays["position"]),
                                velocity=torch.from_numpy(arrays["velocity"]),
                                canvas=canvas, digit_size=digit_size, sigma=sigma,
                                max_speed=max_speed, seed=seed, source=images.source))
    return out[0], out[1]


def save_moving_digits(path: str | Path, data: MovingDigits) -> Path:
    """Write episodes to an ``.npz`` file (arrays plus a JSON header; no pickle)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"path must end in .npz, got {path}")
    arrays = {"frames": data.frames.numpy(), "label": data.label.numpy(),
              "position": data.position.numpy(), "velocity": data.velocity.numpy(),
              "meta": np.frombuffer(json.dumps(data.meta()).encode(), dtype=np.uint8)}
    return atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def load_moving_digits(path: str | Path) -> MovingDigits:
    """Read episodes written by :func:`save_moving_digits`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no moving-digits file at {path}")
    with np.load(path, allow_pickle=False) as z:
        if "meta" not in z.files:
            raise ValueError(f"{path} is not a moving-digits file (no 'meta' entry)")
        meta = json.loads(z["meta"].tobytes().decode())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} has format {meta.get('format')!r}, expected {_FORMAT!r}")
        arrays = {k: torch.from_numpy(z[k].copy()) for k in
                  ("frames", "label", "position", "velocity")}
    meta.pop("format")
    return MovingDigits(**arrays, **meta)
