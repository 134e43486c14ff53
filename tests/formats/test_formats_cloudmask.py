"""CF unpacking of SEN3 images: equal to xarray's mask_and_scale on our files and on edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from scibench_data.formats import SourceFormatError
from scibench_data.formats.cloudmask import cf_unpack


def test_unpacking_equals_xarray_on_every_packed_image_of_a_product(cloudmask_raw):
    product = sorted(cloudmask_raw["sen3"].glob("*.SEN3"))[0]
    checked = 0
    for nc in sorted(product.glob("*_radiance_an.nc")) + sorted(product.glob("*_BT_in.nc")):
        name = nc.stem
        with xr.open_dataset(nc, engine="h5netcdf", mask_and_scale=False) as raw, \
                xr.open_dataset(nc, engine="h5netcdf") as decoded:
            assert "scale_factor" in raw[name].attrs and "_FillValue" in raw[name].attrs  # really packed
            got = cf_unpack(raw[name].values, raw[name].attrs, str(nc), name)
            np.testing.assert_array_equal(got, decoded[name].values.astype(np.float64))
        checked += 1
    assert checked == 9


@pytest.mark.filterwarnings("ignore:variable 'v' has multiple fill values")  # xarray says what we test
def test_fill_missing_value_scale_and_offset():
    raw = np.array([[0, 1, 2], [-32768, 7, -1]], np.int16)
    attrs = {"_FillValue": np.int16(-32768), "missing_value": np.array([-1], np.int16),
             "scale_factor": np.array([0.5]), "add_offset": 10.0}
    got = cf_unpack(raw, attrs, "f.nc", "v")
    ds = xr.Dataset({"v": (("y", "x"), raw, attrs)})
    want = xr.decode_cf(ds)["v"].values
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float64 and np.isnan(got).sum() == 2
    np.testing.assert_array_equal(cf_unpack(raw, {}, "f.nc", "v"), raw.astype(np.float64))  # nothing to undo


def test_a_vector_scale_factor_is_refused_with_the_file_and_variable():
    with pytest.raises(SourceFormatError, match=r"f\.nc.*'v'.*scale_factor has 2 values"):
        cf_unpack(np.zeros(3, np.uint16), {"scale_factor": [0.1, 0.2]}, "f.nc", "v")
