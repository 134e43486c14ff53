"""CloudMask products (either layout) -> one Zarr store, one Dask task per product.

Store layout (zarr format 3, CF-1.10; every array a Zarr v3 core data type)::

    image          (scene, channel, y, x) float32  reflectance S1-S6, brightness temperature S7-S9 (K)
    cloud_mask     (scene, y, x)          uint8    bayes_in > 0 (the label), 255 = not written
    summary_cloud  (scene, y, x)          uint8    summary_cloud bit of confidence_in
    y, x                                  int32    image row / column
    channel, channel_units, channel_standard_name  (channel)  int8 flag codes; wavelength float32
    time (int64 ms, unique; increasing unless late products were appended), split (int8 flags)  (scene)
    source_name, source_sha256            (scene, <name>_nchar)  uint8 UTF-8 text

Text decodes with :func:`scibench_data.strings.decode_strings` (the catalog does it); a converted
store's scenes are in time order and ties in the start second are broken as :data:`TIE_BREAK` says;
appended scenes follow in append order (late products included), and the catalog returns a
time-sorted view (:func:`scibench_data.intake_source.open_path`).

Chunks are ``(1, 9, 256, 256)`` for ``image`` and one whole scene ``(1, H, W)``
for each mask: one object holds every channel of a 256x256 tile, so a 256x256
training patch at a random offset reads 4 image objects (2.4 MB each
uncompressed) and its scene's mask (one small object, shared by the patches of
a batch; see :func:`encodings`).
Measured with ``python benchmarks/chunking.py --scenes 3 --patches 150`` (3
full-size scenes, random 256x256 patches from local disk, best of 3, three
runs on a shared 2-core machine; ``docs/performance.md``): 512 tiles read
8.6x the patch's bytes and served 0.6-0.8x the patches/s of 256; 128 tiles
read 2.2x but need 9 objects per patch, 2.2x the requests of 256, and on
object storage a request costs more than the bytes (moto: ~15 ms CPU each);
one channel per chunk needs 36 objects per patch and was 0.6-0.8x as fast;
sharding per scene saved objects but not time. Codec: ``storage/encoding.py``.

The per-scene coordinates (``source_name``, ``time``, ``split``,
``source_sha256``) are stored in one chunk each (``SCENE_COORD_CHUNK``
scenes), so opening even a full DS2-sized store reads one object per
coordinate, and appending never adds chunks to them.

Three ways to fill a store, one task per product on any Dask scheduler:
``convert_cloudmask`` (all products of a folder, resumable),
``append_cloudmask`` (new, late or reprocessed products onto a complete store) and
``scaffold_cloudmask`` (the full-scale shape with only some scenes written).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import posixpath
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import dask.array as da
import fsspec
import numpy as np
import xarray as xr
import zarr

from scibench_data.cluster import preflight_products
from scibench_data.convert import ConversionReport, ConversionRun, plan_layout
from scibench_data.formats import SourceFormatError
from scibench_data.formats.cloudmask import (
    CHANNELS,
    PhysicalBounds,
    ProductName,
    SourceProduct,
    discover_products,
    hdf_grid,
    product_name,
    read_product,
    sen3_grid_shape,
)
from scibench_data.formats.synthetic_marker import find_marker
from scibench_data.parallel import (
    WORKER_ENV,
    TaskResult,
    numpy_without_huge_pages,
    run_tasks,
)
from scibench_data.storage.store.encoding import CodecChoice, encoding_for
from scibench_data.storage.store.hashing import HashingReader, combined_digest
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.lock import WriterLock
from scibench_data.storage.store.records import (
    InventoryCheckpoint,
    RecordStore,
    StoreStateError,
    store_state,
)
from scibench_data.strings import flag_codes, nchar_dim, utf8_attrs, utf8_chars

TILE = 256
#: Chunk length of the per-scene coordinates: one chunk holds every scene of DS2 (~9800).
SCENE_COORD_CHUNK = 65536
SCENE_COORDS = ("source_name", "time", "split", "source_sha256")
#: Status of a store with the full shape but only some scenes written (see ``scaffold_cloudmask``).
SCAFFOLD_STATUS = "scaffold"
FILLED_ATTR = "scibench_filled_scenes"
RECORD_DIM = "scene"
WAVELENGTH_UM = (0.555, 0.659, 0.865, 1.375, 1.61, 2.25, 3.74, 10.85, 12.0)
STANDARD_NAMES = ("toa_bidirectional_reflectance", "toa_brightness_temperature")
CHANNEL_STANDARD_NAMES = (STANDARD_NAMES[0],) * 6 + (STANDARD_NAMES[1],) * 3
CHANNEL_UNITS = ("1",) * 6 + ("K",) * 3
#: Split flag meanings: ``none`` is a product of a flat source folder (no training/inference subfolder).
NO_SPLIT = "none"
SPLIT_MEANINGS = (NO_SPLIT, "training", "inference")
#: Bytes of ``source_name`` (product names are 94 characters without extension).
NAME_NCHAR = 128
TIE_BREAK = ("scenes are ordered by acquisition start, then split (none, training, inference), then product "
             "name; time is the start (whole seconds, from the product name) plus k milliseconds for the k-th "
             "scene that repeats a start second, so it is unique and increasing; scenes appended later follow "
             "in append order, each at its start plus the fewest milliseconds no other scene of that second "
             "holds (unique; sort by time to read in time order)")
#: The physical bounds checked by default (frozen: one shared instance).
DEFAULT_BOUNDS = PhysicalBounds()
FORMAT_VERSION = 2  # 2: text as Zarr v3 core types, y/x coordinates, unique increasing time (ms)


@dataclass(frozen=True)
class CloudMaskConversion(ConversionRun):
    """Options of one conversion. ``bounds``: decoded values a product may hold (a product outside
    them is reported, not stored); ``None`` turns the check off."""

    layout: str
    tile: int = TILE
    src_storage_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    bounds: PhysicalBounds | None = DEFAULT_BOUNDS

    def __post_init__(self) -> None:
        if self.tile < 16 or self.tile % 16:
            raise ValueError(f"tile must be a positive multiple of 16, got {self.tile}")
        if self.bounds is not None and not isinstance(self.bounds, PhysicalBounds):
            raise ValueError(f"bounds must be a PhysicalBounds or None, got {self.bounds!r}")


def template(names: list[str], times: np.ndarray, splits: list[str], grid: tuple[int, int], tile: int) -> xr.Dataset:
    """The store's variables for ``len(names)`` scenes, data as lazy placeholders.

    ``times`` must be strictly increasing (see :func:`scene_times`). Text is stored as Zarr v3
    core types (:mod:`scibench_data.strings`): ``channel``, ``channel_units``,
    ``channel_standard_name`` and ``split`` as int8 flag codes, ``source_name`` and
    ``source_sha256`` as uint8 UTF-8 characters."""
    n, (h, w) = len(names), grid
    # One dask chunk per variable: the template is never computed (only its metadata is
    # written), and a graph of one task per Zarr chunk would cost minutes at DS2 scale.
    image = da.full((n, len(CHANNELS), h, w), np.nan, dtype=np.float32, chunks=-1)
    mask = da.full((n, h, w), 255, dtype=np.uint8, chunks=-1)
    channel_codes, channel_attrs = flag_codes(CHANNELS, CHANNELS, "channel")
    units_codes, units_attrs = flag_codes(CHANNEL_UNITS, ("1", "K"), "channel_units")
    std_codes, std_attrs = flag_codes(CHANNEL_STANDARD_NAMES, STANDARD_NAMES, "channel_standard_name")
    split_codes, split_attrs = flag_codes([s or NO_SPLIT for s in splits], SPLIT_MEANINGS, "split")
    mask_flags = {"flag_values": np.array([0, 1], np.uint8), "flag_meanings": "clear cloud", "units": "1",
                  "standard_name": "cloud_binary_mask"}
    ds = xr.Dataset(
        {
            "image": (("scene", "channel", "y", "x"), image, {
                "long_name": "SLSTR nadir view on the 1 km grid: TOA reflectance S1-S6, brightness temperature S7-S9",
                "comment": "the training tensor: channels of two quantities, so no single units or standard_name; "
                           "per channel they are channel_standard_name (reflectance: units 1, brightness "
                           "temperature: units K) and channel_units",
                "coordinates": "channel_units channel_standard_name wavelength",
                "_FillValue": np.float32(np.nan)}),
            "cloud_mask": (("scene", "y", "x"), mask, {
                "long_name": "Bayesian cloud mask (label)", **mask_flags, "source": "bayes_in > 0",
                "_FillValue": np.uint8(255)}),
            "summary_cloud": (("scene", "y", "x"), mask, {
                "long_name": "summary_cloud bit of confidence_in", **mask_flags, "_FillValue": np.uint8(255)}),
        },
        coords={
            "y": ("y", np.arange(h, dtype=np.int32), {"long_name": "row of the 1 km nadir image grid (along track)",
                                                      "units": "1"}),
            "x": ("x", np.arange(w, dtype=np.int32), {"long_name": "column of the 1 km nadir image grid (across "
                                                                   "track)", "units": "1"}),
            "channel": ("channel", channel_codes, {"long_name": "SLSTR channel", **channel_attrs}),
            "channel_units": ("channel", units_codes, {"long_name": "units of the channel's values", **units_attrs}),
            "channel_standard_name": ("channel", std_codes, {"long_name": "CF standard name of the channel's values",
                                                             **std_attrs}),
            "wavelength": ("channel", np.array(WAVELENGTH_UM, dtype=np.float32),
                           {"units": "um", "long_name": "central wavelength",
                            "standard_name": "sensor_band_central_radiation_wavelength"}),
            "source_name": (("scene", nchar_dim("source_name")), utf8_chars(names, NAME_NCHAR, "source_name"),
                            {"long_name": "source product name", **utf8_attrs()}),
            "time": ("scene", times, {"long_name": "acquisition start time (from the product name); strictly "
                                                   "increasing: see scibench_time_tie_break",
                                      "standard_name": "time"}),
            "split": ("scene", split_codes, {"long_name": "source subfolder: training or inference (none for a flat "
                                                          "source folder)", **split_attrs}),
            "source_sha256": (("scene", nchar_dim("source_sha256")), utf8_chars([""] * n, 64, "source_sha256"),
                              {"long_name": "sha256 over the product's files (sha256sum lines, sorted by name)",
                               **utf8_attrs()}),
        },
        attrs={
            "title": "CloudMask (Sentinel-3 SLSTR) scenes on the 1 km nadir grid",
            "Conventions": "CF-1.10",
            "institution": "scibench-data",
            "source": "Sentinel-3 SLSTR Level-1 RBT products",
            "history": "converted from the source products by scibench-data (convert cloudmask)",
            "benchmark": "MLCommons Science CloudMask",
            "scibench_format": "cloudmask",
            "scibench_format_version": FORMAT_VERSION,
            "scibench_reflectance": "pi * L / (E0[detector 0] * cos(sza)), sza bilinear from geometry_tn; "
                                    "0.5 km channels averaged 2x2 onto the 1 km grid (layout sen3)",
            "scibench_time_tie_break": TIE_BREAK,
            "scibench_strings": "channel, channel_units, channel_standard_name, split: int8 flag codes; "
                                "source_name, source_sha256: uint8 UTF-8 (decode: scibench_data.strings.decode_strings)",
        },
    )
    for v in ("image", "cloud_mask", "summary_cloud"):
        ds[v].encoding = {}
    return ds


def time_order(products: Sequence[SourceProduct]) -> list[SourceProduct]:
    """Products in store order: acquisition start, then split (none, training, inference), then name."""
    return sorted(products, key=lambda p: (p.name.start, SPLIT_MEANINGS.index(p.split or NO_SPLIT), p.name.name))


def scene_times(starts: Sequence[datetime]) -> np.ndarray:
    """Strictly increasing ``datetime64[ms]`` times for non-decreasing ``starts`` (whole seconds):
    the k-th scene that repeats a start second gets k milliseconds added (:data:`TIE_BREAK`)."""
    secs = np.array([np.datetime64(t, "s").astype(np.int64) for t in starts], dtype=np.int64)
    if secs.size and (np.diff(secs) < 0).any():
        raise ValueError("scene start times must be in non-decreasing order")
    ms = secs * 1000
    for i in range(1, len(ms)):
        if secs[i] == secs[i - 1]:
            ms[i] = ms[i - 1] + 1
    if ms.size and (np.diff(ms) <= 0).any():
        raise ValueError("more than 1000 scenes share one start second")
    return ms.astype("datetime64[ms]")


def encodings(ds: xr.Dataset, tile: int, codec: CodecChoice) -> dict[str, dict]:
    """Image in ``tile x tile`` chunks of all nine channels; each mask one chunk per scene.

    A scene's mask is ~50-100 KB compressed against ~1.8 MB per image tile: in 256 tiles it
    was half the requests of a patch for 0.2% of its bytes. Whole-scene masks make a patch
    4 image requests + 1 (often shared within a batch) instead of 4 + 4; measured on the
    loopback S3 server, +60% patches/s for fixed and +55% for random patches, locally no
    slower (docs/performance.md)."""
    h, w = ds.sizes["y"], ds.sizes["x"]
    enc = {
        "image": encoding_for(4, (1, len(CHANNELS), tile, tile), codec),
        "cloud_mask": encoding_for(1, (1, h, w), codec),
        "summary_cloud": encoding_for(1, (1, h, w), codec),
        "time": {"units": "milliseconds since 1970-01-01", "dtype": "int64", "calendar": "standard",
                 "chunks": (SCENE_COORD_CHUNK,)},
    }
    enc["split"] = {"chunks": (SCENE_COORD_CHUNK,)}
    for v in ("source_name", "source_sha256"):
        enc[v] = {"chunks": (SCENE_COORD_CHUNK, ds.sizes[nchar_dim(v)])}
    for v in ("image", "cloud_mask", "summary_cloud"):
        enc[v]["fill_value"] = ds[v].attrs["_FillValue"]
    return enc


#: How many products (spread over the list) declare the grid the store takes by majority.
GRID_SAMPLE = 25


def grid_of(fs: fsspec.AbstractFileSystem, product: SourceProduct,
            reader: HashingReader | None = None) -> tuple[int, int]:
    """The declared 1 km grid of a product, decoding its header only (checked against the format:
    no external storage, virtual datasets or links; at most the full 1 km grid). Through ``reader``
    the file read for it is the one the product's read then parses."""
    try:
        if product.layout == "hdf":
            return hdf_grid(fs, product.path, reader)
        return sen3_grid_shape(fs, product.path, reader)
    except SourceFormatError:
        raise
    except OSError as err:
        raise SourceFormatError(product.path, f"cannot be read ({err})") from err


