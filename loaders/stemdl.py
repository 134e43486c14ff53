"""STEMDL samples from a Zarr store: PyTorch datasets for both tasks and a NumPy batch iterator.

Inputs are scaled to [0, 1]: stores converted with preprocessing (or from npz)
hold the reference 0..255 values and are divided by 255; raw stores get the
reference log scaling (:func:`scibench_data.formats.stemdl.log_scale`) first,
without the resize. Stores are opened lazily, once per process (a pid check,
:class:`loaders.store.StoreHandle`), so DataLoader workers are safe; constructors read nothing.

Classification input modes: ``"stack"`` (the three projections as three
channels, the reference), ``"random_projection"`` (one projection per sample,
drawn per epoch; 1 channel) and ``"projections"`` (all three as a
``(3, 1, H, W)`` batch of one-channel images, to average logits at evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from loaders.chunk_reader import read_regions
from loaders.common import (
    Positions,
    numpy_batches,  # noqa: F401 - re-exported
)
from loaders.sharding import (
    ResumableLoader,
    ShardedBatches,
    ShardSpec,
    distributed_rank,
)
from loaders.store import ZarrStore, store_location, zarr_handle
from loaders.workers import worker_context
from scibench_data.catalog import entry_location, open_catalog
from scibench_data.datasets.stemdl import split_indices
from scibench_data.formats.stemdl import CLIP_MAX, log_scale
from scibench_data.storage.store.location import StoreLocation

MODES = ("stack", "random_projection", "projections")
DEFAULT_ENTRY = {"classification": "stemdl", "reconstruction": "stemdl_reconstruction"}


def scale_input(cbed: np.ndarray, preprocessed: bool) -> np.ndarray:
    """CBED values -> float32 in [0, 1] (pure)."""
    x = np.asarray(cbed, dtype=np.float32) if preprocessed else log_scale(cbed)
    return (np.nan_to_num(x, nan=0.0) / CLIP_MAX).astype(np.float32)


def projection_choice(seed: int, epoch: int, index: int) -> int:
    """The projection a ``random_projection`` dataset shows for sample ``index`` in ``epoch`` (pure)."""
    return int(np.random.default_rng([seed, epoch, index]).integers(3))


class _StoreDataset:
    """Samples ``indices`` of a store; the store is opened, and the indices checked, on first use."""

    def __init__(self, location: StoreLocation | str, indices: Sequence[int] | np.ndarray, preprocessed: bool,
                 as_torch: bool = True) -> None:
        self.location = store_location(location)
        self.handle = zarr_handle(self.location)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.preprocessed = preprocessed
        self.as_torch = as_torch
        self.epoch = 0
        self._checked = False

    def _check(self, store: ZarrStore) -> None:
        """Refuse what the store cannot serve (once; the result travels to DataLoader workers)."""
        n = store["cbed"].shape[0]
        bad = self.indices[(self.indices < 0) | (self.indices >= n)]
        if bad.size:
            raise IndexError(f"sample indices {bad[:5].tolist()} outside 0..{n - 1}")

    def _store(self) -> ZarrStore:
        """This process's open store."""
        store = self.handle.get()
        if not self._checked:
            self._check(store)
            self._checked = True
        return store

    def open(self) -> None:
        """Open the store now and check it serves this dataset (else that happens on first use)."""
        self._store()

    def __len__(self) -> int:
        return len(self.indices)

    def _cbed(self, i: int) -> np.ndarray:
        return scale_input(np.asarray(self._store()["cbed"][int(self.indices[i])]), self.preprocessed)

    def _read_samples(self, name: str, positions: Positions) -> np.ndarray:
        """Array ``name`` of the samples at ``positions``, stacked, read in one concurrent round
        (every chunk of the batch in flight at once, each decoded once)."""
        reader = self._store().reader(name)
        out = np.empty((len(positions), *reader.shape[1:]), reader.dtype)
        rest = tuple(slice(0, n) for n in reader.shape[1:])
        requests = []
        for k, pos in enumerate(positions):
            i = int(self.indices[int(pos)])
            requests.append((reader, (slice(i, i + 1), *rest), out[k:k + 1]))
        read_regions(requests)
        return out

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def blocks(self) -> np.ndarray:
        """The store chunk of each sample: the unit read together (see :mod:`loaders.sharding`)."""
        return self.indices // int(self._store()["cbed"].chunks[0])


