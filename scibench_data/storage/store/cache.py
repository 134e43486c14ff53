"""An opt-in local chunk cache for read-only remote stores (repeated epochs read each object once).

fsspec's ``simplecache::s3://`` cannot serve zarr 3's async store (its sync
filesystem ends up on a second event loop), so the cache is a zarr store
wrapper: whole-object reads are served from ``cache_dir`` when present, else
fetched from the remote store (concurrently, as zarr issues them) and written
to the cache through a temporary name and a rename. Each store URL gets its
own folder.

Only bytes that check out are kept, and every hit is checked again: a chunk
of an array whose codec chain ends with ``crc32c`` against its checksum, any
other object the store's manifest lists (``_scibench/manifest.json``, read
once) against its sha256. A bad cached entry is deleted and fetched again; bad
bytes from the server are not cached and raise
:class:`~scibench_data.storage.store.integrity.ChunkIntegrityError`, so a healed
server is read again. Objects neither check covers (a store without
checksums or manifest) are cached unchecked.

The cache is bounded: past ``max_bytes`` (default :data:`DEFAULT_MAX_BYTES`,
10 GiB, or ``$SCIBENCH_CACHE_MAX_BYTES``) the least recently used entries
(oldest modification time; a hit refreshes it) are deleted until it holds at
most 80% of the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import WrapperStore

from scibench_data.atomic import write_bytes
from scibench_data.storage.store.integrity import (
    MANIFEST_PATH,
    ChunkChecksumError,
    ChunkIntegrityError,
    array_codecs,
    array_of,
    checked_payload,
    has_checksum,
)

MAX_BYTES_ENV = "SCIBENCH_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 10 * 2**30
_LOW_WATER = 0.8


def cache_folder(cache_dir: str | os.PathLike, url: str) -> Path:
    """The cache folder of one store URL under ``cache_dir``."""
    return Path(cache_dir) / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:20]


def default_max_bytes() -> int:
    """``$SCIBENCH_CACHE_MAX_BYTES`` if set (a positive integer), else :data:`DEFAULT_MAX_BYTES`."""
    value = os.environ.get(MAX_BYTES_ENV)
    if not value:
        return DEFAULT_MAX_BYTES
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"${MAX_BYTES_ENV}={value!r} is not a number of bytes") from None
    if n <= 0:
        raise ValueError(f"${MAX_BYTES_ENV} must be > 0, got {n}")
    return n


def _read(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        os.utime(path)  # least recently used = oldest mtime
    except FileNotFoundError:
        pass
    return data


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _entries(folder: Path) -> list[tuple[float, int, Path]]:
    """(mtime, size, path) of every cached file."""
    out = []
    for dirpath, _, files in os.walk(folder):
        for name in files:
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, p))
    return out


def evict(folder: Path, max_bytes: int, keep: Path | None = None) -> int:
    """Delete least recently used files until ``folder`` holds at most 80% of ``max_bytes`` (``keep``, the
    entry just written, goes last); returns the bytes now held."""
    entries = sorted(_entries(folder), key=lambda e: (e[2] == keep, e[0]))
    total = sum(size for _, size, _ in entries)
    target = int(max_bytes * _LOW_WATER)
    for _, size, path in entries:
        if total <= target:
            break
        _unlink(path)
        total -= size
    return total


class ChunkCacheStore(WrapperStore[Store]):
    """Read-through local cache around a read-only store; every entry checked, size bounded."""

    def __init__(self, store: Store, folder: str | os.PathLike, max_bytes: int | None = None) -> None:
        super().__init__(store)
        if not store.read_only:
            raise ValueError("the chunk cache only wraps read-only stores (published versions do not change)")
        self.folder = Path(folder)
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {self.max_bytes}")
        self._total: int | None = None  # bytes in the folder, counted on first write
        self._manifest: dict[str, tuple[int, str]] | None = None
        self._codecs: dict[str, list] | None = None

    def _with_store(self, store: Store) -> ChunkCacheStore:
        return type(self)(store, self.folder, self.max_bytes)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"refusing to cache object key {key!r}")
        return self.folder / key

    # ------------------------------------------------------------------ what an entry must match

    async def _load_manifest(self) -> dict[str, tuple[int, str]]:
        if self._manifest is None:
            raw = await self._get_unchecked(MANIFEST_PATH)
            manifest: dict[str, tuple[int, str]] = {}
            if raw is not None:
                try:
                    manifest = {o["key"]: (int(o["size"]), o["sha256"]) for o in json.loads(raw)["objects"]}
                except (ValueError, KeyError, TypeError):
                    manifest = {}
            self._manifest = manifest
        return self._manifest

    async def _load_codecs(self) -> dict[str, list]:
        if self._codecs is None:
            root = await self.get("zarr.json", default_buffer_prototype())
            try:
                self._codecs = array_codecs(json.loads(root.to_bytes())) if root is not None else {}
            except ValueError:
                self._codecs = {}
        return self._codecs

    async def _problem(self, key: str, data: bytes) -> str | None:
        """Why ``data`` is not ``key``'s content (checksum or manifest digest), or None when it matches."""
        if key != "zarr.json" and key != MANIFEST_PATH:
            codecs = await self._load_codecs()
            name = array_of(key, codecs)
            if name is not None and has_checksum(codecs[name]):
                try:
                    checked_payload(np.frombuffer(data, np.uint8), key)
                except ChunkChecksumError:
                    return "crc32c checksum mismatch"
                return None
        expected = (await self._load_manifest()).get(key)
        if expected is not None and (len(data) != expected[0] or hashlib.sha256(data).hexdigest() != expected[1]):
            return "sha256 differs from the manifest"
        return None

    # ------------------------------------------------------------------ reads

    async def _get_unchecked(self, key: str) -> bytes | None:
        path = self._path(key)
        data = await asyncio.to_thread(_read, path)
        if data is not None:
            return data
        value = await self._store.get(key, default_buffer_prototype())
        if value is None:
            return None
        data = value.to_bytes()
        await asyncio.to_thread(self._store_entry, path, data)
        return data

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if byte_range is not None:
            return await self._store.get(key, prototype, byte_range)
        if key == MANIFEST_PATH:
            data = await self._get_unchecked(key)
            return None if data is None else prototype.buffer.from_bytes(data)
        path = self._path(key)
        data = await asyncio.to_thread(_read, path)
        if data is not None:
            if await self._problem(key, data) is None:
                return prototype.buffer.from_bytes(data)
            await asyncio.to_thread(_unlink, path)  # a bad entry: evict and fetch again
        value = await self._store.get(key, prototype)
        if value is None:
            return None
        data = value.to_bytes()
        problem = await self._problem(key, data)
        if problem is not None:
            raise ChunkIntegrityError(f"{self._store}: object {key}: {problem} as fetched from the server; not cached "
                                      "(the published copy is corrupted: run verify, re-publish it)")
        await asyncio.to_thread(self._store_entry, path, data)
        return value

    def _store_entry(self, path: Path, data: bytes) -> None:
        """Write one entry, then evict least recently used entries while the folder is over its limit."""
        if len(data) > self.max_bytes:
            return  # larger than the whole cache: served, not kept
        write_bytes(path, data, fsync=False)
        if self._total is None:
            self._total = sum(size for _, size, _ in _entries(self.folder))
        else:
            self._total += len(data)
        if self._total > self.max_bytes:
            self._total = evict(self.folder, self.max_bytes, keep=path)

    def __repr__(self) -> str:
        return f"ChunkCacheStore({self._store!r}, {str(self.folder)!r}, max_bytes={self.max_bytes})"
