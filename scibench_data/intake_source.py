"""The intake driver of our catalog entries: intake-xarray's Zarr source plus public metadata
and our open path.

``driver: scibench_data.intake_source.ScibenchZarrSource`` in ``catalog/scibench.yaml``.
intake 2.0.9 hands a v1-style entry to intake-xarray's adapter, which has no ``metadata`` and no
``describe()``; this subclass has both (``entry.metadata``, ``entry.describe()``), and its
``to_dask()``/``read()`` follow the loaders' integrity rules and return the store with text
decoded (:func:`open_path`):

* a store that does not exist is :class:`~scibench_data.catalog_source.MissingStoreError`, one
  line naming the entry and the command that creates it;
* an unfinished store is refused with :func:`~scibench_data.storage.store.records.require_complete`'s
  message (its status and the command that finishes it);
* the store is read through :class:`~scibench_data.storage.store.checked.CheckedStore`, so a chunk that
  the store's manifest lists but the store lacks raises
  :class:`~scibench_data.storage.store.integrity.MissingChunkError` instead of reading as the fill value.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from intake_xarray.xzarr import ZarrSource

from scibench_data.catalog_source import MissingStoreError, missing_store
from scibench_data.storage.store.checked import CheckedStore
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import require_complete
from scibench_data.strings import decode_strings

#: Coordinate of the catalog's time-sorted view of a store whose scenes are not in time order: each
#: scene's index along ``scene`` in the store.
STORE_SCENE = "store_scene"


def open_path(ds: xr.Dataset) -> xr.Dataset:
    """What our open path does to a store as xarray opened it: text decoded to strings
    (:func:`scibench_data.strings.decode_strings`) and, for scene stores, ``time`` made an index
    when it is unique and increasing, so ``ds.sel(time=slice(a, b))`` works. A scene store whose
    scenes are not in time order (late products appended) is returned sorted by time (a lazy
    reordering, nothing read), with coordinate ``store_scene`` giving each scene's index in the store."""
    ds = decode_strings(ds)
    if "time" in ds.coords and ds["time"].ndim == 1 and ds["time"].dims[0] != "time" and "time" not in ds.xindexes:
        t = ds["time"].values.astype("datetime64[ns]").astype(np.int64)
        dim = ds["time"].dims[0]
        if dim == "scene" and t.size and not (np.diff(t) > 0).all() and len(np.unique(t)) == t.size:
            order = np.argsort(t, kind="stable")
            ds = ds.assign_coords({STORE_SCENE: (dim, np.arange(t.size, dtype=np.int64), {
                "long_name": "index of the scene in the store (scenes appended late are stored in append order)"})})
            ds = ds.isel({dim: order})
            t = t[order]
        if t.size and (np.diff(t) > 0).all():
            ds = ds.set_xindex("time")
    return ds


class ScibenchZarrSource(ZarrSource):
    """A catalog entry: open with ``to_dask()`` (lazy) or ``read()``; ``metadata`` and ``describe()``
    give what the catalog declares (description, license, citation, DOI, sizes, chunks...)."""

    name = "scibench_zarr"

    def __init__(self, urlpath, storage_options=None, metadata=None, **kwargs):
        super().__init__(urlpath, storage_options=storage_options, metadata=metadata, **kwargs)
        self.metadata = dict(metadata or {})
        self.metadata.pop("catalog_dir", None)
        self.urlpath = urlpath

    def describe(self) -> dict:
        """Name, description, container, arguments and metadata, as intake 1 sources gave them."""
        return {"name": getattr(self, "name", None), "container": self.container,
                "description": getattr(self, "description", None) or "", "args": {"urlpath": self.urlpath},
                "metadata": dict(self.metadata)}

    def _location(self) -> tuple[StoreLocation, MissingStoreError | None]:
        """The entry's store, and the error to raise if it does not exist (raised by the caller, so
        a missing store is a two-frame traceback); an unfinished store raises here."""
        data = self.reader.data
        location = StoreLocation(str(data.url), dict(data.storage_options or {}))
        try:
            require_complete(location)
        except FileNotFoundError:
            return location, missing_store(getattr(self, "name", None) or "?", location.url)
        return location, None

    def _open(self, location: StoreLocation, chunks: dict | None) -> xr.Dataset:
        kwargs = {k: v for k, v in self.reader.kwargs.items() if k not in ("args", "chunks", "engine", "backend_kwargs")}
        return open_path(xr.open_zarr(CheckedStore(location.zarr_store(read_only=True)), chunks=chunks, **kwargs))

    def to_dask(self) -> xr.Dataset:
        location, missing = self._location()
        if missing:
            raise missing from None
        return self._open(location, self.reader.kwargs.get("chunks", {}))

    def read(self) -> xr.Dataset:
        location, missing = self._location()
        if missing:
            raise missing from None
        return self._open(location, None)

    discover = read
    read_chunked = to_dask
