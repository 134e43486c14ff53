"""A Zarr store filled record by record (a scene, a sample) by independent tasks.

The life of a store, and what each step writes:

1. ``create``: the metadata of every array (shape for all records, chunk
   size 1 along the record dimension, fill values that cannot be mistaken for
   data), the values known up front, then ``_scibench/plan.json`` (which
   source goes to which record). Root attribute ``scibench_status`` is
   ``"incomplete"`` and there is no consolidated metadata.
2. ``write_record``: one task writes one whole record (``write_block``: a
   contiguous block of records); the region is checked against the chunk grid
   first, so a misaligned write cannot happen.
3. ``mark_done``: only after the record's data is written, a marker
   ``_scibench/done/{index:08d}.json`` holds its provenance. The coordinator
   gathers the markers its tasks return into the inventory
   (``_scibench/inventory.json``, every finished record's marker in one
   object), rewritten every :data:`CHECKPOINT_EVERY` records, or a quarter of those it holds
   (:class:`InventoryCheckpoint`) and at finalize, so a resume or an append
   lists the markers and reads one object instead of one marker per record
   (:meth:`RecordStore.done`).
4. ``finalize``: when every record has a marker, stray temporaries of
   killed writes are removed, the provenance arrays are written, the
   inventory, the manifest (``_scibench/manifest.json``: every object's key, size and
   sha256, the new root included) is written, and last root ``zarr.json`` is
   replaced in one atomic write (a temporary file and a rename locally, one
   PUT on S3) with status ``"complete"`` and the consolidated metadata. A
   store is never ``complete`` without its consolidated metadata and
   manifest; a failed write (a full disk) leaves it ``incomplete``, and the
   same command finishes it.

A store is complete only if its root has both; the catalog opens stores with
``consolidated: true``, so an interrupted store cannot be opened as complete.
Rerunning resumes: records with a readable marker are skipped, and the
temporaries a killed write left (``*.<uuid>.partial``, ``*.tmp``) are removed.
A record counts as written only if its marker names the key the plan gives
that record, so re-planning a record (a reprocessed product replacing a scene)
makes it unwritten until its new data and marker are written.

Growing a complete store (appending records) goes the same way back:
``begin_update`` rewrites root ``zarr.json`` once with status
``"incomplete"`` and without consolidated metadata, ``grow`` resizes the
record dimension (existing chunks are not touched) and extends the plan, the
new records are written and marked, and ``finalize`` makes it complete again.

``finalize_as`` consolidates a store whose records are not all written under
another status (e.g. ``"scaffold"``): it opens, but never reads as complete.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.metadata import ArrayV3Metadata
from zarr.storage import WrapperStore

from scibench_data.atomic import write_bytes
from scibench_data.storage.store.chunk_writer import Written, write_region
from scibench_data.storage.store.encoding import with_checksums
from scibench_data.storage.store.hashing import sha256_bytes
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.manifest import (
    MANIFEST_KEY,
    Manifest,
    ManifestEntry,
    build_manifest,
    is_temporary,
)
from scibench_data.storage.store.regions import Region, check_region_aligned

STATUS_ATTR = "scibench_status"
STATE_DIR = "_scibench"
PLAN_KEY = (STATE_DIR, "plan.json")
PREVIOUS_MANIFEST_KEY = (STATE_DIR, "manifest.previous.json")
#: Object store only: size, ETag and sha256 of every object at the last finalize (see :func:`store_manifest`).
ETAGS_KEY = (STATE_DIR, "etags.json")
DONE_DIR = (STATE_DIR, "done")
INVENTORY_KEY = (STATE_DIR, "inventory.json")
INVENTORY_FORMAT = 1
#: The coordinator rewrites the inventory after this many finished records, or a quarter
#: (:data:`CHECKPOINT_GROWTH`) of those it holds when that is more, and at least every
#: :data:`CHECKPOINT_SECONDS`: a resume after a kill reads at most that many markers one by one, and
#: the rewrites of a run add up to ~4x the final inventory (every 256 records they were ~20x at
#: 9,800 records, each rewrite holding up the coordinator).
CHECKPOINT_EVERY = 256
CHECKPOINT_GROWTH = 0.25
CHECKPOINT_SECONDS = 120.0
#: Markers not yet in the inventory are read with this many requests in flight.
MARKER_READERS = 16


class StoreStateError(RuntimeError):
    """The destination holds something this operation must not touch."""


class StoreIncompleteError(StoreStateError, ValueError):
    """A store about to be read is not finished (a ``ValueError`` too, as zarr's refusal of a store
    without consolidated metadata was)."""


class StoreFullError(StoreStateError):
    """A write failed because the disk (or the file size limit) is full; the store stays incomplete."""


_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_full_disk(err: BaseException) -> bool:
    """Whether ``err`` is a full disk or file-size limit (ENOSPC, EFBIG, EDQUOT)."""
    return isinstance(err, OSError) and err.errno in _FULL


def array_in(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group``; a group of that name is a :class:`StoreStateError`."""
    member = group[name]
    if not isinstance(member, zarr.Array):
        raise StoreStateError(f"{name!r} in {group.store} is a group, not an array")
    return member


