"""Mini-batches of ``(context, target)`` pairs streamed from (memory-mapped) files.

:func:`make_loader` builds a :class:`torch.utils.data.DataLoader` over :class:`~bjepa.data.Pairs`
that :func:`bjepa.inference.fit` cycles (``fit(model, loader, ...)``;
``len(loader.dataset)`` is the number of pairs). Each batch reads only the rows it needs —
never the whole file: from a memory-mapped ``.npy``/``.npz`` one positional read (``pread``) of
the mapped file per pair (:class:`FileRows`; faulting random rows in through the map would keep
far more than them resident), so a file larger than RAM trains with bounded memory; other arrays
are indexed directly (a map's pages are then released every ``release_every`` bytes).

- ``num_workers`` worker processes read ahead while the model trains;
- ``pin_memory`` (default: on when CUDA is available) speeds copies to the GPU;
- under ``torch.distributed`` every process reads its own shard of each epoch's permutation,
  with the partitioning and padding of :class:`torch.utils.data.DistributedSampler` (built
  from a NumPy permutation, so 10⁷ rows never become a Python list), reshuffled every epoch.

Example::

    data = load_pairs("big.npy", val_frac=0.01)
    model.standardizer = data.standardizer   # for encode/predict on raw data later
    loader = make_loader(data.train, 4096, num_workers=2, standardizer=data.standardizer)
    fit(model, loader, steps=10_000)         # fit feeds loader batches to the model as they are
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bjepa.data.pairs import Pairs
from bjepa.data.sources import DataError, release_pages
from bjepa.models.preprocess import Standardizer

__all__ = ["FileRows", "PairDataset", "ShuffledBatches", "make_loader"]

#: resident bytes a loader may accumulate from a memory map before it releases them
RELEASE_EVERY = 128 << 20
#: a memory page: a row read from a memory map may keep a whole page resident
PAGE = 4096


class FileRows:
    """Positional reads (``pread``) of rows of a C-ordered, memory-mapped array from its file.

    Reading random rows *through* a memory map leaves far more than the rows resident (the
    kernel maps whole page-cache folios around every fault: about 1.3 GiB for one batch of 4096
    random rows of 256 bytes, measured), so batches are read from the mapped file with one
    ``pread`` per pair instead; the map itself stays untouched. Each process (a loader worker
    after ``fork``) opens the file for itself.

    :raises ValueError: when ``values`` is not a row-contiguous view of a file-backed map.
    """

    def __init__(self, values: np.ndarray) -> None:
        root: Any = values
        while isinstance(getattr(root, "base", None), np.ndarray):
            root = root.base
        filename = getattr(values, "filename", None) or getattr(root, "filename", None)
        if not isinstance(root, np.memmap) or filename is None or values.ndim != 2:
            raise ValueError("not a file-backed memory map")
        row = values.shape[1] * values.itemsize
        if values.strides != (row, values.itemsize) or values.dtype.byteorder not in "=|":
            raise ValueError("rows are not contiguous in native byte order")
        start = values.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        self.filename, self.dtype, self.cols = str(filename), values.dtype, values.shape[1]
        self.offset, self.row = int(root.offset) + int(start), row
        self._fd: int | None = None
        self._pid = -1

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.filename, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, start: int, count: int) -> np.ndarray:
        """Rows ``start … start + count − 1`` as ``(count, D)``, one ``pread``."""
        size = count * self.row
        buf = np.empty(size, dtype=np.uint8)
        if os.preadv(self._file(), [buf], self.offset + start * self.row) != size:
            raise OSError(f"{self.filename}: short read at row {start}")
        return buf.view(self.dtype).reshape(count, self.cols)

    def windows(self, t: np.ndarray, before: int, after: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``t − before … t + after`` of every sorted ``t``, each run of consecutive ``t``
        read with one ``pread`` into one buffer: ``(rows, pos)`` with the rows of pair ``i``
        at ``rows[pos[i] : pos[i] + before + after + 1]``."""
        t = np.asarray(t, dtype=np.int64)
        first = np.concatenate([[0], np.flatnonzero(np.diff(t) != 1) + 1])
        count = np.diff(np.concatenate([first, [len(t)]])) + before + after  # rows per run
        at = np.concatenate([[0], np.cumsum(count)])  # each run's first row in the buffer
        run = np.repeat(np.arange(len(first)), count - before - after)
        pos = at[run] + np.arange(len(t)) - first[run]
        buf = np.empty(int(at[-1]) * self.row, dtype=np.uint8)
        view, fd, row = memoryview(buf), self._file(), self.row
        for start, n, off in zip((t[first] - before).tolist(), count.tolist(), at.tolist(),
                                 strict=False):
            if os.preadv(fd, [view[off * row:(off + n) * row]], self.offset + start * row) \
                    != n * row:
                raise OSError(f"{self.filename}: short read at row {start}")
        return buf.view(self.dtype).reshape(-1, self.cols), pos

    def __getstate__(self) -> dict[str, Any]:  # a worker opens its own descriptor
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)


