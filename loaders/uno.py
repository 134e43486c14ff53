"""CANDLE-UNO batches gathered from the normalised store.

The store keeps each cell's and drug's features once; a batch is a set of
response rows, joined to their features by two vectorised NumPy gathers
(``rnaseq[cell_index[rows]]``, ``descriptors[drug_index[rows]]``). The feature
tables are small (MBs), so each process loads them once, lazily, from the
catalog (:class:`loaders.store.StoreHandle`: forked DataLoader workers load their own copy).

Framework-free: :func:`loaders.common.numpy_batches` (``numpy_batches(UnoDataset(...), batch_size)``). PyTorch: :class:`UnoDataset` (items
are whole batches) with :class:`UnoBatchSampler` (seeded shuffling,
``set_epoch``); use ``DataLoader(ds, sampler=sampler, batch_size=None)``, with
``multiprocessing_context="forkserver"`` (or spawn) when ``num_workers > 0``:
a forked worker inherits zarr's event-loop thread dead and hangs on its first
read, so each worker must start fresh and load its own copy.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from loaders.common import (
    batch_order,
    numpy_batches,  # noqa: F401 - re-exported
)
from loaders.sharding import (
    ResumableLoader,
    ShardedBatches,
    ShardSpec,
    distributed_rank,
)
from loaders.store import StoreHandle
from loaders.workers import worker_context
from scibench_data.catalog import entry_location, open_catalog
from scibench_data.formats.uno import SPLITS
from scibench_data.storage.store.records import require_complete

ENTRY = "candle_uno"


@dataclass(frozen=True)
class UnoSource:
    """Where the store is: a catalog entry under the catalog-level ``root`` (None: the embedded default)."""

    root: str | None = None
    entry: str = ENTRY
    catalog: str | None = None

    def open(self) -> Any:
        """The store as a lazy xarray Dataset, through the catalog only; an unfinished store is refused
        (:func:`~scibench_data.storage.store.records.require_complete`)."""
        cat = open_catalog(self.catalog, root=self.root)
        require_complete(entry_location(cat, self.entry))
        return getattr(cat, self.entry).to_dask()


@dataclass(frozen=True)
class UnoArrays:
    """The store in memory: model-ready feature tables and the response columns."""

    rnaseq: np.ndarray  # (cells, genes) float32
    descriptors: np.ndarray  # (drugs, descriptors) float32
    auc: np.ndarray  # (responses,) float32
    cell_index: np.ndarray  # (responses,) int64
    drug_index: np.ndarray
    split: np.ndarray  # (responses,) int8

    def rows(self, split: str) -> np.ndarray:
        """Positions of the responses of ``split`` (train/val/test)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.split == SPLITS.index(split))


def prepare_features(values: np.ndarray, standardise: bool = True) -> np.ndarray:
    """Impute missing values with the column mean (0 if all missing) and, by default, scale each column
    to zero mean and unit variance over the table's rows (as the UNO loader's 'std' scaling)."""
    x = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: its mean is 0
        mean = np.nan_to_num(np.nanmean(x, axis=0))
    x = np.where(np.isnan(x), mean, x)
    if standardise:
        std = x.std(axis=0)
        x = (x - mean) / np.where(std > 0, std, 1.0)
    return x.astype(np.float32)


def load_arrays(ds: Any, standardise: bool = True) -> UnoArrays:
    """Read a ``candle_uno`` Dataset into memory (about 50 MB at full size)."""
    return UnoArrays(
        rnaseq=prepare_features(ds["rnaseq"].values, standardise),
        descriptors=prepare_features(ds["descriptors"].values, standardise),
        auc=ds["auc"].values.astype(np.float32), cell_index=ds["cell_index"].values.astype(np.int64),
        drug_index=ds["drug_index"].values.astype(np.int64), split=ds["split"].values.astype(np.int8),
    )


