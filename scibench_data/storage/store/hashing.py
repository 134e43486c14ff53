"""Content digests for provenance and manifests, and a reader that hashes the bytes it hands out."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Self

import fsspec

_BLOCK = 8 * 2**20
#: Largest source file a :class:`HashingReader` reads whole into memory (parsed and hashed from the
#: same bytes). A larger one is parsed from storage and hashed in a separate streamed pass, so a
#: hostile 50 GB file costs two reads, never 50 GB of memory.
MAX_IN_MEMORY_BYTES = 1 << 30


def sha256_file(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Hex sha256 of one file, streamed in 8 MiB blocks."""
    return _sha256_stream(fs, path)[0]


def _sha256_stream(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with fs.open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _sha256_sized(data: bytes) -> tuple[str, int]:
    return hashlib.sha256(data).hexdigest(), len(data)  # hashlib releases the GIL on large buffers


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def combined_digest(named_digests: Iterable[tuple[str, str]]) -> str:
    """One digest for a set of files: sha256 over sorted ``name  digest`` lines
    (the format of ``sha256sum``), so it does not depend on listing order."""
    lines = "".join(f"{digest}  {name}\n" for name, digest in sorted(named_digests))
    return sha256_bytes(lines.encode())


@dataclass(frozen=True)
class FileBytes:
    """One source file as read by a :class:`HashingReader`: its bytes, or ``None`` when it is larger
    than the reader's cap (then parse it from ``fs.open(path)``)."""

    path: str
    size: int
    data: bytes | None


class HashingReader:
    """Reads the files of one product once each: whole into memory (at most ``max_bytes`` per file),
    their sha256 computed from those same bytes on one background thread while the caller parses
    them. The digests are the plain sha256 of each file's bytes, as :func:`sha256_file` gives.

    The last file read is kept, so a header check and the read that follows share one read. A file
    over ``max_bytes`` is not read here: the caller parses it from storage and it is hashed in a
    separate streamed pass. Only bytes and strings cross to the hashing thread (never h5py objects:
    freeing those on another thread needs h5py's lock). One reader per task; use it as a context
    manager, which waits for the thread. :meth:`read` may be called from several threads."""

    def __init__(self, fs: fsspec.AbstractFileSystem, max_bytes: int = MAX_IN_MEMORY_BYTES,
                 hash_files: bool = True) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.fs, self.max_bytes, self.hash_files = fs, max_bytes, hash_files
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sha256") if hash_files else None
        self._digests: dict[str, Future] = {}
        self._last: FileBytes | None = None
        self._lock = threading.Lock()  # read() may be called from several threads of one task

    def read(self, path: str) -> FileBytes:
        """The file's bytes (``data`` None above the cap); FileNotFoundError when it does not exist."""
        last = self._last
        if last is not None and last.path == path:
            return last
        with self.fs.open(path, "rb") as f:
            size = getattr(f, "size", None)
            if not isinstance(size, int):
                size = int(self.fs.size(path))
            if size > self.max_bytes:
                data = None
            else:
                data = f.read(size)
                if len(data) != size:
                    raise OSError(f"{path}: read {len(data)} bytes of {size} (the file changed while read)")
        got = FileBytes(path, size, data)
        with self._lock:
            self._last = got
            if self._pool is not None and path not in self._digests:
                self._digests[path] = (self._pool.submit(_sha256_sized, data) if data is not None else
                                       self._pool.submit(_sha256_stream, self.fs, path))
        return got

    def hash_unread(self, paths: Iterable[str]) -> None:
        """Hash (streamed, one read each) the files of ``paths`` not read through this reader."""
        if self._pool is None:
            raise RuntimeError("this HashingReader was made with hash_files=False")
        for path in paths:
            if path not in self._digests:
                self._digests[path] = self._pool.submit(_sha256_stream, self.fs, path)

    def digests(self) -> dict[str, tuple[str, int]]:
        """path -> (hex sha256, size in bytes) of every file read or hashed, once all are done."""
        return {path: future.result() for path, future in self._digests.items()}

    def close(self) -> None:
        self._last = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
