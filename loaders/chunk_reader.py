"""Read many windows of zarr arrays at once, straight into the caller's buffers.

A training batch touches a few dozen chunks. Read one window at a time through
``zarr.Array.__getitem__`` and each window is a round trip to the store plus
zarr's per-call work (indexers, a codec pipeline per chunk, a thread hop per
decode, an output assembled and then copied again). Here a whole batch is one
round trip: every chunk that any window of any array touches is fetched in one
``asyncio.gather`` (all requests in flight at once on object storage; local
chunk files are memory-mapped as they are decoded), each chunk is decoded once,
even where windows share it, and its pieces are copied straight into the
caller's output arrays. A reader keeps the chunks it decoded last (checksum
checked, least recently used out), so consecutive batches of one scene decode
a shared chunk once; a chunk that is a window's piece as a whole is decoded
straight into the output.

The fast path covers the codec chain our stores are written with (``bytes``
in native byte order + ``blosc`` + ``crc32c``, regular chunks, no sharding;
stores written before checksums lack the ``crc32c``). Every chunk's CRC-32C
is checked before it is decoded, as zarr's codec does: a mismatch raises
:class:`~scibench_data.storage.store.integrity.ChunkChecksumError` naming the store,
the array and the chunk key. A chunk absent from a complete store whose
manifest lists it raises :class:`~scibench_data.storage.store.integrity.MissingChunkError`;
one the manifest does not list (all fill, never written), or any absent chunk
of a store without a manifest, reads as the fill value, as in zarr. Any other
chain falls back to zarr's own reads, with the same results; tests compare
both paths with plain zarr indexing.
"""

from __future__ import annotations

import asyncio
import itertools
import mmap
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import zarr
from numcodecs import blosc
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.sync import sync
from zarr.storage import LocalStore

from loaders import decode_pool, prefetch
from scibench_data.storage.store.integrity import (
    NO_INVENTORY,
    ChunkChecksumError,
    Inventory,
    MissingChunkError,
    checked_payload,
    chunk_where,
    load_inventory,
)
from scibench_data.storage.store.location import store_url
from scibench_data.storage.store.regions import chunks_touched

Slices = tuple[slice, ...]  # one step-1 slice per dimension
_MMAP_MIN_BYTES = 256 * 1024
_MMAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # fault all pages in at once (Linux)
ABSENT = object()  # a local chunk file that does not exist (read_local)
KEEP_DECODED_BYTES = 96 << 20  # decoded chunks a reader keeps for the next reads: about one batch's
KEEP_DECODED_CHUNKS = 48


@dataclass(frozen=True)
class Piece:
    """The part of one chunk that lands in one window: ``out[dst] = chunk[src]``."""

    chunk: tuple[int, ...]
    src: Slices
    dst: Slices


def _axis_pieces(start: int, stop: int, size: int) -> list[tuple[int, slice, slice]]:
    """(chunk index, slice inside the chunk, slice inside the window) along one axis."""
    out = []
    for c in chunks_touched(start, stop, size):
        lo, hi = max(start, c * size), min(stop, (c + 1) * size)
        out.append((c, slice(lo - c * size, hi - c * size), slice(lo - start, hi - start)))
    return out


def window_pieces(region: Slices, chunks: Sequence[int]) -> list[Piece]:
    """Every chunk a region (step-1 slices with explicit bounds) overlaps, and where its part goes."""
    if len(region) != len(chunks):
        raise ValueError(f"region has {len(region)} dimensions, chunks {len(chunks)}")
    axes = []
    for sl, size in zip(region, chunks):
        if sl.start is None or sl.stop is None or sl.step not in (None, 1) or sl.stop <= sl.start or sl.start < 0:
            raise ValueError(f"need step-1 slices with 0 <= start < stop, got {sl}")
        axes.append(_axis_pieces(sl.start, sl.stop, size))
    return [Piece(tuple(a[0] for a in combo), tuple(a[1] for a in combo), tuple(a[2] for a in combo))
            for combo in itertools.product(*axes)]


