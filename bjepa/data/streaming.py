"""Mini-batches of ``(context, target)`` pairs streamed from (memory-mapped) files.

:func:`make_loader` builds a :class:`torch.utils.data.DataLoader` over :class:`~bjepa.data.Pairs`
that :func:`bjepa.inference.fit` cycles (``fit(model, loader, ...)``;
``len(loader.dataset)`` is the number of pairs). Each batch is one vectorised read of the rows it
needs — never the whole file — and the pages read are released from the process's resident set
every ``release_every`` bytes, so a file larger than RAM trains with bounded memory.

- ``num_workers`` worker processes read ahead while the model trains;
- ``pin_memory`` (default: on when CUDA is available) speeds copies to the GPU;
- under ``torch.distributed`` every process reads its own shard of each epoch's permutation,
  with the partitioning and padding of :class:`torch.utils.data.DistributedSampler` (built
  from a NumPy permutation, so 10⁷ rows never become a Python list), reshuffled every epoch.

Example::

    data = load_pairs("big.npy", val_frac=0.01)
    model.standardizer = data.standardizer
    fit(model, make_loader(data.train, 4096, num_workers=2), steps=10_000)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bjepa.data.pairs import Pairs
from bjepa.data.sources import DataError, release_pages
from bjepa.models.preprocess import Standardizer

__all__ = ["PairDataset", "ShuffledBatches", "make_loader"]

#: bytes read between two releases of memory-mapped pages
RELEASE_EVERY = 128 << 20


class PairDataset(Dataset):
    """Pairs as a map-style dataset whose items are whole mini-batches: ``dataset[idx]`` with an
    array of pair indices returns ``(context, target)`` tensors of ``len(idx)`` rows (with action
    columns, the context is ``[x stack, u]``). ``len(dataset)`` is the number of pairs.

    :param pairs: the pairs to read.
    :param standardizer: if given, frames are standardised while reading (for a model without
        its own standardiser); by default raw values are returned and the model's
        :attr:`~bjepa.models.base.WorldModel.standardizer` rescales them.
    :param dtype: tensor dtype of the batches.
    :param release_every: bytes read between releases of memory-mapped pages.
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

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        single = np.ndim(idx) == 0
        idx = np.sort(np.atleast_1d(np.asarray(idx, dtype=np.int64)))
        ctx, tgt, act = self.pairs.batch(idx, self._np_dtype)
        if self.standardizer is not None:
            ctx = self.standardizer.apply_numpy(ctx, self._np_dtype)
            tgt = self.standardizer.apply_numpy(tgt, self._np_dtype)
        if act is not None:
            ctx = np.concatenate([ctx, act], axis=1)
        self._read += ctx.nbytes + tgt.nbytes
        if self._read >= self.release_every:
            self._read = 0
            release_pages(self.pairs.seqs.values)
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
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0) -> None:
        if n < 1:
            raise ValueError("no pairs to draw batches from")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, {num_replicas}), got {rank}")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.num_replicas, self.rank = drop_last, num_replicas, rank
        self.epoch = 0
        self.per_replica = math.ceil(n / num_replicas)

    def __len__(self) -> int:
        if self.drop_last:
            return max(self.per_replica // self.batch_size, 1)
        return math.ceil(self.per_replica / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.shuffle:
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
                dtype: torch.dtype = torch.float32, prefetch_factor: int | None = None
                ) -> DataLoader:
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
                              drop_last=drop_last, num_replicas=replicas, rank=rank)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra.update(persistent_workers=True, prefetch_factor=prefetch_factor or 4)
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
                      pin_memory=pin_memory, **extra)
