"""Where a store lives: a local path or an fsspec URL plus storage options."""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from scibench_data.atomic import write_bytes
from scibench_data.storage.store.s3_client import (
    object_store_url,
    read_store,
    s3fs_options,
    tune_s3fs,
)


@dataclass(frozen=True)
class StoreLocation:
    """A Zarr store's URL (``/path/x.zarr``, ``s3://bucket/x.zarr``) and fsspec storage options.

    Nothing is opened at construction; the filesystem is created lazily and
    once per process (fsspec's event loop is not fork-safe).
    """

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    #: Opt-in local chunk cache for read-only remote opens (see :mod:`scibench_data.storage.store.cache`).
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("store URL must not be empty")

    @property
    def options(self) -> dict[str, Any]:
        """The storage options the filesystem is opened with: the caller's, plus S3 retry
        defaults and one GET per object read where they set none (:func:`~scibench_data.storage.store.s3_client.s3fs_options`)."""
        return s3fs_options(self.url, self.storage_options)

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def _fs_root(self) -> tuple[fsspec.AbstractFileSystem, str]:
        """This process's filesystem and root: made again in a forked child (a DataLoader worker),
        whose copy of the parent's would fail ("This class is not fork-safe")."""
        made = self.__dict__.get("_fs_made")
        if made is None or made[0] != os.getpid():
            fs, root = fsspec.core.url_to_fs(self.url, **self.options)
            made = (os.getpid(), tune_s3fs(fs), root.rstrip("/"))
            object.__setattr__(self, "_fs_made", made)  # a cache, not a field of the frozen dataclass
        return made[1], made[2]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_fs_made"}  # the receiver makes its own

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_root[0]

    @property
    def root(self) -> str:
        return self._fs_root[1]

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def zarr_store(self, read_only: bool = False) -> Store:
        """The zarr store; a read-only one on S3 reads through obstore where it can
        (:func:`~scibench_data.storage.store.s3_client.read_store`), writes through s3fs."""
        if self.is_local:
            return LocalStore(self.root, read_only=read_only)
        if read_only and self.url.startswith(("s3://", "s3a://")):
            store = read_store(self.url, self.storage_options)
        else:
            store = FsspecStore.from_url(self.url, storage_options=self.options, read_only=read_only)
            tune_s3fs(store.fs)
        if self.cache_dir and read_only:
            # import cycle: cache -> integrity -> manifest -> this module
            from scibench_data.storage.store.cache import ChunkCacheStore, cache_folder

            return ChunkCacheStore(store, cache_folder(self.cache_dir, self.url))
        return store

    def exists(self) -> bool:
        return self.fs.exists(self.path("zarr.json"))

    def read_json(self, *parts: str) -> dict | None:
        """A JSON object stored under the store, or None when absent or unreadable (e.g. half-written)."""
        p = self.path(*parts)
        try:
            return json.loads(self.fs.cat_file(p))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return None

    def write_json(self, obj: dict, *parts: str) -> None:
        """Write a small JSON object; local writes go through a temporary name and a rename."""
        data = json.dumps(obj, sort_keys=True, indent=1).encode()
        p = self.path(*parts)
        if self.is_local:
            write_bytes(p, data, fsync=False)  # markers and plans: one per record, as before
        else:
            self.fs.pipe_file(p, data)


def store_url(store: Store) -> str:
    """The URL (or local path) of an open zarr store, for error messages (through wrappers such as
    the chunk cache)."""
    inner: Any = store
    while getattr(inner, "_store", None) is not None:  # WrapperStore (the chunk cache, ...)
        inner = inner._store
    if isinstance(inner, LocalStore):
        return str(inner.root)
    if isinstance(inner, FsspecStore):
        return str(inner.fs.unstrip_protocol(inner.path))
    return object_store_url(inner) or repr(inner)