def region_shape(region: Slices) -> tuple[int, ...]:
    return tuple(sl.stop - sl.start for sl in region)


class ChunkReader:
    """One array's chunks: which ones a window needs, fetched as raw bytes, decoded into a buffer."""

    def __init__(self, array: zarr.Array | zarr.AsyncArray) -> None:
        self.array = array.async_array if isinstance(array, zarr.Array) else array
        meta = self.array.metadata
        self.shape = tuple(self.array.shape)
        self.dtype = np.dtype(self.array.dtype)
        self.chunks = tuple(self.array.chunks)
        self.fill_value = meta.fill_value
        self.fast = _plain_blosc(meta)
        self.checksum = self.fast and len(meta.codecs) == 3
        self._local_root = _local_dir(self.array.store_path) if self.fast else None
        self._scratch = threading.local()  # decode's buffer when given none: one per thread
        self._inventory: Inventory | None = None  # read on the first absent chunk
        self._kept: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()  # decoded, checksum checked
        self._pending: dict[tuple[int, ...], Future] = {}  # kept chunks still being decoded (one read)
        nbytes = int(np.prod(self.chunks)) * self.dtype.itemsize
        self.keep = min(KEEP_DECODED_BYTES // max(nbytes, 1), KEEP_DECODED_CHUNKS) if self.fast else 0

    @property
    def fetched(self) -> bool:
        """Its chunks are fetched through the store (object storage, wrappers), not mapped from local files."""
        return self._local_root is None

    @property
    def name(self) -> str:
        """The array's path in its store (``image``)."""
        return self.array.store_path.path

    def store_key(self, coords: tuple[int, ...]) -> str:
        """A chunk's object key relative to the store root (``image/c/0/0/1/2``), as manifests list it."""
        return f"{self.name}/{self.chunk_key(coords)}" if self.name else self.chunk_key(coords)

    def where(self, coords: tuple[int, ...]) -> str:
        """How errors name a chunk: store URL, array and chunk key."""
        return chunk_where(store_url(self.array.store_path.store), self.name, self.store_key(coords))

    def check(self, region: Slices) -> None:
        if any(sl.stop > n for sl, n in zip(region, self.shape)):
            raise IndexError(f"region {region} outside the array's shape {self.shape}")

    def chunk_key(self, coords: tuple[int, ...]) -> str:
        return self.array.metadata.encode_chunk_key(coords)

    async def fetch(self, coords: tuple[int, ...]):
        """The stored (encoded) bytes of one chunk, or None where it was never written (all fill).

        From a local directory store the chunk file is memory-mapped, not read: blosc then
        decodes straight from the page cache with no copy of the compressed bytes first.
        A chunk that the store's manifest lists but the store lacks raises :class:`MissingChunkError`."""
        if self._local_root is not None:  # an open and an mmap: no I/O worth a thread hop
            raw = self.read_local(coords)
            return await self._absent(coords) if raw is ABSENT else raw
        buf = await (self.array.store_path / self.chunk_key(coords)).get(prototype=default_buffer_prototype())
        return await self._absent(coords) if buf is None else buf.as_numpy_array()

    async def _absent(self, coords: tuple[int, ...]) -> None:
        """None (read as fill) for a chunk never written; :class:`MissingChunkError` for a lost one."""
        if self._inventory is None:
            try:
                self._inventory = await load_inventory(self.array.store_path.store)
            except FileNotFoundError:
                self._inventory = NO_INVENTORY
        if self._inventory.lost(self.store_key(coords)):
            err = MissingChunkError(f"{self.where(coords)}: the chunk is missing, but the store's manifest lists it "
                                    "(deleted, lost in a copy, or not pulled into this partial copy); re-pull or reconvert the store")
            err.chunk = coords
            raise err

    def decode(self, raw, coords: tuple[int, ...] | None = None, into: np.ndarray | None = None) -> np.ndarray:
        """A chunk's values in ``into`` (C-contiguous, the chunk's shape and dtype) or, without it, in a
        scratch buffer reused by the next call (copy out what you keep). ``coords`` names the chunk in errors."""
        if into is None:
            into = getattr(self._scratch, "buf", None)
            if into is None:
                into = self._scratch.buf = np.empty(self.chunks, self.dtype)
        if raw is None:
            into.fill(self.fill_value)
            return into
        view = payload = None
        try:
            view = raw if isinstance(raw, np.ndarray) else np.frombuffer(raw, np.uint8)
            where = self.where(coords) if coords is not None else f"{self.name}: a chunk"
            try:
                payload = checked_payload(view, where) if self.checksum else view
            except ChunkChecksumError as err:
                err.chunk = coords
                raise
            header = bytes(payload[:16])  # blosc1 header: ..., uncompressed size as uint32 LE at bytes 4-8
            n = int.from_bytes(header[4:8], "little") if len(header) == 16 else -1
            if n != into.nbytes:
                raise ValueError(f"chunk holds {n} bytes, expected {into.nbytes} for chunk shape {self.chunks}")
            blosc.decompress(payload, into)  # releases the GIL; raises on a corrupt frame
        finally:
            del view, payload  # an mmap cannot close while NumPy views of it exist
            _close(raw)
        return into

    def read_local(self, coords: tuple[int, ...]):
        """A chunk's stored bytes from a local directory store, read synchronously as it is decoded,
        or :data:`ABSENT` where the file does not exist (resolve with :meth:`_absent`)."""
        if self._local_root is None:
            raise ValueError(f"{self.name}: not a local directory store; fetch its chunks instead")
        try:
            with open(os.path.join(self._local_root, self.chunk_key(coords)), "rb") as f:
                if os.fstat(f.fileno()).st_size < _MMAP_MIN_BYTES:
                    return f.read()
                return mmap.mmap(f.fileno(), 0, flags=_MMAP_FLAGS, prot=mmap.PROT_READ)
        except FileNotFoundError:
            return ABSENT

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_scratch": None, "_inventory": None, "_kept": OrderedDict(), "_pending": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _scratch=threading.local())

    def kept(self, coords: tuple[int, ...]) -> np.ndarray | None:
        """A chunk's values decoded by an earlier read and still kept (least recently used go first), else None."""
        values = self._kept.get(coords)
        if values is not None:
            self._kept.move_to_end(coords)
        return values

    def take_buffer(self) -> np.ndarray | None:
        """A buffer to decode a chunk into and keep (:meth:`keep_decoding`), or None where this reader
        keeps nothing: a new one until :attr:`keep` are kept, then the least recently used one
        (once the decode that filled it, if still running, has finished)."""
        if self.keep < 1:
            return None
        if len(self._kept) < self.keep:
            return np.empty(self.chunks, self.dtype)
        coords, buf = self._kept.popitem(last=False)
        running = self._pending.pop(coords, None)
        if running is not None:
            running.exception()  # waits; its own caller raises what it raised
        return buf

    def keep_decoding(self, coords: tuple[int, ...], buf: np.ndarray, done: Future) -> None:
        """Keep ``buf`` as chunk ``coords``' values, which ``done`` is decoding into it."""
        self._kept[coords] = buf
        self._pending[coords] = done

    def settle(self) -> None:
        """After a read (every decode finished): forget the chunks whose decode failed (a bad chunk is
        never kept)."""
        for coords, done in self._pending.items():
            if done.exception() is not None:
                self._kept.pop(coords, None)
        self._pending.clear()


def _close(raw) -> None:
    if isinstance(raw, mmap.mmap) and not raw.closed:
        raw.close()


def _local_dir(store_path) -> str | None:
    """The folder of an array in a plain local directory store (no wrapper), else None."""
    store = store_path.store
    if type(store) is not LocalStore:  # wrappers (cache, counting, ...) keep their own get()
        return None
    return os.path.join(str(store.root), store_path.path) if store_path.path else str(store.root)


def _plain_blosc(meta) -> bool:
    """True for zarr v3 ``bytes`` (native order) + ``blosc`` (+ ``crc32c``) on a regular grid: our stores' chain."""
    codecs = getattr(meta, "codecs", None)
    if getattr(meta, "zarr_format", None) != 3 or not isinstance(meta.chunk_grid, RegularChunkGrid) or not codecs:
        return False
    if len(codecs) == 3 and isinstance(codecs[2], Crc32cCodec):
        codecs = codecs[:2]
    if len(codecs) != 2 or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[1], BloscCodec):
        return False
    endian = getattr(codecs[0].endian, "value", codecs[0].endian)
    return endian in (None, sys.byteorder)


