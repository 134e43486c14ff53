"""Late and reprocessed products (issue 19): an append accepts a product older than the store's last
scene, a reprocessed product (same acquisition, newer processing) replaces its scene's data, no
other scene is rewritten, time selection through the catalog stays correct, and provenance names
the version each scene holds."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from scibench_data.catalog import open_catalog
from scibench_data.convert.cloudmask import (
    CloudMaskConversion,
    append_cloudmask,
    convert_cloudmask,
)
from scibench_data.formats.cloudmask import ProductName
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import store_state
from scibench_data.strings import decode_strings

OPTS = CloudMaskConversion(layout="hdf", progress=False)
DATA = ("image", "cloud_mask", "summary_cloud")
_TIME = "%Y%m%dT%H%M%S"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    """Five tiny products (``products``, in time order) and the store of all five converted at once."""
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    base = tmp_path_factory.mktemp("late")
    generate(base / "all", "hdf", SyntheticCloudMask(n_products=5, grid=(64, 96), seed=5))
    generate(base / "other", "hdf", SyntheticCloudMask(n_products=5, grid=(64, 96), seed=9))
    products = sorted((base / "all").glob("*.hdf"), key=lambda p: ProductName.parse(p.name).start)
    assert convert_cloudmask(str(base / "all"), str(base / "ref.zarr"), OPTS).ok
    return {"base": base, "products": products, "other": sorted((base / "other").glob("*.hdf")),
            "ref": base / "ref.zarr"}


def _folder(dest: Path, files: list[Path]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, dest / f.name)
    return dest


def _data_chunks(store: Path) -> dict[Path, int]:
    """Every data chunk of the scene arrays, with its modification time."""
    return {p: p.stat().st_mtime_ns for v in DATA for p in (store / v).rglob("*")
            if p.is_file() and p.name != "zarr.json"}


def _by_name(ds: xr.Dataset) -> dict[str, int]:
    return {str(n): i for i, n in enumerate(ds["source_name"].values)}


def _reprocessed_name(name: str, later: timedelta) -> str:
    """The name of the same acquisition processed ``later`` than ``name`` (its creation time moved)."""
    p = ProductName.parse(name)
    return name.replace(f"_{p.creation:{_TIME}}_", f"_{p.creation + later:{_TIME}}_", 1)


def _plain(dest: Path) -> xr.Dataset:
    """The store as plain xarray reads it (text decoded), in store order."""
    return decode_strings(xr.open_zarr(dest, consolidated=True)).load()


def _open(dest: Path) -> xr.Dataset:
    return open_catalog(root=str(dest.parent)).cloudmask_ds2.to_dask()


def test_a_late_product_is_appended_without_rewriting_other_scenes(raw, tmp_path):
    products = raw["products"]
    dest = tmp_path / "root" / "cloudmask_ds2.zarr"
    assert convert_cloudmask(str(_folder(tmp_path / "last3", products[2:])), str(dest), OPTS).ok
    before = _data_chunks(dest)
    times_before = _plain(dest)["time"].values.copy()

    report = append_cloudmask(str(_folder(tmp_path / "archive", products)), str(dest), OPTS)  # 2 late products
    assert report.ok and report.already_done == 3 and len(report.converted) == 2, report.lines()
    assert store_state(StoreLocation(str(dest))).complete
    after = _data_chunks(dest)
    assert {p: after[p] for p in before} == before  # no chunk of an existing scene rewritten
    assert len(after) == len(before) * 5 // 3  # the new scenes' chunks were added

    plain = _plain(dest)
    np.testing.assert_array_equal(plain["time"].values[:3], times_before)  # existing scenes keep their times
    assert len(np.unique(plain["time"].values)) == 5  # time stays unique
    ref = _plain(raw["ref"])
    mine, theirs = _by_name(plain), _by_name(ref)
    assert set(mine) == set(theirs)
    for name, i in mine.items():  # every scene holds its own product's data
        for v in DATA + ("time", "source_sha256"):
            np.testing.assert_array_equal(plain[v].values[i], ref[v].values[theirs[name]], err_msg=f"{v} of {name}")

    # idempotent: the same archive again adds nothing and touches nothing
    again = append_cloudmask(str(tmp_path / "archive"), str(dest), OPTS)
    assert again.complete and again.converted == () and _data_chunks(dest) == after


def test_a_reprocessed_product_replaces_its_scene_and_provenance_names_the_version(raw, tmp_path):
    products = raw["products"][:3]
    dest = tmp_path / "root" / "cloudmask_ds2.zarr"
    archive = _folder(tmp_path / "archive", products)
    assert convert_cloudmask(str(archive), str(dest), OPTS).ok
    first = _plain(dest)
    before = _data_chunks(dest)

    old = products[1]
    new_name = _reprocessed_name(old.name, timedelta(days=30))
    shutil.copy(raw["other"][1], archive / new_name)  # other pixel values: the reprocessing changed the data
    alone = tmp_path / "alone"
    _folder(alone, [archive / new_name])
    assert convert_cloudmask(str(alone), str(tmp_path / "alone.zarr"), OPTS).ok
    expected = _plain(tmp_path / "alone.zarr")

    report = append_cloudmask(str(archive), str(dest), OPTS)  # the archive holds both versions
    assert report.ok and report.converted == (Path(new_name).stem,), report.lines()
    ds = _plain(dest)
    assert ds.sizes["scene"] == 3  # replaced in place, not added
    scene = _by_name(first)[old.stem]
    assert str(ds["source_name"].values[scene]) == Path(new_name).stem  # the version it holds, by name
    assert ProductName.parse(new_name).creation > ProductName.parse(old.name).creation
    for v in DATA + ("source_sha256",):
        np.testing.assert_array_equal(ds[v].values[scene], expected[v].values[0], err_msg=v)
    assert str(ds["source_sha256"].values[scene]) != str(first["source_sha256"].values[scene])
    np.testing.assert_array_equal(ds["time"].values, first["time"].values)  # same acquisition, same time
    replaced = ds.attrs["scibench_replaced_scenes"]
    assert replaced == [{"scene": scene, "replaced": old.stem, "by": Path(new_name).stem}]

    after = _data_chunks(dest)
    for p, m in before.items():  # only the replaced scene's chunks were written
        rel = p.relative_to(dest).parts
        assert (after[p] == m) == (int(rel[2]) != scene), p
    # the older version still in the archive does not replace the newer one; nothing is touched
    again = append_cloudmask(str(archive), str(dest), OPTS)
    assert again.complete and again.converted == () and _data_chunks(dest) == after
    assert str(_plain(dest)["source_name"].values[scene]) == Path(new_name).stem


def test_a_conversion_of_an_archive_holding_two_versions_of_an_acquisition_stores_the_newest_once(raw, tmp_path):
    """convert, like append, keeps the newest processing of each acquisition: the older version is not
    stored as a second scene of the same time (a scene twice in the data set, twice under sel(time=...))."""
    products = raw["products"][:3]
    archive = _folder(tmp_path / "archive", products)
    old = products[1]
    new_name = _reprocessed_name(old.name, timedelta(days=30))
    shutil.copy(raw["other"][1], archive / new_name)
    assert convert_cloudmask(str(_folder(tmp_path / "alone", [archive / new_name])),
                             str(tmp_path / "alone.zarr"), OPTS).ok
    expected = _plain(tmp_path / "alone.zarr")

    dest = tmp_path / "root" / "cloudmask_ds2.zarr"
    report = convert_cloudmask(str(archive), str(dest), OPTS)
    assert report.ok and report.extra.get("superseded") == [old.name], report.lines()
    assert any("superseded" in line for line in report.lines()), report.lines()
    ds = _plain(dest)
    assert ds.sizes["scene"] == 3, list(ds["source_name"].values)
    names = [str(n) for n in ds["source_name"].values]
    assert names == [products[0].stem, Path(new_name).stem, products[2].stem]
    for v in DATA + ("source_sha256",):
        np.testing.assert_array_equal(ds[v].values[1], expected[v].values[0], err_msg=v)
    at = ds["time"].values[1]
    assert _open(dest).sel(time=at)["source_name"].values.ndim == 0  # one scene at that time
    again = convert_cloudmask(str(archive), str(dest), OPTS)  # rerun: complete, nothing converted
    assert again.complete and again.converted == ()


def test_sel_time_is_correct_after_a_late_append(raw, tmp_path):
    products = raw["products"]
    dest = tmp_path / "root" / "cloudmask_ds2.zarr"
    assert convert_cloudmask(str(_folder(tmp_path / "a", [products[0], products[3], products[4]])), str(dest),
                             OPTS).ok
    assert append_cloudmask(str(_folder(tmp_path / "b", products)), str(dest), OPTS).ok  # 1 and 2 are late

    stored = _plain(dest)["time"].values
    assert (np.diff(stored.astype(np.int64)) < 0).any()  # in append order on disk
    ds = _open(dest)
    times = ds["time"].values
    assert (np.diff(times.astype(np.int64)) > 0).all()  # the catalog's view is in time order
    assert "time" in ds.xindexes
    assert [str(s) for s in ds["source_name"].values] == [p.stem for p in products]

    a, b = times[1], times[3]
    part = ds.sel(time=slice(a, b)).load()  # label slices include both ends
    assert [str(s) for s in part["source_name"].values] == [p.stem for p in products[1:4]]
    ref_ds = _plain(raw["ref"])
    theirs = _by_name(ref_ds)
    for i, name in enumerate(part["source_name"].values):
        np.testing.assert_array_equal(part["image"].values[i], ref_ds["image"].values[theirs[str(name)]])
    one = ds.sel(time=times[2]).load()
    assert str(one["source_name"].values) == products[2].stem
    # the documented plain-xarray rule: sort by time; store_scene is each scene's index in the store
    plain = _plain(dest)
    np.testing.assert_array_equal(plain.sortby("time")["time"].values, times)
    np.testing.assert_array_equal(ds["store_scene"].values, np.argsort(stored, kind="stable"))
    np.testing.assert_array_equal(plain["source_name"].values[ds["store_scene"].values], ds["source_name"].values)