def dimension_names(arr: zarr.Array) -> tuple[str | None, ...] | None:
    """The dimension names a Zarr v3 array declares (None for a v2 array or none declared)."""
    meta = arr.metadata
    return meta.dimension_names if isinstance(meta, ArrayV3Metadata) else None


def full_disk_error(location: StoreLocation, err: BaseException, what: str) -> StoreFullError | None:
    """A one-line :class:`StoreFullError` when ``err`` is a full disk (ENOSPC, EFBIG, EDQUOT), else None."""
    if not isinstance(err, OSError) or err.errno is None or not is_full_disk(err):
        return None
    return StoreFullError(f"{location.url}: out of space writing {what} ({os.strerror(err.errno)}); the store stays "
                          "incomplete: free space and rerun the same command to finish it")


@dataclass(frozen=True)
class StoreState:
    exists: bool
    ours: bool
    status: str  # "absent", "incomplete" or "complete"
    consolidated: bool

    @property
    def complete(self) -> bool:
        return self.status == "complete" and self.consolidated


def incomplete_reason(state: StoreState, accept: tuple[str, ...] = ("complete",)) -> str:
    """Why ``state`` is not a finished store (status in ``accept`` and consolidated), or ``""``."""
    if state.status == "absent":
        return "no root zarr.json: the store was never finished (or its writer was interrupted)"
    if state.status not in accept:
        return (f"root status {state.status!r} (not {' or '.join(map(repr, accept))}): a conversion, append or "
                "pull was interrupted or is still running; rerun it to finish the store")
    if not state.consolidated:
        return f"root status {state.status!r} but no consolidated metadata: the final write did not happen"
    return ""


#: Root statuses a reader accepts: a complete store, a finished partial pull, a finished scaffold
#: (``finalize_as``: its unwritten records are documented fill). ``incomplete`` never.
READABLE_STATUSES = ("complete", "partial", "scaffold")

#: The command that finishes a store, by the ``format`` its plan records.
FINISHING_COMMANDS = {
    "cloudmask": "scibench-data convert cloudmask SRC DEST --layout LAYOUT (or, for an append, append cloudmask)",
    "stemdl": "scibench-data convert stemdl SRC DEST",
    "candle_uno": "scibench-data convert uno SRC DEST",
    "subset": "the same subset command",
}


def finishing_command(location: StoreLocation) -> str:
    """The command that finishes an unfinished store, from its plan or pull record (one or two reads)."""
    plan = location.read_json(*PLAN_KEY) or {}
    if plan.get("format") in FINISHING_COMMANDS:
        return FINISHING_COMMANDS[plan["format"]]
    if location.read_json(STATE_DIR, "pull.json") is not None:
        return "scibench-data pull DATASET --to DIR"
    return "the conversion, append or pull that wrote it"


