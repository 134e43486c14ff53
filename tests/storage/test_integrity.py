"""Integrity on every read (issue 13): a corrupted, missing or unfinished chunk raises, never returns
wrong data; kills, full disks and lock races leave stores that the same command finishes."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import (
    RecordStore,
    StoreStateError,
    store_state,
)

REPO = Path(__file__).resolve().parents[2]
IMAGE_CHUNK = "image/c/1/0/0/0"  # scene 1's only image chunk (tile 256 > the 64 x 96 grid)


def _cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scibench_data", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def _convert(raw: Path, dest: Path, **kwargs) -> None:
    from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask

    report = convert_cloudmask(str(raw), str(dest), CloudMaskConversion(layout="hdf", progress=False, **kwargs))
    assert report.ok, report.lines()


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    base = tmp_path_factory.mktemp("integrity_raw")
    generate(base / "hdf", "hdf", SyntheticCloudMask(n_products=3, grid=(64, 96), seed=7))
    return base / "hdf"


@pytest.fixture(scope="module")
def clean(raw, tmp_path_factory) -> Path:
    """A complete store, never modified: tests copy it."""
    dest = tmp_path_factory.mktemp("integrity_clean") / "cloudmask_ds1.zarr"
    _convert(raw, dest)
    return dest


@pytest.fixture
def store(clean, tmp_path) -> Path:
    dest = tmp_path / "root" / "cloudmask_ds1.zarr"
    shutil.copytree(clean, dest)
    return dest


def _flip(path: Path, offset: int) -> bytes:
    data = bytearray(path.read_bytes())
    original = bytes(data)
    data[offset % len(data)] ^= 0x40
    path.write_bytes(bytes(data))
    return original


def _patches(path: Path):
    from loaders.cloudmask import CloudMaskPatches, PatchSpec

    return CloudMaskPatches(str(path), spec=PatchSpec(mode="random", patch=32, patches_per_scene=2), as_torch=False)


# --------------------------------------------------------------------------- 1: checksums


def test_new_stores_carry_a_crc32c_checksum_in_every_array(store):
    g = zarr.open_group(str(store), mode="r")
    for name, arr in g.arrays():
        names = [c.to_dict()["name"] for c in arr.metadata.codecs]
        assert names[-1] == "crc32c", (name, names)


def test_flipped_byte_in_a_chunk_raises_naming_the_chunk(store):
    """One flipped byte used to decode to wrong values (or, at other offsets, a bare blosc error)."""
    from scibench_data.catalog import open_catalog
    from scibench_data.storage.store.integrity import ChunkIntegrityError

    chunk = store / IMAGE_CHUNK
    size = chunk.stat().st_size
    expected = zarr.open_group(str(store), mode="r")["image"][1]
    for offset in (20, size // 3, size // 2, size - 40, size - 5):
        original = _flip(chunk, offset)
        try:
            data = _patches(store)
            with pytest.raises(ChunkIntegrityError) as err:
                data.batch(range(len(data)))
            msg = str(err.value)
            assert str(store) in msg and IMAGE_CHUNK in msg and "checksum" in msg and "scene 1" in msg, msg
            with pytest.raises(Exception, match="checksum"):  # xarray through the catalog: zarr's crc32c codec
                open_catalog(root=str(store.parent)).cloudmask_ds1.to_dask()["image"].isel(scene=1).values
        finally:
            chunk.write_bytes(original)
    np.testing.assert_array_equal(zarr.open_group(str(store), mode="r")["image"][1], expected)


def test_flipped_byte_in_a_cloud_mask_chunk_raises(store):
    from scibench_data.storage.store.integrity import ChunkIntegrityError

    chunk = store / "cloud_mask/c/2/0/0"
    _flip(chunk, chunk.stat().st_size // 2)
    data = _patches(store)
    with pytest.raises(ChunkIntegrityError, match="cloud_mask/c/2/0/0"):
        data.batch(range(len(data)))


def test_store_written_before_checksums_still_opens_and_verify_says_reads_are_unchecked(tmp_path):
    """A store without crc32c (and without a manifest) reads as before; verify cannot vouch for it."""
    dest = tmp_path / "old.zarr"
    g = zarr.open_group(str(dest), mode="w", zarr_format=3, attributes={"scibench_status": "complete"})
    a = g.create_array("x", shape=(2, 4), chunks=(1, 4), dtype="f4", dimension_names=("scene", "i"))
    a[...] = np.arange(8, dtype="f4").reshape(2, 4)
    zarr.consolidate_metadata(str(dest))
    from loaders.chunk_reader import ChunkReader, read_regions

    out = np.empty((1, 4), "f4")
    read_regions([(ChunkReader(zarr.open_group(str(dest), mode="r")["x"]), (slice(1, 2), slice(0, 4)), out)])
    np.testing.assert_array_equal(out[0], [4, 5, 6, 7])
    res = _cli("verify", "--store", str(dest))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no manifest" in res.stdout and "unchecked" in res.stdout and "all match" not in res.stdout, res.stdout


# --------------------------------------------------------------------------- 2: missing chunks


def test_deleted_chunk_reads_as_an_error_not_fill_values(store):
    """A deleted chunk used to read as 589,824 NaN, which the loader turned into 0."""
    from loaders.chunk_reader import ChunkReader, read_regions
    from scibench_data.storage.store.integrity import (
        ChunkIntegrityError,
        MissingChunkError,
    )

    (store / IMAGE_CHUNK).unlink()
    data = _patches(store)
    with pytest.raises(MissingChunkError) as err:
        data.batch(range(len(data)))
    assert IMAGE_CHUNK in str(err.value) and "scene 1" in str(err.value) and str(store) in str(err.value)
    assert isinstance(err.value, ChunkIntegrityError)
    reader = ChunkReader(zarr.open_group(str(store), mode="r")["image"])
    with pytest.raises(MissingChunkError, match=IMAGE_CHUNK):
        read_regions([(reader, (slice(1, 2), slice(0, 9), slice(0, 8), slice(0, 8)), np.empty((1, 9, 8, 8), "f4"))])
    from scibench_data.catalog import open_catalog

    ds = open_catalog(root=str(store.parent)).cloudmask_ds1.to_dask()  # the catalog's open path
    with pytest.raises(MissingChunkError, match=IMAGE_CHUNK):
        ds["image"].isel(scene=1).values
    np.testing.assert_array_equal(ds["image"].isel(scene=0).values, zarr.open_group(str(store), mode="r")["image"][0])


def test_chunk_absent_by_design_still_reads_as_fill(store):
    """Chunks that were all fill are not written; the store's inventory tells them from lost ones."""
    from loaders.chunk_reader import ChunkReader, read_regions

    g = zarr.open_group(str(store), mode="r")
    manifest = json.loads((store / "_scibench" / "manifest.json").read_bytes())
    keys = {o["key"] for o in manifest["objects"]}
    assert "split/c/0" not in keys and not (store / "split/c/0").exists()  # all-fill: never written
    arr = g["split"]
    out = np.empty((3,), dtype=arr.dtype) if arr.dtype != object else None
    if out is not None:
        read_regions([(ChunkReader(arr), (slice(0, 3),), out)])
        np.testing.assert_array_equal(out, arr[...])


