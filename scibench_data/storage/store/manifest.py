"""Manifests: every object of a store with its size and sha256, and checks against them.

A manifest lists the objects of a store by key relative to the store root
(``zarr.json``, ``image/c/0/0/1/2``), excluding the ``_scibench/`` bookkeeping
prefix, where the manifest itself lives (``_scibench/manifest.json``). Its
digest (sha256 of its canonical JSON bytes) is what a catalog entry records,
so a reader can check the manifest, and through it every object.

The comparison functions are pure; the I/O around them is thin fsspec calls,
hashing objects concurrently (threads; s3fs calls run on its own event loop).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec

from scibench_data.storage.store.confine import PathEscapeError, relative_part
from scibench_data.storage.store.hashing import sha256_bytes
from scibench_data.storage.store.location import StoreLocation

STATE_PREFIX = "_scibench/"
MANIFEST_KEY = ("_scibench", "manifest.json")
MANIFEST_FORMAT = 1
_BLOCK = 8 * 2**20
#: Names of the temporaries a killed write leaves: zarr's ``NAME.<uuid>.partial``, our ``*.tmp``
#: (``NAME.<uuid>.tmp`` and ``NAME.tmp``) and pull's ``NAME.<pid>.part``. Never part of a store.
_TEMPORARY = re.compile(r"(\.[0-9a-f]{32}\.partial|\.tmp|\.[0-9]+\.part)$")


def is_temporary(key: str) -> bool:
    """True for the name of a write's temporary (not an object of the store)."""
    return bool(_TEMPORARY.search(posixpath.basename(key)))


class ManifestError(ValueError):
    """A manifest is missing, unreadable or does not match its recorded digest."""


@dataclass(frozen=True)
class ManifestEntry:
    key: str
    size: int
    sha256: str

    def __post_init__(self) -> None:
        try:
            ok = relative_part(self.key, "manifest key") == self.key
        except PathEscapeError as err:
            raise ManifestError(f"{err}; refusing the manifest") from None
        if not ok:
            raise ManifestError(f"manifest key {self.key!r} is not a normalised relative object key; refusing the manifest")
        if self.size < 0:
            raise ManifestError(f"{self.key}: negative size {self.size}")
        if len(self.sha256) != 64:
            raise ManifestError(f"{self.key}: {self.sha256!r} is not a hex sha256")


@dataclass(frozen=True)
class Manifest:
    """The objects of one store version."""

    entries: tuple[ManifestEntry, ...]
    dataset: str = ""
    version: int | None = None

    def __post_init__(self) -> None:
        keys = [e.key for e in self.entries]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise ManifestError(f"manifest lists keys more than once: {dup[:5]}")

    @property
    def by_key(self) -> dict[str, ManifestEntry]:
        return {e.key: e for e in self.entries}

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def content_digest(self) -> str:
        """sha256 over the objects alone (``sha256sum`` lines), independent of dataset name and version."""
        lines = "".join(f"{e.sha256}  {e.size}  {e.key}\n" for e in sorted(self.entries, key=lambda e: e.key))
        return hashlib.sha256(lines.encode()).hexdigest()

    def to_bytes(self) -> bytes:
        obj = {"format": MANIFEST_FORMAT, "dataset": self.dataset, "version": self.version,
               "content_sha256": self.content_digest(),
               "objects": [{"key": e.key, "size": e.size, "sha256": e.sha256}
                           for e in sorted(self.entries, key=lambda e: e.key)]}
        return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode()

    def digest(self) -> str:
        """sha256 of the manifest's bytes as published: what the catalog entry records."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "manifest") -> Manifest:
        try:
            obj = json.loads(data)
            entries = tuple(ManifestEntry(o["key"], int(o["size"]), o["sha256"]) for o in obj["objects"])
            return cls(entries=entries, dataset=obj.get("dataset", ""), version=obj.get("version"))
        except (ValueError, KeyError, TypeError) as err:
            raise ManifestError(f"{where} is not a readable manifest ({err})") from err

    def with_version(self, dataset: str, version: int | None) -> Manifest:
        return Manifest(self.entries, dataset=dataset, version=version)


@dataclass(frozen=True)
class VerifyReport:
    """What a store holds compared with its manifest."""

    location: str
    checked: int
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    corrupted: tuple[tuple[str, str], ...] = ()  # (key, what differs)
    notes: tuple[str, ...] = field(default=())
    #: Why the store is not a finished one (e.g. an interrupted conversion); empty when it is.
    incomplete: str = ""

    #: Why nothing (or not enough) could be verified, e.g. no manifest and no checksums; empty when verified.
    unverified: str = ""
    #: What ``checked`` counts and what it was compared with.
    what: str = "object(s) checked"
    against: str = "the manifest"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.corrupted or self.incomplete or self.unverified)

    def with_state(self, incomplete: str) -> VerifyReport:
        return VerifyReport(self.location, self.checked, self.missing, self.extra, self.corrupted, self.notes,
                            incomplete, self.unverified, self.what, self.against)

    def lines(self) -> list[str]:
        counts = f"{len(self.missing)} missing, {len(self.corrupted)} corrupted, {len(self.extra)} extra"
        out = [f"{self.location}: {self.checked} {self.what}, " + (f"all match {self.against}" if self.ok else counts)]
        if self.unverified:
            out.append(f"  UNVERIFIED: {self.unverified}")
        if self.incomplete:
            out.append(f"  INCOMPLETE: {self.incomplete}")
        out += [f"  missing:   {k}" for k in self.missing]
        out += [f"  corrupted: {k} ({why})" for k, why in self.corrupted]
        out += [f"  extra:     {k}" for k in self.extra]
        out += [f"  note: {n}" for n in self.notes]
        return out


# --------------------------------------------------------------------------- pure comparisons


def compare_sizes(expected: Mapping[str, ManifestEntry], sizes: Mapping[str, int]
                  ) -> tuple[list[str], list[str], list[tuple[str, str]], list[str]]:
    """Split keys by a listing's sizes: (missing, extra, wrong size, same size: still to hash)."""
    missing = sorted(set(expected) - set(sizes))
    extra = sorted(set(sizes) - set(expected))
    wrong, to_hash = [], []
    for key in sorted(set(expected) & set(sizes)):
        if sizes[key] != expected[key].size:
            wrong.append((key, f"size {sizes[key]} != {expected[key].size}"))
        else:
            to_hash.append(key)
    return missing, extra, wrong, to_hash


