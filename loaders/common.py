"""Pieces every framework loader shares."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def numpy_batches(dataset: Any, batch_size: int = 32, shuffle: bool = True,
                  seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Framework-free batches ``(B, ...)`` of inputs and targets from a map-style dataset
    with an ``as_torch`` switch (its items are then NumPy pairs)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.arange(len(dataset))
    if shuffle:
        np.random.default_rng(seed).shuffle(order)
    as_torch, dataset.as_torch = dataset.as_torch, False
    try:
        for start in range(0, len(order), batch_size):
            items = [dataset[int(i)] for i in order[start:start + batch_size]]
            yield np.stack([a for a, _ in items]), np.stack([np.asarray(b) for _, b in items])
    finally:
        dataset.as_torch = as_torch