def gather(arrays: UnoArrays, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The joined rows ``rows``: cell features, drug features, target. Two fancy-index gathers, no loop."""
    rows = np.asarray(rows, dtype=np.int64)
    return {"cell": arrays.rnaseq[arrays.cell_index[rows]], "drug": arrays.descriptors[arrays.drug_index[rows]],
            "auc": arrays.auc[rows]}


def _load(source: UnoSource, standardise: bool) -> UnoArrays:
    """The store of ``source`` read into memory (what a :class:`UnoDataset`'s handle opens)."""
    return load_arrays(source.open(), standardise)


def _given(arrays: UnoArrays) -> UnoArrays:
    """Arrays already in memory, as a :class:`UnoDataset`'s handle opens them."""
    return arrays


class UnoDataset:
    """Map-style dataset whose items are whole batches: ``ds[positions]`` -> dict of tensors
    (of NumPy arrays with ``as_torch=False``).

    ``positions`` index the rows of ``split``. ``source`` is where the store is (loaded once per
    process on first use: nothing is opened at construction) or arrays already in memory.
    """

    def __init__(self, source: UnoSource | UnoArrays, split: str, standardise: bool = True,
                 as_torch: bool = True) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        self.split = split
        self.as_torch = as_torch
        opener = partial(_given, source) if isinstance(source, UnoArrays) else partial(_load, source, standardise)
        self.handle: StoreHandle[UnoArrays] = StoreHandle(opener)
        self._rows: tuple[UnoArrays, np.ndarray] | None = None  # (the arrays, the rows of split in them)

    @property
    def arrays(self) -> UnoArrays:
        return self.handle.get()

    def rows(self) -> np.ndarray:
        """Positions of the responses of ``split`` in :attr:`arrays` (found once per process)."""
        arrays = self.arrays
        if self._rows is None or self._rows[0] is not arrays:
            self._rows = (arrays, arrays.rows(self.split))
        return self._rows[1]

    def __len__(self) -> int:
        return len(self.rows())

    def __getitem__(self, positions: Any) -> dict[str, Any]:
        pos = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        batch = gather(self.arrays, self.rows()[pos])
        return {k: torch.from_numpy(v) for k, v in batch.items()} if self.as_torch else batch

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_rows": None}

    def set_epoch(self, epoch: int) -> None:
        """Nothing depends on the epoch here (:class:`loaders.sharding.BatchSource`)."""

    def blocks(self) -> np.ndarray:
        """Every row its own block: the tables are in memory, any order reads alike."""
        return np.arange(len(self), dtype=np.int64)

    def batch(self, positions: Any) -> dict[str, Any]:
        return self[positions]


def uno_loader(dataset: UnoDataset, batch_size: int, num_workers: int = 0, shuffle: bool = True, seed: int = 0,
               drop_last: bool = False, *, rank: int | None = None, world_size: int | None = None,
               remainder: str = "pad", **kwargs: Any) -> ResumableLoader:
    """A resumable DataLoader of this rank's batches of ``dataset`` (:mod:`loaders.sharding`), shuffled
    from ``(seed, epoch)``. Call ``set_epoch`` on it each epoch; ``state_dict()`` /
    ``load_state_dict()`` resume mid-epoch."""
    rank, world_size = distributed_rank(rank, world_size)
    if num_workers:
        kwargs.setdefault("multiprocessing_context", worker_context())
    spec = ShardSpec(batch_size, seed, shuffle, 1, rank, world_size, remainder, drop_last)
    return ResumableLoader(ShardedBatches(dataset, spec), num_workers, **kwargs)


class UnoBatchSampler:
    """Yields batches of positions, reshuffled each epoch from ``(seed, epoch)``; call :meth:`set_epoch`."""

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, shuffle: bool = True, drop_last: bool = False) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = n, batch_size, seed, shuffle, drop_last
        self.epoch = 0
        batch_order(0, batch_size, seed=seed)  # validates batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(batch_order(self.n, self.batch_size, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle,
                                drop_last=self.drop_last))

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)
