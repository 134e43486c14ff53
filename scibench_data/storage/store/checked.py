"""A read-only Zarr store wrapper that tells a lost chunk from one absent by design.

The catalog's driver (:class:`scibench_data.intake_source.ScibenchZarrSource`) reads every
store through :class:`CheckedStore`, so a chunk that the store's manifest lists but the store
lacks raises :class:`~scibench_data.storage.store.integrity.MissingChunkError` instead of reading as
the fill value. Checksums are checked by zarr's own ``crc32c`` codec (a mismatch raises
``ValueError: Stored and computed checksum do not match``).
"""

from __future__ import annotations

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from scibench_data.storage.store.integrity import (
    NO_INVENTORY,
    Inventory,
    MissingChunkError,
    load_inventory,
)
from scibench_data.storage.store.location import store_url


def _url(store: Store) -> str:
    return store_url(store)


class CheckedStore(WrapperStore[Store]):
    """A read-only store wrapper: an absent chunk that the store's manifest lists raises
    :class:`MissingChunkError` (absent by design, or a store without a manifest: ``None`` as usual)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._inventory: Inventory | None = None

    def _with_store(self, store: Store) -> CheckedStore:
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
