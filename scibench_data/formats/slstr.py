"""SLSTR Level-1 geometry and radiometry: pure NumPy, no I/O.

Grid convention (read from each netCDF file's global attributes): a grid with
``resolution = "RA RT"`` (across-track and along-track pixel size in metres),
``track_offset = T`` and ``start_offset = S`` places pixel ``(row, col)`` at the
image-plane coordinates

    x = (col - T) * RA        (across track, metres from the nadir track)
    y = (row + S) * RT        (along track, metres from the grid origin)

The tie-point grid (``*_tn``/``*_tx``) uses the same rule with its own
attributes, so interpolating a tie-point field onto an image grid is a
bilinear interpolation at fractional tie-point indices.

Real products' ``cartesian_*`` files hold x decreasing along columns (the x
above with its sign turned); the sign cancels when one grid is mapped onto
another, and tests/formats/test_sen3_third_party.py checks this rule against the
cartesian files and satpy's interpolation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GridGeometry:
    """Placement of an SLSTR image or tie-point grid in the image plane."""

    resolution_across: float
    resolution_along: float
    track_offset: float
    start_offset: float

    def __post_init__(self) -> None:
        if self.resolution_across <= 0 or self.resolution_along <= 0:
            raise ValueError(f"grid resolution must be positive, got {self.resolution_across}, {self.resolution_along}")

    @classmethod
    def from_attrs(cls, attrs: dict, where: str = "netCDF file") -> GridGeometry:
        """Build from a file's global attributes (``resolution``, ``track_offset``, ``start_offset``)."""
        missing = [k for k in ("resolution", "track_offset", "start_offset") if k not in attrs]
        if missing:
            raise ValueError(f"{where}: missing global attribute(s) {', '.join(missing)}")
        res = attrs["resolution"]
        if isinstance(res, (str, bytes)):
            text = res.decode() if isinstance(res, bytes) else res
            values = [float(v) for v in re.findall(r"[-+]?\d+(?:\.\d+)?", text)]
        else:
            values = [float(v) for v in np.atleast_1d(res)]
        if len(values) != 2:
            raise ValueError(f"{where}: attribute resolution={res!r} must hold two numbers (across, along)")
        return cls(values[0], values[1], float(np.asarray(attrs["track_offset"]).item()),
                   float(np.asarray(attrs["start_offset"]).item()))

    def attrs(self) -> dict:
        """The global attributes that describe this grid, formatted as in real products."""
        return {
            "resolution": f"[ {self.resolution_across:g} {self.resolution_along:g} ]",
            "track_offset": self.track_offset,
            "start_offset": self.start_offset,
        }

    def x_of_col(self, col: np.ndarray) -> np.ndarray:
        return (np.asarray(col, dtype=np.float64) - self.track_offset) * self.resolution_across

    def y_of_row(self, row: np.ndarray) -> np.ndarray:
        return (np.asarray(row, dtype=np.float64) + self.start_offset) * self.resolution_along

    def col_of_x(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) / self.resolution_across + self.track_offset

    def row_of_y(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float64) / self.resolution_along - self.start_offset