def common_grid(fs: fsspec.AbstractFileSystem, products: list[SourceProduct],
                sample: int = GRID_SAMPLE) -> tuple[int, int]:
    """The grid most of the products declare (up to ``sample`` of them, spread over the list; ties go
    to the earlier product). A product with another grid, or one the format does not allow, is
    reported by its own task and never sets the grid."""
    picked = products if len(products) <= sample else [products[int(i)] for i in
                                                       np.linspace(0, len(products) - 1, sample).round()]
    grids, errors = [], []
    for product in picked:
        try:  # headers only: a reader that keeps no file in memory (h5py then reads just the header blocks)
            grids.append(grid_of(fs, product, HashingReader(fs, max_bytes=0, hash_files=False)))
        except SourceFormatError as err:
            errors.append(str(err))
    if not grids:
        raise SourceFormatError(products[0].path, "no product could be read: " + "; ".join(errors[:3]))
    counts = Counter(grids)
    return max(counts, key=lambda g: (counts[g], -grids.index(g)))


#: Memory one product task may need on a worker (peak RSS of a 1-thread worker converting full-size
#: ``sen3`` products: ~670 MB, docs/ds2.md); a worker holds no more products than its memory_limit fits.
PRODUCT_MEMORY = 1 << 30


class SourceUnavailableError(OSError):
    """A product the coordinator listed is not visible on the node running its task."""

    def __init__(self, path: str) -> None:
        # distributed imported here, not at the top: ~0.4 s to import, and only a worker needs it
        try:
            from distributed import get_worker

            where = f"worker {get_worker().address}"
        except (ImportError, ValueError):
            where = f"host {socket.gethostname()}"
        super().__init__(f"{path}: not visible on {where} (the client listed it); every worker must see the "
                         "sources at the same path or URL")


