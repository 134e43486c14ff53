"""Forked DataLoader workers read chunks through obstore (issue 20, item 2), without ever hanging.

obstore's tokio runtime starts at the first request a process sends and does not survive ``fork``.
A training script's parent only opens the store (zarr metadata, through s3fs) and counts the
dataset's patches before its workers fork: it never starts obstore's runtime, so each forked worker
starts its own and reads its chunks through obstore. The DataLoader runs in a subprocess with a
timeout, so a worker hung on an inherited runtime fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _s3_helpers import publish_tiny, tiny_cloudmask_store

from scibench_data.storage.store.s3_client import one_chunk_arrays

BUCKET = "forked"
REPO = Path(__file__).resolve().parents[2]

# what a training script does: build the dataset (the store opened, its metadata read), len(), then a
# DataLoader with 2 workers and the platform's start method (fork on Linux); each batch says which
# store read it, whether obstore's runtime was started in the worker that read it, and the worker's pid
SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import torch
    from loaders.cloudmask import CloudMaskPatches, PatchSpec
    from scibench_data.storage.store import s3_client
    from scibench_data.storage.store.location import StoreLocation

    url, so, local = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    spec = PatchSpec(mode="random", patch=16, patches_per_scene=3, seed=7)

    class Probe(torch.utils.data.Dataset):
        def __init__(self, data):
            self.data = data
        def __len__(self):
            return len(self.data) // 2
        def __getitem__(self, i):
            image, mask = self.data.batch([2 * i, 2 * i + 1])
            store = type(self.data.handle.group.store).__name__
            return store, s3_client.obstore_started_here(), os.getpid(), np.asarray(image), np.asarray(mask)

    data = CloudMaskPatches(StoreLocation(url, so), spec=spec, as_torch=False)
    n = len(data)
    if sys.argv[4] == "xarray":  # what the catalog's to_dask() does: manifest and coordinates read in the parent
        import xarray as xr
        from scibench_data.storage.store.checked import CheckedStore
        ds = xr.open_zarr(CheckedStore(StoreLocation(url, so).zarr_store(read_only=True)), consolidated=True)
        coords = {name: ds[name].values for name in ds.coords}
        assert coords and all(v.size for v in coords.values())
    parent = {"pid": os.getpid(), "runtime_started": s3_client.obstore_started_here(),
              "store": type(data.handle.group.store).__name__}
    want = CloudMaskPatches(StoreLocation(local), spec=spec, as_torch=False)
    loader = torch.utils.data.DataLoader(Probe(data), batch_size=None, num_workers=2, timeout=120)
    assert loader.multiprocessing_context is None  # the default start method
    batches = []
    for i, (store, started, pid, image, mask) in enumerate(loader):
        w_image, w_mask = want.batch([2 * i, 2 * i + 1])
        batches.append({"store": store, "runtime_started_here": started, "pid": pid,
                        "same": bool(np.array_equal(np.asarray(image), w_image, equal_nan=True)
                                     and np.array_equal(np.asarray(mask), w_mask, equal_nan=True))})
    print(json.dumps({"parent": parent, "n": n, "batches": batches}))
""")


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> Path:
    return tiny_cloudmask_store(tmp_path_factory.mktemp("forked"), grid=(32, 48), tile=16, seed=61)


@pytest.fixture(scope="module")
def url(s3_storage_options, local_store) -> str:
    return publish_tiny(s3_storage_options, local_store, f"s3://{BUCKET}/store").url


def _run(script: Path, *args: str, env: dict) -> dict:
    try:
        done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=240,
                              env=env, cwd=str(REPO))
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the DataLoader hung (no result in {err.timeout} s): {(err.stderr or b'')[-2000:]!r}")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("parent_reads", ["metadata", "xarray"])
def test_forked_workers_of_a_parent_that_only_opened_the_store_read_chunks_through_obstore(
        tmp_path, s3_storage_options, url, local_store, parent_reads):
    """``xarray``: the parent also opens the store as the catalog's ``to_dask()`` does (checked
    against its manifest) and reads its coordinates: the manifest and one-chunk arrays go through
    s3fs with the metadata, so that still starts no runtime (it did, and the train pipeline's workers
    read through s3fs)."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SCIBENCH_S3_CLIENT"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    got = _run(script, url, json.dumps(s3_storage_options), str(local_store), parent_reads, env=env)
    assert got["n"] == 2 * 3 and len(got["batches"]) == 3
    assert got["parent"]["store"] == "ObstoreReadStore"
    assert all(b["same"] for b in got["batches"]), got["batches"]
    assert got["parent"]["pid"] not in {b["pid"] for b in got["batches"]}  # read in the workers
    assert [(b["store"], b["runtime_started_here"]) for b in got["batches"]] == [("ObstoreReadStore", True)] * 3
    assert not got["parent"]["runtime_started"], "opening the store and len() started obstore's runtime in the parent"


def test_only_arrays_in_one_chunk_are_read_with_the_metadata():
    """The arrays a dataset's opening reads whole (coordinates, one chunk each) go through s3fs with the
    metadata; every array of more than one chunk stays on obstore; a malformed object names nothing."""
    def v3(shape, chunks):
        return {"node_type": "array", "shape": shape,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}}}

    root = {"node_type": "group", "consolidated_metadata": {"metadata": {
        "time": v3([7], [7]), "source_name": v3([7, 1], [8, 1]), "image": v3([7, 9, 64, 64], [1, 9, 32, 32]),
        "cloud_mask": v3([7, 64, 64], [1, 32, 32]), "sub": {"node_type": "group"}}}}
    assert one_chunk_arrays("zarr.json", json.dumps(root).encode()) == {"time", "source_name"}
    assert one_chunk_arrays("grp/x/zarr.json", json.dumps(v3([3], [3])).encode()) == {"grp/x"}
    assert one_chunk_arrays("x/zarr.json", json.dumps(v3([3, 4], [3, 2])).encode()) == set()
    v2 = {"metadata": {"y/.zarray": {"shape": [5], "chunks": [5]}, "m/.zarray": {"shape": [9], "chunks": [4]}}}
    assert one_chunk_arrays(".zmetadata", json.dumps(v2).encode()) == {"y"}
    for hostile in (b"\xff\xfe", b"[1, 2]", b'{"shape": "big", "chunks": [1]}', b"{"):
        assert one_chunk_arrays("zarr.json", hostile) == set()
