"""Content digests for provenance and manifests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import fsspec

_BLOCK = 8 * 2**20


def sha256_file(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Hex sha256 of one file, streamed in 8 MiB blocks."""
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def combined_digest(named_digests: Iterable[tuple[str, str]]) -> str:
    """One digest for a set of files: sha256 over sorted ``name  digest`` lines
    (the format of ``sha256sum``), so it does not depend on listing order."""
    lines = "".join(f"{digest}  {name}\n" for name, digest in sorted(named_digests))
    return sha256_bytes(lines.encode())
