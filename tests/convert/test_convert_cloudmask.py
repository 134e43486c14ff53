"""CloudMask conversion: round trips for both layouts, provenance, resumability, bad inputs."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
from scibench_data.formats.cloudmask import ProductName
from scibench_data.intake_source import open_path
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import store_state
from scibench_data.strings import decode_strings


def _products(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix in (".hdf", ".SEN3")),
                  key=lambda p: (ProductName.parse(p.name).start, p.name))


def test_hdf_round_trip_equals_source(cloudmask_raw, cloudmask_stores):
    ds = decode_strings(xr.open_zarr(cloudmask_stores["hdf"], consolidated=True))
    products = _products(cloudmask_raw["hdf"])
    assert ds.sizes == {"scene": 3, "channel": 9, "y": 64, "x": 96}
    assert ds["image"].dtype == np.float32 and ds["cloud_mask"].dtype == np.uint8
    for i, path in enumerate(products):
        with h5py.File(path, "r") as f:
            refs, bts, bayes, summary = (f[k][()] for k in ("refs", "bts", "bayes", "summary"))
        np.testing.assert_array_equal(ds["image"][i, :6].values, np.moveaxis(refs, 2, 0))
        np.testing.assert_array_equal(ds["image"][i, 6:].values, np.moveaxis(bts, 2, 0))
        np.testing.assert_array_equal(ds["cloud_mask"][i].values, (bayes[..., 0] > 0).astype(np.uint8))
        np.testing.assert_array_equal(ds["summary_cloud"][i].values, (summary[..., 0] > 0).astype(np.uint8))
        name = ProductName.parse(path.name)
        assert str(ds["source_name"].values[i]) == name.stem
        assert ds["time"].values[i] == np.datetime64(name.start, "ns")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        line = f"{digest}  {path.name}\n"
        assert str(ds["source_sha256"].values[i]) == hashlib.sha256(line.encode()).hexdigest()
    assert "units" not in ds["image"].attrs  # two quantities: units per channel (CF cannot give one variable two)
    assert list(ds["channel_units"].values) == ["1"] * 6 + ["K"] * 3
    assert ds.attrs["scibench_status"] == "complete" and ds.attrs["Conventions"].startswith("CF")


def _independent_reflectance(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance on the 1 km grid computed with netCDF4's CF decoding and scipy's interpolator."""
    def attrs(nc):
        res = [float(v) for v in nc.getncattr("resolution").strip("[] ").split()]
        return res, float(nc.getncattr("track_offset")), float(nc.getncattr("start_offset"))

    with netCDF4.Dataset(folder / "geometry_tn.nc") as g:
        zen_t = g["solar_zenith_tn"][:].filled(np.nan)
        (ta, tr), t_track, t_start = attrs(g)
    out = []
    for n in range(1, 7):
        with netCDF4.Dataset(folder / f"S{n}_radiance_an.nc") as r:
            rad = r[f"S{n}_radiance_an"][:].filled(np.nan).astype(np.float64)
            (ia, ir), i_track, i_start = attrs(r)
        with netCDF4.Dataset(folder / f"S{n}_quality_an.nc") as q:
            irr = float(q[f"S{n}_solar_irradiance_an"][0])
        rows, cols = np.arange(rad.shape[0]), np.arange(rad.shape[1])
        tie_rows = ((rows + i_start) * ir) / tr - t_start
        tie_cols = ((cols - i_track) * ia) / ta + t_track
        f = RegularGridInterpolator((np.arange(zen_t.shape[0]), np.arange(zen_t.shape[1])), zen_t)
        rr, cc = np.meshgrid(tie_rows, tie_cols, indexing="ij")
        zen = f(np.stack([rr.ravel(), cc.ravel()], -1)).reshape(rad.shape)
        refl = np.pi * rad / (irr * np.cos(np.radians(zen)))
        h, w = rad.shape[0] // 2, rad.shape[1] // 2
        out.append(refl.reshape(h, 2, w, 2).mean(axis=(1, 3)))
    bts = []
    for n in (7, 8, 9):
        with netCDF4.Dataset(folder / f"S{n}_BT_in.nc") as b:
            bts.append(b[f"S{n}_BT_in"][:].filled(np.nan))
    return np.stack(out), np.stack(bts)


