"""Hostile raw archives and checkpoints (issue 14): a raw file is read, never followed; a checkpoint
is data, never code. Each attack plants a payload (a local file whose bytes must not reach a store,
a file that must not appear) and checks it never fires, while the good products still convert."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import xarray as xr

from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask

GRID = (32, 48)
#: Bytes of a "local secret" that a hostile HDF5 file tries to copy into a store: as float32 they are
#: finite, in range values (0x41414141 = 12.08), so only the refusal can keep them out.
PLANTED = b"AAAA" * (GRID[0] * GRID[1] * 6)
PLANTED_VALUE = np.frombuffer(b"AAAA", np.float32)[0]


def _products(dest: Path, layout: str, n: int = 3, seed: int = 41) -> list[Path]:
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    return sorted(Path(p) for p in generate(dest, layout, SyntheticCloudMask(n_products=n, grid=GRID, seed=seed)))


def _replace_dataset(path: Path, name: str, make) -> None:
    with h5py.File(path, "r+") as f:
        shape, dtype = f[name].shape, f[name].dtype
        del f[name]
        make(f, name, shape, dtype)


def _convert(src: Path | str, dest: Path, layout: str = "hdf", **kw) -> object:
    return convert_cloudmask(str(src), str(dest), CloudMaskConversion(layout=layout, tile=16, progress=False,
                                                                      retries=0, **kw))


def _holds_planted(dest: Path) -> bool:
    """Whether any stored image value is the planted file's (decoded, as a reader would see it)."""
    import zarr

    image = zarr.open_group(str(dest), mode="r")["image"][...]
    return bool(np.any(image == PLANTED_VALUE))


def _assert_others_converted(report, products: list[Path], victim: Path, problem: str) -> None:
    failed = dict(report.failed)
    assert list(failed) == [victim.name], report.lines()
    assert str(victim) in failed[victim.name] and problem in failed[victim.name], failed
    assert sorted(report.converted) == sorted(p.name.rsplit(".", 1)[0] for p in products if p != victim)
    assert not report.complete


# --------------------------------------------------------------------------- HDF5 indirection (attack 3)


@pytest.fixture()
def local_secret(tmp_path) -> Path:
    path = tmp_path / "outside" / "secret.bin"
    path.parent.mkdir()
    path.write_bytes(PLANTED)
    return path


