"""Subsetting a scene store (CloudMask DS1/DS2) by time, scene, channel and pixel window.

Three layers, as everywhere in this package:

- :class:`Selection` (a frozen, validated description of what is wanted) and
  :func:`plan_subset`, pure arithmetic over the store's metadata: which scenes,
  which chunks of which arrays, how many bytes are decoded versus selected.
  ``--dry-run`` prints this plan before any data chunk is read.
- :func:`select`: the same selection over a lazy ``xarray.Dataset`` (e.g. the
  catalog's ``cat.cloudmask_ds2.to_dask()``), for streaming into loaders.
- :func:`write_subset`: one task per selected scene on any Dask scheduler; each
  task reads exactly the chunks the plan lists (zarr orthogonal selection) and
  writes whole records of a new self-describing store, which becomes complete
  only when every scene is written (the ``RecordStore`` conventions).

Time selections are half-open: ``START/END`` keeps scenes with
``START <= time < END``; either side may be empty. Windows are half-open pixel
ranges ``y0:y1,x0:x1`` of the 1 km grid.
"""

from __future__ import annotations

import math
import re
import time as _time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import numpy.typing as npt
import xarray as xr
import zarr
from zarr.abc.store import Store

from scibench_data.cluster import preflight
from scibench_data.parallel import is_address, run_tasks
from scibench_data.storage.store.encoding import encoding_for
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.lock import WriterLock
from scibench_data.storage.store.records import RecordStore, array_in, dimension_names
from scibench_data.storage.store.regions import chunks_touched
from scibench_data.strings import decode_strings

RECORD_DIM = "scene"
DATA_VARIABLES = ("image", "cloud_mask", "summary_cloud")
SCENE_COORDS = ("source_name", "time", "split", "source_sha256")
#: One chunk for every per-scene coordinate of the output (as in the converter).
SCENE_COORD_CHUNK = 65536
SUBSET_ATTR = "scibench_subset"
FILLED_ATTR = "scibench_filled_scenes"
STATUS_ATTR = "scibench_status"


class SelectionError(ValueError):
    """A selection that the store cannot satisfy (names the bad value)."""


@dataclass(frozen=True)
class Selection:
    """What to keep. ``None`` keeps everything along that axis."""

    time: tuple[str | None, str | None] | None = None  # half-open [start, end), ISO 8601
    scenes: tuple[int | str, ...] | None = None  # record indices or source names
    channels: tuple[str, ...] | None = None
    window: tuple[int, int, int, int] | None = None  # y0, y1, x0, x1 (half-open)
    variables: tuple[str, ...] = DATA_VARIABLES

    def __post_init__(self) -> None:
        if self.time is not None:
            if len(self.time) != 2:
                raise SelectionError(f"time must be (start, end), got {self.time!r}")
            for t in self.time:
                if t is not None:
                    try:
                        np.datetime64(t, "ns")
                    except ValueError as err:
                        raise SelectionError(f"time {t!r} is not an ISO 8601 date or time") from err
            a, b = self.time
            if a is not None and b is not None and np.datetime64(b, "ns") <= np.datetime64(a, "ns"):
                raise SelectionError(f"time range {a}/{b} is empty (end must be after start)")
        if self.scenes is not None and not self.scenes:
            raise SelectionError("scenes must not be empty")
        if self.channels is not None and not self.channels:
            raise SelectionError("channels must not be empty")
        if self.window is not None:
            if len(self.window) != 4:
                raise SelectionError(f"window must be (y0, y1, x0, x1), got {self.window!r}")
            y0, y1, x0, x1 = self.window
            if not (0 <= y0 < y1 and 0 <= x0 < x1):
                raise SelectionError(f"window {y0}:{y1},{x0}:{x1} is empty or negative")
        if not self.variables:
            raise SelectionError("variables must not be empty")

    @classmethod
    def parse(cls, *, time: str | None = None, scenes: str | None = None, channels: str | None = None,
              window: str | None = None, variables: str | None = None) -> Selection:
        """From command-line strings: ``2019-10-01/2019-11-01``, ``0:10,42,S3A_...``, ``S1,S7``,
        ``0:256,256:768``, ``image,cloud_mask``."""
        t = None
        if time:
            if time.count("/") != 1:
                raise SelectionError(f"--time must be START/END (either may be empty), got {time!r}")
            a, b = (s.strip() or None for s in time.split("/"))
            t = (a, b)
        sc: tuple[int | str, ...] | None = None
        if scenes:
            items: list[int | str] = []
            for part in (p.strip() for p in scenes.split(",") if p.strip()):
                m = re.fullmatch(r"(\d+):(\d+)", part)
                if m:
                    items.extend(range(int(m[1]), int(m[2])))
                else:
                    items.append(int(part) if part.isdigit() else part)
            sc = tuple(items)
        ch = tuple(c.strip() for c in channels.split(",") if c.strip()) if channels else None
        win = None
        if window:
            m = re.fullmatch(r"\s*(\d+):(\d+)\s*,\s*(\d+):(\d+)\s*", window)
            if m is None:
                raise SelectionError(f"--window must be y0:y1,x0:x1, got {window!r}")
            y0, y1, x0, x1 = (int(g) for g in m.groups())
            win = (y0, y1, x0, x1)
        var = tuple(v.strip() for v in variables.split(",") if v.strip()) if variables else DATA_VARIABLES
        return cls(time=t, scenes=sc, channels=ch, window=win, variables=var)

    def as_dict(self) -> dict:
        return {"time": list(self.time) if self.time else None,
                "scenes": list(self.scenes) if self.scenes is not None else None,
                "channels": list(self.channels) if self.channels else None,
                "window": list(self.window) if self.window else None, "variables": list(self.variables)}


