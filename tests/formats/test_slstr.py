"""SLSTR geometry and radiometry (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import RegularGridInterpolator

from scibench_data.formats.slstr import (
    GridGeometry,
    block_mean,
    cos_zenith,
    interpolate_tie_points,
    pi_over_mu0,
    radiance_to_reflectance,
    reflectance_to_radiance,
)


def test_attrs_round_trip_in_the_real_string_form():
    g = GridGeometry(16000, 1000, track_offset=64.5, start_offset=-1)
    assert g.attrs()["resolution"] == "[ 16000 1000 ]"
    assert GridGeometry.from_attrs(g.attrs()) == g
    with pytest.raises(ValueError, match="missing global attribute"):
        GridGeometry.from_attrs({"resolution": "[ 1 1 ]"}, "geometry_tn.nc")


def test_tie_point_interpolation_agrees_with_scipy():
    tie = GridGeometry(16000, 1000, track_offset=10.0, start_offset=-1.0)
    image = GridGeometry(500, 500, track_offset=300.0, start_offset=0.0)
    rng = np.random.default_rng(0)
    field = rng.random((60, 21)) * 40 + 20
    shape = (100, 600)
    got = interpolate_tie_points(field, tie, image, shape)
    rows = tie.row_of_y(image.y_of_row(np.arange(shape[0])))
    cols = tie.col_of_x(image.x_of_col(np.arange(shape[1])))
    interp = RegularGridInterpolator((np.arange(60), np.arange(21)), field, method="linear")
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    np.testing.assert_allclose(got, interp(np.stack([rr.ravel(), cc.ravel()], -1)).reshape(shape), rtol=1e-12)


def test_reflectance_inverts_radiance_and_handles_night():
    z = np.array([0.0, 60.0, 95.0])
    refl = np.array([0.2, 0.4, 0.6])
    rad = reflectance_to_radiance(refl, 1500.0, z)
    np.testing.assert_allclose(radiance_to_reflectance(rad, 1500.0, z), refl)
    np.testing.assert_allclose(cos_zenith(z), [1.0, 0.5, 1.0], atol=1e-12)
    np.testing.assert_allclose(radiance_to_reflectance(np.array([1500 / np.pi]), 1500.0, np.array([60.0])), [2.0])
    with pytest.raises(ValueError, match="irradiance"):
        radiance_to_reflectance(rad, 0.0, z)


def test_block_mean():
    a = np.arange(16, dtype=float).reshape(4, 4)
    np.testing.assert_array_equal(block_mean(a), [[2.5, 4.5], [10.5, 12.5]])
    with pytest.raises(ValueError, match="divisible"):
        block_mean(np.zeros((3, 4)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_block_mean_equals_numpy_mean_of_blocks(dtype):
    a = (np.random.default_rng(3).random((6, 10)) * 1000).astype(dtype)
    want = a.reshape(3, 2, 5, 2).mean(axis=(1, 3))
    got = block_mean(a)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(block_mean(a[:, :9].astype(np.float64), 3)[1, 2], a[3:, 6:9].astype(np.float64).mean())


def test_pi_over_mu0_in_place_equals_pi_over_cos_zenith_including_night_and_nan():
    """The in-place factor the sen3 reader applies is exactly ``pi / cos_zenith``: zenith >= 90
    (night) and NaN take mu0 = 1 as before, bit for bit."""
    z = np.array([[0.0, 45.0, 89.999], [90.0, 120.0, np.nan]])
    expected = np.pi / cos_zenith(z)
    got = pi_over_mu0(z.copy())
    np.testing.assert_array_equal(got, expected)
    assert got[1, 0] == got[1, 1] == got[1, 2] == np.pi
