"""Resume and append of a CloudMask store on S3 cost a number of requests that does not grow with the
number of products the store holds (issue 19: each product's marker was read one request at a time).

Counted on the server: a ``moto_server`` of this module's own whose request log the test reads.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from scibench_data.convert.cloudmask import (
    CloudMaskConversion,
    append_cloudmask,
    convert_cloudmask,
)
from scibench_data.storage.distribution.local_s3 import storage_options
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.manifest import (
    build_manifest,
    read_manifest,
    verify_store,
)
from scibench_data.storage.store.records import store_state
from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

sys.path.insert(0, str(Path(__file__).parents[1]))
from _s3_helpers import LoggedS3Server, bucket_client

BUCKET = "resume-requests"
SIZES = (2, 7)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LoggedS3Server]:
    s = LoggedS3Server(tmp_path_factory.mktemp("moto_log"))
    try:
        bucket_client(storage_options(s.endpoint), BUCKET)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict[str, Path]:
    """``all``: the most products any case uses; ``late``: one product after all of them."""
    base = tmp_path_factory.mktemp("resume_raw")
    generate(base / "all", "hdf", SyntheticCloudMask(n_products=max(SIZES), grid=(32, 48), seed=3))
    generate(base / "late", "hdf", SyntheticCloudMask(n_products=1, grid=(32, 48), seed=4,
                                                      first_start=datetime(2020, 3, 1)))
    return {"all": base / "all", "late": base / "late"}


def _folder(raw: dict[str, Path], dest: Path, n: int, late: bool = False, broken: int | None = None) -> Path:
    dest.mkdir(parents=True)
    products = sorted(raw["all"].glob("*.hdf"))[:n] + (sorted(raw["late"].glob("*.hdf")) if late else [])
    for i, p in enumerate(products):
        if i == broken:
            (dest / p.name).write_bytes(b"not an hdf5 file")  # a product that fails: the store stays incomplete
        else:
            shutil.copy(p, dest / p.name)
    return dest


def _counted(server: LoggedS3Server, fn) -> tuple[object, list[str]]:
    before = len(server.request_lines())
    out = fn()
    return out, server.request_lines()[before:]


def _markers_read(requests: list[str]) -> list[str]:
    """GETs of single markers (a listing of ``_scibench/done/`` is not one)."""
    return [r for r in requests if r.startswith("GET ") and "/_scibench/done/" in r and "list-type=" not in r]


def test_resume_and_append_cost_the_same_requests_for_any_number_of_products(server, raw, tmp_path):
    so = storage_options(server.endpoint)
    opts = CloudMaskConversion(layout="hdf", progress=False, scheduler="sync")
    counts: dict[str, dict[int, list[str]]] = {"nothing": {}, "one": {}, "resume": {}, "resume_done": {}}
    for n in SIZES:
        dest = StoreLocation(f"s3://{BUCKET}/n{n}.zarr", so)
        src = _folder(raw, tmp_path / f"src{n}", n)
        assert convert_cloudmask(str(src), dest, opts).ok

        # an append that adds nothing: the store stays as it is
        report, counts["nothing"][n] = _counted(server, lambda src=src, dest=dest: append_cloudmask(str(src), dest, opts))
        assert report.complete and report.already_done == n and report.converted == ()

        # an append of one later product
        plus = _folder(raw, tmp_path / f"plus{n}", n, late=True)
        report, counts["one"][n] = _counted(server, lambda plus=plus, dest=dest: append_cloudmask(str(plus), dest, opts))
        assert report.ok and len(report.converted) == 1 and report.already_done == n, report.lines()

        # a conversion that left one product unwritten, resumed once the product is readable
        resumed = StoreLocation(f"s3://{BUCKET}/resume{n}.zarr", so)
        broken = _folder(raw, tmp_path / f"broken{n}", n, broken=0)
        assert not convert_cloudmask(str(broken), resumed, opts).ok
        assert not store_state(resumed).complete
        report, counts["resume"][n] = _counted(server, lambda src=src, resumed=resumed: convert_cloudmask(str(src), resumed, opts))
        assert report.ok and report.already_done == n - 1 and len(report.converted) == 1, report.lines()
        # and a rerun on the finished store
        report, counts["resume_done"][n] = _counted(server, lambda src=src, resumed=resumed: convert_cloudmask(str(src), resumed, opts))
        assert report.complete and report.already_done == n

    small, big = SIZES
    for case in ("nothing", "one", "resume_done"):
        assert len(counts[case][big]) == len(counts[case][small]), (
            f"{case}: {len(counts[case][small])} requests for {small} products, {len(counts[case][big])} for {big}: "
            f"{sorted(set(counts[case][big]) - set(counts[case][small]))[:12]}")
        assert _markers_read(counts[case][big]) == [], case
    # a resume finalizes a store written by an earlier run: the digests of what that run wrote come with
    # its markers (in the inventory), so what it learns about finished products costs the same for any
    # number of them
    state = {n: [r for r in counts["resume"][n] if "/_scibench/" in r] for n in SIZES}
    assert len(state[big]) == len(state[small]), (state[small], state[big])
    assert len(_markers_read(counts["resume"][big])) <= 1


def _data_chunk_requests(requests: list[str], method: str, store: str) -> list[str]:
    """``method`` requests of the scene arrays' chunk objects of ``store`` (a name in the bucket)."""
    arrays = ("image", "cloud_mask", "summary_cloud")
    return [r for r in requests if r.startswith(f"{method} /{BUCKET}/{store}/")
            and any(f"/{store}/{a}/c/" in r for a in arrays)]


def test_a_conversion_and_its_resume_read_back_none_of_the_chunks_they_wrote(server, raw, tmp_path):
    """Finalize read every object of the store back to hash it for the manifest: on S3 that downloads the
    whole converted data set once more (terabytes for DS2) on the one coordinating machine. The digests
    are now taken from the bytes each task wrote (its marker carries them); the manifest is unchanged."""
    so = storage_options(server.endpoint)
    opts = CloudMaskConversion(layout="hdf", progress=False, scheduler="sync")
    dest = StoreLocation(f"s3://{BUCKET}/readback.zarr", so)
    report, requests = _counted(server, lambda: convert_cloudmask(str(_folder(raw, tmp_path / "src", 4)), dest, opts))
    assert report.ok, report.lines()
    assert _data_chunk_requests(requests, "PUT", "readback.zarr")  # the chunks were written...
    assert _data_chunk_requests(requests, "GET", "readback.zarr") == []  # ...and none was read back

    resumed = StoreLocation(f"s3://{BUCKET}/readback-resume.zarr", so)
    assert not convert_cloudmask(str(_folder(raw, tmp_path / "broken", 4, broken=1)), resumed, opts).ok
    report, requests = _counted(server, lambda: convert_cloudmask(str(_folder(raw, tmp_path / "src2", 4)), resumed, opts))
    assert report.ok and len(report.converted) == 1, report.lines()
    assert _data_chunk_requests(requests, "GET", "readback-resume.zarr") == []  # the earlier run's digests are known

    for location in (dest, resumed):  # every digest in the manifest is the object's own
        manifest = read_manifest(location)
        fresh = build_manifest(location)
        assert {e.key: (e.size, e.sha256) for e in manifest.entries} == {e.key: (e.size, e.sha256) for e in fresh.entries}
        verified = verify_store(location, manifest)
        assert verified.ok, verified