def compare_digests(expected: Mapping[str, ManifestEntry], digests: Mapping[str, str]) -> list[tuple[str, str]]:
    """Keys whose content hash differs from the manifest's."""
    return [(k, f"sha256 {d[:12]}... != {expected[k].sha256[:12]}...")
            for k, d in sorted(digests.items()) if d != expected[k].sha256]


def is_state_key(key: str) -> bool:
    return key == STATE_PREFIX.rstrip("/") or key.startswith(STATE_PREFIX)


# --------------------------------------------------------------------------- I/O


def list_objects(location: StoreLocation) -> dict[str, int]:
    """Object key (relative to the store root) -> size, excluding ``_scibench/`` and the temporaries
    of killed writes (:func:`is_temporary`). One listing."""
    return {key: info[0] for key, info in list_objects_detail(location).items()}


def list_objects_detail(location: StoreLocation) -> dict[str, tuple[int, float | None]]:
    """:func:`list_objects` with each object's modification time where the listing gives one (local)."""
    return {key: (size, mtime) for key, (size, mtime, _) in list_objects_stamped(location).items()}


def list_objects_stamped(location: StoreLocation) -> dict[str, tuple[int, float | None, str | None]]:
    """:func:`list_objects` with each object's modification time (local) and ETag (object stores) where
    the listing gives them. One listing."""
    fs, root = location.fs, location.root
    fs.invalidate_cache(root)  # always the server's current state, never a cached listing
    try:
        found = fs.find(root, detail=True, withdirs=False)
    except FileNotFoundError:
        return {}
    out = {}
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        key = posixpath.relpath(path, root) if location.is_local else path[len(root):].lstrip("/")
        if key and not is_state_key(key) and not is_temporary(key):
            mtime = info.get("mtime") if location.is_local else None
            etag = None if location.is_local else (info.get("ETag") or info.get("e_tag"))
            out[key] = (int(info["size"]), float(mtime) if mtime is not None else None,
                        str(etag) if etag else None)
    return out


def sha256_object(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """sha256 of one object, read in ranged 8 MiB requests (no cached size or ETag is trusted)."""
    h = hashlib.sha256()
    start = 0
    while True:
        try:
            block = fs.cat_file(path, start=start, end=start + _BLOCK)
        except OSError as err:  # S3 answers a range request on an empty object with 416 (errno 22)
            if start == 0 and not isinstance(err, FileNotFoundError) and fs.size(path) == 0:
                return h.hexdigest()
            raise
        h.update(block)
        if len(block) < _BLOCK:
            return h.hexdigest()
        start += _BLOCK


def hash_objects(location: StoreLocation, keys: Iterable[str], workers: int = 16,
                 on_done: Callable[[str], None] | None = None) -> dict[str, str]:
    """sha256 of each key, hashed concurrently; a key that vanished meanwhile is left out."""
    keys = list(keys)

    def one(key: str) -> tuple[str, str | None]:
        try:
            digest = sha256_object(location.fs, location.path(key))
        except FileNotFoundError:
            digest = None
        if on_done:
            on_done(key)
        return key, digest

    if not keys:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys)))) as pool:
        return {k: d for k, d in pool.map(one, keys) if d is not None}