#: glibc ``mallopt`` parameters, and the process that set them (see :func:`keep_freed_memory`).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
_MALLOC_SET_IN: list[int] = []


def keep_freed_memory() -> bool:
    """Tell glibc malloc and NumPy, in this process, what the workers we start get from their
    environment (``parallel.WORKER_ENV``'s ``MALLOC_*`` and ``NUMPY_MADVISE_HUGEPAGE``): keep freed arrays for the next product instead of
    returning them to the kernel. Otherwise every product's arrays (hundreds of MB of 58 MB
    float64 radiances for ``sen3``) are page-faulted and zeroed again: measured here, in one
    process, a ``sen3`` product's decode went from 2.93 to 1.76 CPU-s (``docs/ds2.md``). Once per
    process; a no-op (False) off glibc. Only our own processes call it (the conversion commands of
    the CLI): it changes the whole process's allocator, which a library call must not do to its
    caller (a notebook would keep up to 512 MB of freed memory)."""
    if _MALLOC_SET_IN and _MALLOC_SET_IN[0] == os.getpid():
        return True
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    ok = all(mallopt(param, int(WORKER_ENV[name])) == 1 for param, name in (
        (_M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"), (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"),
        (_M_TOP_PAD, "MALLOC_TOP_PAD_"), (_M_ARENA_MAX, "MALLOC_ARENA_MAX")))
    numpy_without_huge_pages()
    _MALLOC_SET_IN[:] = [os.getpid()]
    return ok


