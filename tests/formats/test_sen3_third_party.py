"""Issue 15 item 7: synthetic SEN3 products read by a third-party reader (satpy's ``slstr_l1b``)
as real ones are, compared with our store; our tie-point rule checked against the cartesian files."""

from __future__ import annotations

import warnings
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import zarr

from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
from scibench_data.formats.slstr import GridGeometry, block_mean, interpolate_tie_points
from scibench_data.synthetic.cloudmask import (
    SyntheticCloudMask,
    detector_irradiance,
    generate,
)

GRID = (32, 48)


@pytest.fixture(scope="module")
def product(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """One synthetic SEN3 product and the image our converter stores for it."""
    base = tmp_path_factory.mktemp("sen3_satpy")
    folder = generate(base / "raw", "sen3", SyntheticCloudMask(n_products=1, grid=GRID, seed=5))[0]
    report = convert_cloudmask(str(base / "raw"), str(base / "s.zarr"), CloudMaskConversion(layout="sen3",
                                                                                              progress=False))
    assert report.ok, report.lines()
    return folder, zarr.open_group(str(base / "s.zarr"), mode="r")["image"][0]


def _satpy(folder: Path, queries: list[dict]) -> list[np.ndarray]:
    satpy = pytest.importorskip("satpy")
    from satpy.dataset.dataid import DataQuery

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scn = satpy.Scene(filenames=[str(p) for p in folder.glob("*.nc")], reader="slstr_l1b")
        qs = [DataQuery(**q) for q in queries]
        scn.load(qs)
        return [np.asarray(scn[q].values, dtype=np.float64) for q in qs]


def _nc(path: Path, name: str) -> np.ndarray:
    with netCDF4.Dataset(path) as nc:
        return np.asarray(nc[name][:], dtype=np.float64)


def _grid(path: Path) -> GridGeometry:
    with netCDF4.Dataset(path) as nc:
        return GridGeometry.from_attrs({k: nc.getncattr(k) for k in nc.ncattrs()}, str(path))


def test_satpy_calibrates_reflectance_although_viscal_irradiances_were_one_dimensional(product):
    """viscal.nc held S*_solar_irradiances as (detectors,); satpy indexes (detectors, views): IndexError.
    Its reflectance (pi L / E0[detector], no zenith, EUMETSAT adjustment) is turned into ours
    (pi L / (E0[detector 0] mu0), 2x2 mean) and compared with the store."""
    from satpy.readers.slstr_l1b import CHANCALIB_FACTORS

    folder, image = product
    zenith, *refl = _satpy(folder, [dict(name="solar_zenith_angle", resolution=500, view="nadir")] +
                           [dict(name=f"S{n}", calibration="reflectance", view="nadir", stripe="a") for n in range(1, 7)])
    detector = _nc(folder / "indices_an.nc", "detector_an").astype(int)
    mu0 = np.cos(np.deg2rad(zenith))
    for i, r in enumerate(refl):
        irr = detector_irradiance(i)
        ours_rule = r / 100.0 / CHANCALIB_FACTORS[f"S{i + 1}_nadir"] * irr[detector] / irr[0] / mu0
        np.testing.assert_allclose(block_mean(ours_rule), image[i], rtol=2e-6, atol=1e-6, err_msg=f"S{i + 1}")


def test_satpy_interpolates_solar_zenith_although_x_tx_increased_along_columns(product):
    """Our cartesian_tx x_tx increased along columns; satpy reverses it ("y must be strictly
    increasing"). Its interpolated zenith equals our tie-point rule on both image grids."""
    folder, _ = product
    z500, z1000 = _satpy(folder, [dict(name="solar_zenith_angle", resolution=500, view="nadir"),
                                  dict(name="solar_zenith_angle", resolution=1000, view="nadir")])
    x_tx = _nc(folder / "cartesian_tx.nc", "x_tx")
    assert (np.diff(x_tx, axis=1) < 0).all()  # decreasing along columns, as in real products
    tie, zenith_tn = _grid(folder / "geometry_tn.nc"), _nc(folder / "geometry_tn.nc", "solar_zenith_tn")
    for got, name in ((z500, "S1_radiance_an.nc"), (z1000, "S7_BT_in.nc")):
        ours = interpolate_tie_points(zenith_tn, tie, _grid(folder / name), got.shape)
        np.testing.assert_allclose(got, ours, atol=1e-6)


def test_our_tie_point_rule_agrees_with_the_cartesian_files(product):
    """formats/slstr.py maps image pixels to tie points from the grid attributes; the cartesian files
    (x decreasing along columns, y increasing along rows) give the same fractional positions."""
    folder, _ = product
    tie = _grid(folder / "geometry_tn.nc")
    x_tx, y_tx = _nc(folder / "cartesian_tx.nc", "x_tx"), _nc(folder / "cartesian_tx.nc", "y_tx")
    tie_cols, tie_rows = np.arange(x_tx.shape[1], dtype=float), np.arange(y_tx.shape[0], dtype=float)
    for g in ("in", "an"):
        image = _grid(folder / f"cartesian_{g}.nc")
        x, y = _nc(folder / f"cartesian_{g}.nc", f"x_{g}"), _nc(folder / f"cartesian_{g}.nc", f"y_{g}")
        from_files_col = np.interp(x[0], x_tx[0, ::-1], tie_cols[::-1])
        from_files_row = np.interp(y[:, 0], y_tx[:, 0], tie_rows)
        ours_col = tie.col_of_x(image.x_of_col(np.arange(x.shape[1])))
        ours_row = tie.row_of_y(image.y_of_row(np.arange(y.shape[0])))
        np.testing.assert_allclose(ours_col, from_files_col, atol=1e-9, err_msg=g)
        np.testing.assert_allclose(ours_row, from_files_row, atol=1e-9, err_msg=g)