def copy_verified(src: StoreLocation, keys: Iterable[str], manifest: Manifest, put: Callable[[str, bytes], object],
                  mismatch: Callable[[str, str], str], workers: int = 16,
                  on_bytes: Callable[[int], None] | None = None) -> int:
    """Read ``keys`` from ``src`` concurrently; each object's sha256 is checked against the manifest
    (a difference raises :class:`ManifestError` with ``mismatch(key, got_sha256)``) before
    ``put(key, data)`` stores it. Returns the bytes copied (publish and pull share this)."""
    expected = manifest.by_key

    def one(key: str) -> int:
        data = src.fs.cat_file(src.path(key))
        got = sha256_bytes(data)
        if got != expected[key].sha256:
            raise ManifestError(mismatch(key, got))
        put(key, data)
        if on_bytes:
            on_bytes(len(data))
        return len(data)

    keys = list(keys)
    if not keys:
        return 0
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys)))) as pool:
        return sum(pool.map(one, keys))


def build_manifest(location: StoreLocation, dataset: str = "", version: int | None = None,
                   workers: int = 8, reuse: Manifest | None = None, unchanged_before: float | None = None,
                   known_etags: Mapping[str, tuple[int, str, str]] | None = None,
                   etags_out: dict[str, str] | None = None,
                   written: Mapping[str, tuple[int, str]] | None = None) -> Manifest:
    """List and hash every object of a store (``_scibench/`` excluded).

    With ``reuse`` (an earlier manifest of the same local store) and ``unchanged_before`` (a time
    before any write since it), an object of the same size not modified since keeps its earlier
    digest instead of being read again: an append hashes what it wrote, not the whole store.
    On an object store, ``known_etags`` (key -> size, ETag, sha256 from an earlier build) does the
    same: an object whose listing shows the same size and ETag (the server's digest of its bytes,
    new on every write) keeps its sha256. ``written`` (key -> size, sha256 of the bytes a writer put
    there) does it for objects just written: one listed with that size is not read back.
    ``etags_out`` receives the listing's ETags."""
    listing = list_objects_stamped(location)
    if not listing:
        raise FileNotFoundError(f"{location.url} holds no objects")
    known = reuse.by_key if reuse is not None and unchanged_before is not None else {}
    digests = {}
    for key, (size, mtime, etag) in listing.items():
        old = known.get(key)
        if old is not None and old.size == size and mtime is not None and unchanged_before is not None \
                and mtime < unchanged_before:
            digests[key] = old.sha256
        tagged = (known_etags or {}).get(key)
        if tagged is not None and etag is not None and tuple(tagged[:2]) == (size, etag):
            digests[key] = tagged[2]
        put = (written or {}).get(key)
        if put is not None and put[0] == size:
            digests[key] = put[1]
        if etags_out is not None and etag is not None:
            etags_out[key] = etag
    digests.update(hash_objects(location, [k for k in listing if k not in digests], workers=workers))
    return Manifest(tuple(ManifestEntry(k, listing[k][0], digests[k]) for k in sorted(digests)),
                    dataset=dataset, version=version)


def read_manifest(location: StoreLocation, expected_digest: str | None = None) -> Manifest:
    """The manifest stored with a store, checked against ``expected_digest`` when given."""
    path = location.path(*MANIFEST_KEY)
    try:
        data = location.fs.cat_file(path)
    except FileNotFoundError:
        raise ManifestError(f"{location.url} has no manifest ({'/'.join(MANIFEST_KEY)})") from None
    if expected_digest is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != expected_digest:
            raise ManifestError(f"the manifest of {location.url} has sha256 {got}, but the catalog records "
                                f"{expected_digest}: the manifest was altered or belongs to another version")
    return Manifest.from_bytes(data, where=f"{location.url}/{'/'.join(MANIFEST_KEY)}")


def verify_store(location: StoreLocation, manifest: Manifest, keys: Iterable[str] | None = None,
                 workers: int = 16, allow_extra: bool = False) -> VerifyReport:
    """Compare a store with its manifest, naming every missing, extra and corrupted object.

    ``keys`` restricts the check to a subset (a partial copy); objects outside it are then
    not reported missing. Sizes come from one listing; same-size objects are hashed.
    """
    expected = manifest.by_key
    if keys is not None:
        wanted = set(keys)
        unknown = sorted(wanted - set(expected))
        if unknown:
            raise ManifestError(f"keys not in the manifest: {unknown[:5]}")
        expected = {k: v for k, v in expected.items() if k in wanted}
    sizes = list_objects(location)
    missing, extra, wrong, to_hash = compare_sizes(expected, sizes)
    if keys is not None:
        extra = [k for k in extra if k not in manifest.by_key]
    digests = hash_objects(location, to_hash, workers=workers)
    vanished = sorted(set(to_hash) - set(digests))
    corrupted = sorted(wrong + compare_digests(expected, digests))
    return VerifyReport(location=location.url, checked=len(expected), missing=tuple(sorted(missing + vanished)),
                        extra=() if allow_extra else tuple(extra), corrupted=tuple(corrupted))
