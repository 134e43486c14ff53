"""Synthetic Sentinel-3 SLSTR products in both CloudMask layouts.

Each product is drawn from a seeded physical toy model on the 1 km grid:
surfaces (ocean, vegetation, desert, snow) under a spatially coherent cloud
field whose cover ramps from thin edges to thick cores. Clouds are bright in the
visible, bright at 1.6 um (unlike snow), cold in the thermal channels and seen
at 1.375 um only when high. Bright deserts and cold snow fool any single
channel threshold; a model that combines channels and context does not.

The same truth is written as layout ``hdf`` (preprocessed per-product HDF5) or
layout ``sen3`` (raw ``*.SEN3`` folders of CF-packed netCDF4 on the 0.5 km and
1 km grids with tie-point geometry), exactly as described in ``formats.md``.
"""

from __future__ import annotations

import hashlib
import posixpath
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from scibench_data.formats.cloudmask import (
    BT_CHANNELS,
    FULL_GRID,
    LAYOUTS,
    REFLECTANCE_CHANNELS,
    product_name,
)
from scibench_data.formats.slstr import GridGeometry, reflectance_to_radiance
from scibench_data.formats.synthetic_marker import write_marker
from scibench_data.synthetic import smooth_field

#: Nominal SLSTR solar irradiance (W m-2 um-1) of S1-S6, detector 0.
SOLAR_IRRADIANCE = (1837.39, 1525.94, 956.17, 365.90, 248.33, 78.33)
_SURFACES = {  # reflectance S1..S6, brightness temperature mean (K), spread (K)
    "ocean": ((0.06, 0.04, 0.02, 0.005, 0.01, 0.005), 284.0, 5.0),
    "vegetation": ((0.06, 0.05, 0.35, 0.01, 0.20, 0.10), 294.0, 4.0),
    "desert": ((0.30, 0.38, 0.45, 0.02, 0.55, 0.50), 312.0, 3.0),
    "snow": ((0.85, 0.82, 0.75, 0.02, 0.08, 0.05), 258.0, 4.0),
}
_CLOUD_REFLECTANCE = np.array([0.72, 0.70, 0.68, 0.0, 0.50, 0.32])  # S4 added by cloud height
CONFIDENCE_MEANINGS = (
    "coastline ocean tidal land inland_water unfilled spare spare cosmetic duplicate day twilight "
    "sun_glint snow summary_cloud summary_pointing"
)
BAYES_MEANINGS = "single_low single_moderate dual_low dual_moderate spare spare spare spare"
#: Cloud cover above which a pixel is flagged (the label); ``summary_cloud`` uses a stricter cover.
LABEL_COVER = 0.35
#: Global attributes of real tie-point files: one tie point per image row, one per 16 columns.
TIE_POINT_SUBSAMPLING = {"al_subsampling_factor": 1, "ac_subsampling_factor": 16}
#: Detectors of the VIS/SWIR channels in ``viscal.nc`` and the quality files.
N_VIS_DETECTORS = 4
SUMMARY_COVER = 0.55


@dataclass(frozen=True)
class SyntheticCloudMask:
    """How to draw a set of products. Full size by default; pass a small ``grid`` for tests."""

    n_products: int = 4
    grid: tuple[int, int] = FULL_GRID
    seed: int = 0
    first_start: datetime = datetime(2019, 10, 1, 10, 11, 10)
    mission: str = "S3A"

    def __post_init__(self) -> None:
        if self.n_products < 1:
            raise ValueError(f"n_products must be >= 1, got {self.n_products}")
        if len(self.grid) != 2 or min(self.grid) < 16:
            raise ValueError(f"grid must be (H, W) with H, W >= 16, got {self.grid}")


@dataclass(frozen=True)
class Truth:
    """The 1 km ground truth of one synthetic product."""

    reflectance: np.ndarray  # (6, H, W)
    brightness_temperature: np.ndarray  # (3, H, W) K
    cover: np.ndarray  # (H, W) cloud cover 0..1
    snow: np.ndarray
    ocean: np.ndarray
    zenith: tuple[float, float, float]  # z0 (deg), d/dx, d/dy (deg per metre) of the solar zenith plane
    extras: dict = field(default_factory=dict)

    @property
    def cloud(self) -> np.ndarray:
        return self.cover > LABEL_COVER


