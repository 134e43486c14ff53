"""The one way a loader opens its store: lazily, once per process.

A :class:`StoreHandle` opens its store on first use (constructors do no I/O) and again in any
process other than the one that opened it (a pid check): a forked DataLoader worker inherits
zarr's and fsspec's clients in a state it must not use, and a worker started by ``spawn`` or
``forkserver`` receives the handle pickled without its open store. What is opened is up to the
loader: a zarr group (:func:`zarr_handle`, CloudMask and STEMDL) or UNO's feature tables in
memory. Anything a loader derives per process (a cached crop, row positions) is keyed on the
object :meth:`StoreHandle.get` returns, so this pid check is the only one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import zarr

from loaders.chunk_reader import ChunkReader
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import require_complete

T = TypeVar("T")


class StoreHandle(Generic[T]):
    """``open()``'s result, made on first use in each process and never pickled.

    ``check`` (picklable; e.g. that the store is complete) runs before the first open only:
    copies sent to DataLoader workers after it passed do not ask again."""

    def __init__(self, open: Callable[[], T], check: Callable[[], None] | None = None) -> None:
        self.open = open
        self.check = check
        self._pid: int | None = None
        self._value: T | None = None

    def get(self) -> T:
        """The open store of this process (opened now if this process has not yet)."""
        if self.check is not None:
            self.check()
            self.check = None
        if self._value is None or self._pid != os.getpid():
            self._value = None  # a failed open leaves nothing of another process behind
            self._value = self.open()
            self._pid = os.getpid()
        return self._value

    def __getstate__(self) -> dict[str, Any]:
        return {"open": self.open, "check": self.check, "_pid": None, "_value": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class ZarrStore:
    """A zarr group opened in this process, its arrays and chunk readers looked up once each."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        self._arrays: dict[str, zarr.Array] = {}
        self._readers: dict[str, ChunkReader] = {}

    def __getitem__(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            array = self.group[name]
            if not isinstance(array, zarr.Array):
                raise KeyError(f"{name!r} is a group, not an array")
            self._arrays[name] = array
        return self._arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.group

    def reader(self, name: str) -> ChunkReader:
        """A :class:`~loaders.chunk_reader.ChunkReader` of array ``name``."""
        if name not in self._readers:
            self._readers[name] = ChunkReader(self[name])
        return self._readers[name]


@dataclass(frozen=True)
class OpenZarr:
    """Opens a store location read-only as a :class:`ZarrStore` (picklable, for :class:`StoreHandle`)."""

    location: StoreLocation

    def __call__(self) -> ZarrStore:
        return ZarrStore(zarr.open_group(self.location.zarr_store(read_only=True), mode="r"))


@dataclass(frozen=True)
class RequireComplete:
    """Refuses a store that is not complete (:func:`~scibench_data.storage.store.records.require_complete`:
    the status and the command that finishes it)."""

    location: StoreLocation

    def __call__(self) -> None:
        require_complete(self.location)


def store_location(location: StoreLocation | str) -> StoreLocation:
    """``location`` as a :class:`StoreLocation` (a path or URL is wrapped; nothing is opened)."""
    return location if isinstance(location, StoreLocation) else StoreLocation(location)


class ZarrHandle(StoreHandle[ZarrStore]):
    """A :class:`StoreHandle` on the zarr store at ``location``, refused on first use unless complete;
    it reads like the open store (``handle["image"]``, ``handle.reader(name)``, ``handle.group``)."""

    def __init__(self, location: StoreLocation | str) -> None:
        self.location = store_location(location)
        super().__init__(OpenZarr(self.location), RequireComplete(self.location))

    @property
    def group(self) -> zarr.Group:
        return self.get().group

    def __getitem__(self, name: str) -> zarr.Array:
        return self.get()[name]

    def __contains__(self, name: str) -> bool:
        return name in self.get()

    def reader(self, name: str) -> ChunkReader:
        return self.get().reader(name)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "location": self.location}


def zarr_handle(location: StoreLocation | str) -> ZarrHandle:
    """A handle on the zarr store at ``location`` (nothing is opened yet)."""
    return ZarrHandle(location)