# --------------------------------------------------------------------------- 3: loaders refuse unfinished stores


def test_loaders_refuse_a_store_whose_conversion_is_still_running(store):
    """CloudMaskPatches used to stream a store being converted (126 patches, all zero)."""
    from loaders.stemdl import STEMDLClassification

    RecordStore(StoreLocation(str(store)), "scene").begin_update()  # what a running append looks like
    with pytest.raises(StoreStateError) as err:
        len(_patches(store))  # the store is opened (and refused) on first use
    msg = str(err.value)
    assert "'incomplete'" in msg and str(store) in msg and "scibench-data convert cloudmask" in msg, msg
    with pytest.raises(StoreStateError, match="'incomplete'"):
        STEMDLClassification(str(store), [0], [0], preprocessed=True).batch([0])
    from scibench_data.catalog import open_catalog

    with pytest.raises(StoreStateError) as via_catalog:  # the same rule and message as the catalog's to_dask()
        open_catalog(root=str(store.parent)).cloudmask_ds1.to_dask()
    assert str(via_catalog.value) == msg


def test_uno_loader_refuses_an_unfinished_store(tmp_path):
    from loaders.uno import UnoSource
    from scibench_data.convert.uno import UnoConversion, convert_uno
    from scibench_data.synthetic.uno import SyntheticUno, generate

    generate(tmp_path / "raw", "raw", SyntheticUno(n_cells=12, n_drugs=9, n_responses=300, n_genes=7, n_descriptors=5,
                                                   n_fingerprint_bits=16, na_fraction=0.05))
    dest = tmp_path / "root" / "candle_uno.zarr"
    assert convert_uno(tmp_path / "raw", dest, UnoConversion(response_chunk=32, chunks_per_task=2, progress=False,
                                                             scheduler="sync")).ok
    RecordStore(StoreLocation(str(dest)), "task").begin_update()
    with pytest.raises(StoreStateError, match="'incomplete'.*scibench-data convert uno"):
        UnoSource(root=str(tmp_path / "root")).open()


