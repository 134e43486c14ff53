"""Appending products to a complete CloudMask store: equal to converting all at once, idempotent,
never rewriting existing chunks, incomplete while it runs and resumable after a kill. Late and
reprocessed products: tests/convert/test_ds2_late_products.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from scibench_data.convert.cloudmask import (
    CloudMaskConversion,
    append_cloudmask,
    convert_cloudmask,
)
from scibench_data.formats.cloudmask import ProductName
from scibench_data.intake_source import open_path
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import StoreStateError, store_state

OPTS = CloudMaskConversion(layout="hdf", progress=False)


@pytest.fixture(scope="module")
def five(tmp_path_factory) -> dict[str, Path]:
    """Five tiny products; folders with the first 3 and all 5; the store of all 5 converted at once."""
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    base = tmp_path_factory.mktemp("append")
    generate(base / "all", "hdf", SyntheticCloudMask(n_products=5, grid=(64, 96), seed=5))
    products = sorted((base / "all").glob("*.hdf"), key=lambda p: ProductName.parse(p.name).start)
    (base / "first3").mkdir()
    for p in products[:3]:
        shutil.copy(p, base / "first3" / p.name)
    (base / "last2").mkdir()
    for p in products[3:]:
        shutil.copy(p, base / "last2" / p.name)
    assert convert_cloudmask(str(base / "all"), str(base / "ref.zarr"), OPTS).ok
    return {"all": base / "all", "first3": base / "first3", "last2": base / "last2", "ref": base / "ref.zarr",
            "products": products}  # type: ignore[dict-item]


def _files(store: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file() and "_scibench" not in p.parts}


def test_append_equals_converting_everything_at_once_and_keeps_existing_chunks(five, tmp_path):
    dest = tmp_path / "s.zarr"
    assert convert_cloudmask(str(five["first3"]), str(dest), OPTS).ok
    data_chunks = {p: m for p, m in _files(dest).items() if p.relative_to(dest).parts[0] == "image"
                   and "c" in p.relative_to(dest).parts}
    assert len(data_chunks) == 3  # one 256x256 tile per scene
    report = append_cloudmask(str(five["all"]), str(dest), OPTS)  # the 3 already held are skipped
    assert report.ok and len(report.converted) == 2 and report.already_done == 3, report.lines()
    xr.testing.assert_identical(xr.open_zarr(dest, consolidated=True).load(),
                                xr.open_zarr(five["ref"], consolidated=True).load())
    after = _files(dest)
    assert all(after[p] == m for p, m in data_chunks.items())  # existing image chunks not rewritten

    # idempotent: appending the same products again changes nothing at all
    again = append_cloudmask(str(five["all"]), str(dest), OPTS)
    assert again.complete and again.converted == () and again.already_done == 5
    assert _files(dest) == after
    # and the store is now what a plain conversion of all five would leave: a rerun is a no-op
    assert convert_cloudmask(str(five["all"]), str(dest), OPTS).already_done == 5


def test_append_to_a_store_that_is_not_ours_or_of_another_layout(five, tmp_path):
    with pytest.raises(StoreStateError, match="not a CloudMask store"):
        append_cloudmask(str(five["all"]), str(tmp_path / "nothing.zarr"), OPTS)
    dest = tmp_path / "s.zarr"
    assert convert_cloudmask(str(five["first3"]), str(dest), OPTS).ok
    with pytest.raises(StoreStateError, match="layout='hdf'"):
        append_cloudmask(str(five["all"]), str(dest), CloudMaskConversion(layout="sen3", progress=False))


KILL_SCRIPT = """
import sys, time
import scibench_data.convert.cloudmask as cm
real = cm.read_product
def slow(fs, p, **kw):
    time.sleep(0.5)   # make the kill land between products
    return real(fs, p, **kw)
cm.read_product = slow
cm.append_cloudmask(sys.argv[1], sys.argv[2], cm.CloudMaskConversion(layout="hdf", scheduler="sync", progress=False))
"""


def test_killed_append_is_incomplete_and_resumes_to_the_same_store(five, tmp_path):
    from scibench_data.catalog import open_catalog

    dest = tmp_path / "root" / "cloudmask_ds2.zarr"
    assert convert_cloudmask(str(five["first3"]), str(dest), OPTS).ok
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(five["all"]), str(dest)])
    done_dir = dest / "_scibench" / "done"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(done_dir.glob("*.json"))) < 4:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(done_dir.glob("*.json"))) == 4  # one of the two new scenes was written
    state = store_state(StoreLocation(str(dest)))
    assert state.status == "incomplete" and not state.consolidated
    with pytest.raises(Exception, match="[Cc]onsolidated"):
        open_catalog(root=str(dest.parent)).cloudmask_ds2.to_dask()

    report = append_cloudmask(str(five["all"]), str(dest), OPTS)
    assert report.ok and len(report.converted) == 1 and report.already_done == 4, report.lines()
    a = open_catalog(root=str(dest.parent)).cloudmask_ds2.to_dask().load()
    xr.testing.assert_identical(a, open_path(xr.open_zarr(five["ref"], consolidated=True)).load())
    np.testing.assert_array_equal(a["time"].values, np.sort(a["time"].values))