@dataclass(frozen=True)
class ConvertProduct:
    """The task run for one product: read, check, write the scene, then its marker. Picklable."""

    dest: StoreLocation
    src_url: str
    src_storage_options: dict
    grid: tuple[int, int]
    bounds: PhysicalBounds | None = DEFAULT_BOUNDS

    def __call__(self, job: tuple[int, SourceProduct]) -> dict:
        index, product = job
        fs, _ = fsspec.core.url_to_fs(self.src_url, **self.src_storage_options)
        # every source file is read once: parsed from memory while a second thread hashes the same
        # bytes (files the reader does not parse are hashed in one streamed pass)
        with HashingReader(fs) as reader:
            try:
                declared = grid_of(fs, product, reader)  # header only: a product of another grid is never decoded
            except SourceFormatError:
                if not fs.exists(product.path):  # not a bad product: this node does not see it (retried)
                    raise SourceUnavailableError(product.path) from None
                raise
            if declared != tuple(self.grid):
                raise SourceFormatError(product.path, f"grid {declared} differs from the store's "
                                                      f"{tuple(self.grid)} (the products' majority); nothing read")
            scene = read_product(fs, product, reader=reader)
            files = product.files(fs)
            reader.hash_unread(files)
            if self.bounds is not None:
                self.bounds.check(product.path, product.layout, scene.image)
            if scene.image.shape[1:] != self.grid:
                raise SourceFormatError(product.path, f"grid {scene.image.shape[1:]} differs from the store's "
                                                      f"{self.grid}")
            store = RecordStore(self.dest, RECORD_DIM)
            written = store.write_record(index, {"image": scene.image, "cloud_mask": scene.cloud_mask,
                                                 "summary_cloud": scene.summary_cloud})
            hashed = reader.digests()
        digests = [(f[len(product.path):].lstrip("/") or product.name.name, hashed[f][0]) for f in files]
        info = {"key": product.name.stem, "source": product.path, "sha256": combined_digest(digests),
                "files": dict(digests), "bytes": int(sum(hashed[f][1] for f in files))}
        return store.mark_done(index, info, written)  # with the chunks' digests: finalize reads none of them back