# --------------------------------------------------------------------------- 4: verify


def test_verify_of_a_store_never_published_does_not_report_an_unchecked_match(store):
    """`verify --store` used to print '0 object(s) checked, all match the manifest' and exit 0."""
    res = _cli("verify", "--store", str(store))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 object(s) checked" not in res.stdout and "all match the manifest" in res.stdout, res.stdout
    (store / "_scibench" / "manifest.json").unlink()
    res = _cli("verify", "--store", str(store))
    assert "0 object(s) checked" not in res.stdout and "all match the manifest" not in res.stdout, res.stdout
    assert "no manifest" in res.stdout and "checksum" in res.stdout and res.returncode == 0, res.stdout
    _flip(store / IMAGE_CHUNK, 100)
    res = _cli("verify", "--store", str(store))
    assert res.returncode == 1 and IMAGE_CHUNK in res.stdout, res.stdout


# --------------------------------------------------------------------------- 6: kill and rerun


SLOW_CONVERT = """
import sys, time
import scibench_data.convert.cloudmask as cm
real = cm.read_product
def slow(fs, product, **kw):
    time.sleep(float(sys.argv[3]))
    return real(fs, product, **kw)
cm.read_product = slow
cm.convert_cloudmask(sys.argv[1], sys.argv[2], cm.CloudMaskConversion(layout="hdf", scheduler="sync", progress=False))
"""


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sigkill_five_times_then_rerun_gives_the_clean_store_byte_for_byte(raw, clean, tmp_path, s3_storage_options):
    """Kills used to leave orphan `*.partial` objects that changed the content hash and broke publish."""
    from scibench_data.storage.distribution.publish import PublishOptions, publish
    from scibench_data.storage.store.manifest import build_manifest
    from tests._s3_helpers import bucket_client

    dest = tmp_path / "cloudmask_ds1.zarr"
    plan = dest / "_scibench" / "plan.json"
    for k in range(5):  # killed at 0, 0.15, ... 0.6 s after the plan exists (3 products of 0.5 s each)
        proc = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT, str(raw), str(dest), "0.5"], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not plan.exists() and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(0.15 * k)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert plan.exists() and not store_state(StoreLocation(str(dest))).complete
    # what a kill in the middle of a write leaves: zarr's and our own temporaries, one of them empty
    (dest / "image" / "c" / "2" / "0" / "0").mkdir(parents=True, exist_ok=True)
    (dest / "image" / "c" / "2" / "0" / "0" / "0.0123456789abcdef0123456789abcdef.partial").write_bytes(b"")
    (dest / "zarr.fedcba9876543210fedcba9876543210.partial").write_bytes(b'{"half')
    (dest / "_scibench" / "done").mkdir(parents=True, exist_ok=True)
    (dest / "_scibench" / "done" / "00000002.json.tmp").write_bytes(b"{")
    _convert(raw, dest)
    got, want = _files(dest), _files(clean)
    assert sorted(got) == sorted(want), sorted(set(got) ^ set(want))
    assert got == want, [k for k in got if got[k] != want.get(k)]
    loc, ref = StoreLocation(str(dest)), StoreLocation(str(clean))
    assert build_manifest(loc).content_digest() == build_manifest(ref).content_digest()
    bucket_client(s3_storage_options, "integrity-kill")
    result = publish("cloudmask_ds1", str(dest), "s3://integrity-kill/p", storage_options=s3_storage_options,
                     options=PublishOptions(progress=False, workers=4))
    assert result.status == "published"