async def _zarr_read(reader: ChunkReader, region: Slices):
    """zarr's own read of a region (other codec chains); a crc32c mismatch is named like the fast path's."""
    try:
        return await reader.array.getitem(region)
    except ValueError as err:
        if "checksum" not in str(err):
            raise
        where = f"{store_url(reader.array.store_path.store)}: array {reader.name!r}, region {region}"
        raise ChunkChecksumError(f"{where}: crc32c checksum mismatch ({err})") from err


_POOL_MIN_BYTES = 1 << 20
_POOL_SIZE = 4  # buffers kept per shape and dtype
_BUFFERS: dict[tuple, list[np.ndarray]] = {}
_BUFFERS_PID: list[int] = [os.getpid()]


def batch_buffer(shape: tuple[int, ...], dtype: np.typing.DTypeLike) -> np.ndarray:
    """An uninitialised array for a batch: one of a few kept per shape whose earlier user has let go
    of it (no reference left but the pool's, so no tensor, view or storage of it is alive), else new.

    A fresh 38 MB batch from ``np.empty`` / ``torch.empty`` is a new anonymous mapping each time,
    faulted in 4 KiB page by page as it is filled: measured here, that cost about as much per patch
    as decoding its chunks (huge pages were measured slower still). ``torch.from_numpy`` of the
    array holds a reference for as long as the tensor's storage lives, so a batch still held
    anywhere is never handed out again."""
    dtype = np.dtype(dtype)
    if int(np.prod(shape)) * dtype.itemsize < _POOL_MIN_BYTES:
        return np.empty(shape, dtype)
    if _BUFFERS_PID[0] != os.getpid():  # a forked child: its own pool
        _BUFFERS.clear()
        _BUFFERS_PID[0] = os.getpid()
    pool = _BUFFERS.setdefault((tuple(shape), dtype.str), [])
    for buf in pool:
        if sys.getrefcount(buf) == 3:  # the pool's list, this loop's name and getrefcount's argument
            return buf
    buf = np.empty(shape, dtype)
    if len(pool) < _POOL_SIZE:
        pool.append(buf)
    return buf