def _run(store: RecordStore, src: str, jobs: list[tuple[int, SourceProduct]], grid: tuple[int, int],
         options: CloudMaskConversion, desc: str,
         inventory: InventoryCheckpoint) -> tuple[list, tuple[tuple[str, str], ...]]:
    """Convert ``jobs`` (record index, product) with one task each; (successful results, failures).
    Each finished product's marker goes into ``inventory`` (written every few hundred products and,
    when some failed, at the end, so a resume reads one object instead of every marker)."""
    task = ConvertProduct(store.location, src, options.src_storage_options, grid, options.bounds)
    index_of = {p.name.stem: i for i, p in jobs}

    def record(r: TaskResult) -> None:
        if r.ok:
            inventory.add(index_of[r.value["key"]], r.value)

    results = run_tasks(task, jobs, [p.name.name for _, p in jobs], scheduler=options.scheduler,
                        n_workers=options.n_workers, retries=options.retries, desc=desc, unit="product",
                        progress=options.progress, bytes_of=lambda v: v["bytes"], on_result=record,
                        task_memory=PRODUCT_MEMORY)
    failed = tuple((r.key, r.error) for r in results if not r.ok)
    if failed:
        inventory.flush()
    return [r for r in results if r.ok], failed


def _discover(src: str, options: CloudMaskConversion) -> tuple[fsspec.AbstractFileSystem, list[SourceProduct], tuple]:
    fs, src_root = fsspec.core.url_to_fs(src, **options.src_storage_options)
    products, rejected = discover_products(fs, src_root, options.layout)
    return fs, products, tuple((r.path, r.reason) for r in rejected)


def _sha256_array(markers: dict[int, dict], n: int) -> np.ndarray:
    return utf8_chars([markers[i]["sha256"] if i in markers else "" for i in range(n)], 64, "source_sha256")


def _run_and_finalize(store: RecordStore, src: str, todo: list, grid: tuple[int, int],
                      options: CloudMaskConversion, desc: str, keys: list[str], done: dict, rejected_rows: tuple,
                      t0: float, extra: dict | None = None, attrs: dict | None = None) -> ConversionReport:
    """Convert ``todo``; when nothing failed, finalize the store (provenance, status, consolidation).
    ``keys``: the planned product names (``source_name`` is rewritten from them, so it always names
    the product each scene holds); ``done``: the markers of the scenes written before."""
    inventory = InventoryCheckpoint(store, done)
    ok, failed = _run(store, src, todo, grid, options, desc, inventory)
    total = len(keys)
    if not failed:
        store.finalize({"source_sha256": _sha256_array(inventory.markers, total),
                        "source_name": utf8_chars(keys, NAME_NCHAR, "source_name")},
                       {"scibench_layout": options.layout, "scibench_n_scenes": total, **options.store_attrs(),
                        **(attrs or {})}, markers=inventory.markers)
    return ConversionReport(
        dest=store.location.url, total=total, converted=tuple(r.value["key"] for r in ok),
        already_done=len(done), failed=failed, rejected=rejected_rows, complete=not failed,
        elapsed_s=time.perf_counter() - t0, bytes_read=sum(r.value["bytes"] for r in ok), extra=extra or {},
    )


def convert_cloudmask(src: str, dest: str | StoreLocation, options: CloudMaskConversion) -> ConversionReport:
    """Convert every product of ``options.layout`` under ``src`` into the store ``dest``.

    Of several processings of one acquisition (:func:`acquisition`) only the newest is stored, as
    :func:`append_cloudmask` does; the others are listed in the report (``extra["superseded"]``).
    Resumable and idempotent: rerunning converts only the scenes without a
    marker and finalizes; a complete store is left as it is.
    """
    t0 = time.perf_counter()
    location = dest if isinstance(dest, StoreLocation) else StoreLocation(dest)
    fs, products, rejected_rows = _discover(src, options)
    if not products:
        raise FileNotFoundError(f"no {options.layout} CloudMask products found in {src}")
    options = options.with_synthetic(find_marker(fs, [posixpath.dirname(p.path) for p in products]))
    newest = plan_append([], products)  # against an empty store: the newest version of each acquisition
    products = list(newest.new)  # in time order
    extra = {"superseded": list(newest.superseded)} if newest.superseded else {}
    grid = common_grid(fs, products)
    names = [p.name.stem for p in products]
    ds = template(names, scene_times([p.name.start for p in products]), [p.split for p in products], grid,
                  options.tile)
    enc = encodings(ds, options.tile, options.codec)
    store = RecordStore(location, RECORD_DIM)
    preflight_products(options.scheduler, fs, products, options.src_storage_options, location)  # before any write
    with WriterLock(location, operation="convert cloudmask"):
        state = store.prepare(ds, enc, names, {"format": "cloudmask", "grid": list(grid), "tile": options.tile,
                                                 "layout": options.layout,
                                                 "splits": [p.split for p in products],
                                                 **plan_layout(options.codec, enc)})
        if state == "complete":
            return ConversionReport(dest=location.url, total=len(products), already_done=len(products),
                                    complete=True, rejected=rejected_rows, elapsed_s=time.perf_counter() - t0,
                                    extra=extra)
        done = store.done(names) if state != "created" else {}
        todo = [(i, p) for i, p in enumerate(products) if i not in done]
        return _run_and_finalize(store, src, todo, grid, options, f"convert {options.layout}", names,
                                 done, rejected_rows, t0, extra=extra)