def _external_storage(secret: Path):
    def make(f, name, shape, dtype):
        f.create_dataset(name, shape, "<f4", external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
    return make


@pytest.mark.parametrize("where", ["local", "s3"])
def test_hdf5_external_storage_naming_a_local_file_is_refused_naming_file_and_dataset(
        where, tmp_path, local_secret, s3_storage_options):
    src = tmp_path / "raw"
    products = _products(src, "hdf")
    victim = products[0]
    _replace_dataset(victim, "refs", _external_storage(local_secret))
    with h5py.File(victim) as f:  # the payload is armed: reading it yields the local file's bytes
        assert f["refs"][0, 0, 0] == PLANTED_VALUE
    options = {}
    if where == "s3":
        from _s3_helpers import bucket_client

        fs = bucket_client(s3_storage_options, "hostile-raw")
        fs.put(str(src), "hostile-raw/ext", recursive=True)
        src, options = "s3://hostile-raw/ext", {"src_storage_options": s3_storage_options}
    dest = tmp_path / "out.zarr"
    report = _convert(src, dest, **options)
    failed = dict(report.failed)
    assert list(failed) == [victim.name], report.lines()
    assert "'/refs'" in failed[victim.name] and "external storage" in failed[victim.name]
    assert victim.name in failed[victim.name]
    assert len(report.converted) == 2 and not report.complete
    assert not _holds_planted(dest)


def _donor(tmp_path: Path) -> Path:
    """An HDF5 file outside the source folder whose dataset ``x`` holds the planted bytes."""
    donor = tmp_path / "outside" / "donor.h5"
    donor.parent.mkdir()
    with h5py.File(donor, "w") as f:
        f.create_dataset("x", data=np.frombuffer(PLANTED, np.float32).reshape(*GRID, 6))
    return donor


def test_hdf5_virtual_dataset_is_refused_naming_file_and_dataset(tmp_path):
    src = tmp_path / "raw"
    products = _products(src, "hdf")
    victim = products[1]
    donor = _donor(tmp_path)

    def make(f, name, shape, dtype):
        layout = h5py.VirtualLayout(shape=shape, dtype="f4")
        layout[...] = h5py.VirtualSource(str(donor), "x", shape=shape)
        f.create_virtual_dataset(name, layout, fillvalue=0)

    _replace_dataset(victim, "refs", make)
    dest = tmp_path / "out.zarr"
    report = _convert(src, dest)
    _assert_others_converted(report, products, victim, "'/refs' is a virtual dataset")
    assert not _holds_planted(dest)


def test_hdf5_external_link_is_refused_naming_file_and_dataset(tmp_path):
    src = tmp_path / "raw"
    products = _products(src, "hdf")
    victim = products[2]
    donor = _donor(tmp_path)

    def make(f, name, shape, dtype):
        f[name] = h5py.ExternalLink(str(donor), "x")

    _replace_dataset(victim, "refs", make)
    dest = tmp_path / "out.zarr"
    report = _convert(src, dest)
    _assert_others_converted(report, products, victim, "'/refs' is an external link")
    assert not _holds_planted(dest)


def test_netcdf_variable_with_hdf5_external_storage_is_refused_in_a_sen3_product(tmp_path, local_secret):
    src = tmp_path / "raw"
    products = _products(src, "sen3")
    victim = products[0]
    nc = victim / "S8_BT_in.nc"
    with h5py.File(nc, "r+") as f:
        attrs = dict(f["S8_BT_in"].attrs)
        shape = f["S8_BT_in"].shape
        del f["S8_BT_in"]
        d = f.create_dataset("S8_BT_in", shape, "<i2", external=[(str(local_secret), 0, h5py.h5f.UNLIMITED)])
        for k, v in attrs.items():
            if k not in ("DIMENSION_LIST", "REFERENCE_LIST"):
                d.attrs[k] = v
    dest = tmp_path / "out.zarr"
    report = _convert(src, dest, layout="sen3")
    failed = dict(report.failed)
    assert list(failed) == [victim.name], report.lines()
    assert "S8_BT_in.nc" in failed[victim.name] and "'/S8_BT_in'" in failed[victim.name]
    assert "external storage" in failed[victim.name]


def test_stemdl_raw_file_with_hdf5_external_storage_is_refused(tmp_path, local_secret):
    import fsspec

    from scibench_data.formats import SourceFormatError
    from scibench_data.formats.stemdl import read_raw_file, scan_raw_file

    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("sample_0")
        g.attrs["space_group"] = 12
        g.create_dataset("cbed_stack", (3, 16, 16), "<f4", external=[(str(local_secret), 0, h5py.h5f.UNLIMITED)])
    fs = fsspec.filesystem("file")
    for read in (scan_raw_file, lambda fs, p: read_raw_file(fs, p, with_potential=False)):
        with pytest.raises(SourceFormatError, match=r"train\.h5: .*'/sample_0/cbed_stack'.*external storage"):
            read(fs, str(path))


def test_stemdl_giant_declared_cbed_shape_is_refused_before_anything_is_read(tmp_path):
    import fsspec

    from scibench_data.formats import SourceFormatError
    from scibench_data.formats.stemdl import read_raw_file, scan_raw_file

    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("sample_0")
        g.attrs["space_group"] = 12
        g.create_dataset("cbed_stack", (3, 10**6, 10**6), "<f4", chunks=(1, 64, 64))  # declared, never written
    fs = fsspec.filesystem("file")
    for read in (scan_raw_file, lambda fs, p: read_raw_file(fs, p, with_potential=False)):
        with pytest.raises(SourceFormatError, match=r"train\.h5: .*1000000.*nothing read"):
            read(fs, str(path))


def test_uno_hdfstore_with_hdf5_external_storage_is_refused(tmp_path, local_secret):
    from scibench_data.formats import SourceFormatError
    from scibench_data.formats.uno import ExportReader

    path = tmp_path / "top_21_auc_1fold.uno.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("x_train_0")
        g.attrs["pandas_type"] = b"frame_table"
        g.create_dataset("table", (4,), "<f4", external=[(str(local_secret), 0, h5py.h5f.UNLIMITED)])
    with pytest.raises(SourceFormatError, match=r"uno\.h5: .*'/x_train_0/table'.*external storage"):
        with ExportReader(path) as reader:
            reader.table("x_train_0")


# --------------------------------------------------------------------------- checkpoints (attack 4)


class _Payload:
    """Unpickling this opens (creates) ``path``: the planted code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_pickle_checkpoint_for_stemdl_does_not_run(tmp_path):
    from scibench_data.pipelines.stemdl import load_model

    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "model.pt"
    torch.save({"state_dict": {}, "config": {}, "in_channels": 3, "size": 16, "payload": _Payload(str(marker))},
               ckpt)
    armed = tmp_path / "ARMED"  # the same payload under a plain unpickle does run
    torch.save({"payload": _Payload(str(armed))}, tmp_path / "armed.pt")
    torch.load(tmp_path / "armed.pt", weights_only=False)
    assert armed.exists()
    with pytest.raises(pickle.UnpicklingError):
        load_model(ckpt)
    assert not marker.exists()


# --------------------------------------------------------------------------- one bad product (attack 6)


def test_giant_declared_shape_in_the_first_product_does_not_set_the_grid(tmp_path):
    src = tmp_path / "raw"
    products = _products(src, "hdf")
    victim = products[0]  # the earliest product: the one whose grid was taken
    giant = (10**6, 10**6)
    with h5py.File(victim, "r+") as f:
        for name, c in (("refs", 6), ("rads", 6), ("bts", 3), ("bayes", 1), ("summary", 1)):
            del f[name]
            f.create_dataset(name, (*giant, c), "f4", chunks=(64, 64, c))  # declared, never written
    assert victim.stat().st_size < 1_000_000
    dest = tmp_path / "out.zarr"
    report = _convert(src, dest)
    _assert_others_converted(report, products, victim, "1000000")
    assert xr.open_zarr(dest, consolidated=False).sizes["y"] == GRID[0]


def _set_bt_attr(product: Path, name: str, key: str, value: object) -> None:
    with h5py.File(product / f"{name}.nc", "r+") as f:
        f[name].attrs[key] = value


@pytest.mark.parametrize("value,problem", [
    (np.int32(2), "brightness temperature"),         # an int scale: -10448..7346 K before
    (np.float32(0.0), "scale_factor"),                # a constant image before
    (np.bytes_(b"0.01"), "scale_factor"),             # _UFuncNoLoopError before
    (np.float32(np.nan), "scale_factor"),
])
def test_cf_packing_attribute_scale_factor_int_2_zero_or_string_is_reported_for_that_product(tmp_path, value,
                                                                                            problem):
    src = tmp_path / "raw"
    products = _products(src, "sen3")
    victim = products[1]
    _set_bt_attr(victim, "S7_BT_in", "scale_factor", value)
    dest = tmp_path / "out.zarr"
    report = _convert(src, dest, layout="sen3")
    _assert_others_converted(report, products, victim, problem)
    assert "S7_BT_in" in dict(report.failed)[victim.name]


def test_physically_impossible_bounds_are_documented_defaults_and_can_be_changed(tmp_path):
    from scibench_data.formats.cloudmask import PhysicalBounds

    src = tmp_path / "raw"
    products = _products(src, "sen3", n=2)
    _set_bt_attr(products[0], "S7_BT_in", "scale_factor", np.int32(2))
    assert PhysicalBounds().brightness_temperature == (150.0, 350.0)
    wide = PhysicalBounds(brightness_temperature=(-1e6, 1e6))
    report = _convert(src, tmp_path / "out.zarr", layout="sen3", bounds=wide)
    assert report.complete and not report.failed, report.lines()
    with pytest.raises(ValueError, match="bounds"):
        PhysicalBounds(brightness_temperature=(350.0, 150.0))
    image = np.full((9, 10, 100), 280.0, np.float32)
    image[:6] = 0.3
    image[6, 0, :1] = 900.0  # one pixel in a thousand: tolerated (0.1%)
    PhysicalBounds().check("p.hdf", "hdf", image)
    image[6, 0, :2] = 900.0
    with pytest.raises(ValueError, match=r"p\.hdf: S7 brightness temperature from 280 to 900 K \(bts\)"):
        PhysicalBounds().check("p.hdf", "hdf", image)


def test_uppercase_HDF_and_names_with_trailing_characters_are_listed_as_skipped(tmp_path):
    src = tmp_path / "raw"
    products = _products(src, "hdf")
    odd = {products[0].with_suffix(".HDF").name, products[0].name + "~", products[0].name + ".bak",
           products[0].name.replace(".hdf", ".hdf5")}
    for name in odd:
        shutil.copy(products[0], src / name)
    (src / "README.txt").write_text("not a product")
    report = _convert(src, tmp_path / "out.zarr")
    skipped = dict(report.rejected)
    assert {Path(p).name for p in skipped} == odd, report.lines()
    assert all("product name" in why for why in skipped.values())
    assert len(report.converted) == 3
    assert any(line.startswith("skipped ") and line.endswith("~: " + skipped[str(src / (products[0].name + "~"))])
               for line in report.lines())


def test_symlink_to_a_product_outside_the_source_folder_is_refused(tmp_path):
    src = tmp_path / "raw"
    products = _products(src, "hdf", n=2)
    outside = _products(tmp_path / "elsewhere", "hdf", n=1, seed=99)[0]
    link = src / outside.name
    os.symlink(outside, link)
    report = _convert(src, tmp_path / "out.zarr")
    skipped = dict(report.rejected)
    assert list(skipped) == [str(link)], report.lines()
    assert "outside the source folder" in skipped[str(link)]
    assert sorted(report.converted) == sorted(p.name[:-4] for p in products)
    names = xr.open_zarr(tmp_path / "out.zarr", consolidated=False).source_name.values.tolist()
    assert outside.name[:-4] not in names


def test_symlinked_file_inside_a_sen3_product_pointing_outside_is_refused(tmp_path, local_secret):
    src = tmp_path / "raw"
    products = _products(src, "sen3", n=2)
    victim = products[0]
    target = victim / "S9_BT_in.nc"
    shutil.move(target, local_secret.parent / "S9_BT_in.nc")
    os.symlink(local_secret.parent / "S9_BT_in.nc", target)
    report = _convert(src, tmp_path / "out.zarr", layout="sen3")
    skipped = dict(report.rejected)
    assert list(skipped) == [str(victim)], report.lines()
    assert "S9_BT_in.nc" in skipped[str(victim)] and "outside the source folder" in skipped[str(victim)]
    assert report.converted == (products[1].name[:-5],)


def test_header_walk_leaves_no_h5py_objects_to_the_garbage_collector(tmp_path):
    """h5py objects freed by the garbage collector take h5py's lock in whatever thread collects
    (fsspec's IO thread): with a thread holding that lock while it reads from S3 through fsspec,
    a conversion from S3 deadlocked in the full suite. The header walk must leave no cycles."""
    import gc

    from scibench_data.formats.hdf5_safety import refuse_indirection

    path = _products(tmp_path, "hdf", n=1)[0]
    with h5py.File(path, "r+") as f:
        f["g/back"] = f["refs"]  # a second hard link and a nested group
        f["soft"] = h5py.SoftLink("/g/back")
    gc.collect()
    gc.disable()
    try:
        with h5py.File(path) as f:
            refuse_indirection(f, str(path))
        assert gc.collect() == 0
    finally:
        gc.enable()