def test_publish_skips_stray_temporaries_and_empty_objects(store, s3_storage_options):
    """An empty orphan `*.partial` object made publish fail with 'range not satisfiable' every time."""
    from scibench_data.storage.distribution.publish import PublishOptions, publish
    from scibench_data.storage.store.manifest import MANIFEST_KEY, Manifest
    from tests._s3_helpers import bucket_client

    (store / "image" / "c" / "0" / "0" / "0" / "0.0123456789abcdef0123456789abcdef.partial").write_bytes(b"")
    (store / "zarr.fedcba9876543210fedcba9876543210.partial").write_bytes(b"")
    fs = bucket_client(s3_storage_options, "integrity-stray")
    result = publish("cloudmask_ds1", str(store), "s3://integrity-stray/p", storage_options=s3_storage_options,
                     options=PublishOptions(progress=False, workers=4))
    assert result.status == "published"
    manifest = Manifest.from_bytes(fs.cat_file(f"integrity-stray/p/cloudmask_ds1/v1/{'/'.join(MANIFEST_KEY)}"))
    assert not [k for k in manifest.by_key if k.endswith(".partial")]
    assert fs.exists("integrity-stray/p/catalog.yaml")


# --------------------------------------------------------------------------- 7: root write, disk full


DISK_FULL_AT_FINALIZE = """
import resource, signal, sys
from scibench_data.storage.store import records
real = records.RecordStore.finalize
def full(self, *args, **kwargs):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
    return real(self, *args, **kwargs)
records.RecordStore.finalize = full
from scibench_data.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_disk_full_at_the_final_root_write_is_one_line_and_the_same_command_finishes(raw, clean, tmp_path):
    """A full disk at the final root write used to give a traceback and a root saying `complete`
    without consolidated metadata."""
    dest = tmp_path / "cloudmask_ds1.zarr"
    args = ["convert", "cloudmask", str(raw), str(dest), "--layout", "hdf", "--scheduler", "sync", "--no-progress"]
    res = subprocess.run([sys.executable, "-c", DISK_FULL_AT_FINALIZE, "1500", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    err_lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err_lines) == 1 and "space" in err_lines[0] and "rerun" in err_lines[0], res.stderr
    state = store_state(StoreLocation(str(dest)))
    assert not state.complete and state.status == "incomplete", state
    assert not list(dest.rglob("*.partial")) and not list(dest.rglob("*.tmp"))
    res = _cli(*args)  # space freed: the same command finishes it
    assert res.returncode == 0, res.stdout + res.stderr
    assert store_state(StoreLocation(str(dest))).complete
    assert _files(dest) == _files(clean)


DISK_FULL_AT_SCENE_WRITES = DISK_FULL_AT_FINALIZE.replace("RecordStore.finalize", "RecordStore.write_record")


def test_disk_full_during_scene_writes_is_one_line_and_the_same_command_finishes(raw, clean, tmp_path):
    """A full disk while scenes were written was reported per product, as bad input, among the
    conversion report's lines (and retried), not as one line saying what to do."""
    dest = tmp_path / "cloudmask_ds1.zarr"
    args = ["convert", "cloudmask", str(raw), str(dest), "--layout", "hdf", "--scheduler", "sync", "--no-progress"]
    res = subprocess.run([sys.executable, "-c", DISK_FULL_AT_SCENE_WRITES, "1500", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    err_lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err_lines) == 1 and "out of space" in err_lines[0] and "rerun" in err_lines[0], res.stderr
    state = store_state(StoreLocation(str(dest)))
    assert not state.complete and state.status == "incomplete", state
    res = _cli(*args)  # space freed: the same command finishes it
    assert res.returncode == 0, res.stdout + res.stderr
    assert _files(dest) == _files(clean)


# --------------------------------------------------------------------------- 8: locks


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _race(path: str, barrier, holders, most, errors, options: dict | None = None) -> None:
    from scibench_data.storage.store.lock import StoreLockedError, WriterLock

    lock = WriterLock(StoreLocation(path, dict(options or {})), operation="race")
    barrier.wait()
    try:
        lock.acquire()
    except StoreLockedError:
        return
    except Exception as err:  # noqa: BLE001 - any other failure is a bug the test reports
        errors.put(f"{type(err).__name__}: {err}")
        return
    with holders.get_lock():
        holders.value += 1
        most.value = max(most.value, holders.value)
    time.sleep(0.05)
    with holders.get_lock():
        holders.value -= 1
    lock.release()


def test_stale_lock_taken_over_by_three_racing_processes_has_one_holder(tmp_path):
    """Stale-lock takeover by 3 processes used to give two holders at once (6 of 40) and crashes."""
    import socket

    ctx = multiprocessing.get_context("fork")
    dead = _dead_pid()
    for trial in range(40):
        root = tmp_path / f"s{trial}.zarr"
        (root / "_scibench").mkdir(parents=True)
        (root / "_scibench" / "lock.json").write_text(json.dumps(
            {"pid": dead, "host": socket.gethostname(), "operation": "killed", "since": "then"}))
        barrier, holders, most, errors = ctx.Barrier(3), ctx.Value("i", 0), ctx.Value("i", 0), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(str(root), barrier, holders, most, errors)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0, 0, 0], trial
        assert errors.empty(), (trial, errors.get())
        assert most.value == 1, f"trial {trial}: {most.value} holders at once"