def require_complete(location: StoreLocation) -> StoreState:
    """The state of a store about to be read (a loader, the catalog's ``to_dask``); :class:`StoreStateError`
    unless it is finished (:data:`READABLE_STATUSES`, with consolidated metadata), naming its status and
    the command that finishes it (the rule ``verify`` applies)."""
    state = store_state(location)
    if not state.exists:
        raise FileNotFoundError(f"{location.url}: no store here (convert or pull one first)")
    reason = incomplete_reason(state, accept=READABLE_STATUSES)
    if reason:
        bare = "" if state.consolidated else " (no consolidated metadata)"
        raise StoreIncompleteError(f"{location.url} cannot be read{bare}: {reason} (finish it with: "
                                   f"{finishing_command(location)})")
    return state


def store_state(location: StoreLocation) -> StoreState:
    """Read the root ``zarr.json`` (one request) and say what the store is."""
    root = location.read_json("zarr.json")
    if root is None:
        exists = location.fs.exists(location.root) and bool(_non_state_entries(location))
        return StoreState(exists=exists, ours=False, status="absent", consolidated=False)
    status = (root.get("attributes") or {}).get(STATUS_ATTR)
    return StoreState(exists=True, ours=status is not None, status=status or "unknown",
                      consolidated=root.get("consolidated_metadata") is not None)


def _non_state_entries(location: StoreLocation) -> list[str]:
    try:
        return [p for p in location.fs.ls(location.root, detail=False)
                if posixpath.basename(p.rstrip("/")) != STATE_DIR]
    except FileNotFoundError:
        return []


def marker_key(index: int) -> tuple[str, ...]:
    return (*DONE_DIR, f"{index:08d}.json")


def remove_temporaries(location: StoreLocation) -> int:
    """Delete the temporaries killed writes left in a local store (zarr's ``*.<uuid>.partial``, our
    ``*.tmp``); returns how many. Object stores have none (every object is one PUT). Only the
    lock holder calls this."""
    if not location.is_local:
        return 0
    removed = 0
    for folder, _, files in os.walk(location.root):
        for name in files:
            if is_temporary(name):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def write_atomic(location: StoreLocation, data: bytes, *parts: str) -> None:
    """Replace one object in a single step: a temporary file, fsync and a rename locally; one PUT
    on an object store. A failure leaves the previous object (and no temporary) behind."""
    path = location.path(*parts)
    if not location.is_local:
        location.fs.pipe_file(path, data)
        return
    write_bytes(path, data)