def _whole(piece: Piece, chunks: tuple[int, ...]) -> bool:
    return all(sl.start == 0 and sl.stop == n for sl, n in zip(piece.src, chunks))


def _direct_target(reader: ChunkReader, users: list[tuple[np.ndarray, Piece]]) -> np.ndarray | None:
    """The output a chunk can be decoded straight into: it is one window's piece as a whole, landing in
    a contiguous output of its dtype (no copy); else None."""
    if len(users) == 1:
        out, piece = users[0]
        dst = out[piece.dst]
        if _whole(piece, reader.chunks) and dst.dtype == reader.dtype and dst.flags.c_contiguous:
            return dst.reshape(reader.chunks)
    return None


def _place(reader: ChunkReader, coords: tuple[int, ...], raw, users: list[tuple[np.ndarray, Piece]],
           into: np.ndarray | None, kept: np.ndarray | None) -> None:
    """One chunk, on a decode thread: its stored bytes (``raw``; ABSENT: read the local file now),
    checksum checked, decoded into ``into`` (the output itself) or ``kept`` (a buffer the reader keeps)
    or a per-thread scratch buffer, then its pieces copied to every window that needs it."""
    if raw is ABSENT:
        raw = reader.read_local(coords)
        if raw is ABSENT:  # no such file: fill, or MissingChunkError where the manifest lists it
            raw = sync(reader._absent(coords))
    if into is not None:
        reader.decode(raw, coords, into=into)  # closes raw (decode does)
        return
    _put(reader.decode(raw, coords, into=kept), users)


