"""Data sets: the linear Noisy TV world, (optionally) Atari frames, and your own data — arrays,
``.npy``/``.npz``, CSV/Parquet tables, image folders and videos — as ``(context, target)`` pairs
(see docs/own_data.md)."""

from bjepa.data import control, digits, noisy_tv
from bjepa.data.pairs import PairData, Pairs, load_pairs, make_pairs, split_pairs, stack_frames
from bjepa.data.sources import DataError, Sequences, from_array, load, load_frames, load_table
from bjepa.data.streaming import PairDataset, make_loader
from bjepa.models.preprocess import Standardizer

__all__ = [
    "DataError",
    "PairData",
    "PairDataset",
    "Pairs",
    "Sequences",
    "Standardizer",
    "control",
    "digits",
    "from_array",
    "load",
    "load_frames",
    "load_pairs",
    "load_table",
    "make_loader",
    "make_pairs",
    "noisy_tv",
    "split_pairs",
    "stack_frames",
]