class _RootCapture(WrapperStore[Store]):
    """A store whose root ``zarr.json`` writes are held in memory (and served back), so attribute
    updates and consolidation compose the final root without writing it."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.root: bytes | None = None

    def _with_store(self, store: Store) -> _RootCapture:
        out = type(self)(store)
        out.root = self.root
        return out

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if key == "zarr.json" and self.root is not None and byte_range is None:
            return prototype.buffer.from_bytes(self.root)
        return await self._store.get(key, prototype, byte_range)

    async def set(self, key: str, value: Buffer) -> None:
        if key == "zarr.json":
            self.root = value.to_bytes()
            return
        await self._store.set(key, value)



def _writable(template: xr.Dataset, encoding: Mapping[str, dict]) -> xr.Dataset:
    """A copy of ``template`` marked incomplete, without the ``_FillValue`` attrs that ``encoding``
    carries as ``fill_value`` (the caller's template is left as it was)."""
    out = template.copy(deep=False)
    out.attrs = {**template.attrs, STATUS_ATTR: "incomplete"}
    for name, enc in encoding.items():
        if name in out.variables and "fill_value" in enc:
            out.variables[name].attrs = {k: v for k, v in out.variables[name].attrs.items() if k != "_FillValue"}
    return out


class RecordStore:
    """Create, fill, resume and finalize a store along one record dimension."""

    def __init__(self, location: StoreLocation, record_dim: str) -> None:
        self.location = location
        self.record_dim = record_dim
        self._group: zarr.Group | None = None

    # ------------------------------------------------------------------ create / resume

    def plan(self) -> dict | None:
        return self.location.read_json(*PLAN_KEY)

    def prepare(self, template: xr.Dataset, encoding: Mapping[str, dict], keys: Sequence[str],
                plan_info: Mapping[str, object]) -> str:
        """Create the store, or check that an existing one was planned identically.

        Returns ``"created"``, ``"resuming"`` or ``"complete"``.
        """
        plan = {"record_dim": self.record_dim, "keys": list(keys), **plan_info}
        state = store_state(self.location)
        existing = self.plan()
        if state.exists and existing is None and not (state.ours and state.status == "incomplete"):
            raise StoreStateError(
                f"{self.location.url} already holds data that scibench-data did not start; "
                "choose another destination or remove it"
            )
        if existing is not None:
            if existing != plan:
                raise StoreStateError(_plan_difference(self.location.url, existing, plan))
            if state.complete:
                return "complete"
            if state.exists:
                remove_temporaries(self.location)
                return "resuming"
        if state.exists:  # a create that was killed before the plan was written: start over
            for p in _non_state_entries(self.location):
                self.location.fs.rm(p, recursive=True)
        template = _writable(template, encoding)
        try:
            template.to_zarr(self.location.zarr_store(), mode="a", compute=False, consolidated=False,
                             zarr_format=3, encoding=with_checksums(dict(encoding), [str(n) for n in template.variables]))
        except OSError as err:
            raise full_disk_error(self.location, err, "the array metadata") or err
        self.location.write_json(plan, *PLAN_KEY)
        return "created"

    # ------------------------------------------------------------------ records

    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = zarr.open_group(self.location.zarr_store(), mode="r+", zarr_format=3)
        return self._group

    def write_record(self, index: int, arrays: Mapping[str, np.ndarray]) -> Written:
        """Write whole records (chunk size 1 along the record dimension): aligned by construction,
        and checked against the chunk grid before any byte is written. Returns what :meth:`write_block` does."""
        return self.write_block(index, {name: np.asarray(data)[None] for name, data in arrays.items()})

    def write_block(self, start: int, arrays: Mapping[str, np.ndarray]) -> Written:
        """Write records ``start .. start + n`` at once (arrays ``(n, ...)``). Every region is checked
        against the chunk grid before any byte is written, so the record-dimension chunk must
        divide the block (or the block must end the array). Chunks of our codec chain are encoded
        and put directly (:mod:`~scibench_data.storage.store.chunk_writer`: the same bytes as zarr's write).
        Returns the size and sha256 of each chunk object written directly (a caller puts them in its
        marker, so :meth:`finalize` need not read them back for the manifest); chunks zarr wrote are not in it."""
        g = self.group()
        targets = []
        for name, data in arrays.items():
            arr = array_in(g, name)
            if arr.shape[1:] != data.shape[1:]:
                raise ValueError(f"{name}: record shape {data.shape[1:]} != store shape {arr.shape[1:]}")
            region = Region((start,) + (0,) * (data.ndim - 1), (start + data.shape[0],) + data.shape[1:])
            check_region_aligned(region, arr.chunks, arr.shape, name)
            targets.append((arr, region, data))
        written: Written = {}
        try:
            for arr, region, data in targets:
                direct = write_region(arr, region, data)  # encoded on two threads; zarr for other codec chains
                if direct is None:
                    arr[region.slices()] = data
                else:
                    written.update(direct)
        except OSError as err:
            n = next(iter(arrays.values())).shape[0] if arrays else 1
            raise full_disk_error(self.location, err, f"records {start}..{start + n - 1}") or err
        return written

    def mark_done(self, index: int, info: Mapping[str, object], chunks: Written | None = None) -> dict:
        """Write record ``index``'s marker (``info``, and the size and sha256 of the ``chunks`` its task
        wrote, as :meth:`write_block` returns them, so :meth:`finalize` need not read them back) and
        return it: a task returns it so the run's inventory holds what the marker holds."""
        marker = {**info, "index": index}
        if chunks:
            marker[MARKER_CHUNKS] = {k: list(v) for k, v in sorted(chunks.items())}
        try:
            self.location.write_json(marker, *marker_key(index))
        except OSError as err:
            raise full_disk_error(self.location, err, f"the marker of record {index}") or err
        return marker

    def done(self, keys: Sequence[str] | None = None, complete: bool = False) -> dict[int, dict]:
        """Finished records by index, each with its marker.

        ``complete``: the store is finished (its root says so), so its inventory, written at that
        finalize, holds every record and no marker was written since (a writer first calls
        :meth:`begin_update`): when it covers every planned record, that one read is all.
        Otherwise one listing of ``_scibench/done/`` (the markers are what says a record is
        written: a deleted marker makes its record unwritten again), one read of the inventory for
        the markers' contents, and one read per listed marker the inventory lacks (those written
        since the last checkpoint). A half-written marker does not count, nor one that names
        another key than the plan's ``keys`` (the plan is read when ``keys`` is not given)."""
        if keys is None:
            keys = (self.plan() or {}).get("keys")
        if complete and keys is not None:
            held = {i: m for i, m in self.read_inventory().items() if _names_planned_key(m, i, keys)}
            if len(held) == len(keys):
                return held
        fs = self.location.fs
        prefix = self.location.path(*DONE_DIR)
        try:
            fs.invalidate_cache(prefix)
            names = fs.ls(prefix, detail=False)
        except FileNotFoundError:
            return {}
        listed = []
        for name in names:
            base = posixpath.basename(name)
            stem = base[:-len(".json")] if base.endswith(".json") else ""
            if stem.isdigit():
                listed.append((int(stem), base))
        inventory = self.read_inventory() if listed else {}
        out = {i: inventory[i] for i, _ in listed if i in inventory and _names_planned_key(inventory[i], i, keys)}
        unread = [base for i, base in listed if i not in out]

        def read(base: str) -> dict | None:
            return self.location.read_json(*DONE_DIR, base)

        with ThreadPoolExecutor(max_workers=max(1, min(MARKER_READERS, len(unread)))) as pool:
            for marker in pool.map(read, unread):
                if marker is not None and "index" in marker and _names_planned_key(marker, int(marker["index"]), keys):
                    out[int(marker["index"])] = marker
        return out

    def read_inventory(self) -> dict[int, dict]:
        """The markers the inventory holds, by record index (empty when there is none or it is unreadable)."""
        inv = self.location.read_json(*INVENTORY_KEY) or {}
        records = inv.get("records") if inv.get("format") == INVENTORY_FORMAT else None
        if not isinstance(records, list):
            return {}
        return {int(m["index"]): m for m in records if isinstance(m, dict) and "index" in m}

    def write_inventory(self, markers: Mapping[int, Mapping[str, object]]) -> None:
        """Replace the inventory with ``markers`` (each a finished record's marker) in one atomic write."""
        records = [{**markers[i], "index": i} for i in sorted(markers)]
        data = json.dumps({"format": INVENTORY_FORMAT, "records": records}, sort_keys=True,
                          separators=(",", ":")).encode()
        try:
            write_atomic(self.location, data, *INVENTORY_KEY)
        except OSError as err:
            raise full_disk_error(self.location, err, "the inventory") or err

    # ------------------------------------------------------------------ finalize

    def finalize(self, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any],
                 markers: Mapping[int, Mapping[str, object]] | None = None) -> None:
        """Write whole-array values known only at the end, then mark complete and consolidate.

        ``markers``: every record's marker, when the caller holds them (from :meth:`done` and its
        tasks' results); otherwise they are read (:meth:`done`). They become the inventory."""
        keys = list((self.plan() or {}).get("keys", []))
        markers = self.done(keys) if markers is None else markers
        missing = sorted(set(range(len(keys))) - set(markers))
        if missing:
            raise StoreStateError(f"{self.location.url}: {len(missing)} record(s) not written yet, e.g. {missing[:5]}")
        self._finish(arrays, {**attrs, STATUS_ATTR: "complete"}, with_manifest=True, markers=markers)

    def finalize_as(self, status: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
        """Write whole-array values and consolidate under ``status``, which must not be ``"complete"``:
        for stores whose records are deliberately not all written (say which in ``attrs``)."""
        if status in ("complete", "incomplete", ""):
            raise ValueError(f"finalize_as needs a status other than {status!r} (use finalize for complete stores)")
        self._finish(arrays, {**attrs, STATUS_ATTR: status}, with_manifest=False)

    def _finish(self, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any], with_manifest: bool,
                markers: Mapping[int, Mapping[str, object]] | None = None) -> None:
        """Remove temporaries, write ``arrays``, compose the final root (``attrs`` and the consolidated
        metadata) in memory, write the inventory and the manifest, then replace the root in one atomic write."""
        what = "the final arrays"
        if markers is not None:
            self.write_inventory(markers)
        try:
            remove_temporaries(self.location)
            capture = _RootCapture(self.location.zarr_store())
            g = zarr.open_group(capture, mode="r+", zarr_format=3, use_consolidated=False)
            for name, values in arrays.items():
                array_in(g, name)[...] = values
            g.attrs.update(dict(attrs))
            zarr.consolidate_metadata(capture)
            root = capture.root
            if root is None:
                raise StoreStateError(f"{self.location.url}: consolidation produced no root zarr.json")
            if with_manifest:
                what = "the manifest"
                manifest = store_manifest(self.location, root, written=written_chunks(markers or {}))
                write_atomic(self.location, manifest.to_bytes(), *MANIFEST_KEY)
            what = "the root zarr.json"
            write_atomic(self.location, root, "zarr.json")
            if with_manifest and self.location.is_local:
                try:
                    os.unlink(self.location.path(*PREVIOUS_MANIFEST_KEY))
                except FileNotFoundError:
                    pass
        except OSError as err:
            raise full_disk_error(self.location, err, what) or err
        self._group = None

    # ------------------------------------------------------------------ grow (append)

    def begin_update(self) -> None:
        """Mark a finished store incomplete before changing it: one rewrite of root ``zarr.json``
        that sets the status to ``"incomplete"`` and drops the consolidated metadata, so no
        reader can take a half-changed store for a complete one."""
        root = self.location.read_json("zarr.json")
        if root is None or STATUS_ATTR not in (root.get("attributes") or {}):
            raise StoreStateError(f"{self.location.url} is not a store written by scibench-data")
        root["attributes"][STATUS_ATTR] = "incomplete"
        root.pop("consolidated_metadata", None)
        self.location.write_json(root, "zarr.json")
        # The manifest described the finished store; finalize writes the next one. Kept locally as
        # the previous manifest (a rename keeps its mtime: when the store was last finalized), so
        # finalize re-hashes only objects written since.
        current, previous = self.location.path(*MANIFEST_KEY), self.location.path(*PREVIOUS_MANIFEST_KEY)
        try:
            if self.location.is_local:
                os.replace(current, previous)
            else:
                self.location.fs.rm_file(current)
        except FileNotFoundError:
            pass
        self._group = None

    def record_arrays(self) -> list[str]:
        """Names of the arrays whose first dimension is the record dimension."""
        g = zarr.open_group(self.location.zarr_store(), mode="r", zarr_format=3, use_consolidated=False)
        return sorted(name for name, arr in g.arrays() if (dimension_names(arr) or (None,))[0] == self.record_dim)

    def grow(self, keys: Sequence[str], plan_info: Mapping[str, object],
             values: Mapping[str, np.ndarray], replaced: Sequence[int] = ()) -> int:
        """Extend the record dimension to ``len(keys)`` records; returns the number of records before.

        The store must be incomplete (``begin_update``) and the planned keys must be a prefix
        of ``keys``, except at the ``replaced`` records (re-planned: another source for an
        existing record, e.g. a reprocessed product; their old markers no longer count, so
        they are unwritten until written again). Steps, each safe to repeat after a crash:
        resize every record array (existing chunks are not rewritten), write ``values``
        (full-length per-record arrays, e.g. names and times) into the new and replaced
        records only, then rewrite the plan.
        """
        state = store_state(self.location)
        if state.complete:
            raise StoreStateError(f"{self.location.url} is complete; call begin_update before grow")
        plan = self.plan()
        if plan is None:
            raise StoreStateError(f"{self.location.url} has no plan; it was never prepared")
        old = list(plan.get("keys", []))
        n_old, n_new = len(old), len(keys)
        replaced = sorted({int(i) for i in replaced})
        if replaced and not 0 <= replaced[0] <= replaced[-1] < n_old:
            raise ValueError(f"replaced records {replaced[:5]} are not within the {n_old} planned ones")
        kept = set(range(n_old)) - set(replaced)
        if n_new < n_old or any(keys[i] != old[i] for i in kept):
            raise StoreStateError(f"{self.location.url}: the new keys must extend the planned ones in order")
        for name, v in values.items():
            if len(v) != len(keys):
                raise ValueError(f"{name}: {len(v)} values for {len(keys)} records")
        g = zarr.open_group(self.location.zarr_store(), mode="r+", zarr_format=3, use_consolidated=False)
        for name in self.record_arrays():
            arr = array_in(g, name)
            if arr.shape[0] != n_new:
                arr.resize((n_new, *arr.shape[1:]))
        if n_new > n_old or replaced:
            for name, v in values.items():
                v = np.asarray(v)
                arr = array_in(g, name)
                if n_new > n_old:
                    arr[n_old:n_new] = v[n_old:n_new]
                for i in replaced:
                    arr[i:i + 1] = v[i:i + 1]
        self.location.write_json({**plan, **plan_info, "record_dim": self.record_dim, "keys": list(keys)}, *PLAN_KEY)
        self._group = None
        return n_old


