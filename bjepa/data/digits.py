"""Digit sequences: a slowly advancing class seen through random images of it, with an image
distractor blended in.

The class advances ``0 → 1 → … → 9 → 0`` every ``frames_per_class`` frames; each frame is a
random image of the current class, and the distractor is a random image from a separate pool::

    c_t   = (c_0 + ⌊t / frames_per_class⌋) mod 10
    x_t   = clamp(img(c_t) + σ · img_distractor_t, 0, 1)          (flattened)

Images come from scikit-learn's 8×8 digits (1797 images, shipped inside the package; upsampled
bilinearly to ``size × size``) or from the original MNIST files when a user has them
(:func:`load_mnist`; MNIST cannot be downloaded by this library). The images are split *per
class* into four disjoint pools — training frames, test frames, goal images (for goal priors,
never seen by a probe) and distractors — so no image is both signal and distractor, and test
frames are images the models never trained on.

Example::

    train, test, pools = make_digit_split(sigma=0.5, seed=0)
    train.obs.shape, train.next_label.shape     # (4000, 256), (4000,)
"""

from __future__ import annotations

import functools
import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bjepa._validation import check_nonnegative, check_nonnegative_int, check_positive_int

__all__ = ["DigitImages", "DigitPools", "DigitSequence", "load_digit_images", "load_mnist",
           "make_digit_split", "read_idx", "split_pools", "write_idx"]

