"""What a read may trust: chunk checksums, the chunks a complete store holds, and the errors when they fail.

Every array we write ends its codec chain with zarr v3's standard ``crc32c``
codec (4 bytes of CRC-32C, little-endian, after the compressed chunk), so any
Zarr v3 reader (zarr-python, zarrs, tensorstore) checks each chunk it decodes;
our batched chunk reader checks it too (:func:`checked_payload`).

A complete store also knows which chunks it holds: its manifest
(``_scibench/manifest.json``, written when the conversion finishes and with
every published version) lists every object. A chunk the manifest lists but
the store lacks was lost (:class:`MissingChunkError`); a chunk it does not
list was never written because it held only the fill value, and reads as
that. Stores without a manifest (written before this, or still being written)
cannot tell the two apart and read a missing chunk as the fill value, as Zarr
defines.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import google_crc32c
import numpy as np
from zarr.core.buffer import default_buffer_prototype

from scibench_data.storage.store.manifest import VerifyReport, list_objects

CHECKSUM_CODEC = "crc32c"
CHECKSUM_BYTES = 4
MANIFEST_PATH = "_scibench/manifest.json"
STATUS_ATTR = "scibench_status"


class ChunkIntegrityError(ValueError):
    """A chunk read from a store is corrupted or missing: the data cannot be trusted.

    ``chunk`` holds the chunk's grid coordinates where the reader knows them (the first is the
    record: scene or sample), so a loader can name the record and window it was reading."""

    chunk: tuple[int, ...] | None = None


class ChunkChecksumError(ChunkIntegrityError):
    """A chunk's bytes do not match its stored CRC-32C."""


class MissingChunkError(ChunkIntegrityError):
    """A chunk that a complete store's manifest lists is absent."""


def crc32c_of(data) -> bytes:
    """The CRC-32C of ``data`` as the 4 little-endian bytes the ``crc32c`` codec appends."""
    return np.uint32(google_crc32c.value(data)).astype("<u4").tobytes()


def checked_payload(raw: np.ndarray, where: str) -> np.ndarray:
    """The chunk bytes before their CRC-32C (uint8 ``raw``), after checking it; else :class:`ChunkChecksumError`
    naming ``where`` (store URL, array and chunk key)."""
    if raw.size < CHECKSUM_BYTES:
        raise ChunkChecksumError(f"{where}: chunk of {raw.size} bytes is too short to hold its crc32c checksum")
    payload = raw[:-CHECKSUM_BYTES]
    stored = bytes(raw[-CHECKSUM_BYTES:])
    if crc32c_of(payload) != stored:
        raise ChunkChecksumError(f"{where}: crc32c checksum mismatch (stored {stored.hex()}, computed "
                                 f"{crc32c_of(payload).hex()}): the chunk is corrupted; re-pull or reconvert it")
    return payload


def chunk_where(url: str, array: str, key: str) -> str:
    """How errors name a chunk: ``URL: array NAME, chunk KEY``."""
    return f"{url.rstrip('/')}: array {array!r}, chunk {key}"


def has_checksum(codecs: Iterable[Mapping]) -> bool:
    """True when a v3 codec list (JSON form) ends with the ``crc32c`` codec."""
    names = [c.get("name") if isinstance(c, Mapping) else c for c in codecs]
    return bool(names) and names[-1] == CHECKSUM_CODEC


# --------------------------------------------------------------------------- which chunks a store holds


@dataclass(frozen=True)
class Inventory:
    """The object keys a complete store holds (from its manifest), or ``None`` when it cannot say."""

    keys: frozenset[str] | None

    def lost(self, key: str) -> bool:
        """True when ``key`` belongs to the store but is absent (only asked about absent keys)."""
        return self.keys is not None and key in self.keys


NO_INVENTORY = Inventory(None)


