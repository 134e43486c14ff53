"""How often a CloudMask conversion reads its sources: each file once (parsed and hashed from the
same bytes), within a memory cap, with the provenance digests unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter

import fsspec
import pytest
import zarr
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem

from scibench_data.convert.cloudmask import (
    CloudMaskConversion,
    common_grid,
    convert_cloudmask,
)
from scibench_data.formats.cloudmask import discover_products, read_product
from scibench_data.storage.store.hashing import HashingReader, combined_digest

OPENS: Counter = Counter()
BYTES: Counter = Counter()


class _CountedFile(LocalFileOpener):
    def read(self, *args, **kwargs):
        out = super().read(*args, **kwargs)
        BYTES[self.path] += len(out)
        return out

    def readinto(self, buffer):  # h5py's file-object driver reads this way
        n = self.f.readinto(buffer)
        BYTES[self.path] += n or 0
        return n


class CountingFileSystem(LocalFileSystem):
    """Local files that count opens and bytes read per path (``countfile://``)."""

    protocol = ("countfile",)

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        path = self._strip_protocol(path)
        OPENS[path] += 1
        return _CountedFile(path, mode, fs=self, **kwargs)


fsspec.register_implementation("countfile", CountingFileSystem, clobber=True)

#: Paths whose contents :class:`ShrinkingFileSystem` cuts to half (what a concurrent writer or a
#: hostile source does to a file between its listing and its read).
SHRINKING: set[str] = set()


class _ShrunkFile(LocalFileOpener):
    def read(self, *args, **kwargs):
        out = super().read(*args, **kwargs)
        return out[: len(out) // 2] if self.path in SHRINKING else out


class ShrinkingFileSystem(LocalFileSystem):
    """Local files; those in :data:`SHRINKING` return half their bytes (``shrinkfile://``)."""

    protocol = ("shrinkfile",)

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        return _ShrunkFile(self._strip_protocol(path), mode, fs=self, **kwargs)


fsspec.register_implementation("shrinkfile", ShrinkingFileSystem, clobber=True)


def _source_files(folder) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in folder.rglob("*") if p.is_file() and ".SEN3" in str(p) or
            p.suffix == ".hdf"}


@pytest.mark.parametrize("layout", ["hdf", "sen3"])
def test_each_source_file_is_read_once_during_conversion(layout, cloudmask_raw, tmp_path):
    """Every byte of every product file is read once during a conversion, plus only what the
    grid survey (``common_grid``, headers of a sample of products) reads before it; before,
    each file was read a second time just to hash it (and its header a third time)."""
    src = cloudmask_raw[layout]
    fs = fsspec.filesystem("countfile")
    sizes = _source_files(src)
    OPENS.clear(), BYTES.clear()
    common_grid(fs, discover_products(fs, str(src), layout)[0])
    survey_bytes, survey_opens = Counter(BYTES), Counter(OPENS)
    OPENS.clear(), BYTES.clear()
    report = convert_cloudmask(f"countfile://{src}", str(tmp_path / "s.zarr"),
                               CloudMaskConversion(layout=layout, scheduler="sync", progress=False))
    assert report.ok and report.bytes_read == sum(sizes.values())
    for path, size in sizes.items():
        assert BYTES[path] <= size + survey_bytes[path], (path, BYTES[path], size, survey_bytes[path])
        assert OPENS[path] <= 1 + survey_opens[path], (path, OPENS[path], survey_opens[path])
        assert BYTES[path] >= size  # and it was read (hashed at least)


@pytest.mark.parametrize("layout", ["hdf", "sen3"])
def test_provenance_digest_is_the_sha256_of_each_file(layout, cloudmask_raw, tmp_path):
    """The digests computed from the bytes in memory are the plain sha256 of each file, as before."""
    src = cloudmask_raw[layout]
    convert_cloudmask(str(src), str(tmp_path / "s.zarr"), CloudMaskConversion(layout=layout, progress=False))
    product = min(p for p in src.iterdir() if p.suffix in (".hdf", ".SEN3"))
    files = [product] if product.is_file() else sorted(p for p in product.rglob("*") if p.is_file())
    expected = combined_digest((str(f.relative_to(product)) if f != product else product.name,
                                hashlib.sha256(f.read_bytes()).hexdigest()) for f in files)
    stored = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["source_sha256"][:]
    assert expected in {bytes(row).rstrip(b"\0").decode() for row in stored}


@pytest.mark.parametrize("layout", ["hdf", "sen3"])
def test_a_file_over_the_memory_cap_is_streamed_and_gives_the_same_scene_and_digests(layout, cloudmask_raw):
    """A file larger than the in-memory cap is never read whole into memory: it is parsed from
    storage and hashed in a streamed pass; the scene and digests equal the in-memory read's."""
    fs = fsspec.filesystem("countfile")
    product = discover_products(fs, str(cloudmask_raw[layout]), layout)[0][0]
    with HashingReader(fs) as reader:
        whole = read_product(fs, product, reader=reader)
        in_memory = reader.digests()
    with HashingReader(fs, max_bytes=64) as reader:
        BYTES.clear()
        streamed = read_product(fs, product, reader=reader)
        largest = max(BYTES.values())
        assert all(reader.read(p).data is None for p in reader.digests() if _size(p) > 64)
        capped = reader.digests()
    assert (whole.image.tobytes(), whole.cloud_mask.tobytes()) == (streamed.image.tobytes(),
                                                                     streamed.cloud_mask.tobytes())
    assert capped == in_memory
    assert largest <= 2 * max(_size(p) for p in capped)  # parsed from storage + one streamed hash


def _size(path: str) -> int:
    return os.path.getsize(path)


@pytest.mark.parametrize("layout", ["hdf", "sen3"])
def test_the_grid_survey_reads_headers_not_whole_files(layout, cloudmask_raw):
    """``common_grid`` (run by the coordinator on up to 25 products) decodes headers only: it must not
    pull whole files into memory (it read every sampled hdf file whole, 112 MB each at full size)."""
    src = cloudmask_raw[layout]
    fs = fsspec.filesystem("countfile")
    OPENS.clear(), BYTES.clear()
    common_grid(fs, discover_products(fs, str(src), layout)[0])
    surveyed = {path: n for path, n in BYTES.items() if n}
    assert surveyed, "the survey read nothing"
    for path, n in surveyed.items():
        assert n < _size(path) / 2, (path, n, _size(path))


@pytest.mark.parametrize("layout", ["hdf", "sen3"])
def test_a_source_file_that_shrinks_while_read_is_a_named_failure_not_a_crash(layout, cloudmask_raw, tmp_path):
    """A source file cut short between its listing and its read (a concurrent writer, a hostile
    source) fails its product with a message naming the file; the other products convert and the
    process lives on. (Why sources are read, not mapped: a mapped file truncated under the reader
    kills the process with SIGBUS, and a mapped file rewritten under it would be hashed and parsed
    from different bytes.)"""
    src = cloudmask_raw[layout]
    products = discover_products(fsspec.filesystem("file"), str(src), layout)[0]
    victim = products[1].path if layout == "hdf" else os.path.join(products[1].path, "S2_radiance_an.nc")
    SHRINKING.clear()
    SHRINKING.add(victim)
    try:
        report = convert_cloudmask(f"shrinkfile://{src}", str(tmp_path / "s.zarr"),
                                   CloudMaskConversion(layout=layout, scheduler="sync", progress=False, retries=0))
    finally:
        SHRINKING.clear()
    assert not report.ok and len(report.failed) == 1 and len(report.converted) == len(products) - 1
    name, error = report.failed[0]
    assert name == products[1].name.name
    assert victim in error and "changed while read" in error, error


def test_a_library_conversion_leaves_the_callers_malloc_alone_and_the_cli_sets_its_own(cloudmask_raw, tmp_path):
    """glibc's malloc thresholds (``parallel.WORKER_ENV``: keep up to 512 MB freed) are process-wide.
    The conversion task set them in whatever process ran it, so a user's notebook or benchmark that
    converted in-process kept them for everything after (the reference loader in
    benchmarks/performance.py ran 1.3x faster after our conversion). Only our own command sets them."""
    script = textwrap.dedent(f"""
        import json, os, sys
        from scibench_data.convert import cloudmask as c
        from scibench_data.cli import main
        report = c.convert_cloudmask({str(cloudmask_raw["hdf"])!r}, {str(tmp_path / "lib.zarr")!r},
                                     c.CloudMaskConversion(layout="hdf", scheduler="sync", progress=False))
        after_library = list(c._MALLOC_SET_IN)
        rc = main(["convert", "cloudmask", "--layout", "hdf", {str(cloudmask_raw["hdf"])!r},
                   {str(tmp_path / "cli.zarr")!r}, "--scheduler", "sync", "--no-progress"])
        print(json.dumps({{"ok": report.ok, "library": after_library, "rc": rc, "cli": c._MALLOC_SET_IN,
                           "pid": os.getpid()}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["ok"] and got["rc"] == 0
    assert got["library"] == [], "the library conversion changed its caller's malloc settings"
    assert got["cli"] == [got["pid"]]