def _name_of(key: str) -> ProductName:
    """The fields of a planned record's key (a product name without extension)."""
    return ProductName.parse(f"{key}.SEN3")


def _start_of(key: str) -> datetime:
    """Acquisition start of a planned record from its key (a product name without extension)."""
    return _name_of(key).start


def acquisition(name: ProductName) -> tuple:
    """What identifies an acquisition across reprocessings: platform, sensing start and stop, cycle,
    relative orbit and frame (the creation time, centre, timeliness and baseline collection change)."""
    return (name.mission, name.start, name.stop, name.cycle, name.orbit, name.frame)


def processing_version(name: ProductName) -> tuple:
    """Order of the versions of one acquisition: creation (processing) time, then baseline collection."""
    return (name.creation, name.collection)


def late_times(existing_ms: np.ndarray, starts: Sequence[datetime]) -> np.ndarray:
    """Stored times (int64 ms) for new scenes starting at ``starts`` (in store order) next to scenes
    whose times are ``existing_ms``: each gets its start second plus the smallest number of
    milliseconds no other scene of that second holds, so time stays unique and existing scenes keep
    theirs. For products after every existing scene this is :func:`scene_times`' rule."""
    used = {int(t) for t in np.asarray(existing_ms, dtype=np.int64)}
    out = []
    for start in starts:
        base = int(np.datetime64(start, "s").astype(np.int64)) * 1000
        k = 0
        while base + k in used:
            k += 1
        if k >= 1000:
            raise ValueError(f"more than 1000 scenes share the start second {start:%Y-%m-%dT%H:%M:%S}")
        used.add(base + k)
        out.append(base + k)
    return np.array(out, dtype=np.int64)


@dataclass(frozen=True)
class AppendPlan:
    """What an append does with the products of its source (see :func:`plan_append`)."""

    new: tuple[SourceProduct, ...]  # acquisitions the store lacks, in time order: appended as new scenes
    replace: tuple[tuple[int, SourceProduct], ...]  # (scene, newer version of the product it holds)
    superseded: tuple[str, ...]  # product names older than the version the store (or the source) holds


def plan_append(planned: Sequence[str], products: Sequence[SourceProduct]) -> AppendPlan:
    """Split ``products`` against a store's planned keys: products it holds are skipped; of several
    versions of one acquisition the newest counts; a newer version of a held acquisition replaces
    that scene; any other acquisition is new, whatever its time (late products are accepted)."""
    held = set(planned)
    scene_of = {acquisition(_name_of(k)): i for i, k in enumerate(planned)}
    newest: dict[tuple, SourceProduct] = {}
    superseded = []
    for p in sorted((p for p in products if p.name.stem not in held), key=lambda p: p.name.name):
        a = acquisition(p.name)
        if a in newest and processing_version(newest[a].name) >= processing_version(p.name):
            superseded.append(p.name.name)
            continue
        if a in newest:
            superseded.append(newest[a].name.name)
        newest[a] = p
    new, replace = [], []
    for a, p in newest.items():
        i = scene_of.get(a)
        if i is None:
            new.append(p)
        elif processing_version(p.name) > processing_version(_name_of(planned[i])):
            replace.append((i, p))
        else:
            superseded.append(p.name.name)
    return AppendPlan(tuple(time_order(new)), tuple(sorted(replace, key=lambda r: r[0])), tuple(sorted(superseded)))


REPLACED_ATTR = "scibench_replaced_scenes"