class STEMDLClassification(_StoreDataset):
    """Map-style dataset of (input, label): see the module docstring for ``mode``."""

    def __init__(self, location: StoreLocation | str, indices: Sequence[int] | np.ndarray,
                 labels: Sequence[int] | np.ndarray,
                 preprocessed: bool, mode: str = "stack", seed: int = 0, as_torch: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        super().__init__(location, indices, preprocessed, as_torch)
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.shape != self.indices.shape:
            raise ValueError(f"{len(self.labels)} labels for {len(self.indices)} samples")
        self.mode, self.seed = mode, seed

    @property
    def in_channels(self) -> int:
        return 3 if self.mode == "stack" else 1

    def _shape_input(self, x: np.ndarray, i: int) -> np.ndarray:
        """One sample's scaled ``(3, H, W)`` input in this dataset's ``mode``."""
        if self.mode == "random_projection":
            k = projection_choice(self.seed, self.epoch, int(self.indices[i]))
            return x[k:k + 1]
        if self.mode == "projections":
            return x[:, None]
        return x

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        x = self._shape_input(self._cbed(i), i)
        y = self.labels[i]
        if self.as_torch:
            return torch.from_numpy(x), torch.tensor(y)
        return x, y

    def batch(self, positions: Positions) -> tuple[Any, Any]:
        """Samples ``positions`` as one batch ``(x (B, ...), y (B,))``, read in one concurrent round."""
        cbed = scale_input(self._read_samples("cbed", positions), self.preprocessed)
        x = np.stack([self._shape_input(c, int(i)) for c, i in zip(cbed, positions)])
        y = self.labels[np.asarray(positions, dtype=np.int64)]
        if self.as_torch:
            return torch.from_numpy(x), torch.from_numpy(y)
        return x, y


class STEMDLReconstruction(_StoreDataset):
    """Map-style dataset of (input (3, H, W), projected potential (1, H, W))."""

    def __init__(self, location: StoreLocation | str, indices: Sequence[int] | np.ndarray, preprocessed: bool,
                 as_torch: bool = True) -> None:
        super().__init__(location, indices, preprocessed, as_torch)

    def _check(self, store: ZarrStore) -> None:
        super()._check(store)
        if "potential" not in store:
            raise ValueError(f"{self.location.url} has no 'potential' array (convert a raw source that has one)")

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        x = self._cbed(i)
        t = np.asarray(self._store()["potential"][int(self.indices[i])], dtype=np.float32)[None]
        if self.as_torch:
            return torch.from_numpy(x), torch.from_numpy(t)
        return x, t

    def batch(self, positions: Positions) -> tuple[Any, Any]:
        """Samples ``positions`` as one batch ``(x (B, 3, H, W), target (B, 1, H, W))``, one concurrent round."""
        x = scale_input(self._read_samples("cbed", positions), self.preprocessed)
        t = self._read_samples("potential", positions).astype(np.float32)[:, None]
        if self.as_torch:
            return torch.from_numpy(x), torch.from_numpy(t)
        return x, t


def stemdl_loader(data: STEMDLClassification | STEMDLReconstruction, batch_size: int, num_workers: int = 0,
                  shuffle: bool = True, seed: int = 0, drop_last: bool = False, *, mix: int = 1,
                  rank: int | None = None, world_size: int | None = None, remainder: str = "pad",
                  **kwargs: Any) -> ResumableLoader:
    """A resumable DataLoader of this rank's batches of ``data`` (:mod:`loaders.sharding`): store
    chunks of samples shuffled, then the samples inside them (or inside ``mix`` chunks), from
    ``(seed, epoch)``; each batch read in one concurrent round by a worker. Call ``set_epoch``
    on it each epoch; ``state_dict()`` / ``load_state_dict()`` resume mid-epoch."""
    rank, world_size = distributed_rank(rank, world_size)
    if num_workers:
        kwargs.setdefault("multiprocessing_context", worker_context())
    spec = ShardSpec(batch_size, seed, shuffle, mix, rank, world_size, remainder, drop_last)
    return ResumableLoader(ShardedBatches(data, spec), num_workers, **kwargs)


def from_catalog(task: str, split: str, root: str | None = None, entry: str | None = None,
                 **kwargs: Any) -> STEMDLClassification | STEMDLReconstruction:
    """A dataset of ``task`` (``classification`` or ``reconstruction``) over one split of a catalog entry:
    the store is found through the catalog only."""
    if task not in DEFAULT_ENTRY:
        raise ValueError(f"task must be one of {', '.join(DEFAULT_ENTRY)}, got {task!r}")
    entry = entry or DEFAULT_ENTRY[task]
    cat = open_catalog(root=root)
    location = entry_location(cat, entry)
    ds = getattr(cat, entry).to_dask()
    idx = split_indices(ds["split"].values, split)
    preprocessed = bool(ds.attrs.get("scibench_preprocessed", False))
    data: STEMDLClassification | STEMDLReconstruction
    if task == "classification":
        data = STEMDLClassification(location, idx, ds["label"].values[idx], preprocessed, **kwargs)
    else:
        data = STEMDLReconstruction(location, idx, preprocessed, **kwargs)
    data.open()  # here, not at the first batch: an unfinished store is refused before any output
    return data
