"""Pieces every framework loader shares: the batch order and framework-free NumPy batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, TypeAlias

import numpy as np

#: Which items of a dataset make one batch (a list, or an array as :func:`batch_order` cuts them).
Positions: TypeAlias = "Sequence[int] | np.ndarray"


class BatchDataset(Protocol):
    """What :func:`numpy_batches` reads: a map-style dataset of every benchmark
    (``CloudMaskPatches``, ``STEMDLClassification``, ``STEMDLReconstruction``, ``UnoDataset``)."""

    as_torch: bool  # False: batches of NumPy arrays

    def __len__(self) -> int: ...
    def batch(self, positions: Positions) -> Any: ...


def batch_order(n: int, batch_size: int, *, seed: int, epoch: int = 0, shuffle: bool = True,
                drop_last: bool = False) -> list[np.ndarray]:
    """Positions ``0..n-1`` cut into batches; shuffled from ``(seed, epoch)`` when ``shuffle``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    return [order[a: a + batch_size] for a in range(0, stop, batch_size)]


def numpy_batches(dataset: BatchDataset, batch_size: int = 32, shuffle: bool = True, seed: int = 0, *,
                  epoch: int = 0) -> Iterator[Any]:
    """Framework-free batches of a dataset, in :func:`batch_order`: ``dataset.batch(positions)``
    with ``as_torch`` off (CloudMask and STEMDL: ``(inputs (B, ...), targets (B, ...))``; UNO:
    a dict of arrays). The last batch may be short."""
    batches = batch_order(len(dataset), batch_size, seed=seed, epoch=epoch, shuffle=shuffle)
    as_torch, dataset.as_torch = dataset.as_torch, False
    try:
        for positions in batches:
            yield dataset.batch(positions)
    finally:
        dataset.as_torch = as_torch