@dataclass(frozen=True)
class ArrayLayout:
    """What the plan needs to know of one stored array."""

    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    itemsize: int


@dataclass(frozen=True)
class VariableRead:
    name: str
    chunks: int  # chunk objects read (requests; a chunk never written is still one request)
    bytes_decoded: int  # decoded bytes of those chunks
    bytes_selected: int  # bytes of the selected values


@dataclass(frozen=True)
class SubsetPlan:
    """The result of :func:`plan_subset`."""

    scenes: tuple[int, ...]
    channels: tuple[int, ...]
    window: tuple[int, int, int, int]
    reads: tuple[VariableRead, ...]
    filled: tuple[int, ...] | None = None  # selected scenes that hold data, when the store says
    #: on a store where only some scenes hold data (a scaffold): what the same query reads once every
    #: selected scene holds data, i.e. on the full data set (``reads`` counts the scenes with data only)
    full_reads: tuple[VariableRead, ...] | None = None

    @property
    def chunks(self) -> int:
        return sum(r.chunks for r in self.reads)

    @property
    def bytes_decoded(self) -> int:
        return sum(r.bytes_decoded for r in self.reads)

    @property
    def bytes_selected(self) -> int:
        return sum(r.bytes_selected for r in self.reads)

    def lines(self, names: Sequence[str] | None = None) -> list[str]:
        y0, y1, x0, x1 = self.window
        out = [f"scenes: {len(self.scenes)}" + (f" ({len(self.filled)} hold data)" if self.filled is not None else ""),
               f"channels: {len(self.channels)}   window: y {y0}:{y1}, x {x0}:{x1}"]
        if names is not None and self.scenes:
            shown = [names[i] for i in self.scenes[:3]]
            out.append("first: " + ", ".join(shown) + (" ..." if len(self.scenes) > 3 else ""))
        for r in self.reads:
            out.append(f"  {r.name}: {r.chunks} chunks, {r.bytes_decoded / 1e6:.1f} MB decoded, "
                       f"{r.bytes_selected / 1e6:.1f} MB selected")
        ratio = self.bytes_decoded / self.bytes_selected if self.bytes_selected else 0.0
        out.append(f"total: {self.chunks} chunks, {self.bytes_decoded / 1e6:.1f} MB decoded for "
                   f"{self.bytes_selected / 1e6:.1f} MB selected ({ratio:.2f}x)"
                   + (f" in the {len(self.filled)} scene(s) that hold data" if self.filled is not None else ""))
        if self.full_reads is not None:
            chunks = sum(r.chunks for r in self.full_reads)
            decoded = sum(r.bytes_decoded for r in self.full_reads)
            selected = sum(r.bytes_selected for r in self.full_reads)
            out.append(f"on the full data set (all {len(self.scenes)} selected scenes hold data): {chunks} chunks, "
                       f"{decoded / 1e6:.1f} MB decoded for {selected / 1e6:.1f} MB selected")
        return out

    def as_dict(self) -> dict:
        return {"scenes": list(self.scenes), "channels": list(self.channels), "window": list(self.window),
                "filled": list(self.filled) if self.filled is not None else None, "chunks": self.chunks,
                "bytes_decoded": self.bytes_decoded, "bytes_selected": self.bytes_selected,
                "reads": [r.__dict__ for r in self.reads],
                "full_data_set": None if self.full_reads is None else {
                    "chunks": sum(r.chunks for r in self.full_reads),
                    "bytes_decoded": sum(r.bytes_decoded for r in self.full_reads),
                    "bytes_selected": sum(r.bytes_selected for r in self.full_reads),
                    "reads": [r.__dict__ for r in self.full_reads]}}


