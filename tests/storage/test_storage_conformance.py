"""What our storage layer promises, checked with the same cases on a local folder and on S3 (the moto
server): small JSON objects, Zarr arrays through the store's lifecycle (prepare, record writes, the one
atomic root write that makes a store complete), listing, deleting, the writer lock, and a lost chunk
that raises instead of reading as the fill value."""

from __future__ import annotations

import multiprocessing
import uuid

import numpy as np
import pytest
import xarray as xr
import zarr
from _s3_helpers import bucket_client

from scibench_data.storage.store.checked import CheckedStore
from scibench_data.storage.store.integrity import MissingChunkError
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.lock import StoreLockedError, WriterLock
from scibench_data.storage.store.manifest import list_objects, read_manifest
from scibench_data.storage.store.records import (
    RecordStore,
    StoreStateError,
    store_state,
    write_atomic,
)

N, W = 4, 6  # records, values per record


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path) -> StoreLocation:
    """A fresh, empty store location: a local folder, or a prefix in a bucket of the moto S3 server."""
    if request.param == "local":
        return StoreLocation(str(tmp_path / "store.zarr"))
    options = request.getfixturevalue("s3_storage_options")
    bucket_client(options, "conformance")
    return StoreLocation(f"s3://conformance/{uuid.uuid4().hex}/store.zarr", options)


def _template() -> xr.Dataset:
    data = xr.DataArray(np.full((N, W), np.nan, np.float32), dims=("record", "x"), attrs={"_FillValue": np.nan})
    return xr.Dataset({"values": data.chunk({"record": 1, "x": W})})


def _encoding() -> dict:
    return {"values": {"chunks": (1, W), "fill_value": np.float32(np.nan)}}


def _record(i: int) -> np.ndarray:
    return np.arange(W, dtype=np.float32) + 10 * i


def _complete_store(location: StoreLocation) -> RecordStore:
    store = RecordStore(location, "record")
    assert store.prepare(_template(), _encoding(), [f"r{i}" for i in range(N)], {"format": "test"}) == "created"
    for i in range(N):
        store.write_record(i, {"values": _record(i)})
        store.mark_done(i, {"i": i})
    store.finalize({}, {"title": "conformance"})
    return store


def test_json_objects_round_trip_and_absent_or_garbled_ones_read_as_none(location):
    assert location.read_json("_scibench", "info.json") is None
    location.write_json({"a": 1, "b": [1, 2]}, "_scibench", "info.json")
    assert location.read_json("_scibench", "info.json") == {"a": 1, "b": [1, 2]}
    location.fs.pipe_file(location.path("_scibench", "half.json"), b'{"a": ')
    assert location.read_json("_scibench", "half.json") is None


def test_a_store_is_incomplete_until_its_root_is_written_once_then_complete(location):
    assert not store_state(location).exists
    store = RecordStore(location, "record")
    store.prepare(_template(), _encoding(), [f"r{i}" for i in range(N)], {"format": "test"})
    assert store_state(location).exists and not store_state(location).complete
    for i in range(N - 1):
        store.write_record(i, {"values": _record(i)})
        store.mark_done(i, {"i": i})
    with pytest.raises(StoreStateError, match="not written yet"):
        store.finalize({}, {})
    assert not store_state(location).complete
    store.write_record(N - 1, {"values": _record(N - 1)})
    store.mark_done(N - 1, {"i": N - 1})
    store.finalize({}, {})
    assert store_state(location).complete
    # the same plan again is "complete"; another plan is refused
    assert RecordStore(location, "record").prepare(_template(), _encoding(), [f"r{i}" for i in range(N)],
                                                   {"format": "test"}) == "complete"
    with pytest.raises(StoreStateError):
        RecordStore(location, "record").prepare(_template(), _encoding(), ["other"], {"format": "test"})


def test_written_records_read_back_equal(location):
    _complete_store(location)
    got = zarr.open_group(location.zarr_store(read_only=True), mode="r")["values"][...]
    np.testing.assert_array_equal(got, np.stack([_record(i) for i in range(N)]))
    ds = xr.open_zarr(location.zarr_store(read_only=True), consolidated=True)
    assert ds.attrs["title"] == "conformance" and ds["values"].shape == (N, W)


def test_listing_matches_the_manifest_and_deleting_removes_an_object(location):
    _complete_store(location)
    objects = list_objects(location)
    manifest = read_manifest(location)
    assert set(manifest.by_key) <= set(objects)
    assert all(objects[k] == e.size for k, e in manifest.by_key.items())
    chunk = next(k for k in objects if k.startswith("values/c/"))
    location.fs.rm(location.path(chunk))
    assert chunk not in list_objects(location)


def test_a_lost_chunk_raises_instead_of_reading_as_fill(location):
    _complete_store(location)
    chunk = next(k for k in list_objects(location) if k.startswith("values/c/"))
    location.fs.rm(location.path(chunk))
    group = zarr.open_group(CheckedStore(location.zarr_store(read_only=True)), mode="r")
    with pytest.raises(MissingChunkError, match="missing"):
        group["values"][...]


def test_atomic_writes_replace_an_object_whole(location):
    write_atomic(location, b"first", "_scibench", "state.bin")
    write_atomic(location, b"second version", "_scibench", "state.bin")
    assert location.fs.cat_file(location.path("_scibench", "state.bin")) == b"second version"
    leftovers = [k for k in list_objects(location) if "state.bin" in k and not k.endswith("state.bin")]
    assert not leftovers, leftovers


def test_one_writer_at_a_time(location):
    first = WriterLock(location, operation="first writer")
    first.acquire()
    try:
        with pytest.raises(StoreLockedError):
            WriterLock(location, operation="second writer").acquire()
    finally:
        first.release()
    with WriterLock(location, operation="after release"):
        pass


def _read_in_child(location: StoreLocation, key: str, out) -> None:
    try:
        out.put(location.read_json(key))
    except Exception as err:  # noqa: BLE001 - the child reports any failure, the parent asserts
        out.put(f"{type(err).__name__}: {err}")


def test_a_location_used_before_a_fork_reads_in_the_forked_child(location):
    """A DataLoader worker forked after its parent read through a location must read through it
    too: fsspec's S3 filesystem is not fork-safe, so the child needs its own (it got the parent's,
    cached on the location, and failed with "This class is not fork-safe")."""
    location.write_json({"n": 1}, "probe.json")
    assert location.read_json("probe.json") == {"n": 1}  # the parent's filesystem is made and used
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(location, "probe.json", out))
    child.start()
    got = out.get(timeout=60)
    child.join(timeout=60)
    assert got == {"n": 1}
    assert location.read_json("probe.json") == {"n": 1}  # the parent's own still works
