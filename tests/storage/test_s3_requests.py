"""Requests per chunk on every S3 read path we own (issue 20, item 1), counted in the local S3 server's log.

s3fs 2026.9.0's ``_cat_file`` sends a HEAD (``_size()``) before the GET whenever
``max_concurrency`` > 1 (its default is 10): every chunk read cost two round trips. Each test reads
a known set of chunks of a published store through one path (a loader batch, a catalog slice's
``to_dask().compute()``, ``pull``, ``verify``) and asserts the server saw exactly one GET, and no
HEAD, for each distinct chunk it needed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from _s3_helpers import (
    LoggedS3Server,
    publish_tiny,
    tiny_cloudmask_store,
)

from loaders.chunk_reader import window_pieces
from scibench_data.storage.distribution.local_s3 import storage_options

BUCKET = "requests"
DATASET = "cloudmask_ds1"


@pytest.fixture(scope="module")
def server(logged_s3_server: LoggedS3Server) -> LoggedS3Server:
    return logged_s3_server  # shared (conftest.py); this module's requests are told apart by its bucket


@pytest.fixture(scope="module")
def so(server) -> dict:
    return storage_options(server.endpoint)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> Path:
    return tiny_cloudmask_store(tmp_path_factory.mktemp("requests"), grid=(64, 96), tile=32, seed=41)


@pytest.fixture(scope="module")
def published(so, local_store):
    return publish_tiny(so, local_store, f"s3://{BUCKET}/pub")


def _chunk_requests(server: LoggedS3Server, before: int, prefix: str, array: str = "") -> tuple[Counter, Counter]:
    """GETs and HEADs per chunk key (``image/c/...``, relative to the store; of ``array`` when given)
    since request ``before``."""
    gets, heads = Counter(), Counter()
    for method, path in server.requests()[before:]:
        key = path.lstrip("/")
        if not key.startswith(prefix) or "/c/" not in key:
            continue
        key = key[len(prefix):]
        if array and not key.startswith(f"{array}/c/"):
            continue
        if method == "GET":
            gets[key] += 1
        elif method == "HEAD":
            heads[key] += 1
    return gets, heads


def _assert_one_get_each(gets: Counter, heads: Counter, expected: set[str]) -> None:
    assert not heads, f"HEAD requests for chunks: {sorted(heads.items())[:4]}"
    twice = {k: n for k, n in gets.items() if n != 1}
    assert not twice, f"chunks requested more than once: {sorted(twice.items())[:4]}"
    assert set(gets) == expected


def _store_prefix(published) -> str:
    return published.url.removeprefix("s3://").rstrip("/") + "/"


@pytest.fixture(params=["obstore", "s3fs"])
def client(request, monkeypatch) -> str:
    """The chunk-reading client (``$SCIBENCH_S3_CLIENT``): both must send one GET per chunk."""
    monkeypatch.setenv("SCIBENCH_S3_CLIENT", request.param)
    return request.param


def test_every_chunk_read_from_s3_is_one_get_request_in_a_loader_batch(server, so, published, local_store, client):
    import zarr

    from loaders.cloudmask import CloudMaskPatches, PatchSpec
    from scibench_data.storage.store.location import StoreLocation

    data = CloudMaskPatches(StoreLocation(published.url, so), spec=PatchSpec(mode="random", patch=24),
                            as_torch=False)
    indices = list(range(6))
    group = zarr.open_group(str(local_store), mode="r")
    expected = set()
    for scene, win in (data.items[i] for i in indices):
        ys, xs = win.slices
        for name, region in (("image", (slice(scene, scene + 1), slice(0, 9), ys, xs)),
                             ("cloud_mask", (slice(scene, scene + 1), ys, xs))):
            meta = group[name].metadata
            expected |= {f"{name}/{meta.encode_chunk_key(p.chunk)}"
                         for p in window_pieces(region, group[name].chunks)}
    assert type(data.handle.group.store).__name__ == {"obstore": "ObstoreReadStore", "s3fs": "FsspecStore"}[client]
    before = len(server.requests())
    image, _ = data.batch(indices)
    _assert_one_get_each(*_chunk_requests(server, before, _store_prefix(published)), expected)
    assert np.isfinite(image).all()  # the batch itself was read


def test_every_chunk_read_from_s3_is_one_get_request_in_a_catalog_slice(server, so, published, local_store, client):
    from scibench_data.catalog import open_catalog

    ds = open_catalog(published.catalog_url, storage_options=so)[DATASET].to_dask()
    before = len(server.requests())
    got = ds["image"][1, :, :40, 30:70].compute()
    local = xr.open_zarr(local_store)["image"][1, :, :40, 30:70].load()
    np.testing.assert_array_equal(got.values, local.values)
    chunks = ds["image"].encoding["chunks"]  # (1, 9, 32, 32): rows 0-1, columns 0-2
    assert tuple(chunks[2:]) == (32, 32)
    expected = {f"image/c/1/0/{y}/{x}" for y in (0, 1) for x in (0, 1, 2)}
    _assert_one_get_each(*_chunk_requests(server, before, _store_prefix(published), "image"), expected)


def test_every_chunk_read_from_s3_is_one_get_request_in_a_pull(server, so, published, tmp_path):
    from scibench_data.storage.distribution.pull import pull

    before = len(server.requests())
    pull(published.catalog_url, DATASET, tmp_path / "copy", storage_options=so, progress=False)
    expected = {p.relative_to(tmp_path / "copy" / f"{DATASET}.zarr").as_posix()
                for p in (tmp_path / "copy" / f"{DATASET}.zarr").rglob("*") if p.is_file() and "/c/" in p.as_posix()}
    assert len(expected) > 10
    _assert_one_get_each(*_chunk_requests(server, before, _store_prefix(published)), expected)


def test_every_chunk_read_from_s3_is_one_get_request_in_a_verify(server, so, published, local_store):
    from scibench_data.storage.distribution.pull import verify_published

    before = len(server.requests())
    report = verify_published(published.catalog_url, DATASET, storage_options=so)
    assert report.ok, report.lines()
    expected = {p.relative_to(local_store).as_posix() for p in local_store.rglob("*")
                if p.is_file() and "/c/" in p.relative_to(local_store).as_posix()
                and not p.relative_to(local_store).as_posix().startswith("_scibench/")}
    _assert_one_get_each(*_chunk_requests(server, before, _store_prefix(published)), expected)
