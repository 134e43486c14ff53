"""CloudMask (Sentinel-3 SLSTR) source formats: product names and the two layouts.

Layout ``hdf``: one preprocessed HDF5 file per product (``S3A_*.hdf``) with
channel-last datasets ``refs`` (H, W, 6), ``rads`` (H, W, 6), ``bts`` (H, W, 3),
``bayes`` (H, W, 1) and ``summary`` (H, W, 1) on the 1 km grid.

Layout ``sen3``: raw SLSTR Level-1 ``*.SEN3`` folders of CF-packed netCDF4
files. Radiances S1-S6 on the 0.5 km 'an' grid are turned into reflectance with
the tie-point solar zenith and averaged onto the 1 km 'in' grid.

Both readers return the same :class:`Scene`, so one converter serves both.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any, Literal

import fsspec
import h5py
import numpy as np
import xarray as xr
from fsspec.implementations.local import LocalFileSystem

from scibench_data.formats import SourceFormatError, netcdf4
from scibench_data.formats.hdf5_memory import INFLATE_THREADS, values_in_memory
from scibench_data.formats.hdf5_safety import refuse_indirection
from scibench_data.formats.slstr import (
    GridGeometry,
    block_mean_into,
    interpolate_tie_points,
    pi_over_mu0,
)
from scibench_data.storage.store.hashing import FileBytes, HashingReader

Layout = Literal["hdf", "sen3"]
LAYOUTS: tuple[str, ...] = ("hdf", "sen3")

CHANNELS: tuple[str, ...] = tuple(f"S{n}" for n in range(1, 10))
REFLECTANCE_CHANNELS = CHANNELS[:6]
BT_CHANNELS = CHANNELS[6:]
#: The 1 km nadir 'in' grid of a full product.
FULL_GRID: tuple[int, int] = (1200, 1500)
SUMMARY_CLOUD = "summary_cloud"
#: DS1's subfolders; a flat source folder has no split.
SPLIT_FOLDERS: tuple[str, ...] = ("training", "inference")
#: Most detectors a ``S{n}_solar_irradiance_an`` variable may declare (real products: a few per view).
MAX_DETECTORS = 4096
#: Channel-last datasets of a layout-A product: name -> channels (formats.md). Values are
#: float32 except the flags (any integer or float type).
HDF_DATASETS: dict[str, int] = {"refs": 6, "bts": 3, "bayes": 1, "summary": 1}
HDF_FLOAT32 = ("refs", "bts")
#: Threads that turn a ``sen3`` product's radiances into reflectance, band by band (NumPy releases
#: the GIL: both cores of a worker; :func:`sen3_image`).
BAND_THREADS = 2
#: Threads that read and decode a ``sen3`` product's nine images, a file each (zlib releases the GIL).
DECODE_THREADS = 2
#: Rows of the 0.5 km grid computed at a time (even: whole 2x2 blocks); at 3000 columns a band's
#: float64 buffers are 0.4 MB and stay in cache (8-24 rows measured fastest, 128 rows 2x slower).
BAND_ROWS = 16


@dataclass(frozen=True)
class PhysicalBounds:
    """Decoded values a real product can hold; a product with a finite value outside is reported
    (its file named) instead of stored. Brightness temperature in kelvin (S7-S9, both layouts);
    reflectance (S1-S6) of layout ``sen3``, where we compute it, and of layout ``hdf`` only when
    ``hdf_refs_are_reflectance`` (DS1's ``refs`` may hold radiances). Pass a wider instance to
    ``CloudMaskConversion(bounds=...)`` to change them; ``None`` turns a check off. A channel fails
    when more than ``tolerance`` of its finite pixels lie outside (default 0.1%: a few twilight
    pixels, where mu0 is tiny, may exceed the reflectance bound; a wrong packing moves them all)."""

    brightness_temperature: tuple[float, float] | None = (150.0, 350.0)
    reflectance: tuple[float, float] | None = (-0.5, 3.0)
    hdf_refs_are_reflectance: bool = False
    tolerance: float = 0.001

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"tolerance must be a fraction in [0, 1), got {self.tolerance!r}")
        for name in ("brightness_temperature", "reflectance"):
            b = getattr(self, name)
            if b is not None and (len(b) != 2 or not all(np.isfinite(b)) or b[0] >= b[1]):
                raise ValueError(f"{name} bounds must be (low, high) finite numbers with low < high, got {b!r}")

    def check(self, path: str, layout: str, image: np.ndarray) -> None:
        """Raise :class:`SourceFormatError` naming the product, channel and source file if a
        finite value of ``image`` (9, H, W) lies outside the bounds."""
        checks = [(i, "brightness temperature", "K", self.brightness_temperature, f"{c}_BT_in")
                  for i, c in enumerate(CHANNELS) if c in BT_CHANNELS]
        if layout == "sen3" or self.hdf_refs_are_reflectance:
            checks += [(i, "reflectance", "", self.reflectance, f"{c}_radiance_an")
                       for i, c in enumerate(CHANNELS) if c in REFLECTANCE_CHANNELS]
        for i, what, unit, bounds, source in checks:
            if bounds is None:
                continue
            lo, hi = float(image[i].min()), float(image[i].max())  # no copy when every pixel is finite
            values = image[i]
            if not (np.isfinite(lo) and np.isfinite(hi)):
                values = image[i][np.isfinite(image[i])]
                if values.size == 0:
                    continue
                lo, hi = float(values.min()), float(values.max())
            if (lo < bounds[0] or hi > bounds[1]) and \
                    np.count_nonzero((values < bounds[0]) | (values > bounds[1])) > self.tolerance * values.size:
                where = f"{source}.nc" if layout == "sen3" else ("bts" if what.startswith("b") else "refs")
                raise SourceFormatError(
                    path, f"{CHANNELS[i]} {what} from {lo:.6g} to {hi:.6g}{' ' + unit if unit else ''} ({where}) is "
                          f"outside the physical bounds {bounds[0]:g}..{bounds[1]:g} (PhysicalBounds."
                          f"{'brightness_temperature' if what.startswith('b') else 'reflectance'}); "
                          "check its scale_factor/add_offset")

_NAME = re.compile(
    r"^(?P<mission>S3[AB])_SL_1_RBT____"
    r"(?P<start>\d{8}T\d{6})_(?P<stop>\d{8}T\d{6})_(?P<creation>\d{8}T\d{6})_"
    r"(?P<duration>\d{4})_(?P<cycle>\d{3})_(?P<orbit>\d{3})_(?P<frame>[0-9_]{4})_"
    r"(?P<centre>[A-Z0-9]{3})_(?P<mode>[A-Z])_(?P<timeliness>[A-Z]{2})_(?P<collection>\d{3})"
    r"\.(?P<ext>SEN3|hdf)$"
)
_TIME = "%Y%m%dT%H%M%S"


@dataclass(frozen=True)
class ProductName:
    """The fields of an SLSTR Level-1 RBT product name."""

    name: str
    mission: str
    start: datetime
    stop: datetime
    creation: datetime
    duration_s: int
    cycle: int
    orbit: int
    frame: str
    centre: str
    mode: str
    timeliness: str
    collection: str
    extension: str

    @classmethod
    def parse(cls, name: str) -> ProductName:
        m = _NAME.match(name)
        if m is None:
            raise ValueError(
                f"{name!r} is not an SLSTR L1 RBT product name "
                "(expected S3A_SL_1_RBT____YYYYmmddTHHMMSS_..._NT_003.SEN3 or .hdf)"
            )
        g = m.groupdict()
        return cls(
            name=name, mission=g["mission"], start=datetime.strptime(g["start"], _TIME),
            stop=datetime.strptime(g["stop"], _TIME), creation=datetime.strptime(g["creation"], _TIME),
            duration_s=int(g["duration"]), cycle=int(g["cycle"]), orbit=int(g["orbit"]), frame=g["frame"],
            centre=g["centre"], mode=g["mode"], timeliness=g["timeliness"], collection=g["collection"],
            extension=g["ext"],
        )

    @property
    def stem(self) -> str:
        """The name without ``.SEN3``/``.hdf``: the same for both layouts of one product."""
        return self.name.rsplit(".", 1)[0]


def product_name(
    start: datetime, *, mission: str = "S3A", duration_s: int = 180, cycle: int = 50, orbit: int = 108,
    frame: int = 2160, extension: str = "SEN3",
) -> str:
    """Format a product name as ESA does (used by the synthetic generator)."""
    stop = start + timedelta(seconds=duration_s)
    creation = start + timedelta(days=1, hours=4)
    return (
        f"{mission}_SL_1_RBT____{start:{_TIME}}_{stop:{_TIME}}_{creation:{_TIME}}_"
        f"{duration_s:04d}_{cycle:03d}_{orbit:03d}_{frame:04d}_LN2_O_NT_003.{extension}"
    )


@dataclass(frozen=True)
class Scene:
    """One product on the 1 km grid, ready to store."""

    image: np.ndarray  # (9, H, W) float32: reflectance S1-S6 (1), brightness temperature S7-S9 (K)
    cloud_mask: np.ndarray  # (H, W) uint8: bayes > 0
    summary_cloud: np.ndarray  # (H, W) uint8: summary_cloud bit of confidence_in

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[0] != len(CHANNELS):
            raise ValueError(f"image must be (9, H, W), got {self.image.shape}")
        for name in ("cloud_mask", "summary_cloud"):
            if getattr(self, name).shape != self.image.shape[1:]:
                raise ValueError(f"{name} shape {getattr(self, name).shape} != image grid {self.image.shape[1:]}")


@dataclass(frozen=True)
class SourceProduct:
    """A product to convert: where it is and what its name says."""

    path: str  # fsspec path of the .hdf file or the .SEN3 folder
    name: ProductName
    layout: str
    split: str = ""  # "training" or "inference" when the source has DS1's subfolders

    def files(self, fs: fsspec.AbstractFileSystem) -> list[str]:
        """The files that make up this product (for provenance digests)."""
        if self.layout == "hdf":
            return [self.path]
        return sorted(p for p in fs.find(self.path) if not fs.isdir(p))


@dataclass(frozen=True)
class Rejected:
    """A source entry that is not a product; kept for the conversion report."""

    path: str
    reason: str


def discover_products(
    fs: fsspec.AbstractFileSystem, root: str, layout: str
) -> tuple[list[SourceProduct], list[Rejected]]:
    """List the products under ``root``, ordered by split, acquisition time and name.

    ``root`` is either a flat folder of products or, as DS1 is published, a
    folder with ``training/`` and ``inference/`` subfolders (the split of each
    product is kept). Entries named like products of this layout (the extension in any case,
    anywhere in the name: ``X.HDF``, ``X.hdf~``, ``X.hdf.bak``) whose names do not parse, entries
    of the wrong kind (a file for a folder) and symbolic links leaving ``root`` are returned as
    :class:`Rejected` with the reason (never silently dropped).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown CloudMask layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not fs.exists(root):
        raise FileNotFoundError(f"source folder {root} does not exist")
    suffix = ".hdf" if layout == "hdf" else ".SEN3"
    entries = fs.ls(root, detail=True)
    subfolders = {posixpath.basename(e["name"].rstrip("/")): e["name"].rstrip("/") for e in entries
                  if e["type"] == "directory" and posixpath.basename(e["name"].rstrip("/")) in SPLIT_FOLDERS}
    listings = [(split, fs.ls(path, detail=True)) for split, path in sorted(subfolders.items())] or [("", entries)]
    products, rejected = [], []
    for split, listing in listings:
        for entry in listing:
            path = entry["name"].rstrip("/")
            base = posixpath.basename(path)
            if suffix.lower() not in base.lower():  # not named like a product of this layout
                continue
            escape = escaping_link(fs, root, path)
            if escape:
                rejected.append(Rejected(path=path, reason=escape))
                continue
            is_dir = fs.isdir(path) if entry.get("islink") else entry["type"] == "directory"
            if is_dir != (layout == "sen3"):
                want = "a .SEN3 folder" if layout == "sen3" else "an .hdf file"
                rejected.append(Rejected(path=path, reason=f"named like a {layout} product but not {want}"))
                continue
            try:
                products.append(SourceProduct(path=path, name=ProductName.parse(base), layout=layout, split=split))
            except ValueError as err:
                rejected.append(Rejected(path=path, reason=str(err)))
    products.sort(key=lambda p: (SPLIT_FOLDERS.index(p.split) if p.split else 0, p.name.start, p.name.name))
    return products, rejected


def escaping_link(fs: fsspec.AbstractFileSystem, root: str, path: str) -> str:
    """Why ``path`` (a product file or folder, on local disk) reaches outside ``root`` through a
    symbolic link, itself or any file inside it; empty when it does not (always, off local disk)."""
    if not isinstance(fs, LocalFileSystem):
        return ""
    top = os.path.realpath(root)

    def outside(p: str) -> bool:
        real = os.path.realpath(p)
        return real != top and not real.startswith(top.rstrip(os.sep) + os.sep)

    if outside(path):
        return f"symbolic link to {os.path.realpath(path)}, outside the source folder {top}; refusing it"
    if os.path.isdir(path):
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                p = os.path.join(folder, name)
                if os.path.islink(p) and outside(p):
                    return (f"{os.path.relpath(p, path)} is a symbolic link to {os.path.realpath(p)}, outside the "
                            f"source folder {top}; refusing the product")
    return ""


# --------------------------------------------------------------------------- layout A


def check_grid(path: str, grid: tuple[int, ...], expected: tuple[int, int] | None = None) -> tuple[int, int]:
    """A declared 1 km grid, checked before anything is read: 2-D, positive, at most the format's
    :data:`FULL_GRID`, and ``expected`` when given (the conversion's grid)."""
    grid = tuple(int(n) for n in grid)
    if len(grid) != 2 or min(grid) < 1 or grid[0] > FULL_GRID[0] or grid[1] > FULL_GRID[1]:
        raise SourceFormatError(path, f"declares a grid {grid}, outside the format's 1 km grid (at most {FULL_GRID}); "
                                      "nothing read")
    if expected is not None and grid != tuple(expected):
        raise SourceFormatError(path, f"grid {grid} differs from the store's {tuple(expected)}; nothing read")
    return grid  # type: ignore[return-value]


def _check_hdf_dataset(h: h5py.File, path: str, name: str, channels: int) -> h5py.Dataset:
    if name not in h:
        raise SourceFormatError(path, f"missing dataset {name!r} (found {sorted(h.keys())})")
    d = h[name]
    if not isinstance(d, h5py.Dataset) or d.ndim != 3 or d.shape[2] != channels:
        raise SourceFormatError(path, f"dataset {name!r} has shape {getattr(d, 'shape', None)}, "
                                      f"expected (H, W, {channels})")
    if not np.issubdtype(d.dtype, np.number) or d.dtype.kind not in "iuf" or d.dtype.itemsize > 8:
        raise SourceFormatError(path, f"dataset {name!r} has non-numeric dtype {d.dtype} (expected a real number type)")
    if name in HDF_FLOAT32 and d.dtype != np.float32:
        raise SourceFormatError(path, f"dataset {name!r} has dtype {d.dtype}, expected float32 (formats.md)")
    return d


def hdf_header(h: h5py.File, path: str, grid: tuple[int, int] | None = None) -> dict[str, h5py.Dataset]:
    """The datasets of an open layout-A file, every declared shape and dtype checked against the
    format (and ``grid``), links and storage checked (:func:`refuse_indirection`); no data read."""
    refuse_indirection(h, path)
    found = {name: _check_hdf_dataset(h, path, name, c) for name, c in HDF_DATASETS.items()}
    own = check_grid(path, found["refs"].shape[:2], grid)
    for d in found.values():
        if d.shape[:2] != own:
            raise SourceFormatError(path, f"dataset {d.name!r} grid {d.shape[:2]} != refs grid {own}")
    return found


@contextmanager
def _source_file(reader: HashingReader, path: str) -> Iterator[tuple[IO[bytes], FileBytes]]:
    """A file object over one source file read once by ``reader`` (its bytes in memory; from storage
    when the file is over the reader's cap), and what the reader read."""
    got = reader.read(path)
    if got.data is not None:
        yield io.BytesIO(got.data), got
        return
    with reader.fs.open(path, "rb") as f:
        yield f, got


def _reader(fs: fsspec.AbstractFileSystem, reader: HashingReader | None) -> HashingReader:
    return reader if reader is not None else HashingReader(fs, hash_files=False)


def _values(d: h5py.Dataset, got: FileBytes, inflate_threads: int = INFLATE_THREADS) -> np.ndarray:
    """A dataset's values, from the file's bytes in memory where its storage allows (no HDF5 read;
    deflated chunks inflated on ``inflate_threads`` threads)."""
    values = values_in_memory(d, got.data, inflate_threads)
    return values if values is not None else d[()]


def hdf_grid(fs: fsspec.AbstractFileSystem, path: str, reader: HashingReader | None = None) -> tuple[int, int]:
    """The declared grid of a layout-A product (header only, checked as :func:`hdf_header` does)."""
    try:
        with _source_file(_reader(fs, reader), path) as (f, _), h5py.File(f, "r") as h:
            return tuple(hdf_header(h, path)["refs"].shape[:2])  # type: ignore[return-value]
    except SourceFormatError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise SourceFormatError(path, f"cannot be read as an HDF5 product ({err})") from err


def read_hdf_product(fs: fsspec.AbstractFileSystem, path: str, grid: tuple[int, int] | None = None,
                     reader: HashingReader | None = None) -> Scene:
    """Read one layout-A HDF5 product (its header checked first; ``grid``: the one it must have).
    The file is read once through ``reader``; contiguous datasets are viewed in its bytes."""
    try:
        with _source_file(_reader(fs, reader), path) as (f, got), h5py.File(f, "r") as h:
            found = hdf_header(h, path, grid)
            refs, bts, bayes, summary = (_values(found[k], got) for k in ("refs", "bts", "bayes", "summary"))
            grid = refs.shape[:2]
            # channel-last on disk -> channel-first float32: one transposing copy per dataset
            image = np.empty((refs.shape[2] + bts.shape[2], *grid), np.float32)
            for r in range(0, grid[0], 64):  # in row bands: the transposing copy stays in cache
                image[:refs.shape[2], r:r + 64] = np.moveaxis(refs[r:r + 64], 2, 0)
                image[refs.shape[2]:, r:r + 64] = np.moveaxis(bts[r:r + 64], 2, 0)
            mask = (bayes[..., 0] > 0).astype(np.uint8)
            summary_cloud = (summary[..., 0] > 0).astype(np.uint8)
            del refs, bts, bayes, summary  # views of the file's bytes: none outlives the read
    except SourceFormatError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise SourceFormatError(path, f"cannot be read as an HDF5 product ({err})") from err
    return _finish(path, image, mask, summary_cloud)


# --------------------------------------------------------------------------- layout B


@contextmanager
def _nc_file(fs: fsspec.AbstractFileSystem, product: str, filename: str, mask_and_scale: bool = True,
             reader: HashingReader | None = None) -> Iterator[tuple[str, xr.Dataset]]:
    """(path, lazily opened xarray dataset) of a product file, read once through ``reader``; a
    missing or unreadable file, or a read failing inside the block, is a :class:`SourceFormatError`
    naming the file. For what :func:`_h5_file` leaves to xarray (packed small variables,
    ``_Unsigned`` packing)."""
    path = posixpath.join(product, filename)
    with _named_errors(path), _source_file(_reader(fs, reader), path) as (f, _):
        with h5py.File(f, "r") as h:  # the header first: nothing in it may point at other files
            refuse_indirection(h, path)
        f.seek(0)
        with xr.open_dataset(f, engine="h5netcdf", mask_and_scale=mask_and_scale, decode_times=False) as ds:
            yield path, ds


@contextmanager
def _named_errors(path: str) -> Iterator[None]:
    """A product file's failures inside the block (opening, parsing, a read in the caller's block)
    as :class:`SourceFormatError` naming the file: missing, or not readable as netCDF4."""
    try:
        yield
    except SourceFormatError:
        raise
    except FileNotFoundError as err:
        raise SourceFormatError(path, "missing file in product folder") from err
    except (OSError, ValueError, KeyError) as err:
        raise SourceFormatError(path, f"cannot be read as netCDF4 ({err})") from err


def _open_nc(fs: fsspec.AbstractFileSystem, product: str, filename: str, mask_and_scale: bool = True,
             reader: HashingReader | None = None) -> xr.Dataset:
    with _nc_file(fs, product, filename, mask_and_scale, reader) as (_, ds):
        return ds.load()


def cf_packing(attrs: Mapping[str, Any], path: str, name: str) -> tuple[float, float, list[float]]:
    """(scale_factor, add_offset, fill values) of a CF-packed variable, validated: each a single
    real number (not text, not a bool), finite, the scale non-zero; fills may be NaN."""
    def numbers(key: str, default: list) -> list[float]:
        raw = attrs.get(key, default)
        values = np.asarray(raw).ravel()
        if values.dtype.kind not in "iuf" or isinstance(raw, bool):
            raise SourceFormatError(path, f"variable {name!r}: attribute {key}={_short(raw)} is not a number")
        return [float(v) for v in values]

    def one(key: str, default: float) -> float:
        values = numbers(key, [default])
        if len(values) != 1:
            raise SourceFormatError(path, f"variable {name!r}: attribute {key} has {len(values)} values, expected 1")
        if not np.isfinite(values[0]):
            raise SourceFormatError(path, f"variable {name!r}: attribute {key}={values[0]} is not finite")
        return values[0]

    scale, offset = one("scale_factor", 1.0), one("add_offset", 0.0)
    if scale == 0.0:
        raise SourceFormatError(path, f"variable {name!r}: attribute scale_factor is 0 (every value would be "
                                      "add_offset)")
    fills = numbers("_FillValue", []) + numbers("missing_value", [])
    return scale, offset, fills


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def cf_unpack(raw: np.ndarray, attrs: Mapping[str, Any], path: str, name: str) -> np.ndarray:
    """CF-packed values -> float64 physical values, NaN at ``_FillValue`` / ``missing_value``.

    What xarray's ``mask_and_scale`` does (``raw * scale_factor + add_offset``), in place on
    one float64 copy instead of its chain of temporaries (tested equal on our files); the
    packing attributes are validated first (:func:`cf_packing`)."""
    return unpack(raw, *cf_packing(attrs, path, name))


def unpack(raw: np.ndarray, scale: float, offset: float, fills: Sequence[float]) -> np.ndarray:
    """``raw * scale + offset`` as float64, NaN where ``raw`` is one of ``fills`` (values already
    validated by :func:`cf_packing`): :meth:`Packed.rows_into` over every element, so rows unpacked
    apart equal the same rows of the whole array unpacked."""
    raw = np.asarray(raw)
    out = np.empty(raw.size, np.float64)
    Packed(raw.reshape(-1), scale, offset, tuple(fills)).rows_into(0, raw.size, out)
    return out.reshape(raw.shape)


@dataclass(frozen=True)
class Packed:
    """A CF-packed image variable as stored: its integers and its validated packing (physical
    value ``raw * scale + offset``, NaN at ``fills``)."""

    raw: np.ndarray
    scale: float = 1.0
    offset: float = 0.0
    fills: tuple[float, ...] = ()

    def rows_into(self, start: int, stop: int, out: np.ndarray) -> None:
        """Physical values of rows ``start:stop`` into ``out`` (float64): ``raw * scale`` computed in
        float64, ``+ offset``, then NaN at the fills; without temporaries (:func:`unpack` is this
        over the whole array)."""
        raw = self.raw[start:stop]
        if self.scale != 1.0:
            np.multiply(raw, self.scale, out=out, dtype=np.float64)  # raw.astype(float64) * scale, in one pass
        else:
            np.copyto(out, raw)
        if self.offset != 0.0:
            out += self.offset
        for fill in self.fills:
            np.copyto(out, np.nan, where=raw == fill)


@contextmanager
def _h5_file(fs: fsspec.AbstractFileSystem, product: str, filename: str,
             reader: HashingReader | None) -> Iterator[tuple[str, h5py.File, FileBytes]]:
    """(path, open h5py file, what the reader read) of a product file, read once through ``reader``
    and accepted by :func:`refuse_indirection`; errors named as :func:`_nc_file` names them."""
    path = posixpath.join(product, filename)
    with _named_errors(path), _source_file(_reader(fs, reader), path) as (f, got), h5py.File(f, "r") as h:
        refuse_indirection(h, path)  # the header first: nothing in it may point at other files
        yield path, h, got


def _h5_variable(h: h5py.File, path: str, name: str, shape: tuple[int, int] | None = None,
                 max_size: int | None = None) -> h5py.Dataset:
    """A netCDF variable of an open file, its declared dims/shape (or size) and dtype checked as
    :func:`_variable` checks them; no data read."""
    d = h.get(name)
    if not netcdf4.is_variable(d):
        raise SourceFormatError(path, f"missing variable {name!r} (found {sorted(netcdf4.variable_names(h))})")
    _check_declared(path, name, d.dtype, lambda: netcdf4.dimension_names(d), d.shape, d.size, shape, max_size)
    return d


def _read_packed(fs: fsspec.AbstractFileSystem, product: str, filename: str, name: str,
                 shape: tuple[int, int], reader: HashingReader | None = None,
                 inflate_threads: int = INFLATE_THREADS) -> tuple[Packed, dict]:
    """One packed image variable of a product file as stored, and the file's global attributes.
    Its declared dims, shape and dtype are checked before its data is read; the values are
    decoded from the file's bytes in memory where its storage allows (:mod:`hdf5_memory`)."""
    with _h5_file(fs, product, filename, reader) as (path, h, got):
        d = _h5_variable(h, path, name, shape)
        attrs, file_attrs = netcdf4.attributes(d), netcdf4.attributes(h)
        if "_Unsigned" not in attrs:
            packing = cf_packing(attrs, path, name)
            return Packed(_values(d, got, inflate_threads), packing[0], packing[1], tuple(packing[2])), file_attrs
        cf_packing(attrs, path, name)
        del d
    # netCDF-3 style unsigned packing: let xarray decode it (the reader still holds the file's bytes)
    with _nc_file(fs, product, filename, mask_and_scale=False, reader=reader) as (_, ds):
        return Packed(xr.decode_cf(ds[[name]])[name].values.astype(np.float64)), file_attrs


def _small_values(fs: fsspec.AbstractFileSystem, product: str, filename: str, name: str, max_size: int,
                  reader: HashingReader | None) -> tuple[np.ndarray, dict]:
    """A small variable's values as float64, decoded as xarray's ``mask_and_scale`` decodes them
    (fills -> NaN; a packed variable by xarray itself), and the file's global attributes. Its
    declared size and dtype are checked before its data is read."""
    with _h5_file(fs, product, filename, reader) as (path, h, _):
        d = _h5_variable(h, path, name, max_size=max_size)
        attrs, file_attrs = netcdf4.attributes(d), netcdf4.attributes(h)
        if not {"scale_factor", "add_offset", "_Unsigned"} & set(attrs):
            fills = cf_packing(attrs, path, name)[2]
            return unpack(np.asarray(d[()]), 1.0, 0.0, fills), file_attrs
        del d
    with _nc_file(fs, product, filename, reader=reader) as (path, ds):
        return np.asarray(_variable(ds, path, name, max_size=max_size).values, dtype=np.float64), file_attrs


def _variable(ds: xr.Dataset, path: str, name: str, shape: tuple[int, int] | None = None,
              max_size: int | None = None) -> xr.DataArray:
    """A variable, its declared dims/shape (or size) and dtype checked; no data read."""
    if name not in ds.variables:
        raise SourceFormatError(path, f"missing variable {name!r} (found {sorted(str(k) for k in ds.variables)})")
    v = ds[name]
    _check_declared(path, name, v.dtype, lambda: v.dims, v.shape, v.size, shape, max_size)
    return v


def _check_declared(path: str, name: str, dtype: np.dtype, dims: Callable[[], tuple], declared: tuple[int, ...],
                    size: int, shape: tuple[int, int] | None, max_size: int | None) -> None:
    """A variable's declared dtype, and dims and shape (``shape`` given) or size (``max_size``), checked
    before any of its data is read (``dims`` is asked for only when ``shape`` is given)."""
    if dtype.kind not in "iuf" or dtype.itemsize > 8:
        raise SourceFormatError(path, f"variable {name!r} has dtype {dtype}, expected a real number type")
    if shape is not None:
        found = dims()
        if found != ("rows", "columns"):
            raise SourceFormatError(path, f"variable {name!r} has dims {found}, expected ('rows', 'columns')")
        if declared != tuple(shape):
            raise SourceFormatError(path, f"variable {name!r} has shape {declared}, expected {tuple(shape)}; "
                                          "nothing read")
    if max_size is not None and size > max_size:
        raise SourceFormatError(path, f"variable {name!r} declares {size} values (shape {declared}), more than "
                                      f"the {max_size} the format allows here; nothing read")


def _flag_bit(attrs: Mapping[str, Any], name: str, path: str, meaning: str) -> int:
    masks = np.atleast_1d(attrs.get("flag_masks", []))
    meanings = str(attrs.get("flag_meanings", "")).split()
    if meaning not in meanings or len(masks) != len(meanings):
        raise SourceFormatError(path, f"variable {name!r} has no flag {meaning!r} in flag_meanings/flag_masks")
    return int(masks[meanings.index(meaning)])


def _grid_geometry(attrs: Mapping[str, Any], path: str) -> GridGeometry:
    try:
        return GridGeometry.from_attrs(dict(attrs), path)
    except (ValueError, TypeError) as err:
        raise SourceFormatError(path, f"cannot be read as netCDF4 ({err})") from err


def sen3_grid_shape(fs: fsspec.AbstractFileSystem, product: str,
                    reader: HashingReader | None = None) -> tuple[int, int]:
    """The declared 1 km grid of a SEN3 product, from ``S7_BT_in.nc`` (header only, checked
    against the format's :data:`FULL_GRID`)."""
    with _h5_file(fs, product, "S7_BT_in.nc", reader) as (path, h, _):
        return check_grid(path, _h5_variable(h, path, "S7_BT_in").shape)


def read_sen3_product(fs: fsspec.AbstractFileSystem, product: str, grid: tuple[int, int] | None = None,
                      reader: HashingReader | None = None) -> Scene:
    """Read one layout-B ``.SEN3`` folder and bring it onto the 1 km grid (``grid``: the one it must
    have; else its own declared grid, checked against the format). Every variable's declared
    shape is checked before its data is read; each file is read once through ``reader``.

    The files are read with h5py (no xarray datasets), the images on :data:`DECODE_THREADS`
    threads; then the arithmetic runs in bands of rows on :data:`BAND_THREADS` threads
    (:func:`sen3_image`)."""
    reader = _reader(fs, reader)
    grid = check_grid(posixpath.join(product, "S7_BT_in.nc"), grid) if grid else sen3_grid_shape(fs, product, reader)
    fine = (2 * grid[0], 2 * grid[1])
    images = [(f"{ch}_BT_in.nc", f"{ch}_BT_in", grid) for ch in BT_CHANNELS] + \
        [(f"{ch}_radiance_an.nc", f"{ch}_radiance_an", fine) for ch in REFLECTANCE_CHANNELS]

    def decode(job: tuple[str, str, tuple[int, int]]) -> tuple[Packed, dict]:
        return _read_packed(fs, product, *job, reader=reader, inflate_threads=1)

    # the nine images on DECODE_THREADS threads, a file each (its read, header and inflate overlap
    # the other's), while this thread reads the small files
    with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="sen3-decode") as pool:
        pending = [pool.submit(decode, job) for job in images]
        try:
            # S7_BT_in.nc first: the grid check just read it, and the reader keeps only its last file
            pending[0].result()
            zenith_tn, geo_attrs = _small_values(fs, product, "geometry_tn.nc", "solar_zenith_tn",
                                                 grid[0] * grid[1], reader)
            tie = _grid_geometry(geo_attrs, posixpath.join(product, "geometry_tn.nc"))
            if zenith_tn.ndim != 2 or min(zenith_tn.shape) < 2:
                raise SourceFormatError(posixpath.join(product, "geometry_tn.nc"), f"variable 'solar_zenith_tn' has "
                                        f"shape {zenith_tn.shape}, expected a 2-D tie-point grid of at least 2x2")
            irradiances = [_irradiance(fs, product, ch, reader) for ch in REFLECTANCE_CHANNELS]
            with _h5_file(fs, product, "flags_in.nc", reader) as (fpath, h, got):
                bayes = _h5_variable(h, fpath, "bayes_in", grid)
                confidence = _h5_variable(h, fpath, "confidence_in", grid)
                bit = _flag_bit(netcdf4.attributes(confidence), "confidence_in", fpath, SUMMARY_CLOUD)
                mask = (_values(bayes, got) > 0).astype(np.uint8)
                summary_cloud = ((_values(confidence, got).astype(np.int64) & bit) != 0).astype(np.uint8)
                del bayes, confidence
            decoded = [f.result() for f in pending]  # in file order: the first bad file is the one reported
        finally:
            for f in pending:
                f.cancel()
    bts = [packed for packed, _ in decoded[:len(BT_CHANNELS)]]
    radiances = [packed for packed, _ in decoded[len(BT_CHANNELS):]]
    image_grid = _grid_geometry(decoded[len(BT_CHANNELS)][1], posixpath.join(product, images[len(BT_CHANNELS)][0]))
    image = sen3_image(radiances, irradiances, bts, zenith_tn, tie, image_grid)
    return _finish(product, image, mask, summary_cloud)


