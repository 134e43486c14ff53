"""The catalog's open path with the integrity rules of the loaders: the intake driver of our entries.

``driver: scibench_data.storage.checked.CheckedZarrSource`` (the shipped and
every published catalog) is intake-xarray's ``zarr`` driver with two checks
added, so ``cat.ENTRY.to_dask()`` / ``.read()`` follow the same rules as the
loaders:

* an unfinished store is refused with :func:`~scibench_data.storage.records.require_complete`'s
  message (its status and the command that finishes it);
* the store is read through :class:`CheckedStore`, so a chunk that the store's
  manifest lists but the store lacks raises
  :class:`~scibench_data.storage.integrity.MissingChunkError` instead of
  reading as the fill value. Checksums are checked by zarr's own ``crc32c``
  codec (a mismatch raises ``ValueError: Stored and computed checksum do not match``).
"""

from __future__ import annotations

import xarray as xr
from intake_xarray.xzarr import ZarrSource
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from scibench_data.storage.integrity import NO_INVENTORY, Inventory, MissingChunkError, load_inventory


def _url(store: Store) -> str:
    from loaders.chunk_reader import store_url

    return store_url(store)


class CheckedStore(WrapperStore[Store]):
    """A read-only store wrapper: an absent chunk that the store's manifest lists raises
    :class:`MissingChunkError` (absent by design, or a store without a manifest: ``None`` as usual)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._inventory: Inventory | None = None

    def _with_store(self, store: Store) -> "CheckedStore":
        return type(self)(store)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        value = await self._store.get(key, prototype, byte_range)
        if value is None and "/c/" in f"/{key}" and not key.startswith("_scibench/"):
            if self._inventory is None:
                self._inventory = await load_inventory(self._store)
            if self._inventory is not NO_INVENTORY and self._inventory.lost(key):
                raise MissingChunkError(f"{_url(self._store)}: chunk {key} is missing, but the store's manifest "
                                        "lists it (deleted, lost in a copy, or not pulled into this partial copy); "
                                        "re-pull or reconvert the store")
        return value

    def __repr__(self) -> str:
        return f"CheckedStore({self._store!r})"


class CheckedZarrSource(ZarrSource):
    """intake-xarray's ``zarr`` source, refusing unfinished stores and reading through :class:`CheckedStore`."""

    name = "scibench_zarr"

    def _open(self, chunks: dict | None) -> xr.Dataset:
        from scibench_data.storage.location import StoreLocation
        from scibench_data.storage.records import require_complete

        data = self.reader.data
        location = StoreLocation(str(data.url), dict(data.storage_options or {}))
        require_complete(location)
        kwargs = {k: v for k, v in self.reader.kwargs.items() if k not in ("args", "chunks", "engine", "backend_kwargs")}
        return xr.open_zarr(CheckedStore(location.zarr_store(read_only=True)), chunks=chunks, **kwargs)

    def to_dask(self) -> xr.Dataset:
        return self._open(self.reader.kwargs.get("chunks", {}))

    read_chunked = to_dask

    def read(self) -> xr.Dataset:
        return self._open(None)

    discover = read
