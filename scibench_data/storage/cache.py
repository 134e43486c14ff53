"""An opt-in local chunk cache for read-only remote stores (repeated epochs read each object once).

fsspec's ``simplecache::s3://`` cannot serve zarr 3's async store (its sync
filesystem ends up on a second event loop), so the cache is a zarr store
wrapper: whole-object reads are served from ``cache_dir`` when present, else
fetched from the remote store (concurrently, as zarr issues them) and written
to the cache through a temporary name and a rename. Published versions are
immutable, so entries never go stale; each store URL gets its own folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore


def cache_folder(cache_dir: str | os.PathLike, url: str) -> Path:
    """The cache folder of one store URL under ``cache_dir``."""
    return Path(cache_dir) / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:20]


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ChunkCacheStore(WrapperStore[Store]):
    """Read-through local cache around a read-only store."""

    def __init__(self, store: Store, folder: str | os.PathLike) -> None:
        super().__init__(store)
        if not store.read_only:
            raise ValueError("the chunk cache only wraps read-only stores (published versions do not change)")
        self.folder = Path(folder)

    def _with_store(self, store: Store) -> "ChunkCacheStore":
        return type(self)(store, self.folder)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"refusing to cache object key {key!r}")
        return self.folder / key

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if byte_range is not None:
            return await self._store.get(key, prototype, byte_range)
        path = self._path(key)
        data = await asyncio.to_thread(_read, path)
        if data is not None:
            return prototype.buffer.from_bytes(data)
        value = await self._store.get(key, prototype)
        if value is not None:
            await asyncio.to_thread(_write, path, value.to_bytes())
        return value

    def __repr__(self) -> str:
        return f"ChunkCacheStore({self._store!r}, {str(self.folder)!r})"