def draw_truth(rng: np.random.Generator, grid: tuple[int, int]) -> Truth:
    h, w = grid
    scale = max(h, w)
    land = smooth_field(rng, grid, scale / 10) > 0.1
    kind = smooth_field(rng, grid, scale / 14)
    snow = land & (kind > 0.75)
    desert = land & (kind < -0.55)
    vegetation = land & ~snow & ~desert
    ocean = ~land
    refl = np.zeros((6, h, w))
    bt = np.zeros((h, w))
    temp_var = smooth_field(rng, grid, scale / 8)
    for name, mask in (("ocean", ocean), ("vegetation", vegetation), ("desert", desert), ("snow", snow)):
        r, t, spread = _SURFACES[name]
        refl[:, mask] = np.asarray(r)[:, None]
        bt[mask] = t + spread * temp_var[mask]
    refl *= 1.0 + 0.15 * smooth_field(rng, grid, scale / 30)[None]

    density = smooth_field(rng, grid, scale / 25) + 0.35 * smooth_field(rng, grid, scale / 80)
    threshold = rng.uniform(0.2, 0.6)
    cover = np.clip((density - threshold) / 0.7, 0.0, 1.0)
    height = np.clip(0.5 + 0.6 * smooth_field(rng, grid, scale / 15), 0.0, 1.0)  # 0 low .. 1 high
    cloud_top = 272.0 - 50.0 * height + 2.0 * smooth_field(rng, grid, scale / 50)
    cloud_refl = _CLOUD_REFLECTANCE[:, None, None] * (0.75 + 0.25 * np.sqrt(cover))[None]
    cloud_refl = np.broadcast_to(cloud_refl, refl.shape).copy()
    cloud_refl[3] = 0.02 + 0.35 * height**2
    c = cover[None]
    refl = (1 - c) * refl + c * cloud_refl + rng.normal(0, 0.01, refl.shape)
    t11 = (1 - cover) * bt + cover * cloud_top + rng.normal(0, 0.3, grid)
    t37 = t11 + 25.0 * refl[4] * cover + rng.normal(0, 0.5, grid)  # reflected sunlight at 3.7 um
    t12 = t11 - 0.8 - 2.5 * height * cover + rng.normal(0, 0.3, grid)
    z0 = rng.uniform(30.0, 55.0)
    return Truth(
        reflectance=np.clip(refl, 0.0, 1.2), brightness_temperature=np.stack([t37, t11, t12]),
        cover=cover, snow=snow, ocean=ocean,
        zenith=(z0, rng.uniform(-6e-6, 6e-6), rng.uniform(2e-6, 8e-6)),
    )


