"""The SEN3 reader (issue 19, item 4): files read with h5py alone, the arithmetic in bands of rows on
threads; the stored image must stay bitwise what the whole-array computation through xarray gave."""

from __future__ import annotations

import shutil
from pathlib import Path

import fsspec
import h5py
import numpy as np
import pytest
import xarray as xr

from scibench_data.formats import SourceFormatError
from scibench_data.formats import cloudmask as cm
from scibench_data.formats.slstr import (
    GridGeometry,
    block_mean,
    interpolate_tie_points,
    pi_over_mu0,
)

FS = fsspec.filesystem("file")


def _xr(path: Path, mask_and_scale: bool) -> xr.Dataset:
    return xr.open_dataset(path, engine="h5netcdf", mask_and_scale=mask_and_scale, decode_times=False)


def _whole_array_image(product: Path) -> np.ndarray:
    """The stored image as the reader computed it before: xarray datasets, whole 0.5 km arrays."""
    def unpacked(name: str) -> np.ndarray:
        with _xr(product / f"{name}.nc", False) as ds:
            if "_Unsigned" in ds[name].attrs:
                return xr.decode_cf(ds[[name]])[name].values.astype(np.float64)
            return cm.cf_unpack(ds[name].values, ds[name].attrs, name, name)

    with _xr(product / "geometry_tn.nc", True) as geo:
        tie, zenith = GridGeometry.from_attrs(geo.attrs), geo["solar_zenith_tn"].values
    with _xr(product / "S1_radiance_an.nc", False) as s1:
        image_grid, fine = GridGeometry.from_attrs(s1.attrs), s1["S1_radiance_an"].shape
    factor = pi_over_mu0(interpolate_tie_points(zenith, tie, image_grid, fine))
    channels = []
    for ch in cm.REFLECTANCE_CHANNELS:
        with _xr(product / f"{ch}_quality_an.nc", True) as q:
            e0 = float(np.asarray(q[f"{ch}_solar_irradiance_an"].values, np.float64).ravel()[0])
        radiance = unpacked(f"{ch}_radiance_an")
        radiance *= factor
        refl = block_mean(radiance)
        refl *= 1.0 / e0
        channels.append(refl.astype(np.float32))
    channels += [unpacked(f"{ch}_BT_in").astype(np.float32) for ch in cm.BT_CHANNELS]
    return np.stack(channels)


@pytest.fixture()
def products(cloudmask_raw, tmp_path) -> list[Path]:
    shutil.copytree(cloudmask_raw["sen3"], tmp_path / "raw")
    return sorted((tmp_path / "raw").glob("*.SEN3"))


@pytest.mark.parametrize("band_rows,threads", [(2, 1), (6, 2), (16, 2), (1000, 3)])
def test_image_computed_in_bands_on_threads_is_bitwise_the_whole_array_computation(products, monkeypatch,
                                                                                  band_rows, threads):
    monkeypatch.setattr(cm, "BAND_ROWS", band_rows)  # 6: bands of unequal count per thread, a short last one
    monkeypatch.setattr(cm, "BAND_THREADS", threads)
    monkeypatch.setattr(cm.sen3_image, "__defaults__", (threads,))
    for product in products:
        scene = cm.read_sen3_product(FS, str(product))
        want = _whole_array_image(product)
        assert scene.image.dtype == np.float32 and scene.image.flags.c_contiguous
        assert scene.image.tobytes() == want.tobytes(), product.name
        with _xr(product / "flags_in.nc", False) as flags:
            assert np.array_equal(scene.cloud_mask, (flags["bayes_in"].values > 0).astype(np.uint8))