def test_stale_s3_lock_taken_over_by_three_racing_processes_has_one_holder(s3_storage_options):
    import socket

    from tests._s3_helpers import bucket_client

    fs = bucket_client(s3_storage_options, "integrity-race")
    ctx = multiprocessing.get_context("fork")
    dead = _dead_pid()
    for trial in range(10):
        fs.pipe_file(f"integrity-race/s{trial}/_scibench/lock.json", json.dumps(
            {"pid": dead, "host": socket.gethostname(), "operation": "killed", "since": "then"}).encode())
        barrier, holders, most, errors = ctx.Barrier(3), ctx.Value("i", 0), ctx.Value("i", 0), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(f"s3://integrity-race/s{trial}", barrier, holders, most, errors,
                                                 s3_storage_options)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0], trial
        assert errors.empty(), (trial, errors.get())
        assert most.value == 1, f"trial {trial}: {most.value} holders at once"


def test_s3_lock_is_a_conditional_create_and_stale_takeover_has_one_winner(s3_storage_options):
    import socket

    from scibench_data.storage.store.lock import StoreLockedError, WriterLock
    from tests._s3_helpers import bucket_client

    fs = bucket_client(s3_storage_options, "integrity-lock")
    loc = StoreLocation("s3://integrity-lock/p", dict(s3_storage_options))
    first, second = WriterLock(loc, "one"), WriterLock(StoreLocation(loc.url, dict(s3_storage_options)), "two")
    first.acquire()
    with pytest.raises(StoreLockedError):
        second.acquire()
    first.release()
    fs.pipe_file("integrity-lock/p/_scibench/lock.json", json.dumps(
        {"pid": _dead_pid(), "host": socket.gethostname(), "operation": "killed", "since": "then"}).encode())
    winners = []
    for name in ("a", "b", "c"):
        lock = WriterLock(StoreLocation(loc.url, dict(s3_storage_options)), name)
        try:
            lock.acquire()
            winners.append(name)
        except StoreLockedError:
            pass
    assert winners == ["a"]


# --------------------------------------------------------------------------- 5: the chunk cache


@pytest.fixture(scope="module")
def cache_published(clean, s3_storage_options) -> tuple[str, bytes]:
    """``clean`` published to the test server; (store URL, the good bytes of IMAGE_CHUNK)."""
    from scibench_data.storage.distribution.publish import PublishOptions, publish
    from tests._s3_helpers import bucket_client

    fs = bucket_client(s3_storage_options, "integrity-cache")
    result = publish("cloudmask_ds1", str(clean), "s3://integrity-cache/p", storage_options=s3_storage_options,
                     options=PublishOptions(progress=False, workers=4))
    return result.url, fs.cat_file(f"{result.url}/{IMAGE_CHUNK}")


