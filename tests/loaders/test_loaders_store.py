"""One store handle for every loader (issue 18 item 3): opened lazily, once per process (reopened
after a fork), constructors that touch no store, one ``numpy_batches`` and one worker start-up module."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import _sharding_data as sd
import numpy as np
import pytest
import torch
import zarr

import loaders.cloudmask
import loaders.common
import loaders.stemdl
import loaders.uno
import loaders.workers
from loaders.cloudmask import CloudMaskPatches, PatchSpec
from loaders.common import numpy_batches
from loaders.stemdl import STEMDLClassification, STEMDLReconstruction
from loaders.uno import UnoDataset, UnoSource

DATASETS = ("cloudmask_fixed", "cloudmask_random", "stemdl", "stemdl_reconstruction", "uno")


@pytest.fixture(scope="module")
def stores(cloudmask_stores, tmp_path_factory) -> dict[str, str]:
    return sd.build_stores(tmp_path_factory.mktemp("store_handle"), cloudmask_stores["hdf"])


def _make(name: str, stores: dict[str, str], as_torch: bool = True):
    """Dataset ``name`` over ``stores`` (paths that need not exist yet; sample indices and labels fixed)."""
    if name.startswith("cloudmask"):
        return CloudMaskPatches(stores["cloudmask"], spec=PatchSpec(name.split("_")[1], 32, 5, seed=2),
                                as_torch=as_torch)
    if name == "stemdl":
        return STEMDLClassification(stores["stemdl"], [0, 3, 5, 8], [0, 1, 2, 1], preprocessed=True, as_torch=as_torch)
    if name == "stemdl_reconstruction":
        return STEMDLReconstruction(stores["stemdl"], [1, 2, 7], preprocessed=True, as_torch=as_torch)
    return UnoDataset(UnoSource(root=stores["uno_root"]), "train", as_torch=as_torch)


def _arrays(batch) -> list[np.ndarray]:
    """A batch's arrays (tuple or dict; tensors or NumPy), NaN as a fixed value so equal batches compare equal."""
    parts = [batch[k] for k in sorted(batch)] if isinstance(batch, dict) else list(batch)
    return [np.nan_to_num(p.numpy() if isinstance(p, torch.Tensor) else np.asarray(p), nan=-7.0) for p in parts]


def _equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(b), strict=True))


@pytest.mark.parametrize("name", DATASETS)
def test_loader_constructors_do_no_io(stores, tmp_path, name):
    """A dataset made before its store exists opens it on first use: its constructor reads nothing."""
    later = {"cloudmask": str(tmp_path / "cloudmask.zarr"), "stemdl": str(tmp_path / "stemdl.zarr"),
             "uno_root": str(tmp_path / "uno")}
    early = _make(name, later)  # nothing there yet: must not be opened here
    shutil.copytree(stores["cloudmask"], later["cloudmask"])
    shutil.copytree(stores["stemdl"], later["stemdl"])
    shutil.copytree(Path(stores["uno_root"]) / "candle_uno.zarr", Path(later["uno_root"]) / "candle_uno.zarr")
    now = _make(name, stores)
    assert len(early) == len(now)
    assert _equal(early.batch([0, 2]), now.batch([0, 2]))


def test_a_bad_index_is_refused_on_first_use_not_at_construction(stores):
    data = CloudMaskPatches(stores["cloudmask"], scenes=[5])
    with pytest.raises(IndexError, match="outside"):
        len(data)
    stemdl = STEMDLClassification(stores["stemdl"], [0, 999], [0, 1], preprocessed=True)
    with pytest.raises(IndexError, match="outside"):
        stemdl.batch([0])


@pytest.mark.parametrize("name", DATASETS)
def test_each_loader_reopens_its_one_store_handle_in_a_forked_child(stores, name):
    """Every loader holds a :class:`loaders.store.StoreHandle`: opened once in the parent, a forked
    child (a DataLoader worker) opens its own, once, and reads the same batch."""
    from loaders.store import StoreHandle

    data = _make(name, stores)
    first = data.batch([1, 0])
    assert isinstance(data.handle, StoreHandle)
    parent = data.handle.get()
    assert data.handle.get() is parent  # once per process
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            mine = data.handle.get()
            code = 0 if mine is not parent and data.handle.get() is mine and _equal(data.batch([1, 0]), first) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert data.handle.get() is parent  # the parent keeps its own


@pytest.mark.parametrize("name", DATASETS)
def test_one_numpy_batches_for_every_loader(stores, name):
    """One ``numpy_batches`` (one signature) for the three benchmarks: seeded batches of NumPy arrays that
    cover the dataset once and equal the dataset's own batches."""
    assert loaders.cloudmask.numpy_batches is loaders.stemdl.numpy_batches is loaders.uno.numpy_batches is numpy_batches
    data = _make(name, stores)
    batches = list(numpy_batches(data, batch_size=3, shuffle=True, seed=1))
    order = np.random.default_rng([1, 0]).permutation(len(data))
    assert len(batches) == -(-len(data) // 3)
    numpy_data = _make(name, stores, as_torch=False)
    for k, batch in enumerate(batches):
        assert all(isinstance(a, np.ndarray) for a in (batch.values() if isinstance(batch, dict) else batch))
        assert _equal(batch, numpy_data.batch(order[3 * k:3 * k + 3]))
    assert data.as_torch  # left as it was


def test_worker_start_up_lives_in_loaders_workers():
    assert loaders.cloudmask.start_worker_server is loaders.workers.start_worker_server
    assert loaders.cloudmask.worker_context is loaders.workers.worker_context
    assert not hasattr(loaders.stemdl, "StoreHandle")  # no loader takes shared machinery from another data set's


def test_a_handle_is_pickled_without_its_open_store(stores):
    import pickle

    data = _make("stemdl", stores)
    data.batch([0])
    copy = pickle.loads(pickle.dumps(data))
    assert copy.handle.get() is not data.handle.get()
    assert isinstance(data.handle.get().group, zarr.Group)