def zenith_at(truth: Truth, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The solar zenith (deg) of the synthetic product at image-plane ``x``, ``y`` (m)."""
    z0, dx, dy = truth.zenith
    return z0 + dx * x + dy * y


def tie_point_shape(grid: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of the tie-point 'tn' grid of a product of ``grid``."""
    h, w = grid
    return h + 3, int(np.ceil(w / 16)) + 3


def grids(grid: tuple[int, int]) -> dict[str, GridGeometry]:
    """The 1 km 'in', 0.5 km 'an' and tie-point 'tn' grid geometry of a product of ``grid``."""
    w = grid[1]
    n_cols_t = tie_point_shape(grid)[1]
    return {
        "in": GridGeometry(1000.0, 1000.0, track_offset=w / 2, start_offset=0.0),
        "an": GridGeometry(500.0, 500.0, track_offset=float(w), start_offset=0.0),
        "tn": GridGeometry(16000.0, 1000.0, track_offset=(n_cols_t - 1) / 2, start_offset=-1.0),
    }


def generate(dest: str | Path, layout: str, config: SyntheticCloudMask = SyntheticCloudMask()) -> list[Path]:
    """Write ``config.n_products`` products of ``layout`` into ``dest``; returns their paths."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown CloudMask layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    write_marker(dest, __name__)
    paths = []
    for i in range(config.n_products):
        rng = np.random.default_rng([config.seed, i])
        start = config.first_start + timedelta(days=i, minutes=int(rng.integers(0, 600)))
        ext = "hdf" if layout == "hdf" else "SEN3"
        name = product_name(start, mission=config.mission, orbit=100 + i, extension=ext)
        truth = draw_truth(rng, config.grid)
        writer = write_hdf_product if layout == "hdf" else write_sen3_product
        paths.append(writer(dest / name, truth, start))
    return paths


# --------------------------------------------------------------------------- layout A


def write_hdf_product(path: Path, truth: Truth, start: datetime) -> Path:
    """Layout A: one preprocessed HDF5 file, channel-last, 1 km grid."""
    g = grids(truth.cover.shape)["in"]
    h, w = truth.cover.shape
    zen = zenith_at(truth, g.x_of_col(np.arange(w))[None, :], g.y_of_row(np.arange(h))[:, None])
    rads = np.stack([reflectance_to_radiance(truth.reflectance[i], SOLAR_IRRADIANCE[i], zen) for i in range(6)])
    bayes = np.where(truth.cloud, 3, 0).astype(np.uint8)
    summary = (truth.cover > SUMMARY_COVER).astype(np.uint8)
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("refs", data=np.moveaxis(truth.reflectance, 0, 2).astype(np.float32))
        f.create_dataset("rads", data=np.moveaxis(rads, 0, 2).astype(np.float32))
        f.create_dataset("bts", data=np.moveaxis(truth.brightness_temperature, 0, 2).astype(np.float32))
        f.create_dataset("bayes", data=bayes[..., None])
        f.create_dataset("summary", data=summary[..., None])
    tmp.rename(path)
    return path


# --------------------------------------------------------------------------- layout B


def _times(start: datetime) -> dict[str, str]:
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    return {"start_time": start.strftime(fmt), "stop_time": (start + timedelta(seconds=180)).strftime(fmt)}


def _packed(values: np.ndarray, dtype: str, scale: float, offset: float, fill: int) -> dict:
    return {"dtype": dtype, "scale_factor": scale, "add_offset": offset, "_FillValue": fill,
            "zlib": True, "complevel": 1}


def _write_nc(path: Path, variables: dict, attrs: dict, encoding: dict | None = None) -> None:
    ds = xr.Dataset(variables, attrs=attrs)
    ds.to_netcdf(path, engine="h5netcdf", encoding=encoding or {})


def write_sen3_product(folder: Path, truth: Truth, start: datetime) -> Path:
    """Layout B: a ``.SEN3`` folder of CF-packed netCDF4 files, written to a temporary name then renamed."""
    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    h, w = truth.cover.shape
    geo = grids((h, w))
    g_in, g_an, g_tn = geo["in"], geo["an"], geo["tn"]
    base = {"product_name": folder.name, "institution": "scibench-data synthetic", **_times(start)}
    rows_cols = ("rows", "columns")
    rng = np.random.default_rng(zlib.crc32(folder.name.encode()))

    # 0.5 km radiances from the 1 km truth, with their own sub-pixel noise.
    x_an, y_an = g_an.x_of_col(np.arange(2 * w)), g_an.y_of_row(np.arange(2 * h))
    zen_an = zenith_at(truth, x_an[None, :], y_an[:, None])
    for i, ch in enumerate(REFLECTANCE_CHANNELS):
        fine = np.repeat(np.repeat(truth.reflectance[i], 2, axis=0), 2, axis=1)
        fine = np.clip(fine + rng.normal(0.0, 0.004, fine.shape), 0.0, 1.2)
        rad = reflectance_to_radiance(fine, SOLAR_IRRADIANCE[i], zen_an)
        scale = float(np.float32(SOLAR_IRRADIANCE[i] * 1.25 / np.pi / 60000))
        name = f"{ch}_radiance_an"
        attrs = {"units": "mW.m-2.sr-1.nm-1", "long_name": f"TOA radiance for channel {ch} (an view)",
                 "standard_name": "toa_upwelling_spectral_radiance"}
        _write_nc(
            tmp / f"{name}.nc",
            {name: (rows_cols, rad.astype(np.float32), attrs),
             f"{ch}_exception_an": (rows_cols, np.zeros(rad.shape, np.uint8), {"long_name": "exception mask"}),
             f"{ch}_radiance_orphan_an": (("orphan_rows", "orphan_pixels"), np.zeros((2 * h, 4), np.float32))},
            {**base, **g_an.attrs()},
            {name: _packed(rad, "uint16", scale, 0.0, 65535)},
        )
        irr = detector_irradiance(i)
        _write_nc(tmp / f"{ch}_quality_an.nc",
                  {f"{ch}_solar_irradiance_an": ("detectors", irr.astype(np.float32),
                                                 {"units": "mW.m-2.nm-1", "long_name": "solar irradiance"})},
                  base)

    for i, ch in enumerate(BT_CHANNELS):
        name = f"{ch}_BT_in"
        _write_nc(
            tmp / f"{name}.nc",
            {name: (rows_cols, truth.brightness_temperature[i].astype(np.float32),
                    {"units": "K", "long_name": f"Gridded pixel brightness temperature for channel {ch}",
                     "standard_name": "toa_brightness_temperature"}),
             f"{ch}_exception_in": (rows_cols, np.zeros((h, w), np.uint8))},
            {**base, **g_in.attrs()},
            {name: _packed(truth.brightness_temperature[i], "int16", 0.01, 283.73, -32768)},
        )

    n_rt, n_ct = tie_point_shape((h, w))
    x_t, y_t = g_tn.x_of_col(np.arange(n_ct)), g_tn.y_of_row(np.arange(n_rt))
    zen_t = zenith_at(truth, x_t[None, :], y_t[:, None])
    deg = {"units": "degrees"}
    _write_nc(tmp / "geometry_tn.nc",
              {"solar_zenith_tn": (rows_cols, zen_t, {**deg, "standard_name": "solar_zenith_angle"}),
               "solar_azimuth_tn": (rows_cols, np.full_like(zen_t, 135.0), deg),
               "sat_zenith_tn": (rows_cols, np.abs(x_t)[None, :].repeat(n_rt, 0) / 1.4e4, deg),
               "sat_azimuth_tn": (rows_cols, np.full_like(zen_t, 100.0), deg)},
              {**base, **g_tn.attrs(), **TIE_POINT_SUBSAMPLING})

    masks = np.array([1 << b for b in range(16)], dtype=np.uint16)
    confidence = np.full((h, w), 1 << 10, dtype=np.uint16)  # day
    confidence |= np.where(truth.ocean, 1 << 1, 1 << 3).astype(np.uint16)
    confidence |= np.where(truth.snow, 1 << 13, 0).astype(np.uint16)
    confidence |= np.where(truth.cover > SUMMARY_COVER, 1 << 14, 0).astype(np.uint16)
    bayes = np.where(truth.cloud, 0b0010, 0).astype(np.uint8)
    _write_nc(tmp / "flags_in.nc",
              {"bayes_in": (rows_cols, bayes, {"flag_masks": np.array([1 << b for b in range(8)], np.uint8),
                                               "flag_meanings": BAYES_MEANINGS, "long_name": "Bayesian cloud mask"}),
               "confidence_in": (rows_cols, confidence, {"flag_masks": masks, "flag_meanings": CONFIDENCE_MEANINGS,
                                                         "long_name": "Confidence flags"})},
              {**base, **g_in.attrs()})

    _write_ancillary(tmp, truth, base, geo)
    _write_manifest(tmp, folder.name)
    tmp.rename(folder)
    return folder


def _write_ancillary(tmp: Path, truth: Truth, base: dict, geo: dict[str, GridGeometry]) -> None:
    """The files the converter does not need but real products carry."""
    h, w = truth.cover.shape
    rows_cols = ("rows", "columns")
    for grid_name, (gh, gw) in (("in", (h, w)), ("an", (2 * h, 2 * w))):
        g = geo[grid_name]
        x = np.broadcast_to(g.x_of_col(np.arange(gw))[None, :], (gh, gw))
        y = np.broadcast_to(g.y_of_row(np.arange(gh))[:, None], (gh, gw))
        lat, lon = 45.0 + y / 111e3, 10.0 + x / 78e3
        _write_nc(tmp / f"geodetic_{grid_name}.nc",
                  {f"latitude_{grid_name}": (rows_cols, lat, {"units": "degrees_north", "standard_name": "latitude"}),
                   f"longitude_{grid_name}": (rows_cols, lon, {"units": "degrees_east", "standard_name": "longitude"})},
                  {**base, **g.attrs()},
                  {f"latitude_{grid_name}": _packed(lat, "int32", 1e-6, 0.0, -2147483648),
                   f"longitude_{grid_name}": _packed(lon, "int32", 1e-6, 0.0, -2147483648)})
        _write_nc(tmp / f"cartesian_{grid_name}.nc",
                  {f"x_{grid_name}": (rows_cols, _real_x(x), {"units": "m", "long_name": "across-track coordinate"}),
                   f"y_{grid_name}": (rows_cols, y.astype(np.int32), {"units": "m",
                                                                     "long_name": "along-track coordinate"})},
                  {**base, **g.attrs()})
        _write_nc(tmp / f"indices_{grid_name}.nc",
                  {f"detector_{grid_name}": (rows_cols, (np.arange(gh)[:, None] % 2 * np.ones(gw)).astype(np.uint8))},
                  {**base, **g.attrs()})
    g_tn = geo["tn"]
    n_rt, n_ct = tie_point_shape((h, w))
    x_t = np.broadcast_to(g_tn.x_of_col(np.arange(n_ct))[None, :], (n_rt, n_ct))
    y_t = np.broadcast_to(g_tn.y_of_row(np.arange(n_rt))[:, None], (n_rt, n_ct))
    _write_nc(tmp / "cartesian_tx.nc",
              {"x_tx": (rows_cols, _real_x(x_t), {"units": "m", "long_name": "across-track coordinate"}),
               "y_tx": (rows_cols, y_t.astype(np.int32), {"units": "m", "long_name": "along-track coordinate"})},
              {**base, **g_tn.attrs(), **TIE_POINT_SUBSAMPLING})
    _write_nc(tmp / "met_tx.nc",
              {"total_column_water_vapour_tx": (rows_cols, np.full((n_rt, n_ct), 20.0), {"units": "kg m**-2"}),
               "skin_temperature_tx": (rows_cols, np.full((n_rt, n_ct), 285.0), {"units": "K"})},
              {**base, **g_tn.attrs(), **TIE_POINT_SUBSAMPLING})
    # As in real products: per detector and view (nadir, oblique); readers take [:, 0] for nadir.
    _write_nc(tmp / "viscal.nc",
              {f"{ch}_solar_irradiances": (("detectors", "views"),
                                           np.repeat(detector_irradiance(i)[:, None], 2, axis=1).astype(np.float32),
                                           {"units": "mW.m-2.nm-1", "long_name": f"{ch} solar irradiance per "
                                                                                 "detector and view"})
               for i, ch in enumerate(REFLECTANCE_CHANNELS)}, base)
    _write_nc(tmp / "time_an.nc",
              {"time_stamp_a": ("rows", (np.arange(2 * h) * 75_000).astype(np.int64),
                                {"units": "microseconds since product start"})}, base)


def detector_irradiance(channel: int) -> np.ndarray:
    """Solar irradiance per detector of reflectance channel ``channel`` (0 = S1), as the quality files
    and ``viscal.nc`` hold it; the reference (and our reader) uses detector 0's."""
    return SOLAR_IRRADIANCE[channel] * np.array([1.0, 1.0007, 0.9994, 1.0003])[:N_VIS_DETECTORS]


def _real_x(x: np.ndarray) -> np.ndarray:
    """Cartesian x as real products store it: int32 metres, decreasing along columns (the image
    x of :class:`GridGeometry` with its sign turned; grid-to-grid mapping is the same either way)."""
    return np.rint(-np.asarray(x)).astype(np.int32)


def _write_manifest(tmp: Path, name: str) -> None:
    """A minimal ``xfdumanifest.xml`` listing each data object with its MD5, as ESA's do."""
    objects = []
    for p in sorted(tmp.glob("*.nc")):
        md5 = hashlib.md5(p.read_bytes()).hexdigest()
        objects.append(
            f'    <dataObject ID="{p.stem}Data"><byteStream mimeType="application/x-netcdf" '
            f'size="{p.stat().st_size}"><fileLocation locatorType="URL" href="./{p.name}"/>'
            f'<checksum checksumName="MD5">{md5}</checksum></byteStream></dataObject>'
        )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1">\n'
        f"  <metadataSection><productName>{name}</productName></metadataSection>\n"
        "  <dataObjectSection>\n" + "\n".join(objects) + "\n  </dataObjectSection>\n</xfdu:XFDU>\n"
    )
    (tmp / "xfdumanifest.xml").write_text(xml)


def product_folder_files(folder: str) -> list[str]:
    """Names of the files a synthetic SEN3 folder holds (for tests and docs)."""
    return sorted(posixpath.basename(p) for p in Path(folder).iterdir())
