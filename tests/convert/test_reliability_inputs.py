"""Bad SEN3 inputs (issue 9): an all-fill product and a wrongly named product folder are named in the
conversion report (``--report``), the rest converts, the store stays incomplete, the exit code is 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from scibench_data.cli import main
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import store_state

BAD_NAME = "S3A_SL_1_RBT____not-a-product-name.SEN3"


def _fill_every_pixel(product: Path) -> None:
    """Set every radiance and brightness temperature pixel to its variable's _FillValue (raw packed value)."""
    files = [f"S{n}_radiance_an.nc" for n in range(1, 7)] + [f"S{n}_BT_in.nc" for n in (7, 8, 9)]
    for name in files:
        with netCDF4.Dataset(product / name, "a") as nc:
            var = nc.variables[name[:-3]]
            var.set_auto_maskandscale(False)
            var[:] = np.full(var.shape, var.getncattr("_FillValue"), dtype=var.dtype)


@pytest.fixture(scope="module")
def bad_sen3(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Three SEN3 products: one all-fill, two good; plus a good product copied under a name that does not parse."""
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    src = tmp_path_factory.mktemp("bad_sen3")
    products = sorted(Path(p) for p in generate(src, "sen3", SyntheticCloudMask(n_products=3, grid=(32, 48), seed=9)))
    victim = products[1]
    _fill_every_pixel(victim)
    shutil.copytree(products[0], src / BAD_NAME)
    return src, victim, src / BAD_NAME


def test_all_fill_product_fails_by_name_and_the_report_lists_skipped_and_failed(bad_sen3, tmp_path, capsys):
    src, victim, wrongly_named = bad_sen3
    dest, report_path = tmp_path / "out.zarr", tmp_path / "reports" / "R.json"
    code = main(["convert", "cloudmask", "--layout", "sen3", str(src), str(dest), "--tile", "16",
                 "--report", str(report_path), "--no-progress", "--scheduler", "sync", "--retries", "0"])
    out = capsys.readouterr().out
    assert code == 1, out
    report = json.loads(report_path.read_text())
    (failed_key, failed_error), = report["failed"]
    assert failed_key == victim.name
    assert victim.name in failed_error and "every pixel of every channel is NaN or a fill value" in failed_error
    (rejected_path, reason), = report["rejected"]
    assert Path(rejected_path).name == wrongly_named.name and "not-a-product-name" in reason
    assert len(report["converted"]) == 2 and report["complete"] is False and report["total"] == 3
    assert f"failed {victim.name}" in out and f"skipped {rejected_path}" in out
    assert "INCOMPLETE" in out
    assert not store_state(StoreLocation(str(dest))).complete


def test_wrongly_named_product_alone_still_exits_non_zero(bad_sen3, tmp_path, capsys):
    src, victim, wrongly_named = bad_sen3
    only_good = tmp_path / "src"
    only_good.mkdir()
    for p in src.iterdir():
        if p != victim and p.is_dir():
            shutil.copytree(p, only_good / p.name)
    code = main(["convert", "cloudmask", "--layout", "sen3", str(only_good), str(tmp_path / "o.zarr"), "--tile", "16",
                 "--report", str(tmp_path / "R.json"), "--no-progress", "--scheduler", "sync"])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "R.json").read_text())
    assert code == 1 and report["failed"] == [] and len(report["rejected"]) == 1, out
    assert report["complete"] is True and len(report["converted"]) == 2  # the good ones are converted and finalized
    assert f"skipped {only_good / wrongly_named.name}" in out
