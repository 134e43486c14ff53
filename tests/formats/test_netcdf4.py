"""netCDF4 files seen through h5py alone present the names, dimensions and attributes xarray's
h5netcdf backend presents (the SEN3 reader relies on it instead of opening xarray datasets)."""

from __future__ import annotations

import h5py
import numpy as np
import xarray as xr

from scibench_data.formats.netcdf4 import attributes, dimension_names, variable_names


def _same(a: object, b: object) -> bool:
    x, y = np.asarray(a), np.asarray(b)
    if x.dtype.kind in "fc" and y.dtype.kind in "fc":
        return x.shape == y.shape and bool(np.array_equal(x, y, equal_nan=True))
    return x.tolist() == y.tolist()


def test_names_dimensions_and_attributes_equal_xarrays_on_every_file_of_a_product(cloudmask_raw):
    product = sorted(cloudmask_raw["sen3"].glob("*.SEN3"))[0]
    files = sorted(product.glob("*.nc"))
    assert len(files) >= 17
    for nc in files:
        with xr.open_dataset(nc, engine="h5netcdf", mask_and_scale=False, decode_times=False) as ds, \
                h5py.File(nc, "r") as h:
            assert sorted(variable_names(h)) == sorted(str(k) for k in ds.variables), nc.name
            got = attributes(h)
            assert set(got) == set(ds.attrs) and all(_same(got[k], ds.attrs[k]) for k in got), nc.name
            assert all(type(got[k]) is type(ds.attrs[k]) for k in got if isinstance(ds.attrs[k], str)), nc.name
            for name in variable_names(h):
                assert dimension_names(h[name]) == ds[name].dims, (nc.name, name)
                mine, theirs = attributes(h[name]), ds[name].attrs
                assert set(mine) == set(theirs), (nc.name, name)
                assert all(_same(mine[k], theirs[k]) for k in mine), (nc.name, name)
