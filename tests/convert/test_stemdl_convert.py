"""STEMDL conversion: round trips for both layouts, splits by material, resume, bad inputs."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import fsspec
import numpy as np
import pytest
import xarray as xr
import zarr
from _stemdl_data import TINY, write_tiny

from scibench_data.cli import main
from scibench_data.convert.stemdl import (
    STEMDLConversion,
    check_material_splits,
    convert_stemdl,
    materials_in_two_splits,
    plan_blocks,
)
from scibench_data.formats import SourceFormatError
from scibench_data.formats.stemdl import (
    SourceFile,
    discover_sources,
    read_npz_sample,
    read_raw_file,
)
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import RecordStore, store_state
from scibench_data.storage.store.regions import MisalignedRegionError
from scibench_data.strings import decode_strings

FS = fsspec.filesystem("file")
QUIET = STEMDLConversion(progress=False, scheduler="sync")


def _open(path) -> xr.Dataset:
    return decode_strings(xr.open_zarr(str(path), consolidated=True)).load()


def test_raw_round_trip_equals_the_source_arrays(tmp_path):
    src = write_tiny(tmp_path, "raw")
    report = convert_stemdl(str(src), str(tmp_path / "raw.zarr"), QUIET)
    assert report.ok and report.extra["n_samples"] == TINY.n_samples and report.extra["with_potential"]
    ds = _open(tmp_path / "raw.zarr")
    listing = discover_sources(FS, str(src))
    samples = [(f, s) for f in listing.files for s in read_raw_file(FS, f.path)]
    assert ds.sizes == {"sample": TINY.n_samples, "projection": 3, "y": 32, "x": 32}
    np.testing.assert_array_equal(ds["cbed"].values, np.stack([s.cbed for _, s in samples]))
    np.testing.assert_array_equal(ds["potential"].values, np.stack([s.potential for _, s in samples]))
    assert ds["label"].values.tolist() == [s.space_group for _, s in samples]
    assert ds["material"].values.tolist() == [s.material for _, s in samples]
    assert ds["split"].values.tolist() == [f.split for f, _ in samples]
    assert ds["source_key"].values.tolist() == [s.key for _, s in samples]
    assert ds.attrs["scibench_status"] == "complete" and ds.attrs["scibench_preprocessed"] is False
    assert ds.attrs["scibench_split_counts"] == {"train": 6, "dev": 6, "test": 6}


def test_npz_round_trip_with_multi_sample_chunks(tmp_path):
    src = write_tiny(tmp_path, "npz")
    opts = STEMDLConversion(progress=False, sample_chunk=4, files_per_task=8)
    report = convert_stemdl(str(src), str(tmp_path / "npz.zarr"), opts)
    assert report.ok and report.total == 3  # 18 files in blocks of 8
    ds = _open(tmp_path / "npz.zarr")
    assert zarr.open_group(str(tmp_path / "npz.zarr"), mode="r")["cbed"].chunks == (4, 3, 16, 16)
    samples = [read_npz_sample(FS, f.path) for f in discover_sources(FS, str(src)).files]
    np.testing.assert_array_equal(ds["cbed"].values, np.stack([s.cbed for s in samples]))
    assert ds["label"].values.tolist() == [s.space_group for s in samples]
    assert "potential" not in ds and ds.attrs["scibench_preprocessed"] is True


def test_preprocessed_raw_store_matches_the_npz_layout(tmp_path):
    raw, npz = write_tiny(tmp_path, "raw"), write_tiny(tmp_path, "npz")
    convert_stemdl(str(raw), str(tmp_path / "pre.zarr"), STEMDLConversion(preprocess=True, size=16, progress=False))
    convert_stemdl(str(npz), str(tmp_path / "npz.zarr"), QUIET)
    pre, ref = _open(tmp_path / "pre.zarr"), _open(tmp_path / "npz.zarr")
    np.testing.assert_allclose(pre["cbed"].values, ref["cbed"].values, rtol=1e-6)
    np.testing.assert_array_equal(pre["label"].values, ref["label"].values)
    assert pre["potential"].shape == (TINY.n_samples, 16, 16)
    assert pre.attrs["scibench_preprocessing"]["size"] == 16
    with pytest.raises(ValueError, match="preprocessed already"):
        convert_stemdl(str(npz), str(tmp_path / "x.zarr"), STEMDLConversion(preprocess=True, progress=False))


def test_no_material_in_two_splits(tmp_path):
    convert_stemdl(str(write_tiny(tmp_path, "raw")), str(tmp_path / "r.zarr"), QUIET)
    ds = _open(tmp_path / "r.zarr")
    per_material = ds.groupby("material").map(lambda g: xr.DataArray(len(set(g["split"].values.tolist()))))
    assert int(per_material.max()) == 1
    assert materials_in_two_splits(ds["material"].values, ds["split"].values) == {}
    for split in ("train", "dev", "test"):  # every class in every split
        assert set(ds["label"].values[ds["split"].values == split]) == {1, 116, 230}


def test_material_in_two_split_folders_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sg001-m00 in dev/train"):
        check_material_splits(np.array(["sg001-m00", "sg001-m00", "b"]), np.array(["train", "dev", "dev"]))


def test_flat_raw_folder_splits_by_material(tmp_path):
    src = write_tiny(tmp_path, "raw")
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in src.rglob("*.h5"):
        shutil.copy(p, flat / p.name)
    convert_stemdl(str(flat), str(tmp_path / "flat.zarr"), QUIET)
    ds = _open(tmp_path / "flat.zarr")
    assert materials_in_two_splits(ds["material"].values, ds["split"].values) == {}
    assert set(ds["split"].values.tolist()) <= {"train", "dev", "test"}


def test_interrupted_conversion_resumes_only_what_is_missing(tmp_path):
    src = write_tiny(tmp_path, "raw")
    victim = sorted((src / "test").glob("*.h5"))[-1]
    good = victim.read_bytes()
    dest = tmp_path / "resume.zarr"
    # A file whose patterns differ in size from the others is refused while planning.
    odd = write_tiny(tmp_path / "odd", "raw", replace(TINY, pattern=48))
    victim.write_bytes((odd / "test" / victim.name).read_bytes())
    with pytest.raises(SourceFormatError, match="patterns are"):
        convert_stemdl(str(src), str(dest), QUIET)  # caught while planning: nothing written
    victim.write_bytes(good)
    first = convert_stemdl(str(src), str(dest), QUIET)
    assert first.ok
    # Simulate a kill after the last block's data but before its marker and the finalize.
    marker = sorted((dest / "_scibench" / "done").iterdir())[-1]
    marker.unlink()
    root = dest / "zarr.json"
    meta = json.loads(root.read_text().replace('"complete"', '"incomplete"'))
    meta.pop("consolidated_metadata", None)
    root.write_text(json.dumps(meta))
    assert not store_state(StoreLocation(str(dest))).complete
    with pytest.raises(Exception):
        xr.open_zarr(str(dest), consolidated=True)
    again = convert_stemdl(str(src), str(dest), QUIET)
    assert again.ok and len(again.converted) == 1 and again.already_done == first.total - 1
    assert again.converted[0] == f"test/{victim.name}"
    np.testing.assert_array_equal(_open(dest)["cbed"].values, _open_fresh(tmp_path, src)["cbed"].values)
    done = convert_stemdl(str(src), str(dest), QUIET)
    assert done.ok and done.converted == () and done.already_done == first.total


def _open_fresh(tmp_path, src):
    convert_stemdl(str(src), str(tmp_path / "fresh.zarr"), QUIET)
    return _open(tmp_path / "fresh.zarr")


def test_failed_block_is_reported_and_store_stays_incomplete(tmp_path):
    src = write_tiny(tmp_path, "npz")
    bad = src / "dev" / "sample-8.npz"
    with open(bad, "wb") as f:
        np.savez(f, data=np.array([{"x": 1}], dtype=object), label=np.array([1]))
    dest = tmp_path / "bad.zarr"
    report = convert_stemdl(str(src), str(dest), STEMDLConversion(progress=False, files_per_task=4))
    assert not report.ok and not report.complete and len(report.converted) == report.total - 1
    (key, error), = report.failed
    assert key == "dev/sample-8.npz..dev/sample-11.npz"
    assert "sample-8.npz" in error and "pickled object array" in error
    assert not store_state(StoreLocation(str(dest))).complete


def test_misaligned_blocks_are_refused_before_writing(tmp_path):
    files = tuple(SourceFile(f"/s/f{i}.h5", "train") for i in range(3))
    with pytest.raises(ValueError, match="not a multiple of sample_chunk 4"):
        plan_blocks(files, [4, 3, 4], "raw", 256, 4, "/s")
    blocks = plan_blocks(files, [4, 4, 3], "raw", 256, 4, "/s")
    assert [(b.start, b.count) for b in blocks] == [(0, 4), (4, 4), (8, 3)]
    src = write_tiny(tmp_path, "raw")
    convert_stemdl(str(src), str(tmp_path / "a.zarr"), QUIET)
    store = RecordStore(StoreLocation(str(tmp_path / "a.zarr")), "sample")
    with pytest.raises(ValueError, match="record shape"):
        store.write_block(0, {"cbed": np.zeros((2, 3, 8, 8), np.float32)})
    group = zarr.open_group(str(tmp_path / "b.zarr"), mode="w", zarr_format=3)
    group.create_array("v", shape=(8, 2), chunks=(4, 2), dtype="f4", fill_value=0.0)
    chunked = RecordStore(StoreLocation(str(tmp_path / "b.zarr")), "sample")
    with pytest.raises(MisalignedRegionError, match="not a multiple of the chunk size 4"):
        chunked.write_block(2, {"v": np.ones((4, 2), np.float32)})
    chunked.write_block(4, {"v": np.ones((4, 2), np.float32)})
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "b.zarr" / "v"))[:, 0], [0] * 4 + [1] * 4)
    with pytest.raises(ValueError, match="multiple of sample_chunk"):
        STEMDLConversion(sample_chunk=3, files_per_task=256)


def test_cli_convert_and_bad_input_exit_codes(tmp_path, capsys):
    src = write_tiny(tmp_path, "raw")
    assert main(["convert", "stemdl", str(src), str(tmp_path / "cli.zarr"), "--no-progress",
                 "--preprocess", "--size", "16"]) == 0
    assert "status: complete" in capsys.readouterr().out
    victim = sorted((src / "dev").glob("*.h5"))[0]
    victim.write_bytes(victim.read_bytes()[:500])
    assert main(["convert", "stemdl", str(src), str(tmp_path / "cli2.zarr"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert victim.name in err and "cannot be read" in err