def inventory_from(root_bytes: bytes | None, manifest_bytes: bytes | None) -> Inventory:
    """The inventory of a store given its root ``zarr.json`` and manifest (pure): only a finished store
    (root status ``complete``, or ``partial`` for a pulled subset, whose absent chunks were not pulled)
    is described by its manifest; a store being written is not."""
    if root_bytes is None or manifest_bytes is None:
        return NO_INVENTORY
    try:
        status = (json.loads(root_bytes).get("attributes") or {}).get(STATUS_ATTR)
        keys = frozenset(o["key"] for o in json.loads(manifest_bytes)["objects"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return NO_INVENTORY
    return Inventory(keys) if status in ("complete", "partial") else NO_INVENTORY


async def load_inventory(store) -> Inventory:
    """Read a store's inventory through its zarr store (two small reads)."""
    proto = default_buffer_prototype()
    root = await store.get("zarr.json", prototype=proto)
    manifest = await store.get(MANIFEST_PATH, prototype=proto)
    return inventory_from(None if root is None else root.to_bytes(), None if manifest is None else manifest.to_bytes())


# --------------------------------------------------------------------------- checking a store without a manifest


@dataclass(frozen=True)
class ChecksumReport:
    """Chunk checksums of a store: how many matched, which did not, which arrays carry none."""

    checked: int
    corrupted: tuple[tuple[str, str], ...]
    unchecked_arrays: tuple[str, ...]
    unchecked_objects: int


def array_codecs(root: Mapping) -> dict[str, list]:
    """Array path -> codec list (JSON), from a root ``zarr.json``'s consolidated metadata (pure)."""
    meta = ((root.get("consolidated_metadata") or {}).get("metadata") or {})
    return {name: list(m.get("codecs") or []) for name, m in meta.items() if m.get("node_type") == "array"}


def array_of(key: str, arrays: Iterable[str]) -> str | None:
    """The array a chunk key belongs to (``image/c/0/1`` -> ``image``), or None for metadata (pure)."""
    if posixpath.basename(key) == "zarr.json":
        return None
    best = None
    for name in arrays:
        if (key.startswith(f"{name}/c/") or key == f"{name}/c") and (best is None or len(name) > len(best)):
            best = name
    return best


def check_chunk_checksums(location, workers: int = 8) -> ChecksumReport:
    """Read every chunk object of a complete store and check its crc32c (the ``verify`` of a store
    that has no manifest). Chunks of arrays without the codec are counted as unchecked."""
    root = location.read_json("zarr.json") or {}
    codecs = array_codecs(root)
    sizes = list_objects(location)
    checked_keys, unchecked, unchecked_arrays = [], 0, set()
    for key in sorted(sizes):
        name = array_of(key, codecs)
        if name is None:
            continue
        if has_checksum(codecs[name]):
            checked_keys.append(key)
        else:
            unchecked += 1
            unchecked_arrays.add(name)

    def one(key: str) -> tuple[str, str] | None:
        data = np.frombuffer(location.fs.cat_file(location.path(key)), np.uint8)
        try:
            checked_payload(data, key)
        except ChunkChecksumError as err:
            return key, str(err).split(": ", 1)[1]
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        bad = [r for r in pool.map(one, checked_keys) if r is not None]
    return ChecksumReport(len(checked_keys), tuple(bad), tuple(sorted(unchecked_arrays)), unchecked)


def unchecked_note(location) -> str:
    """A note naming the arrays whose chunks carry no checksum (stores written before crc32c), or ``""``."""
    codecs = array_codecs(location.read_json("zarr.json") or {})
    bare = sorted(name for name, chain in codecs.items() if not has_checksum(chain))
    if not bare:
        return ""
    return (f"arrays {', '.join(bare)} carry no crc32c checksum (written before checksums): reads of them are "
            "unchecked; only a manifest can vouch for them")


def verify_checksums(location, workers: int = 8):
    """``verify`` of a complete store that has no manifest: every chunk against its crc32c. Says plainly that
    there was no manifest, and is not ok when nothing could be verified."""
    r = check_chunk_checksums(location, workers=workers)
    notes = [f"no manifest ({MANIFEST_PATH}): chunks were checked against their own crc32c only; metadata objects "
             "and chunks that went missing cannot be checked without one"]
    note = unchecked_note(location)
    if note:
        notes.append(note)
    unverified = "" if r.checked else "no manifest and no chunk checksums: nothing could be verified"
    return VerifyReport(location.url, r.checked, corrupted=r.corrupted, notes=tuple(notes), unverified=unverified,
                        what="chunk checksum(s) checked", against="their crc32c")