class PairDataset(Dataset):
    """Pairs as a map-style dataset whose items are whole mini-batches: ``dataset[idx]`` with an
    array of pair indices returns ``(context, target)`` tensors of ``len(idx)`` rows (with action
    columns, the context is ``[x stack, u]``). ``len(dataset)`` is the number of pairs.

    :param pairs: the pairs to read.
    :param standardizer: if given, frames are standardised while reading (for a model without
        its own standardiser); by default raw values are returned and the model's
        :attr:`~bjepa.models.base.WorldModel.standardizer` rescales them.
    :param dtype: tensor dtype of the batches.
    :param release_every: resident bytes (counted as a page per row read) between releases of
        memory-mapped pages.
    """

    def __init__(self, pairs: Pairs, *, standardizer: Standardizer | None = None,
                 dtype: torch.dtype = torch.float32,
                 release_every: int = RELEASE_EVERY) -> None:
        if not isinstance(pairs, Pairs):
            raise TypeError(f"pairs must be bjepa.data.Pairs, got {type(pairs).__name__}")
        if standardizer is not None and standardizer.width != pairs.obs_dim:
            raise ValueError(f"the standardizer reads rows of {standardizer.width} values, the "
                             f"pairs have {pairs.obs_dim}")
        self.pairs = pairs
        self.standardizer = standardizer
        self.dtype = dtype
        self._np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        self.release_every = int(release_every)
        self._read = 0
        self._rows: FileRows | None = None
        if pairs.seqs.actions is None:
            with contextlib.suppress(ValueError):
                self._rows = FileRows(pairs.seqs.values)

    def _batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        p = self.pairs
        if self._rows is None:
            ctx, tgt, act = p.batch(idx, self._np_dtype)
            # pages a read leaves resident through the map: released every release_every bytes
            self._read += (len(idx) * 2 * p.k + (act is not None) * len(idx)) * (
                p.seqs.values.strides[0] + PAGE)
            if self._read >= self.release_every:
                self._read = 0
                release_pages(p.seqs.values)
            return ctx, tgt, act
        rows, pos = self._rows.windows(p.last_rows(idx), p.k - 1, p.horizon)  # x_{t-k+1…t+Δ}
        stack = pos[:, None] + np.arange(p.k)
        ctx = rows[stack].reshape(len(idx), -1).astype(self._np_dtype)
        tgt = rows[stack + p.horizon].reshape(len(idx), -1).astype(self._np_dtype)
        return ctx, tgt, None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        single = np.ndim(idx) == 0
        idx = np.sort(np.atleast_1d(np.asarray(idx, dtype=np.int64)))
        ctx, tgt, act = self._batch(idx)
        if self.standardizer is not None:
            ctx = self.standardizer.apply_numpy(ctx, self._np_dtype)
            tgt = self.standardizer.apply_numpy(tgt, self._np_dtype)
        if act is not None:
            ctx = np.concatenate([ctx, act], axis=1)
        c, t = torch.from_numpy(ctx), torch.from_numpy(tgt)
        return (c[0], t[0]) if single else (c, t)