def _irradiance(fs: fsspec.AbstractFileSystem, product: str, ch: str, reader: HashingReader | None) -> float:
    """``S{n}_solar_irradiance_an[0]`` of a channel's quality file, checked to be a positive number."""
    irr, _ = _small_values(fs, product, f"{ch}_quality_an.nc", f"{ch}_solar_irradiance_an", MAX_DETECTORS, reader)
    irr = irr.ravel()
    if irr.size == 0 or not np.isfinite(irr[0]) or irr[0] <= 0:
        raise SourceFormatError(posixpath.join(product, f"{ch}_quality_an.nc"),
                                f"{ch}_solar_irradiance_an[0] is not a positive number")
    return float(irr[0])


def sen3_image(radiances: Sequence[Packed], irradiances: Sequence[float], bts: Sequence[Packed],
               zenith_tn: np.ndarray, tie: GridGeometry, image_grid: GridGeometry,
               threads: int = BAND_THREADS) -> np.ndarray:
    """The stored (9, H, W) float32 image of a SEN3 product: reflectance ``pi L / (E0 mu0)`` of the
    six 0.5 km radiances (2H, 2W), block-averaged onto the 1 km grid, then the three brightness
    temperatures (H, W). ``mu0`` from the tie-point solar zenith, bilinear onto the 0.5 km grid.

    Computed in bands of :data:`BAND_ROWS` rows of the 0.5 km grid, spread over ``threads`` threads
    (NumPy releases the GIL): each band's float64 temporaries stay in cache instead of 58 MB arrays
    per channel. Every step is element by element in the same order as on whole arrays
    (:func:`unpack`, ``* pi / mu0``, :func:`block_mean`, ``* 1 / E0``), so the values are bitwise
    those of the whole-array computation."""
    fine = radiances[0].raw.shape
    if any(r.raw.shape != fine for r in radiances) or fine[0] % 2 or fine[1] % 2:
        raise ValueError(f"radiances must share one even-sized grid, got {[r.raw.shape for r in radiances]}")
    grid = (fine[0] // 2, fine[1] // 2)
    if any(b.raw.shape != grid for b in bts):
        raise ValueError(f"brightness temperatures must be on the {grid} grid, got {[b.raw.shape for b in bts]}")
    image = np.empty((len(radiances) + len(bts), *grid), np.float32)
    bands = [(r, min(r + BAND_ROWS, fine[0])) for r in range(0, fine[0], BAND_ROWS)]

    def work(part: list[tuple[int, int]]) -> None:
        # this thread's band buffers, reused for every band and channel (no allocation per step)
        radiance = np.empty((BAND_ROWS, fine[1]), np.float64)
        refl = np.empty((BAND_ROWS // 2, grid[1]), np.float64)
        for start, stop in part:
            # pi / mu0 of these rows (in place in the interpolated zenith), shared by the six channels
            factor = pi_over_mu0(interpolate_tie_points(zenith_tn, tie, image_grid, fine, rows=(start, stop)))
            n = stop - start
            for k, (packed, e0) in enumerate(zip(radiances, irradiances)):
                packed.rows_into(start, stop, radiance[:n])
                radiance[:n] *= factor  # pi L / mu0; the scalar 1 / E0 after the average (4x fewer pixels)
                block_mean_into(radiance[:n], refl[:n // 2])
                refl[:n // 2] *= 1.0 / e0
                image[k, start // 2:stop // 2] = refl[:n // 2]
            for k, packed in enumerate(bts):
                packed.rows_into(start // 2, stop // 2, refl[:n // 2])
                image[len(radiances) + k, start // 2:stop // 2] = refl[:n // 2]

    parts = [bands[i::threads] for i in range(max(1, threads))]
    if len(parts) == 1:
        work(parts[0])
        return image
    with ThreadPoolExecutor(len(parts) - 1, thread_name_prefix="sen3-band") as pool:
        others = [pool.submit(work, part) for part in parts[1:]]
        work(parts[0])
        for f in others:
            f.result()
    return image


def _finish(path: str, image: np.ndarray, mask: np.ndarray, summary: np.ndarray) -> Scene:
    image = np.ascontiguousarray(image, dtype=np.float32)  # no copy when it already is
    # a sparse look first: a real scene has finite pixels everywhere, so the full pass is rare
    if not (np.isfinite(image[:, ::61, ::61]).any() or np.isfinite(image).any()):
        raise SourceFormatError(path, "every pixel of every channel is NaN or a fill value")
    return Scene(image=image, cloud_mask=mask, summary_cloud=summary)


def read_product(fs: fsspec.AbstractFileSystem, product: SourceProduct, grid: tuple[int, int] | None = None,
                 bounds: PhysicalBounds | None = None, reader: HashingReader | None = None) -> Scene:
    """Read a product of either layout: its declared shapes checked against the format (and
    ``grid``) before any data, its decoded values against ``bounds`` (None: not checked). Each
    file is read once through ``reader`` (which also hashes it, see :class:`HashingReader`)."""
    read = read_hdf_product if product.layout == "hdf" else read_sen3_product
    scene = read(fs, product.path, grid, reader=reader)
    if bounds is not None:
        bounds.check(product.path, product.layout, scene.image)
    return scene
