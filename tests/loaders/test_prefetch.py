"""The next batch's chunks are fetched while a batch is built (loaders/prefetch.py, issue 20 item 4),
counted in the local S3 server's log: the same batches as without prefetch, the next batch's GETs
seen by the server before that batch is asked for, a bounded number of chunks held, and nothing left
in flight when a pass ends or is closed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _s3_helpers import (
    LoggedS3Server,
    publish_tiny,
    tiny_cloudmask_store,
)

from loaders import chunk_reader, prefetch
from loaders.chunk_reader import window_pieces
from loaders.cloudmask import (
    CloudMaskPatches,
    PatchSpec,
    ScenePatchStream,
    patch_loader,
    start_worker_server,
)
from loaders.prefetch import PrefetchLimits
from scibench_data.storage.distribution.local_s3 import storage_options
from scibench_data.storage.store.location import StoreLocation

BUCKET = "prefetch"
SPEC = PatchSpec(mode="random", patch=24, patches_per_scene=10, seed=5)
BATCH = 4


@pytest.fixture(scope="module")
def server(logged_s3_server: LoggedS3Server) -> LoggedS3Server:
    return logged_s3_server  # shared (conftest.py); this module's requests are told apart by its bucket


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tiny_cloudmask_store(tmp_path_factory.mktemp("prefetch"), grid=(64, 96), tile=32, seed=43)


@pytest.fixture(scope="module")
def location(server, store) -> StoreLocation:
    so = storage_options(server.endpoint)
    return StoreLocation(publish_tiny(so, store, f"s3://{BUCKET}/pub").url, so)


def _data(location: StoreLocation, ahead: PrefetchLimits | None) -> CloudMaskPatches:
    data = CloudMaskPatches(location, spec=SPEC, as_torch=False)
    data.ahead = ahead
    return data


def _epoch(location: StoreLocation, ahead: PrefetchLimits | None, workers: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    loader = patch_loader(_data(location, ahead), BATCH, num_workers=workers, shuffle=True, seed=1)
    return [(np.asarray(image), np.asarray(mask)) for image, mask in loader]


def _assert_same(got: list, want: list) -> None:
    assert len(got) == len(want) > 2
    for k, ((image, mask), (want_image, want_mask)) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(image, want_image, err_msg=f"batch {k}")
        np.testing.assert_array_equal(mask, want_mask, err_msg=f"batch {k}")


def _chunk_keys(data: CloudMaskPatches, indices, store: Path) -> set[str]:
    """The chunk objects (``image/c/...``, relative to the store) a batch's windows touch."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    keys = set()
    for scene, win in (data.items[int(i)] for i in indices):
        ys, xs = win.slices
        for name, region in (("image", (slice(scene, scene + 1), slice(0, 9), ys, xs)),
                             ("cloud_mask", (slice(scene, scene + 1), ys, xs))):
            meta = group[name].metadata
            keys |= {f"{name}/{meta.encode_chunk_key(p.chunk)}" for p in window_pieces(region, group[name].chunks)}
    return keys


def _gets(server: LoggedS3Server, location: StoreLocation, since: int) -> set[str]:
    """The store's objects GET since the server's request number ``since``."""
    prefix = "/" + location.url.removeprefix("s3://").rstrip("/") + "/"
    return {path[len(prefix):] for method, path in server.requests()[since:]
            if method == "GET" and path.startswith(prefix)}


@pytest.mark.parametrize("client", ["obstore", "s3fs"])
@pytest.mark.parametrize("keep", [True, False])
def test_prefetched_batches_are_the_batches_read_without_prefetch(location, keep, client, monkeypatch):
    monkeypatch.setenv("SCIBENCH_S3_CLIENT", client)  # the chunk-reading client: prefetch runs on either
    store_type = type(_data(location, None).handle.group.store).__name__
    assert store_type == {"obstore": "ObstoreReadStore", "s3fs": "FsspecStore"}[client]
    if not keep:  # this tiny store's chunks all fit in a reader's kept chunks: make every batch fetch
        monkeypatch.setattr(chunk_reader, "KEEP_DECODED_BYTES", 0)
    want = _epoch(location, None)
    _assert_same(_epoch(location, PrefetchLimits()), want)
    _assert_same(_epoch(location, PrefetchLimits(max_chunks=1)), want)  # most chunks left to the batch's own read
    assert prefetch.held() == (0, 0)