def _linear_weights(pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower neighbour index and weight of the upper one, clamped to ``[0, n-1]``."""
    pos = np.clip(pos, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(pos).astype(np.intp), max(n - 2, 0))
    return i0, pos - i0


def interpolate_tie_points(
    field: np.ndarray, tie: GridGeometry, image: GridGeometry, shape: tuple[int, int],
    rows: tuple[int, int] | None = None,
) -> np.ndarray:
    """Bilinearly interpolate a tie-point field ``(rows_t, cols_t)`` onto an image grid of ``shape``
    (only its rows ``start:stop`` with ``rows=(start, stop)``: the same values as those rows of the
    whole grid, each row being computed on its own).

    Positions outside the tie-point grid take the nearest edge value.
    """
    if field.ndim != 2 or min(field.shape) < 2:
        raise ValueError(f"tie-point field must be 2-D with at least 2x2 points, got shape {field.shape}")
    start, stop = rows if rows is not None else (0, shape[0])
    if not 0 <= start <= stop <= shape[0]:
        raise ValueError(f"rows {start}:{stop} outside the image grid's {shape[0]} rows")
    at_rows = tie.row_of_y(image.y_of_row(np.arange(start, stop)))
    cols = tie.col_of_x(image.x_of_col(np.arange(shape[1])))
    r0, wr = _linear_weights(at_rows, field.shape[0])
    c0, wc = _linear_weights(cols, field.shape[1])
    f = np.asarray(field, dtype=np.float64)
    along = f[r0] * (1.0 - wr)[:, None] + f[r0 + 1] * wr[:, None]  # (rows, cols_t)
    # the same products and sum as ``along[:, c0] * (1 - wc) + along[:, c0 + 1] * wc``, in place:
    # two image-sized arrays instead of five (each a fresh allocation to fault in)
    out = along[:, c0]
    out *= (1.0 - wc)[None, :]
    upper = along[:, c0 + 1]
    upper *= wc[None, :]
    out += upper
    return out


def cos_zenith(solar_zenith_deg: np.ndarray) -> np.ndarray:
    """``mu0 = cos(zenith)`` where the Sun is above the horizon, else 1 (the reference's rule)."""
    z = np.asarray(solar_zenith_deg, dtype=np.float64)
    return np.where(z < 90.0, np.cos(np.deg2rad(z)), 1.0)


def pi_over_mu0(solar_zenith_deg: np.ndarray) -> np.ndarray:
    """``pi / cos_zenith(zenith)``, computed in place in ``solar_zenith_deg`` when it is a float64
    array (equal values; one image-sized array instead of four)."""
    z = np.asarray(solar_zenith_deg, dtype=np.float64)
    night = ~(z < 90.0)  # as cos_zenith: NaN is not "above the horizon" either
    np.deg2rad(z, out=z)
    np.cos(z, out=z)
    z[night] = 1.0
    np.divide(np.pi, z, out=z)
    return z


def radiance_to_reflectance(radiance: np.ndarray, irradiance: float, solar_zenith_deg: np.ndarray) -> np.ndarray:
    """Top-of-atmosphere reflectance ``pi * L / (E0 * mu0)``."""
    return reflectance_from_mu0(radiance, irradiance, cos_zenith(solar_zenith_deg))


def reflectance_from_mu0(radiance: np.ndarray, irradiance: float, mu0: np.ndarray) -> np.ndarray:
    """``pi * L / (E0 * mu0)`` with ``mu0`` already computed (one cosine per product, not per channel)."""
    if not np.isfinite(irradiance) or irradiance <= 0:
        raise ValueError(f"solar irradiance must be a positive number, got {irradiance}")
    return np.asarray(radiance, dtype=np.float64) * (np.pi / irradiance) / mu0


def reflectance_to_radiance(reflectance: np.ndarray, irradiance: float, solar_zenith_deg: np.ndarray) -> np.ndarray:
    """Inverse of :func:`radiance_to_reflectance` (used by the synthetic generator)."""
    return np.asarray(reflectance, dtype=np.float64) * irradiance * cos_zenith(solar_zenith_deg) / np.pi


def block_mean(a: np.ndarray, factor: int = 2) -> np.ndarray:
    """Average ``factor x factor`` blocks: the 0.5 km 'a' grid onto the 1 km 'i' grid."""
    h, w = a.shape
    if h % factor or w % factor:
        raise ValueError(f"grid {h}x{w} is not divisible by {factor}")
    a = np.asarray(a)
    out = np.empty((h // factor, w // factor), np.float64)
    block_mean_into(a, out, factor)
    return out.astype(a.dtype if np.issubdtype(a.dtype, np.floating) else np.float64, copy=False)  # as .mean()


def block_mean_into(a: np.ndarray, out: np.ndarray, factor: int = 2) -> np.ndarray:
    """:func:`block_mean` of ``a`` written into ``out`` (float64, ``factor`` times smaller each way)."""
    h, w = a.shape
    if h % factor or w % factor or out.shape != (h // factor, w // factor):
        raise ValueError(f"grid {h}x{w} is not divisible by {factor} into {out.shape}")
    # a sum of factor**2 strided views, in a fixed order: several times faster than .mean(axis=(1, 3))
    np.copyto(out, a[0::factor, 0::factor])
    for dy in range(factor):
        for dx in range(factor):
            if dy or dx:
                out += a[dy::factor, dx::factor]
    out *= 1.0 / (factor * factor)
    return out
