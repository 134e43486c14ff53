"""Our intake catalog: where it is, where its stores live, and what each entry holds."""

from __future__ import annotations

import os
from pathlib import Path

import intake

ROOT_ENV = "SCIBENCH_DATA_ROOT"


def default_root() -> str:
    """Where stores live: ``$SCIBENCH_DATA_ROOT``, else ``~/scibench-data`` (the embedded default)."""
    return os.environ.get(ROOT_ENV) or str(Path.home() / "scibench-data")


def store_url(entry: str, root: str | None = None, allow_escape: bool = False) -> str:
    """The URL of an entry's store under ``root`` (same rule as the catalog).

    An entry name that would leave ``root`` (``..``, an absolute path, a URL) is refused
    with :class:`~scibench_data.storage.confine.PathEscapeError` unless ``allow_escape``.
    """
    from scibench_data.storage.confine import confine, relative_part

    root = root or default_root()
    if not allow_escape:
        relative_part(entry, "catalog entry name", root)
    return confine(root, f"{entry}.zarr", allow_escape=allow_escape, what="catalog entry name")


def open_catalog(path: str | None = None, root: str | None = None, **kwargs) -> intake.catalog.Catalog:
    """Open a catalog (ours by default), with the catalog-level ``root`` set when given."""
    from scibench_data import catalog_path

    cat = intake.open_catalog(path or catalog_path(), **kwargs)
    return cat(root=root) if root else cat


def entry_location(cat: intake.catalog.Catalog, name: str):
    """The :class:`StoreLocation` (URL and storage options) behind a catalog entry, as the catalog resolved it."""
    from scibench_data.storage.location import StoreLocation

    if name not in cat:
        raise KeyError(f"catalog has no entry {name!r}; entries: {', '.join(sorted(cat))}")
    data = getattr(cat, name).reader(chunks={}).data
    return StoreLocation(data.url, dict(data.storage_options or {}))


def entry_metadata(cat: intake.catalog.Catalog, name: str) -> dict:
    """The metadata an entry declares (description, licence, sizes, chunking, benchmark, ...)."""
    if name not in cat:
        raise KeyError(f"catalog has no entry {name!r}; entries: {', '.join(sorted(cat))}")
    desc = cat._entries[name].describe()
    return {"description": desc.get("description", ""), **(desc.get("metadata") or {})}