def _put(values: np.ndarray, users: list[tuple[np.ndarray, Piece]]) -> None:
    for out, piece in users:
        out[piece.dst] = values[piece.src]


def read_regions(requests: Sequence[tuple[ChunkReader, Slices, np.ndarray]]) -> None:
    """Fill each ``out`` with its array's ``region`` (``out.shape`` == the region's shape;
    the output dtype may differ, values are cast as by assignment).

    All chunks of all requests not on local disk are fetched in one concurrent round (local chunk
    files are read, or mapped, as they are decoded: no event-loop round trip); each chunk's CRC-32C
    is checked, it is decoded once and its pieces are copied to every window that needs it, on
    :mod:`loaders.decode_pool`'s threads (every core of a process reading its own batches; a
    DataLoader worker decodes on its own thread). Every decode has finished when this returns or
    raises; of several failures, the first chunk's (in first-use order) is raised.
    """
    for reader, region, out in requests:
        reader.check(region)
        if out.shape != region_shape(region):
            raise ValueError(f"output shape {out.shape} does not match region shape {region_shape(region)}")
    fast = [(r, reg, out) for r, reg, out in requests if r.fast]
    slow = [(r, reg, out) for r, reg, out in requests if not r.fast]
    # chunk -> [(out, piece)], per reader, in first-use order
    users: dict[tuple[int, tuple[int, ...]], list[tuple[np.ndarray, Piece]]] = {}
    readers: dict[int, ChunkReader] = {}
    for reader, region, out in fast:
        readers[id(reader)] = reader
        for piece in window_pieces(region, reader.chunks):
            users.setdefault((id(reader), piece.chunk), []).append((out, piece))
    for key in list(users):  # decoded by an earlier read (the previous batch of the same scene): no fetch, no decode
        values = readers[key[0]].kept(key[1])
        if values is not None:
            _put(values, users.pop(key))
    remote = [k for k in users if readers[k[0]].fetched]

    async def fetch_all():
        return await asyncio.gather(*(prefetch.fetch(readers[rid], c) for rid, c in remote),  # started early?
                                    *(_zarr_read(r, reg) for r, reg, _ in slow), return_exceptions=True)

    got = sync(fetch_all()) if remote or slow else []
    fetched = dict(zip(remote, got))
    pool, running = decode_pool.executor(), []
    try:
        failed = next((g for g in got if isinstance(g, BaseException)), None)
        if failed is not None:
            raise failed
        # each chunk decoded and placed on the decode pool (every core of a process reading its own
        # batches; a DataLoader worker's own thread); chunks land in disjoint parts of the outputs
        for key, chunk_users in users.items():
            reader, chunk = readers[key[0]], key[1]
            into = _direct_target(reader, chunk_users)
            kept = reader.take_buffer() if into is None else None
            done = pool.submit(_place, reader, chunk, fetched.pop(key, ABSENT), chunk_users, into, kept)
            if kept is not None:
                reader.keep_decoding(chunk, kept, done)
            running.append(done)
            if done.done() and done.exception() is not None:
                break  # decoded in line and failed: the chunks after it are not needed
    finally:  # every decode finished before returning or raising: none writes into the outputs later
        for done in running:
            done.exception()
        for reader in readers.values():
            reader.settle()
        for r in fetched.values():  # a failed read leaves the others' mappings open otherwise
            if not isinstance(r, BaseException):
                _close(r)
    decode_pool.wait_all(running)  # all finished: raises the first failure, in first-use order
    for (_, _, out), values in zip(slow, got[len(remote):]):
        out[...] = np.asarray(values).reshape(out.shape)