def test_sen3_round_trip_matches_independent_reflectance(cloudmask_raw, cloudmask_stores):
    ds = decode_strings(xr.open_zarr(cloudmask_stores["sen3"], consolidated=True))
    for i, folder in enumerate(_products(cloudmask_raw["sen3"])):
        refl, bts = _independent_reflectance(folder)
        np.testing.assert_allclose(ds["image"][i, :6].values, refl, rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(ds["image"][i, 6:].values, bts, rtol=0, atol=1e-4)
        with netCDF4.Dataset(folder / "flags_in.nc") as fl:
            fl.set_auto_maskandscale(False)
            bayes, conf = fl["bayes_in"][:], fl["confidence_in"][:]
        np.testing.assert_array_equal(ds["cloud_mask"][i].values, (bayes > 0).astype(np.uint8))
        np.testing.assert_array_equal(ds["summary_cloud"][i].values, ((conf & 16384) > 0).astype(np.uint8))
        assert len(str(ds["source_sha256"].values[i])) == 64


def test_both_layouts_of_the_same_truth_agree(cloudmask_stores):
    a = xr.open_zarr(cloudmask_stores["hdf"])
    b = xr.open_zarr(cloudmask_stores["sen3"])
    assert float(abs(a["image"][:, :6] - b["image"][:, :6]).max()) < 0.02  # 0.5 km noise and uint16 packing
    assert float(abs(a["image"][:, 6:] - b["image"][:, 6:]).max()) < 0.006  # int16 packing at 0.01 K
    np.testing.assert_array_equal(a["cloud_mask"].values, b["cloud_mask"].values)
    np.testing.assert_array_equal(a["time"].values, b["time"].values)


def test_rerun_is_a_no_op_and_changed_sources_are_refused(cloudmask_raw, cloudmask_stores, tmp_path):
    dest = tmp_path / "s.zarr"
    shutil.copytree(cloudmask_stores["hdf"], dest)
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    report = convert_cloudmask(str(cloudmask_raw["hdf"]), str(dest), CloudMaskConversion(layout="hdf", progress=False))
    assert report.complete and report.converted == () and report.already_done == 3
    assert before == {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    src = tmp_path / "fewer"
    shutil.copytree(cloudmask_raw["hdf"], src)
    next(p for p in src.iterdir() if p.suffix == ".hdf").unlink()
    from scibench_data.storage.store.records import StoreStateError

    with pytest.raises(StoreStateError, match="planned from other sources"):
        convert_cloudmask(str(src), str(dest), CloudMaskConversion(layout="hdf", progress=False))


def test_refuses_to_write_into_foreign_data(cloudmask_raw, tmp_path):
    from scibench_data.storage.store.records import StoreStateError

    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "x.zarr" / "precious.txt").write_text("keep me")
    with pytest.raises(StoreStateError, match="did not start"):
        convert_cloudmask(str(cloudmask_raw["hdf"]), str(tmp_path / "x.zarr"), CloudMaskConversion(layout="hdf", progress=False))
    assert (tmp_path / "x.zarr" / "precious.txt").read_text() == "keep me"


KILL_SCRIPT = """
import sys, time
import scibench_data.convert.cloudmask as cm
from scibench_data.formats import cloudmask as fm
real = fm.read_hdf_product
def slow(fs, path, **kw):
    time.sleep(0.4)   # make the kill land between products
    return real(fs, path, **kw)
cm.read_product = lambda fs, p, **kw: slow(fs, p.path, **kw)
cm.convert_cloudmask(sys.argv[1], sys.argv[2], cm.CloudMaskConversion(layout="hdf", scheduler="sync", progress=False))
"""


def test_killed_conversion_resumes_to_an_identical_store(tmp_path):
    """SIGKILL a real conversion process part-way; the store is not complete and does not open
    through the catalog; rerunning converts only the missing scenes and equals an uninterrupted run."""
    from scibench_data.catalog import open_catalog
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    src = tmp_path / "raw"
    generate(src, "hdf", SyntheticCloudMask(n_products=6, grid=(64, 96), seed=3))
    dest = tmp_path / "root" / "cloudmask_ds1.zarr"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(src), str(dest)])
    done_dir = dest / "_scibench" / "done"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(done_dir.glob("*.json"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(list(done_dir.glob("*.json")))
    assert 2 <= n_done < 6, n_done
    state = store_state(StoreLocation(str(dest)))
    assert state.exists and not state.complete
    with pytest.raises(Exception, match="[Cc]onsolidated"):
        open_catalog(root=str(dest.parent)).cloudmask_ds1.to_dask()

    report = convert_cloudmask(str(src), str(dest), CloudMaskConversion(layout="hdf", progress=False))
    assert report.complete and report.already_done == n_done and len(report.converted) == 6 - n_done
    ref = tmp_path / "ref.zarr"
    convert_cloudmask(str(src), str(ref), CloudMaskConversion(layout="hdf", progress=False))
    a = open_catalog(root=str(dest.parent)).cloudmask_ds1.to_dask()
    b = open_path(xr.open_zarr(ref, consolidated=True))  # what the catalog entry does
    xr.testing.assert_identical(a.load(), b.load())


def test_bad_products_are_reported_by_name_and_the_rest_converts(cloudmask_raw, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(cloudmask_raw["hdf"], src)
    first, second = _products(src)[:2]
    first.write_bytes(first.read_bytes()[:2000])  # truncated HDF5
    with h5py.File(second, "a") as f:
        del f["bts"]
    (src / "S3A_SL_1_RBT____garbage.hdf").write_bytes(b"not a product")
    report = convert_cloudmask(str(src), str(tmp_path / "out.zarr"), CloudMaskConversion(layout="hdf", progress=False))
    assert not report.ok and not report.complete
    failed = dict(report.failed)
    assert set(failed) == {first.name, second.name}
    assert "cannot be read" in failed[first.name]
    assert "missing dataset 'bts'" in failed[second.name]
    assert [Path(p).name for p, _ in report.rejected] == ["S3A_SL_1_RBT____garbage.hdf"]
    assert len(report.converted) == 1
    assert not store_state(StoreLocation(str(tmp_path / "out.zarr"))).complete


def test_sen3_missing_channel_file_names_the_file(cloudmask_raw, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(cloudmask_raw["sen3"], src)
    victim = _products(src)[0]
    (victim / "S5_radiance_an.nc").unlink()
    report = convert_cloudmask(str(src), str(tmp_path / "o.zarr"), CloudMaskConversion(layout="sen3", progress=False))
    (key, err), = report.failed
    assert key == victim.name and "S5_radiance_an.nc" in err and "missing file" in err


def test_concurrent_writer_is_refused(cloudmask_raw, tmp_path):
    from scibench_data.storage.store.lock import StoreLockedError, WriterLock

    dest = tmp_path / "locked.zarr"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock = WriterLock(StoreLocation(str(dest)))
        lock.acquire()
        # pretend the lock belongs to the other live process
        import json

        path = dest / "_scibench" / "lock.json"
        owner = json.loads(path.read_text())
        owner["pid"] = holder.pid
        path.write_text(json.dumps(owner))
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            convert_cloudmask(str(cloudmask_raw["hdf"]), str(dest), CloudMaskConversion(layout="hdf", progress=False))
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and the conversion proceeds
    report = convert_cloudmask(str(cloudmask_raw["hdf"]), str(dest), CloudMaskConversion(layout="hdf", progress=False))
    assert report.ok


def test_a_synthetic_demo_store_is_marked_at_conversion_and_still_verifies(cloudmask_raw, tmp_path):
    """`run` marked its stores synthetic by rewriting the finished root, which no longer matched the
    manifest written at finalize: `verify --store` on the demo store reported zarr.json corrupted."""
    dest = tmp_path / "demo.zarr"
    report = convert_cloudmask(str(cloudmask_raw["hdf"]), str(dest),
                               CloudMaskConversion(layout="hdf", progress=False, synthetic="a-generator"))
    assert report.ok
    assert xr.open_zarr(dest).attrs["scibench_synthetic"] == "a-generator"
    done = subprocess.run([sys.executable, "-m", "scibench_data.cli", "verify", "--store", str(dest)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all match the manifest" in done.stdout
