"""Rank-sharded, deterministic, resumable batch streams for every benchmark's loader.

The arithmetic is pure and in three steps:

1. :func:`epoch_order` - the epoch's global order of items from ``(seed, epoch)`` only:
   blocks (a CloudMask scene, a STEMDL chunk of samples) are shuffled, then the items
   inside each block (or inside groups of ``mix`` consecutive blocks), so a batch
   touches few blocks and the batched chunk reader (one concurrent read per batch)
   still reads each chunk once.
2. :func:`rank_share` - rank ``r`` of ``W`` takes the ``r``-th contiguous ``1/W`` of that
   order; the remainder is padded by repeating the order's start (``"pad"``, the
   default, as ``DistributedSampler``) or dropped (``"drop"``), so every rank has
   the same number of items and batches. Concatenating the ranks' shares in rank
   order gives the global order back (plus the padding).
3. :func:`worker_batches` - the rank's share is cut into batches; DataLoader worker
   ``w`` of ``K`` builds batches ``start + w, start + w + K, ...``, which the
   DataLoader hands out round robin: the rank's batches arrive in order whatever ``K``.

:class:`ShardedBatches` is the ``IterableDataset`` over a source (a dataset with
``set_epoch``, ``blocks()`` and ``batch(indices)``); it follows the state protocol of
torchdata's ``StatefulDataLoader`` per process. :class:`ResumableLoader` is what the
``*_loader`` functions return: a DataLoader over it with ``state_dict()`` /
``load_state_dict()`` counting delivered batches, so a resumed epoch yields exactly
the batches not yet delivered, in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from loaders import prefetch
from loaders.common import Positions

REMAINDERS = ("pad", "drop")


class BatchSource(Protocol):
    """What :class:`ShardedBatches` reads from."""

    def set_epoch(self, epoch: int) -> None: ...
    def blocks(self) -> np.ndarray: ...  # (n_items,) block label of each item of the current epoch
    def batch(self, indices: Positions) -> Any: ...


def distributed_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the arguments where given, else ``torch.distributed`` when it is
    initialised, else ``RANK`` / ``WORLD_SIZE`` from the environment (as ``torchrun`` sets them),
    else ``(0, 1)``."""
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            found = (dist.get_rank(), dist.get_world_size())
        else:
            found = (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return int(rank), int(world_size)


def epoch_order(blocks: np.ndarray, *, seed: int, epoch: int, shuffle: bool = True, mix: int = 1) -> np.ndarray:
    """The global order of items ``0..n-1`` in ``epoch`` (pure; depends on ``(seed, epoch)`` only).

    ``blocks[i]`` labels item ``i``'s block. With ``shuffle`` the blocks are permuted,
    then the items inside each group of ``mix`` consecutive (permuted) blocks; without,
    the items stay in index order."""
    blocks = np.asarray(blocks)
    if mix < 1:
        raise ValueError(f"mix must be >= 1, got {mix}")
    if not shuffle:
        return np.arange(len(blocks), dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    _, block = np.unique(blocks, return_inverse=True)
    n_blocks = int(block.max()) + 1 if len(block) else 0
    place = np.empty(n_blocks, dtype=np.int64)
    place[rng.permutation(n_blocks)] = np.arange(n_blocks)
    group = place[block] // mix
    return np.lexsort((rng.random(len(blocks)), group)).astype(np.int64)


def share_size(n: int, world_size: int, remainder: str = "pad") -> int:
    """Items per rank: ``ceil(n / W)`` when padding, ``floor(n / W)`` when dropping (pure)."""
    if remainder not in REMAINDERS:
        raise ValueError(f"remainder must be one of {', '.join(REMAINDERS)}, got {remainder!r}")
    return -(-n // world_size) if remainder == "pad" else n // world_size


def rank_share(order: np.ndarray, rank: int, world_size: int, remainder: str = "pad") -> np.ndarray:
    """Rank ``rank``'s contiguous share of ``order`` (pure); see the module docstring for ``remainder``."""
    per = share_size(len(order), world_size, remainder)
    if remainder == "pad" and len(order):
        order = np.resize(order, per * world_size)  # repeats the order's start
    return np.asarray(order[rank * per:(rank + 1) * per])


def n_batches(n_items: int, batch_size: int, drop_last: bool = False) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n_items // batch_size if drop_last else -(-n_items // batch_size)


def worker_batches(total: int, start: int, worker: int, n_workers: int) -> range:
    """Batch numbers worker ``worker`` of ``n_workers`` builds when a pass starts at batch ``start`` (pure)."""
    return range(start + worker, total, n_workers)


@dataclass(frozen=True)
class ShardSpec:
    """How an epoch is ordered and split: see the module docstring."""

    batch_size: int
    seed: int = 0
    shuffle: bool = True
    mix: int = 1
    rank: int = 0
    world_size: int = 1
    remainder: str = "pad"
    drop_last: bool = False

    def __post_init__(self) -> None:
        n_batches(0, self.batch_size)
        share_size(0, 1, self.remainder)
        distributed_rank(self.rank, self.world_size)
        if self.mix < 1:
            raise ValueError(f"mix must be >= 1, got {self.mix}")

    def batches(self, blocks: np.ndarray, epoch: int) -> list[np.ndarray]:
        """This rank's batches of item indices in ``epoch`` (pure)."""
        order = epoch_order(blocks, seed=self.seed, epoch=epoch, shuffle=self.shuffle, mix=self.mix)
        share = rank_share(order, self.rank, self.world_size, self.remainder)
        b = self.batch_size
        return [share[k * b:(k + 1) * b] for k in range(n_batches(len(share), b, self.drop_last))]


class ShardedBatches(IterableDataset):
    """This rank's batches of ``source`` in the epoch's order; DataLoader workers split them
    (see :func:`worker_batches`). Use with ``DataLoader(..., batch_size=None)``.

    ``state_dict()`` / ``load_state_dict()`` are per process, as torchdata's
    ``StatefulDataLoader`` calls them in each worker: the state is the next batch
    number this process builds."""

    def __init__(self, source: BatchSource, spec: ShardSpec) -> None:
        self.source, self.spec = source, spec
        self.epoch = 0
        self._resume_next: int | None = None  # set by load_state_dict, used by the next pass
        self._next = 0
        self.start = 0  # the batch a pass starts at (ResumableLoader sets it)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.source.set_epoch(self.epoch)

    def batches(self) -> list[np.ndarray]:
        """This rank's batches of item indices in the current epoch (computed once per epoch and process)."""
        cached = self.__dict__.get("_batches")
        if cached is None or cached[0] != (os.getpid(), self.epoch):
            cached = ((os.getpid(), self.epoch), self.spec.batches(self.source.blocks(), self.epoch))
            self._batches = cached
        return cached[1]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_batches": None}

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[Any]:
        # not a generator itself: the state is set when the pass starts (StatefulDataLoader asks
        # a worker for it right after calling iter(), before the first batch)
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        first = self.start + worker if self._resume_next is None else self._resume_next
        self._resume_next, self._next = None, first
        self.source.set_epoch(self.epoch)
        return self._generate(self.batches(), first, n_workers)

    def _generate(self, batches: list[np.ndarray], first: int, n_workers: int) -> Iterator[Any]:
        ahead = getattr(self.source, "prefetch", None)  # fetch this process's next batch while it builds one
        try:
            for k in range(first, len(batches), n_workers):
                self._next = k + n_workers  # the state once this batch is delivered
                after = batches[k + n_workers] if ahead is not None and k + n_workers < len(batches) else None
                if ahead is not None and after is not None and k != first:  # this batch's chunks are on their way
                    ahead(after)
                batch = self.source.batch(batches[k])
                if ahead is not None and after is not None and k == first:  # the first batch's reads go first
                    ahead(after)
                yield batch
        finally:  # the pass ended, was closed or its worker exits: nothing stays in flight
            prefetch.cancel()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "next_batch": self._next}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.set_epoch(state["epoch"])
        self._resume_next = self._next = int(state["next_batch"])


class ResumableLoader:
    """A DataLoader over :class:`ShardedBatches` that can stop and resume mid-epoch.

    ``state_dict()`` (the protocol of torchdata's ``StatefulDataLoader``) says which epoch
    and how many of this rank's batches were delivered; after ``load_state_dict(state)`` the
    next pass yields the remaining batches of that epoch, in the same order, once. Without a
    loaded state each pass yields the whole current epoch. Call :meth:`set_epoch` per epoch."""

    def __init__(self, stream: ShardedBatches, num_workers: int = 0, **dataloader_kwargs: Any) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset, self.num_workers, self.kwargs = stream, num_workers, dataloader_kwargs
        self._yielded = 0
        self._resume_at = 0

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.dataset.epoch:
            self._resume_at = 0  # a loaded position belongs to another epoch
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches of a whole epoch on this rank (the same on every rank)."""
        return len(self.dataset)

    def __iter__(self) -> Iterator[Any]:
        start, self._resume_at = self._resume_at, 0
        self._yielded = start
        self.dataset.start = start
        # its own generator: a pass draws a worker base seed from it, not from torch's global RNG, so
        # a resumed run's dropout and augmentation draws are those of a run that was never stopped
        kwargs = {"generator": torch.Generator().manual_seed(self.dataset.spec.seed), **self.kwargs}
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers, **kwargs)
        for batch in loader:
            self._yielded += 1
            yield batch

    @property
    def finished(self) -> bool:
        """True when the batches delivered cover the whole epoch."""
        return self._yielded >= len(self)

    def state_dict(self) -> dict[str, Any]:
        spec = self.dataset.spec
        return {"epoch": self.dataset.epoch, "batches_yielded": self._yielded, "batches_in_epoch": len(self),
                "seed": spec.seed, "batch_size": spec.batch_size, "world_size": spec.world_size,
                "shuffle": spec.shuffle, "mix": spec.mix, "remainder": spec.remainder}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        spec = self.dataset.spec
        for key in ("seed", "batch_size", "world_size", "shuffle", "mix", "remainder"):
            if key in state and state[key] != getattr(spec, key):
                raise ValueError(f"cannot resume: the saved loader state has {key}={state[key]!r}, "
                                 f"this loader {key}={getattr(spec, key)!r}")
        self.dataset.set_epoch(int(state["epoch"]))
        self._yielded = self._resume_at = int(state["batches_yielded"])