def _names_planned_key(marker: Mapping[str, object], index: int, keys: Sequence[str] | None) -> bool:
    """Whether a marker stands for record ``index`` as planned: inside the plan and, when it names a
    key, the plan's key for that record (an earlier product's marker of a re-planned record does not)."""
    if keys is None:
        return True
    return 0 <= index < len(keys) and ("key" not in marker or marker["key"] == keys[index])


class InventoryCheckpoint:
    """The coordinator's running inventory: the markers known at the start plus those its tasks return,
    written after ``every`` new records or ``growth`` times the records it holds (whichever is more), or
    after ``seconds`` (whichever comes first), and by :meth:`flush`. Each write is the whole inventory,
    so a fixed interval would cost O(n^2) bytes over a run; growing it with the inventory keeps the
    total to ~(1 + 1/growth) times the final one.

    Only markers of records whose data and marker were written may be added (a task returns its
    marker after :meth:`RecordStore.mark_done`), so the inventory never claims an unwritten record."""

    def __init__(self, store: RecordStore, known: Mapping[int, Mapping[str, object]],
                 every: int = CHECKPOINT_EVERY, seconds: float = CHECKPOINT_SECONDS,
                 growth: float = CHECKPOINT_GROWTH) -> None:
        if every < 1 or seconds <= 0 or growth < 0:
            raise ValueError(f"checkpoint every >= 1 record, > 0 s and growth >= 0, got {every}, {seconds} and {growth}")
        self.store, self.every, self.seconds, self.growth = store, every, seconds, growth
        self.markers: dict[int, dict] = {int(i): dict(m) for i, m in known.items()}
        self._pending = 0
        self._last = time.monotonic()

    def add(self, index: int, marker: Mapping[str, object]) -> None:
        self.markers[int(index)] = {**marker, "index": int(index)}
        self._pending += 1
        due = max(self.every, int(self.growth * len(self.markers)))
        if self._pending >= due or time.monotonic() - self._last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        """Write the inventory if any record was added since the last write."""
        if self._pending:
            self.store.write_inventory(self.markers)
        self._pending = 0
        self._last = time.monotonic()