def test_packed_small_variables_and_unsigned_images_are_still_decoded_as_xarray_decodes_them(products):
    """The h5py path decodes only unpacked small variables itself; a packed irradiance or zenith and a
    netCDF-3 style ``_Unsigned`` image go through xarray as before (same values, bitwise)."""
    product = products[0]
    with h5py.File(product / "S3_quality_an.nc", "r+") as f:
        v = f["S3_solar_irradiance_an"]
        v[...] = v[...] * 2.0
        v.attrs["scale_factor"] = np.float32(0.5)
    with h5py.File(product / "geometry_tn.nc", "r+") as f:
        v = f["solar_zenith_tn"]
        v[...] = v[...] / 0.25
        v.attrs["scale_factor"] = 0.25
        v.attrs["add_offset"] = 0.0
    with h5py.File(product / "S2_radiance_an.nc", "r+") as f:
        v = f["S2_radiance_an"]
        data = v[...].astype(np.int32)
        data[data == 65535] = -1
        v[...] = data.astype(np.uint16)  # the same bits, read back as int16 with _Unsigned
        v.attrs["_Unsigned"] = "true"
    scene = cm.read_sen3_product(FS, str(product))
    assert scene.image.tobytes() == _whole_array_image(product).tobytes()


def test_a_sen3_product_is_read_without_building_any_xarray_dataset(products, monkeypatch):
    """Opening its 17 files with xarray cost ~10 ms of CPU each for a few attributes and one array."""
    want = cm.read_sen3_product(FS, str(products[0]))

    def refuse(*args, **kwargs):
        raise AssertionError("xarray.open_dataset called")

    monkeypatch.setattr(xr, "open_dataset", refuse)
    got = cm.read_sen3_product(FS, str(products[0]))
    assert got.image.tobytes() == want.image.tobytes()
    assert cm.sen3_grid_shape(FS, str(products[0])) == want.image.shape[1:]


def _no_dimension_scales(path: Path, name: str) -> None:
    with h5py.File(path, "r+") as f:
        data, attrs = f[name][...], {k: v for k, v in f[name].attrs.items()
                                     if k not in ("DIMENSION_LIST", "_Netcdf4Coordinates", "_Netcdf4Dimid")}
        del f[name]
        d = f.create_dataset(name, data=data)
        d.attrs.update(attrs)


def _many_detectors(path: Path, name: str) -> None:
    with h5py.File(path, "r+") as f:
        del f[name]
        f.create_dataset(name, (cm.MAX_DETECTORS + 1,), "f4", fillvalue=1800.0)


def _text_flag_dtype(path: Path, name: str) -> None:
    with h5py.File(path, "r+") as f:
        shape = f[name].shape
        del f[name]
        f.create_dataset(name, shape, h5py.string_dtype())


def _one_row(path: Path, name: str) -> None:
    with h5py.File(path, "r+") as f:
        data = f[name][:1]
        del f[name]
        f.create_dataset(name, data=data)


def _drop(path: Path, name: str) -> None:
    with h5py.File(path, "r+") as f:
        del f[name]


@pytest.mark.parametrize("filename,name,damage,problem", [
    ("S5_radiance_an.nc", "S5_radiance_an", _no_dimension_scales, "has dims (None, None), expected ('rows', 'columns')"),
    ("S4_quality_an.nc", "S4_solar_irradiance_an", _many_detectors, f"declares {cm.MAX_DETECTORS + 1} values"),
    ("flags_in.nc", "confidence_in", _text_flag_dtype, "expected a real number type"),
    ("S6_quality_an.nc", "S6_solar_irradiance_an", _drop, "missing variable 'S6_solar_irradiance_an' (found []"),
    ("geometry_tn.nc", "solar_zenith_tn", _drop, "missing variable 'solar_zenith_tn' (found ['sat_azimuth_tn'"),
    ("geometry_tn.nc", "solar_zenith_tn", _one_row, "expected a 2-D tie-point grid of at least 2x2"),
])
def test_bad_variables_read_through_h5py_are_refused_naming_the_file(products, filename, name, damage, problem):
    path = products[1] / filename
    damage(path, name)
    with pytest.raises(SourceFormatError) as err:
        cm.read_sen3_product(FS, str(products[1]))
    assert str(path) in str(err.value) and problem in str(err.value), str(err.value)
