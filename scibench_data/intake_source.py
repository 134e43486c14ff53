"""The intake driver of our catalog entries: intake-xarray's Zarr source plus public metadata
and our open path.

``driver: scibench_data.intake_source.ScibenchZarrSource`` in ``catalog/scibench.yaml``.
intake 2.0.9 hands a v1-style entry to intake-xarray's adapter, which has no ``metadata`` and no
``describe()``; this subclass has both (``entry.metadata``, ``entry.describe()``), and its
``to_dask()``/``read()`` return the store with text decoded (:func:`open_path`).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from intake_xarray.xzarr import ZarrSource

from scibench_data.strings import decode_strings


def open_path(ds: xr.Dataset) -> xr.Dataset:
    """What our open path does to a store as xarray opened it: text decoded to strings
    (:func:`scibench_data.strings.decode_strings`) and, for scene stores, ``time`` made an index
    when it is unique and increasing, so ``ds.sel(time=slice(a, b))`` works."""
    ds = decode_strings(ds)
    if "time" in ds.coords and ds["time"].ndim == 1 and ds["time"].dims[0] != "time" and "time" not in ds.xindexes:
        t = ds["time"].values
        if t.size and (np.diff(t.astype("datetime64[ns]").astype(np.int64)) > 0).all():
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

    def to_dask(self) -> xr.Dataset:
        return open_path(super().to_dask())

    def read(self) -> xr.Dataset:
        return open_path(super().read())

    discover = read
    read_chunked = to_dask