# --------------------------------------------------------------------------- pure arithmetic


def select_scenes(sel: Selection, times: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Record indices (increasing) that the time and scene parts of ``sel`` keep."""
    n = len(times)
    keep = np.ones(n, dtype=bool)
    if sel.time is not None:
        a, b = sel.time
        t = np.asarray(times).astype("datetime64[ns]")
        if a is not None:
            keep &= t >= np.datetime64(a, "ns")
        if b is not None:
            keep &= t < np.datetime64(b, "ns")
    if sel.scenes is not None:
        index = {str(k): i for i, k in enumerate(names)}
        wanted = np.zeros(n, dtype=bool)
        for s in sel.scenes:
            if isinstance(s, str):
                if s not in index:
                    raise SelectionError(f"no scene named {s!r}")
                wanted[index[s]] = True
            else:
                if not 0 <= s < n:
                    raise SelectionError(f"scene index {s} is outside 0..{n - 1}")
                wanted[s] = True
        keep &= wanted
    return np.flatnonzero(keep)


def select_channels(sel: Selection, channel_names: Sequence[str]) -> np.ndarray:
    names = [str(c) for c in channel_names]
    if sel.channels is None:
        return np.arange(len(names))
    unknown = [c for c in sel.channels if c not in names]
    if unknown:
        raise SelectionError(f"unknown channel(s) {unknown}; the store has {names}")
    return np.array([names.index(c) for c in sel.channels])


def resolve_window(sel: Selection, grid: tuple[int, int]) -> tuple[int, int, int, int]:
    h, w = grid
    if sel.window is None:
        return (0, h, 0, w)
    y0, y1, x0, x1 = sel.window
    if y1 > h or x1 > w:
        raise SelectionError(f"window {y0}:{y1},{x0}:{x1} exceeds the grid ({h}, {w})")
    return sel.window


def variable_read(name: str, layout: ArrayLayout, scenes: np.ndarray, channels: np.ndarray,
                  window: tuple[int, int, int, int]) -> VariableRead:
    """Chunks and bytes one array's read of the selection touches."""
    y0, y1, x0, x1 = window
    per_dim_chunks, per_dim_selected = [], []
    for dim, size, chunk in zip(layout.dims, layout.shape, layout.chunks):
        if dim == RECORD_DIM:
            per_dim_chunks.append(len(np.unique(scenes // chunk)))
            per_dim_selected.append(len(scenes))
        elif dim == "channel":
            per_dim_chunks.append(len(np.unique(channels // chunk)))
            per_dim_selected.append(len(channels))
        elif dim == "y":
            per_dim_chunks.append(len(chunks_touched(y0, y1, chunk)))
            per_dim_selected.append(y1 - y0)
        elif dim == "x":
            per_dim_chunks.append(len(chunks_touched(x0, x1, chunk)))
            per_dim_selected.append(x1 - x0)
        else:
            per_dim_chunks.append(math.ceil(size / chunk))
            per_dim_selected.append(size)
    n_chunks = math.prod(per_dim_chunks)
    return VariableRead(name=name, chunks=n_chunks, bytes_decoded=n_chunks * math.prod(layout.chunks) * layout.itemsize,
                        bytes_selected=math.prod(per_dim_selected) * layout.itemsize)


def plan_subset(sel: Selection, *, times: np.ndarray, names: Sequence[str], channel_names: Sequence[str],
                layouts: Mapping[str, ArrayLayout], filled: Sequence[int] | None = None) -> SubsetPlan:
    """Which scenes, chunks and bytes ``sel`` reads from arrays laid out as ``layouts``."""
    missing = [v for v in sel.variables if v not in layouts]
    if missing:
        raise SelectionError(f"unknown variable(s) {missing}; the store has {sorted(layouts)}")
    scenes = select_scenes(sel, times, names)
    channels = select_channels(sel, channel_names)
    grid = next((lay.shape[-2], lay.shape[-1]) for lay in layouts.values() if lay.dims[-2:] == ("y", "x"))
    window = resolve_window(sel, grid)
    held = tuple(int(s) for s in scenes if s in set(filled)) if filled is not None else None
    # a scaffold says which scenes hold data: the others are never read (their chunks do not exist)
    to_read = np.asarray(held if held is not None else scenes, dtype=np.int64)
    reads = tuple(variable_read(v, layouts[v], to_read, channels, window) if len(to_read) else
                  VariableRead(v, 0, 0, 0) for v in sel.variables)
    full = None
    if held is not None:  # the same query once every selected scene holds data
        full = tuple(variable_read(v, layouts[v], np.asarray(scenes, dtype=np.int64), channels, window)
                     if len(scenes) else VariableRead(v, 0, 0, 0) for v in sel.variables)
    return SubsetPlan(scenes=tuple(int(s) for s in scenes), channels=tuple(int(c) for c in channels),
                      window=window, reads=reads, filled=held, full_reads=full)


# --------------------------------------------------------------------------- stores


def _as_store(source: Any, read_only: bool = True) -> Store:
    """A zarr store from a URL/path, a :class:`StoreLocation` or a zarr store."""
    if isinstance(source, Store):
        return source
    loc = source if isinstance(source, StoreLocation) else StoreLocation(str(source))
    return loc.zarr_store(read_only=read_only)


def _label(source: Any) -> str:
    return getattr(source, "url", None) or str(getattr(source, "root", source))


@dataclass(frozen=True)
class StoreSummary:
    """What the plan and the writer need from a source store: metadata and per-scene coordinates."""

    layouts: dict[str, ArrayLayout]
    times: np.ndarray
    names: tuple[str, ...]
    channel_names: tuple[str, ...]
    attrs: dict = field(default_factory=dict)

    @property
    def filled(self) -> list[int] | None:
        return self.attrs.get(FILLED_ATTR)


def summarize(source: Any) -> StoreSummary:
    """Read the consolidated metadata and the per-scene coordinates (one chunk each); no data chunks."""
    ds = decode_strings(xr.open_zarr(_as_store(source), consolidated=True, chunks=None))
    g = zarr.open_group(_as_store(source), mode="r", use_consolidated=True)
    layouts = {}
    for name in map(str, ds.data_vars):
        arr = array_in(g, name)
        layouts[name] = ArrayLayout(dims=tuple(map(str, ds[name].dims)), shape=tuple(arr.shape), chunks=tuple(arr.chunks),
                                    itemsize=arr.dtype.itemsize)
    return StoreSummary(layouts=layouts, times=ds["time"].values, names=tuple(map(str, ds["source_name"].values)),
                        channel_names=tuple(map(str, ds["channel"].values)), attrs=dict(ds.attrs))


def dry_run(source: Any, sel: Selection) -> tuple[SubsetPlan, StoreSummary]:
    """The plan of ``sel`` on ``source``, reading metadata and per-scene coordinates only."""
    summary = summarize(source)
    plan = plan_subset(sel, times=summary.times, names=summary.names, channel_names=summary.channel_names,
                       layouts=summary.layouts, filled=summary.filled)
    return plan, summary


def select(ds: xr.Dataset, sel: Selection) -> xr.Dataset:
    """The selection over a (lazy) dataset: nothing is read until the result is computed."""
    scenes = select_scenes(sel, ds["time"].values, [str(s) for s in ds["source_name"].values])
    channels = select_channels(sel, [str(c) for c in ds["channel"].values])
    y0, y1, x0, x1 = resolve_window(sel, (ds.sizes["y"], ds.sizes["x"]))
    out = ds[list(sel.variables)].isel({RECORD_DIM: scenes, "y": slice(y0, y1), "x": slice(x0, x1)})
    return out.isel(channel=channels) if "channel" in out.dims else out


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class CopyScene:
    """Task: read one scene's selection from the source (exactly the planned chunks) and write it
    as record ``index`` of the destination. Picklable when ``source`` is a URL or location."""

    source: Any
    dest: Any  # StoreLocation
    variables: tuple[str, ...]
    channels: tuple[int, ...]
    window: tuple[int, int, int, int]

    def __call__(self, job: tuple[int, int, str]) -> dict:
        index, scene, name = job
        store = RecordStore(self.dest, RECORD_DIM)
        g = zarr.open_group(_as_store(self.source), mode="r", use_consolidated=True)
        y0, y1, x0, x1 = self.window
        arrays = {}
        for v in self.variables:
            arr = array_in(g, v)
            picks: dict[str, int | slice | npt.NDArray[np.int64]] = {
                RECORD_DIM: scene, "channel": np.asarray(self.channels, dtype=np.int64), "y": slice(y0, y1),
                "x": slice(x0, x1)}
            sel = tuple(picks.get(str(d), slice(None)) for d in dimension_names(arr) or ())
            arrays[v] = np.asarray(arr.get_orthogonal_selection(sel))
        written = store.write_record(index, arrays)
        info = {"key": name, "source_index": scene, "bytes": int(sum(a.nbytes for a in arrays.values()))}
        return store.mark_done(index, info, written)


@dataclass(frozen=True)
class SubsetReport:
    dest: str
    plan: SubsetPlan
    written: int
    failed: tuple[tuple[str, str], ...]
    status: str
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return not self.failed and self.status in ("complete", "scaffold")

    def lines(self) -> list[str]:
        held = len(self.plan.filled) if self.plan.filled is not None else len(self.plan.scenes)
        out = [f"destination: {self.dest}", f"scenes written: {self.written} of {held} holding data "
               f"({len(self.plan.scenes)} selected) in {self.elapsed_s:.1f} s", f"status: {self.status}"]
        out += [f"failed {k}: {e}" for k, e in self.failed]
        return out


def _template(source_ds: xr.Dataset, plan: SubsetPlan, variables: Sequence[str]) -> xr.Dataset:
    y0, y1, x0, x1 = plan.window
    scenes = np.asarray(plan.scenes, dtype=np.int64)
    sub = source_ds.isel({RECORD_DIM: scenes, "y": slice(y0, y1), "x": slice(x0, x1),
                          "channel": np.asarray(plan.channels, dtype=np.int64)})
    data = {}
    for v in variables:
        src = sub[v]
        data[v] = (src.dims, da.zeros(src.shape, dtype=src.dtype, chunks=-1), dict(src.attrs))
    coords: dict[Hashable, tuple[Any, ...]] = {c: (sub[c].dims, sub[c].values, dict(sub[c].attrs)) for c in sub.coords
              if sub[c].dims and sub[c].dims[0] in (RECORD_DIM, "channel")}
    coords["source_scene"] = (RECORD_DIM, scenes, {"long_name": "record index of the scene in the source store"})
    attrs = {k: v for k, v in source_ds.attrs.items() if k not in (STATUS_ATTR, FILLED_ATTR, "scibench_scaffold")}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def write_subset(source: Any, dest: Any, sel: Selection, *, scheduler: str = "threads",
                 n_workers: int | None = None, retries: int = 1, progress: bool = True) -> SubsetReport:
    """Write the selection of ``source`` (URL, :class:`StoreLocation` or zarr store) into a new store
    ``dest`` with one task per scene. Resumable like a conversion; complete only when finished.

    Output chunks are the source's tiles starting at the window's corner, one scene per chunk
    along ``scene``; every write is a whole record, so writes are chunk-aligned by construction.
    If the source is a scaffold and some selected scenes hold no data, the output is
    consolidated with status ``"scaffold"`` and lists the scenes that do.
    """
    t0 = _time.perf_counter()
    plan, summary = dry_run(source, sel)
    if not plan.scenes:
        raise SelectionError(f"the selection keeps no scene of {_label(source)}")
    location = dest if isinstance(dest, StoreLocation) else StoreLocation(str(dest))
    # text stays in the source's portable encoding (flag codes, UTF-8 bytes): a subset is a store we
    # write, readable by any Zarr implementation like the source
    src_ds = xr.open_zarr(_as_store(source), consolidated=True)
    tmpl = _template(src_ds, plan, sel.variables)
    y0, y1, x0, x1 = plan.window
    enc: dict[str, dict] = {}
    for v in sel.variables:
        lay = summary.layouts[v]
        chunks = tuple(1 if d == RECORD_DIM else len(plan.channels) if d == "channel" else
                       min(c, y1 - y0) if d == "y" else min(c, x1 - x0) if d == "x" else c
                       for d, c in zip(lay.dims, lay.chunks))
        enc[v] = encoding_for(lay.itemsize, chunks)
        enc[v]["fill_value"] = array_in(zarr.open_group(_as_store(source), mode="r", use_consolidated=True), v).fill_value
    for c in (*SCENE_COORDS, "source_scene"):
        if c in tmpl.coords:
            enc[c] = {"chunks": (SCENE_COORD_CHUNK, *tmpl[c].shape[1:])}  # UTF-8 text: (scene, nchar)
    if "time" in enc:
        enc["time"].update({"units": "milliseconds since 1970-01-01", "dtype": "int64"})
    keys = [summary.names[s] for s in plan.scenes]
    store = RecordStore(location, RECORD_DIM)
    if is_address(scheduler):  # every worker reads the source's root and sees and writes dest, before any write
        src_loc = source if isinstance(source, StoreLocation) else StoreLocation(str(source)) \
            if isinstance(source, str) else None
        preflight(scheduler, dest=location, source=src_loc.fs.unstrip_protocol(src_loc.path("zarr.json"))
                  if src_loc else None, source_storage_options=src_loc.options if src_loc else None)
    with WriterLock(location, operation="subset"):
        state = store.prepare(tmpl, enc, keys, {"format": "subset", "source": _label(source),
                                                 "selection": sel.as_dict()})
        done = store.done() if state != "created" else {}
        if state == "complete":
            return SubsetReport(location.url, plan, len(keys), (), "complete", _time.perf_counter() - t0)
        # a scaffold's scenes without data are neither read nor written (their chunks stay absent)
        held = set(plan.filled) if plan.filled is not None else set(plan.scenes)
        jobs = [(i, s, keys[i]) for i, s in enumerate(plan.scenes) if i not in done and s in held]
        task = CopyScene(source, location, tuple(sel.variables), plan.channels, plan.window)
        results = run_tasks(task, jobs, [job[2] for job in jobs], scheduler=scheduler, n_workers=n_workers,
                            retries=retries, desc="subset", unit="scene", progress=progress,
                            bytes_of=lambda v: v["bytes"])
        failed = tuple((r.key, r.error) for r in results if not r.ok)
        status = "incomplete"
        if not failed:
            attrs = {SUBSET_ATTR: {"source": _label(source), "selection": sel.as_dict(),
                                   "window": list(plan.window)}}
            sha = src_ds["source_sha256"].values[list(plan.scenes)] if "source_sha256" in src_ds else None
            arrays = {"source_sha256": np.asarray(sha, dtype=sha.dtype if sha.dtype.kind == "u" else object)} \
                if sha is not None else {}
            if plan.filled is not None and len(plan.filled) < len(plan.scenes):
                filled = [i for i, s in enumerate(plan.scenes) if s in set(plan.filled)]
                store.finalize_as("scaffold", arrays, {**attrs, FILLED_ATTR: filled})
                status = "scaffold"
            else:
                store.finalize(arrays, attrs)
                status = "complete"
    return SubsetReport(location.url, plan, len(done) + sum(r.ok for r in results), failed, status,
                        _time.perf_counter() - t0)