def append_cloudmask(src: str, dest: str | StoreLocation, options: CloudMaskConversion) -> ConversionReport:
    """Append the products under ``src`` that ``dest`` does not hold yet.

    A product of an acquisition the store lacks is appended as a new scene at the end of the
    ``scene`` dimension, whatever its time: a late product is accepted, and ``time`` is then in
    append order in the store (the catalog returns a time-sorted view, see
    :func:`scibench_data.intake_source.open_path`). A newer version of a product the store holds
    (same acquisition, later creation time: a reprocessing, :func:`acquisition`) replaces that
    scene's data in place; older versions are skipped. No other scene's chunks are rewritten.
    During the append the store is incomplete (status attribute and consolidated metadata removed
    in one root write); it is complete again only after every new scene is written and finalized.
    Idempotent: products already in the store are skipped, so rerunning the same append after a
    crash resumes it, and an append of nothing new leaves the store untouched (and reads no marker).
    """
    t0 = time.perf_counter()
    location = dest if isinstance(dest, StoreLocation) else StoreLocation(dest)
    store = RecordStore(location, RECORD_DIM)
    fs, products, rejected_rows = _discover(src, options)
    options = options.with_synthetic(find_marker(fs, [posixpath.dirname(p.path) for p in products]))
    preflight_products(options.scheduler, fs, products, options.src_storage_options, location)  # before any write
    with WriterLock(location, operation="append cloudmask"):
        plan, state = store.plan(), store_state(location)
        if plan is None or not state.ours or plan.get("format") != "cloudmask":
            raise StoreStateError(f"{location.url} is not a CloudMask store written by scibench-data; "
                                  "convert into it first")
        version = ((location.read_json("zarr.json") or {}).get("attributes") or {}).get("scibench_format_version")
        if version != FORMAT_VERSION:
            raise StoreStateError(f"{location.url} has store layout version {version!r}, this version writes "
                                  f"{FORMAT_VERSION} (text as Zarr v3 core types); appending would mix the two: "
                                  "convert all products into a new store")
        if state.status == SCAFFOLD_STATUS:
            raise StoreStateError(f"{location.url} is a scaffold (full shape, some scenes written); "
                                  "appending to it is not supported")
        for key, want in (("layout", options.layout), ("tile", options.tile), ("codec", asdict(options.codec))):
            if key in plan and plan.get(key) != want or key not in plan and key != "codec":
                raise StoreStateError(f"{location.url} was converted with {key}={plan.get(key)!r}, "
                                      f"the append asks for {want!r}")
        planned = list(plan["keys"])
        by_key = {p.name.stem: p for p in products}
        todo_plan = plan_append(planned, products)
        new, replace = list(todo_plan.new), dict(todo_plan.replace)
        extra = {"appended": [p.name.stem for p in new], "replaced": [p.name.stem for p in replace.values()],
                 "superseded": list(todo_plan.superseded)}
        if not new and not replace and state.complete:
            return ConversionReport(dest=location.url, total=len(planned), already_done=len(planned),
                                    complete=True, rejected=rejected_rows, elapsed_s=time.perf_counter() - t0,
                                    extra=extra)
        done = store.done(planned, complete=state.complete)
        unwritten = [k for i, k in enumerate(planned) if i not in done]
        if (new or replace) and unwritten:
            raise StoreStateError(f"{location.url} has {len(unwritten)} unwritten scene(s), e.g. {unwritten[0]}; "
                                  "rerun the conversion or append that planned them before adding more")
        keys, splits = list(planned), list(plan.get("splits", [""] * len(planned)))
        history = list(plan.get("replaced", []))
        if new or replace:
            for i, p in replace.items():
                if (p.split or NO_SPLIT) != (splits[i] or NO_SPLIT):
                    raise ValueError(f"{p.path}: a newer version of scene {i} ({planned[i]}) is under "
                                     f"{p.split or NO_SPLIT!r}, the scene under {splits[i] or NO_SPLIT!r}")
            grid = tuple(plan["grid"])
            new_grid = common_grid(fs, new + list(replace.values()))
            if new_grid != grid:
                raise SourceFormatError((new + list(replace.values()))[0].path,
                                        f"grid {new_grid} differs from the store's {grid}")
            if state.status == "complete" or state.consolidated:
                store.begin_update()
            existing_ms = np.asarray(zarr.open_array(location.zarr_store(), path="time", mode="r",
                                                     zarr_format=3)[:len(planned)], dtype=np.int64)
            for i, p in replace.items():
                history.append({"scene": i, "replaced": keys[i], "by": p.name.stem})
                keys[i] = p.name.stem
            keys += [p.name.stem for p in new]
            splits += [p.split for p in new]
            times = np.concatenate([np.asarray(existing_ms, dtype=np.int64),
                                    late_times(existing_ms, [p.name.start for p in new])])
            store.grow(keys, {"splits": splits, **({"replaced": history} if history else {})}, {
                "source_name": utf8_chars(keys, NAME_NCHAR, "source_name"), "time": times,
                "split": flag_codes([sp or NO_SPLIT for sp in splits], SPLIT_MEANINGS, "split")[0]},
                replaced=list(replace))
            done = {i: m for i, m in done.items() if m.get("key", keys[i]) == keys[i]}
        missing = [k for i, k in enumerate(keys) if i not in done and k not in by_key]
        if missing:
            raise FileNotFoundError(f"{src} lacks {len(missing)} product(s) that {location.url} planned, "
                                    f"e.g. {missing[0]}")
        todo = [(i, by_key[k]) for i, k in enumerate(keys) if i not in done]
        return _run_and_finalize(store, src, todo, tuple(plan["grid"]), options, f"append {options.layout}",
                                 keys, done, rejected_rows, t0, extra=extra,
                                 attrs={REPLACED_ATTR: history} if history else None)


#: Products that 4.9 TB of raw SLSTR RBT products implies at ~0.5 GB each (see docs/ds2.md).
DS2_N_SCENES = 9800
#: Seconds between consecutive SLSTR L1 products along an orbit (each covers 180 s).
PRODUCT_CADENCE_S = 180


def scaffold_slots(n_scenes: int, n_filled: int) -> list[int]:
    """Record indices of ``n_filled`` scenes spread evenly over ``n_scenes`` (first and last included)."""
    if not 1 <= n_filled <= n_scenes:
        raise ValueError(f"need 1 <= filled ({n_filled}) <= scenes ({n_scenes})")
    return sorted({round(float(x)) for x in np.linspace(0, n_scenes - 1, n_filled)})