#: fractions of each class's images in the train / test / goal / distractor pools
POOL_FRACTIONS = (0.5, 0.2, 0.1, 0.2)
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass
class DigitImages:
    """Images ``(N, H, W)`` in ``[0, 1]`` and their labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class DigitPools:
    """The disjoint image pools of one split (see the module docstring)."""

    train: DigitImages
    test: DigitImages
    goal: DigitImages
    distractor: DigitImages


@dataclass
class DigitSequence:
    """One sequence: ``obs[t]`` the flattened blended frame ``x_t``, ``label[t]`` its class
    ``c_t``, ``next_label[t] = c_{t+1}`` (the last frame's next class continues the cycle),
    ``phase[t]`` its position within the class block, ``signal[t]`` the clean image."""

    obs: torch.Tensor
    label: torch.Tensor
    next_label: torch.Tensor
    phase: torch.Tensor
    signal: torch.Tensor
    size: int

    def __len__(self) -> int:
        return self.obs.shape[0]


# -- the MNIST idx format -------------------------------------------------------------------
def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (the format of the original MNIST files; ``.gz`` is opened too)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number {data[:4]!r})")
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{path}: the header says shape {shape} but the file holds "
                         f"{len(body)} bytes of data")
    return np.frombuffer(body, dtype=dtype).reshape(shape).copy()


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as an idx file (``.gz`` compresses)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + array.tobytes())
    return path


def load_mnist(directory: str | Path, split: str = "train") -> DigitImages:
    """MNIST from its original files in ``directory`` (``{train,t10k}-images-idx3-ubyte`` and
    ``-labels-idx1-ubyte``, optionally ``.gz``)."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = Path(directory)

    def find(kind: str) -> Path:
        for name in (f"{prefix}-{kind}", f"{prefix}-{kind}.gz",
                     f"{prefix}-{kind}".replace("-idx", ".idx")):
            if (directory / name).exists():
                return directory / name
        raise FileNotFoundError(f"no {prefix}-{kind}[.gz] in {directory}; MNIST cannot be "
                                "downloaded here: copy the original files there, or use "
                                "source='sklearn'")

    images = read_idx(find("images-idx3-ubyte"))
    labels = read_idx(find("labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"MNIST files in {directory} disagree: images {images.shape}, labels "
                         f"{labels.shape}")
    return DigitImages(torch.as_tensor(images, dtype=torch.float32) / 255.0,
                       torch.as_tensor(labels.astype(np.int64)), f"mnist:{directory}")


@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits (values 0-16) and labels, read once per process."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - sklearn is in the data extra
        raise ImportError("source='sklearn' needs scikit-learn: pip install 'bjepa[data]'"
                          ) from err
    raw = load_digits()
    return raw.images, raw.target


def load_digit_images(source: str | Path = "sklearn", *, size: int = 16) -> DigitImages:
    """Digit images resized to ``size × size``: ``"sklearn"`` (scikit-learn's 8×8 digits,
    shipped with the package) or a folder holding the original MNIST files."""
    check_positive_int("size", size)
    if str(source) == "sklearn":
        pixels, labels = _sklearn_digits()
        images = DigitImages(torch.as_tensor(pixels, dtype=torch.float32) / 16.0,
                             torch.as_tensor(labels, dtype=torch.int64), "sklearn-digits")
    else:
        images = load_mnist(source)
    if images.images.shape[-1] != size or images.images.shape[-2] != size:
        resized = torch.nn.functional.interpolate(images.images[:, None], size=(size, size),
                                                  mode="bilinear", align_corners=False)
        images.images = resized[:, 0].clamp(0.0, 1.0)
    return images


def split_pools(images: DigitImages, rng: np.random.Generator,
                fractions: tuple[float, float, float, float] = POOL_FRACTIONS) -> DigitPools:
    """Split every class's images into disjoint train / test / goal / distractor pools."""
    parts: list[list[int]] = [[], [], [], []]
    labels = images.labels.numpy()
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.floor(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
            if len(chunk) == 0:
                raise ValueError(f"class {c} has too few images ({len(idx)}) to fill four pools")
            part.extend(chunk.tolist())
    pools = [DigitImages(images.images[p], images.labels[p], images.source) for p in
             (np.array(sorted(q)) for q in parts)]
    return DigitPools(*pools)


def _sequence(pool: DigitImages, distractors: DigitImages, frames: int, sigma: float,
              frames_per_class: int, rng: np.random.Generator) -> DigitSequence:
    labels = pool.labels.numpy()
    by_class = {c: np.flatnonzero(labels == c) for c in range(10)}
    c0 = int(rng.integers(10))
    t = np.arange(frames + 1)
    cls = (c0 + t // frames_per_class) % 10
    picks = np.array([rng.choice(by_class[c]) for c in cls[:frames]])
    signal = pool.images[picks].flatten(1)
    noise = distractors.images[rng.integers(len(distractors), size=frames)].flatten(1)
    obs = (signal + sigma * noise).clamp(0.0, 1.0)
    return DigitSequence(obs=obs, label=torch.as_tensor(cls[:frames]),
                         next_label=torch.as_tensor(cls[1:]),
                         phase=torch.as_tensor(t[:frames] % frames_per_class),
                         signal=signal, size=pool.images.shape[-1])


def make_digit_split(sigma: float = 0.0, seed: int = 0, *, train_frames: int = 4000,
                     test_frames: int = 1000, frames_per_class: int = 8, size: int = 16,
                     source: str | Path = "sklearn",
                     images: DigitImages | None = None
                     ) -> tuple[DigitSequence, DigitSequence, DigitPools]:
    """Train and test digit sequences (from disjoint image pools) and the pools themselves.

    :param sigma: distractor weight σ >= 0.
    :param seed: seeds the pool split, the class start and every image draw.
    :param frames_per_class: frames before the class advances.
    :param size: image side after resizing (the 8×8 digits are upsampled bilinearly).
    :param source: ``"sklearn"`` or a folder with the MNIST files (see :func:`load_mnist`).
    :param images: already loaded images (skips loading ``source``).
    """
    sigma = check_nonnegative("sigma", sigma)
    seed = check_nonnegative_int("seed", seed)
    for name, value in [("train_frames", train_frames), ("test_frames", test_frames),
                        ("frames_per_class", frames_per_class)]:
        check_positive_int(name, value)
    images = images if images is not None else load_digit_images(source, size=size)
    if set(images.labels.unique().tolist()) != set(range(10)):
        raise ValueError("the images must hold all ten classes 0-9")
    rng = np.random.default_rng(seed)
    pools = split_pools(images, rng)
    train = _sequence(pools.train, pools.distractor, train_frames, sigma, frames_per_class, rng)
    test = _sequence(pools.test, pools.distractor, test_frames, sigma, frames_per_class, rng)
    return train, test, pools