def _all_patches(location):
    from loaders.cloudmask import CloudMaskPatches, PatchSpec

    data = CloudMaskPatches(location, spec=PatchSpec(mode="random", patch=32, patches_per_scene=2), as_torch=False)
    return data.batch(range(len(data)))


def test_chunk_cache_does_not_keep_corrupted_bytes_after_the_server_is_healed(clean, cache_published,
                                                                             s3_storage_options, tmp_path):
    """Reads used to stay wrong from the cache after the server was healed (verify on the server passed)."""
    from scibench_data.storage.store.integrity import ChunkIntegrityError
    from tests._s3_helpers import bucket_client

    url, good = cache_published
    fs = bucket_client(s3_storage_options, "integrity-cache")
    expected = _all_patches(str(clean))
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x40
    fs.pipe_file(f"{url}/{IMAGE_CHUNK}", bytes(bad))
    try:
        cached = StoreLocation(url, dict(s3_storage_options), cache_dir=str(tmp_path / "cache"))
        with pytest.raises(ChunkIntegrityError, match=IMAGE_CHUNK):
            _all_patches(cached)
    finally:
        fs.pipe_file(f"{url}/{IMAGE_CHUNK}", good)  # the server is healed
    for _ in range(2):  # fetched again, then served from the cache
        got = _all_patches(StoreLocation(url, dict(s3_storage_options), cache_dir=str(tmp_path / "cache")))
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def test_corrupted_cache_entry_is_evicted_and_fetched_again(clean, cache_published, s3_storage_options, tmp_path):
    from scibench_data.storage.store.cache import cache_folder

    url, good = cache_published
    expected = _all_patches(str(clean))
    cache = tmp_path / "cache"
    _all_patches(StoreLocation(url, dict(s3_storage_options), cache_dir=str(cache)))
    entry = cache_folder(str(cache), url) / IMAGE_CHUNK
    assert entry.read_bytes() == good
    _flip(entry, len(good) // 2)  # the local disk went bad
    got = _all_patches(StoreLocation(url, dict(s3_storage_options), cache_dir=str(cache)))
    np.testing.assert_array_equal(got[0], expected[0])
    assert entry.read_bytes() == good


def test_chunk_cache_is_bounded_least_recently_used_out(cache_published, s3_storage_options, tmp_path):
    from scibench_data.storage.store.cache import ChunkCacheStore, cache_folder

    url, good = cache_published
    cache = tmp_path / "cache"
    limit = 3 * len(good) // 2  # room for one image chunk and the small objects, not two image chunks
    loc = StoreLocation(url, dict(s3_storage_options))
    store = ChunkCacheStore(loc.zarr_store(read_only=True), cache_folder(str(cache), url), max_bytes=limit)
    g = zarr.open_group(store, mode="r")
    for scene in (0, 1, 2, 1):
        g["image"][scene, 0, 0, 0]
        files = [p for p in cache.rglob("*") if p.is_file()]
        assert sum(p.stat().st_size for p in files) <= limit, scene
    folder = cache_folder(str(cache), url)
    assert (folder / IMAGE_CHUNK).exists() and not (folder / "image/c/0/0/0/0").exists()


def test_chunk_deleted_from_a_published_version_raises_in_the_loader(cache_published, s3_storage_options):
    """A chunk deleted on the server (or a server restarted empty) used to read as fill values."""
    from scibench_data.storage.store.integrity import MissingChunkError
    from tests._s3_helpers import bucket_client

    url, good = cache_published
    fs = bucket_client(s3_storage_options, "integrity-cache")
    fs.rm_file(f"{url}/{IMAGE_CHUNK}")
    try:
        with pytest.raises(MissingChunkError, match=f"{IMAGE_CHUNK}.*scene 1"):
            _all_patches(StoreLocation(url, dict(s3_storage_options)))
    finally:
        fs.pipe_file(f"{url}/{IMAGE_CHUNK}", good)


def test_chunk_deleted_from_a_published_version_raises_through_the_published_catalog(cache_published,
                                                                                     s3_storage_options):
    """Through the published catalog (plain `driver: zarr` before) a deleted chunk read as fill values."""
    from scibench_data.catalog import open_catalog
    from scibench_data.storage.store.integrity import MissingChunkError
    from tests._s3_helpers import bucket_client

    url, good = cache_published
    fs = bucket_client(s3_storage_options, "integrity-cache")
    cat = open_catalog("s3://integrity-cache/p/catalog.yaml", storage_options=s3_storage_options)
    fs.rm_file(f"{url}/{IMAGE_CHUNK}")
    try:
        with pytest.raises(MissingChunkError, match=IMAGE_CHUNK):
            cat.cloudmask_ds1.to_dask()["image"].values
    finally:
        fs.pipe_file(f"{url}/{IMAGE_CHUNK}", good)


# --------------------------------------------------------------------------- 4: manifests after an append


def test_append_rewrites_the_manifest_hashing_only_what_changed(tmp_path):
    """An append ends with a manifest that equals one hashed from scratch (unchanged objects keep their
    digests without being read again; written ones are hashed)."""
    from scibench_data.convert.cloudmask import (
        CloudMaskConversion,
        append_cloudmask,
        convert_cloudmask,
    )
    from scibench_data.formats.cloudmask import ProductName
    from scibench_data.storage.store.manifest import Manifest, build_manifest
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    generate(tmp_path / "all", "hdf", SyntheticCloudMask(n_products=3, grid=(32, 48), seed=9))
    products = sorted((tmp_path / "all").glob("*.hdf"), key=lambda p: ProductName.parse(p.name).start)
    (tmp_path / "first2").mkdir()
    for p in products[:2]:
        shutil.copy(p, tmp_path / "first2" / p.name)
    dest = tmp_path / "s.zarr"
    opts = CloudMaskConversion(layout="hdf", progress=False, scheduler="sync")
    assert convert_cloudmask(str(tmp_path / "first2"), str(dest), opts).ok
    before = Manifest.from_bytes((dest / "_scibench" / "manifest.json").read_bytes())
    assert append_cloudmask(str(tmp_path / "all"), str(dest), opts).ok
    after = Manifest.from_bytes((dest / "_scibench" / "manifest.json").read_bytes())
    assert not (dest / "_scibench" / "manifest.previous.json").exists()
    assert after.entries == build_manifest(StoreLocation(str(dest))).entries
    assert "image/c/2/0/0/0" in after.by_key and "image/c/2/0/0/0" not in before.by_key
    assert after.by_key["image/c/0/0/0/0"] == before.by_key["image/c/0/0/0/0"]
    assert _cli("verify", "--store", str(dest)).returncode == 0


def test_flipped_byte_in_a_published_chunk_raises_through_the_catalog_and_the_loader(cache_published,
                                                                                    s3_storage_options, s3_endpoint,
                                                                                    monkeypatch):
    """A flipped byte on the server used to read as wrong values through the published catalog and the loader."""
    import intake

    from scibench_data.storage.store.integrity import ChunkChecksumError
    from tests._s3_helpers import bucket_client

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    url, good = cache_published
    fs = bucket_client(s3_storage_options, "integrity-cache")
    bad = bytearray(good)
    bad[len(bad) // 3] ^= 0x40
    fs.pipe_file(f"{url}/{IMAGE_CHUNK}", bytes(bad))
    try:
        with pytest.raises(ChunkChecksumError, match=f"{url}: array 'image', chunk {IMAGE_CHUNK}.*scene 1"):
            _all_patches(StoreLocation(url, dict(s3_storage_options)))
        cat = intake.open_catalog("s3://integrity-cache/p/catalog.yaml", storage_options=dict(s3_storage_options))
        with pytest.raises(Exception, match="checksum"):
            cat.cloudmask_ds1.to_dask()["image"].isel(scene=1).values
    finally:
        fs.pipe_file(f"{url}/{IMAGE_CHUNK}", good)