#: The field of a record's marker that holds the size and sha256 of the chunk objects its task wrote.
MARKER_CHUNKS = "chunks"
_HEX = frozenset("0123456789abcdef")


def written_chunks(markers: Mapping[int, Mapping[str, object]]) -> dict[str, tuple[int, str]]:
    """Store key -> (size, sha256) of the chunk objects the records' tasks wrote, from their markers
    (:data:`MARKER_CHUNKS`). A malformed entry is left out: that object is then hashed from storage."""
    out: dict[str, tuple[int, str]] = {}
    for marker in markers.values():
        chunks = marker.get(MARKER_CHUNKS) if isinstance(marker, Mapping) else None
        if not isinstance(chunks, Mapping):
            continue
        for key, value in chunks.items():
            if (isinstance(key, str) and isinstance(value, (list, tuple)) and len(value) == 2
                    and type(value[0]) is int and value[0] >= 0 and isinstance(value[1], str)
                    and len(value[1]) == 64 and set(value[1]) <= _HEX):
                out[key] = (value[0], value[1])
    return out


def store_manifest(location: StoreLocation, root: bytes, written: Mapping[str, tuple[int, str]] | None = None) -> Manifest:
    """The manifest of a store about to be finalized: every object as it is now, with root
    ``zarr.json`` as ``root`` (the bytes about to replace it). ``written``: key -> (size, sha256) of
    objects the conversion's tasks wrote, digested from the bytes they put (:func:`written_chunks`):
    an object listed with that size keeps that digest instead of being read back (on S3, the whole
    converted data set downloaded again by this one machine). After an update (``begin_update``),
    objects unchanged since keep their previous digests: on a local store by modification time
    against the previous manifest, on an object store by size and ETag against ``_scibench/etags.json``
    (written here, next to the manifest), so an append hashes what it wrote, not the whole store."""
    reuse, since, known = None, None, None
    previous = location.path(*PREVIOUS_MANIFEST_KEY)
    if location.is_local and os.path.exists(previous):
        try:
            with open(previous, "rb") as f:
                reuse = Manifest.from_bytes(f.read(), where=previous)
            since = os.stat(previous).st_mtime - 2.0  # coarse file-system clocks: re-hash near misses
        except (OSError, ValueError):
            reuse, since = None, None
    if not location.is_local:
        cached = (location.read_json(*ETAGS_KEY) or {}).get("objects")
        known = {k: tuple(v) for k, v in cached.items() if isinstance(v, list) and len(v) == 3} \
            if isinstance(cached, dict) else None
    etags: dict[str, str] = {}
    manifest = build_manifest(location, reuse=reuse, unchanged_before=since, known_etags=known, etags_out=etags,
                              written=written)
    entries = [e for e in manifest.entries if e.key != "zarr.json"]
    if etags:
        location.write_json({"format": 1, "objects": {e.key: [e.size, etags[e.key], e.sha256]
                                                       for e in entries if e.key in etags}}, *ETAGS_KEY)
    entries.append(ManifestEntry("zarr.json", len(root), sha256_bytes(root)))
    return Manifest(tuple(sorted(entries, key=lambda e: e.key)))


def _plan_difference(url: str, old: dict, new: dict) -> str:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key == "keys":
                a, b = old.get(key, []), new.get(key, [])
                extra, gone = sorted(set(b) - set(a))[:3], sorted(set(a) - set(b))[:3]
                return (f"{url} was planned from other sources ({len(a)} then, {len(b)} now; new: {extra}, "
                        f"no longer present: {gone}); convert into a new destination or use append")
            return (f"{url} was planned with {key}={old.get(key)!r}, now {new.get(key)!r}; resume with the options "
                    "it was planned with, or convert into a new destination")
    return f"{url}: plan differs"