def scaffold_times(filled_times: Sequence[datetime], slots: Sequence[int], n_scenes: int,
                   cadence_s: int = PRODUCT_CADENCE_S) -> list[datetime]:
    """Strictly increasing start times for every slot: the filled slots keep their products' times,
    the others are interpolated between them (``cadence_s`` apart before the first and after the last)."""
    if len(filled_times) != len(slots) or list(slots) != sorted(set(slots)):
        raise ValueError("slots must be increasing and as many as the filled times")
    if any(b <= a for a, b in itertools.pairwise(filled_times)):
        raise ValueError("filled products must be in increasing time order")
    t = np.array([np.datetime64(x, "s").astype(np.int64) for x in filled_times], dtype=np.float64)
    s = np.asarray(slots, dtype=np.float64)
    idx = np.arange(n_scenes, dtype=np.float64)
    out = np.interp(idx, s, t)
    out[idx < s[0]] = t[0] - (s[0] - idx[idx < s[0]]) * cadence_s
    out[idx > s[-1]] = t[-1] + (idx[idx > s[-1]] - s[-1]) * cadence_s
    secs = np.floor(out).astype(np.int64)
    for i in range(1, n_scenes):  # interpolation may round two slots onto one second
        secs[i] = max(secs[i], secs[i - 1] + 1)
    if any(secs[int(k)] != int(tk) for k, tk in zip(slots, t)):
        raise ValueError(f"{n_scenes} scenes do not fit between the filled products' times at one per second")
    return [datetime(1970, 1, 1) + timedelta(seconds=int(x)) for x in secs]


def scaffold_cloudmask(src: str, dest: str | StoreLocation, options: CloudMaskConversion,
                       n_scenes: int = DS2_N_SCENES, slots: Sequence[int] | None = None) -> ConversionReport:
    """A store with the full shape of ``n_scenes`` scenes in which only the products under ``src``
    are written, at ``slots`` (default: spread evenly). Unwritten chunks are not stored.

    The store is consolidated (it opens through the catalog) but its status is
    ``"scaffold"``, never ``"complete"``, and root attribute ``scibench_filled_scenes`` lists
    the scenes that hold data. Scenes without data read as fill values (NaN, 255) and carry
    planned names and times (interpolated) with an empty ``source_sha256``.
    """
    t0 = time.perf_counter()
    location = dest if isinstance(dest, StoreLocation) else StoreLocation(dest)
    fs, products, rejected_rows = _discover(src, options)
    if not products:
        raise FileNotFoundError(f"no {options.layout} CloudMask products found in {src}")
    slots = list(slots) if slots is not None else scaffold_slots(n_scenes, len(products))
    if len(slots) != len(products) or (slots and not 0 <= min(slots) <= max(slots) < n_scenes):
        raise ValueError(f"{len(products)} products need {len(products)} slots within 0..{n_scenes - 1}, got {slots}")
    grid = common_grid(fs, products)
    times = scaffold_times([p.name.start for p in products], slots, n_scenes)
    names = [product_name(t, mission="S3A", orbit=i % 1000, extension="SEN3").rsplit(".", 1)[0]
             for i, t in enumerate(times)]
    splits = [""] * n_scenes
    for slot, p in zip(slots, products):
        names[slot], splits[slot] = p.name.stem, p.split
    ds = template(names, scene_times(times), splits, grid, options.tile)
    enc = encodings(ds, options.tile, options.codec)
    store = RecordStore(location, RECORD_DIM)
    preflight_products(options.scheduler, fs, products, options.src_storage_options, location)  # before any write
    with WriterLock(location, operation="scaffold cloudmask"):
        state = store.prepare(ds, enc, names, {"format": "cloudmask", "grid": list(grid), "tile": options.tile,
                                                 "layout": options.layout, "splits": splits,
                                                 "scaffold_slots": slots, **plan_layout(options.codec, enc)})
        if state == "complete":  # cannot happen for a scaffold; kept for symmetry
            raise StoreStateError(f"{location.url} is a complete store, not a scaffold")
        done = store.done(names) if state != "created" else {}
        todo = [(slot, p) for slot, p in zip(slots, products) if slot not in done]
        inventory = InventoryCheckpoint(store, done)
        ok, failed = _run(store, src, todo, grid, options, f"scaffold {options.layout}", inventory)
        if not failed:
            inventory.flush()
            store.finalize_as(SCAFFOLD_STATUS, {"source_sha256": _sha256_array(inventory.markers, n_scenes)}, {
                "scibench_layout": options.layout, "scibench_n_scenes": n_scenes, FILLED_ATTR: slots,
                "scibench_scaffold": f"full DS2 shape, {len(slots)} of {n_scenes} scenes written "
                                     f"(listed in {FILLED_ATTR}); the others are planned names and "
                                     "interpolated times whose data reads as fill values", **options.store_attrs()})
    return ConversionReport(
        dest=location.url, total=n_scenes, converted=tuple(r.value["key"] for r in ok),
        already_done=len(done), failed=failed, rejected=rejected_rows, complete=False,
        elapsed_s=time.perf_counter() - t0, bytes_read=sum(r.value["bytes"] for r in ok),
        extra={"filled_scenes": slots, "status": SCAFFOLD_STATUS if not failed else "incomplete"},
    )
