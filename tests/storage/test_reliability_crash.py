"""No interrupted store is reported complete by ``verify`` or opened by the catalog (issue 9, crash
safety); unknown names are one-line CLI errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scibench_data.storage.distribution.pull import verify_local
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import store_state

REPO = Path(__file__).resolve().parents[2]

# The conversion runs for real in its own process; only the product reader is slowed down so that
# the SIGKILL lands between products.
SLOW_CONVERT = """
import sys, time
import scibench_data.convert.cloudmask as cm
real = cm.read_product
def slow(fs, product, **kw):
    time.sleep(0.3)
    return real(fs, product, **kw)
cm.read_product = slow
cm.convert_cloudmask(sys.argv[1], sys.argv[2], cm.CloudMaskConversion(layout="hdf", scheduler="sync", progress=False))
"""


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scibench_data", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.fixture(scope="module")
def killed_store(tmp_path_factory) -> Path:
    """A CloudMask store whose conversion was SIGKILLed after 1 or 2 of 4 scenes."""
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    base = tmp_path_factory.mktemp("killed")
    generate(base / "raw", "hdf", SyntheticCloudMask(n_products=4, grid=(32, 48), seed=5))
    dest = base / "root" / "cloudmask_ds1.zarr"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT, str(base / "raw"), str(dest)], cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((dest / "_scibench" / "done").glob("*.json")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(list((dest / "_scibench" / "done").glob("*.json")))
    assert 1 <= n_done < 4, n_done
    return dest


def test_catalog_does_not_open_a_killed_conversion(killed_store):
    from scibench_data.catalog import open_catalog

    with pytest.raises(ValueError, match="root status 'incomplete'.*scibench-data convert cloudmask"):
        open_catalog(root=str(killed_store.parent)).cloudmask_ds1.to_dask()


def test_verify_reports_a_killed_conversion_incomplete(killed_store):
    state = store_state(StoreLocation(str(killed_store)))
    assert state.exists and state.status == "incomplete" and not state.consolidated
    report = verify_local(killed_store)
    assert not report.ok and "'incomplete'" in report.incomplete
    for args in (["verify", "--store", str(killed_store)],
                 ["verify", "cloudmask_ds1", "--root", str(killed_store.parent)]):
        out = _cli(*args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert "INCOMPLETE: root status 'incomplete'" in out.stdout
        assert "all match" not in out.stdout and "Traceback" not in out.stderr
    # resuming finishes the store; only then does verify pass
    from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask

    raw = killed_store.parent.parent / "raw"
    assert convert_cloudmask(str(raw), str(killed_store), CloudMaskConversion(layout="hdf", progress=False)).ok
    out = _cli("verify", "--store", str(killed_store))
    assert out.returncode == 0 and "INCOMPLETE" not in out.stdout, out.stdout


def test_verify_of_a_store_without_a_root(tmp_path):
    half = tmp_path / "half.zarr"
    (half / "image").mkdir(parents=True)
    (half / "image" / "zarr.json").write_text("{}")
    report = verify_local(half)
    assert not report.ok and report.missing == ("zarr.json",) and "no root zarr.json" in report.incomplete


def test_unknown_entry_is_a_one_line_error(tmp_path):
    for args in (["verify", "nonexistent"], ["verify", "../../etc", "--root", str(tmp_path)]):
        out = _cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"scibench-data: error: catalog has no entry {args[1]!r}; entries: ")
        assert "cloudmask_ds1" in lines[0]
    # a name that would leave the root is refused before any path is built
    out = _cli("publish", "../escape", "--to", "s3://bucket/p", "--root", str(tmp_path))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "'../escape'" in out.stderr