def test_prefetched_batches_are_the_same_with_two_workers(location):
    start_worker_server(wait=True)
    _assert_same(_epoch(location, PrefetchLimits(), workers=2), _epoch(location, None, workers=2))


def test_the_server_sees_the_next_batchs_gets_before_that_batch_is_asked_for(server, location, store, monkeypatch):
    monkeypatch.setattr(chunk_reader, "KEEP_DECODED_BYTES", 0)  # every batch fetches all of its chunks
    data = _data(location, PrefetchLimits())
    stream = ScenePatchStream(data, seed=1, batch_size=BATCH)
    batches = stream.batches()
    first, second = _chunk_keys(data, batches[0], store), _chunk_keys(data, batches[1], store)
    only_next = second - first
    assert only_next, "the test needs a second batch with chunks of its own"
    before = len(server.requests())
    it = iter(stream)
    next(it)  # batch 0 is built and handed over; batch 1 is not asked for yet
    deadline = time.monotonic() + 10
    while not only_next <= _gets(server, location, before) and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = only_next & _gets(server, location, before)
    it.close()
    assert seen == only_next, f"{len(seen)} of the next batch's {len(only_next)} own chunks were requested early"


def test_prefetch_holds_at_most_its_limits_and_nothing_once_a_pass_ends_or_is_closed(location, monkeypatch):
    monkeypatch.setattr(chunk_reader, "KEEP_DECODED_BYTES", 0)  # kept chunks are never prefetched
    data = _data(location, PrefetchLimits(max_chunks=3))
    stream = ScenePatchStream(data, seed=1, batch_size=BATCH)
    next(iter(stream))  # the reader threads (zarr's event loop) exist from here on
    threads = threading.active_count()
    held = []
    for _ in stream:
        held.append(prefetch.held()[0])
    assert 0 < max(held) <= 3, held
    assert prefetch.held() == (0, 0)  # the pass ended
    it = iter(stream)
    next(it)
    assert prefetch.held()[0] > 0
    it.close()  # a pass given up early (a worker exits, a training loop breaks)
    assert prefetch.held() == (0, 0)
    assert threading.active_count() == threads
    nbytes = 24 * 24 * 9 * 4  # a fetch is counted at its chunk's decoded size: a 32 x 32 x 9 float32 tile is more
    data.ahead = PrefetchLimits(max_bytes=nbytes)
    assert [prefetch.held() for _ in stream] == [(0, 0)] * len(stream)


def test_prefetch_limits_are_checked():
    with pytest.raises(ValueError, match="prefetch limits must be >= 1"):
        PrefetchLimits(max_chunks=0)
    with pytest.raises(ValueError, match="prefetch limits must be >= 1"):
        PrefetchLimits(max_bytes=0)


def _chunk_get_counts(server: LoggedS3Server, location: StoreLocation, since: int) -> dict[str, int]:
    """How many times each chunk object of the store was GET since request number ``since``."""
    prefix = "/" + location.url.removeprefix("s3://").rstrip("/") + "/"
    counts: dict[str, int] = {}
    for method, path in server.requests()[since:]:
        key = path[len(prefix):]
        if method == "GET" and path.startswith(prefix) and "/c/" in key and key.split("/", 1)[0] in ("image", "cloud_mask"):
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_a_prefetched_chunk_is_not_fetched_again_by_its_batch(server, location, monkeypatch):
    """A prefetch is keyed by the reader that will read the chunk; one keyed by another reader (fresh
    ``ChunkReader``s built for the prefetch) is never used, and the batch GETs every chunk a second time."""
    monkeypatch.setattr(chunk_reader, "KEEP_DECODED_BYTES", 0)  # every batch fetches all of its chunks
    before = len(server.requests())
    _epoch(location, None)
    without = _chunk_get_counts(server, location, before)
    before = len(server.requests())
    _epoch(location, PrefetchLimits())
    with_prefetch = _chunk_get_counts(server, location, before)
    assert without and sum(with_prefetch.values()) == sum(without.values()), (
        f"{sum(with_prefetch.values())} chunk GETs with prefetch, {sum(without.values())} without")
    assert with_prefetch == without