class ShuffledBatches(Sampler):
    """Batches of pair indices (NumPy arrays), a fresh seeded permutation every epoch.

    With ``num_replicas > 1`` (one per process under DDP) the epoch's permutation is padded to a
    multiple of ``num_replicas`` and process ``rank`` takes every ``num_replicas``-th index from
    ``rank`` — the partitioning of :class:`torch.utils.data.DistributedSampler` — so the
    processes see disjoint shards of the same permutation.

    :param n: number of pairs.
    :param batch_size: rows per batch (per process).
    :param shuffle: permute (else the order 0, 1, ...).
    :param seed: seeds the permutations (epoch ``e`` uses ``seed + e``).
    :param drop_last: drop a last, smaller batch.
    :param block: permute blocks of this many consecutive pairs instead of single pairs (every
        pair still comes once per epoch); a streamed batch then costs ``batch_size / block``
        reads instead of ``batch_size``, at the price of correlated rows within a batch.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0,
                 block: int = 1) -> None:
        if n < 1:
            raise ValueError("no pairs to draw batches from")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, {num_replicas}), got {rank}")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.num_replicas, self.rank = drop_last, num_replicas, rank
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block must be an int >= 1, got {block!r}")
        self.block = block
        self.epoch = 0
        self.per_replica = math.ceil(n / num_replicas)

    def __len__(self) -> int:
        if self.drop_last:
            return max(self.per_replica // self.batch_size, 1)
        return math.ceil(self.per_replica / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.shuffle and self.block > 1:
            starts = np.random.default_rng(self.seed + self.epoch).permutation(
                np.arange(0, self.n, self.block))
            order = (starts[:, None] + np.arange(self.block)).reshape(-1)
            order = order[order < self.n]
        elif self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(self.n)
        else:
            order = np.arange(self.n)
        self.epoch += 1
        total = self.per_replica * self.num_replicas
        if total > self.n:  # pad like DistributedSampler
            order = np.concatenate([order, order[:total - self.n]])
        mine = order[self.rank:total:self.num_replicas]
        stop = len(mine) if not self.drop_last or len(mine) < self.batch_size \
            else len(mine) - len(mine) % self.batch_size
        for i in range(0, stop, self.batch_size):
            yield mine[i:i + self.batch_size]


def make_loader(pairs: Pairs, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False, num_workers: int = 0, pin_memory: bool | None = None,
                distributed: bool | None = None, standardizer: Standardizer | None = None,
                dtype: torch.dtype = torch.float32, prefetch_factor: int | None = None,
                block: int = 1) -> DataLoader:
    """A :class:`~torch.utils.data.DataLoader` of ``(context, target)`` mini-batches.

    :param pairs: :class:`~bjepa.data.pairs.Pairs` (e.g. ``load_pairs(...).train``).
    :param batch_size: rows per batch (per process under DDP).
    :param num_workers: reader processes (0: read in the training process).
    :param pin_memory: page-locked batches for fast GPU copies (default: when CUDA is
        available).
    :param distributed: shard batches across ``torch.distributed`` processes (default: when a
        process group is initialised).
    :param standardizer: standardise while reading (only for a model without its own
        standardiser; see :class:`PairDataset`).
    :param block: shuffle blocks of this many consecutive pairs (see :class:`ShuffledBatches`;
        default 1: every batch is a uniform draw of single pairs).
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DataError(f"num_workers must be an int >= 0, got {num_workers!r}")
    dataset = PairDataset(pairs, standardizer=standardizer, dtype=dtype)
    replicas, rank = 1, 0
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        replicas, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    sampler = ShuffledBatches(len(dataset), batch_size, shuffle=shuffle, seed=seed,
                              drop_last=drop_last, num_replicas=replicas, rank=rank,
                              block=block)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra.update(persistent_workers=True, prefetch_factor=prefetch_factor or 4)
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
                      pin_memory=pin_memory, **extra)
