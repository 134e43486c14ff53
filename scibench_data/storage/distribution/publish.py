"""Publish a complete store to object storage as an immutable version, then the catalog that points at it.

Layout under the target prefix ``s3://BUCKET/PREFIX``::

    catalog.yaml                          intake catalog: one entry per data set, latest version
    _scibench/lock.json                   one publisher at a time per prefix
    DATASET/vN/zarr.json, DATASET/vN/...  the store's objects, byte for byte
    DATASET/vN/_scibench/pending.json     written first: which content this version is for
    DATASET/vN/_scibench/manifest.json    written last: every object's key, size and sha256

Order of writes, so a reader never sees a half-published version: objects,
read back and checked against the manifest, then the manifest, then (only
then) ``catalog.yaml``. A killed publish leaves the catalog on the previous
complete version; rerunning the same command resumes the pending version,
skipping objects already uploaded, and finishes it.

Credentials and endpoints are never written: entries carry only a templated
``anon`` flag; keys come from the standard places (storage options,
``AWS_*`` environment variables, profiles) and the endpoint from
``AWS_ENDPOINT_URL`` or the reader's storage options.
"""

from __future__ import annotations

import logging
import posixpath
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from tqdm.auto import tqdm

from scibench_data.catalog import entry_metadata, open_catalog
from scibench_data.progress import bar_disable
from scibench_data.storage.store.anonymous import ANON_TEMPLATE, is_truthy
from scibench_data.storage.store.confine import confine
from scibench_data.storage.store.hashing import sha256_bytes
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.lock import WriterLock
from scibench_data.storage.store.manifest import (
    MANIFEST_KEY,
    Manifest,
    ManifestError,
    build_manifest,
    copy_verified,
    hash_objects,
    list_objects,
)
from scibench_data.storage.store.records import StoreStateError, store_state

log = logging.getLogger(__name__)

CATALOG_NAME = "catalog.yaml"
PENDING_KEY = ("_scibench", "pending.json")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
_VERSION = re.compile(r"^v([1-9][0-9]*)$")


class PublishAccessError(PermissionError):
    """The client may not write (anonymous, or no credentials found)."""


@dataclass(frozen=True)
class PublishTarget:
    """Where versions and the catalog go: ``s3://BUCKET/PREFIX`` (any fsspec URL works, e.g. for tests)."""

    url: str

    def __post_init__(self) -> None:
        if "://" not in self.url:
            raise ValueError(f"publish target {self.url!r} must be a URL such as s3://bucket/prefix")
        rest = self.url.split("://", 1)[1].strip("/")
        if not rest or any(part in ("", ".", "..") for part in rest.split("/")):
            raise ValueError(f"publish target {self.url!r} has an empty, '.' or '..' path component")

    @property
    def is_s3(self) -> bool:
        return self.url.startswith(("s3://", "s3a://"))

    @property
    def base(self) -> str:
        return self.url.rstrip("/")

    def catalog_url(self) -> str:
        return f"{self.base}/{CATALOG_NAME}"

    def version_url(self, dataset: str, version: int) -> str:
        return confine(self.base, f"{check_dataset_name(dataset)}/v{int(version)}", what="data set version")


@dataclass(frozen=True)
class VersionState:
    """What a version folder holds: a finished version (manifest) or a pending one."""

    version: int
    content_sha256: str | None  # from the manifest or pending.json; None: unreadable / foreign
    complete: bool


@dataclass(frozen=True)
class PublishResult:
    dataset: str
    version: int
    url: str
    catalog_url: str
    status: str  # "published", "resumed" or "already published"
    uploaded: int = 0
    skipped: int = 0
    bytes_uploaded: int = 0
    n_objects: int = 0
    size_bytes: int = 0
    manifest_sha256: str = ""
    elapsed_s: float = 0.0

    def lines(self) -> list[str]:
        rate = self.bytes_uploaded / self.elapsed_s / 1e6 if self.elapsed_s > 0 else 0.0
        return [f"{self.dataset} v{self.version}: {self.status} at {self.url}",
                f"objects: {self.n_objects} ({self.size_bytes / 1e6:.1f} MB); uploaded {self.uploaded}, "
                f"already there {self.skipped}; {self.bytes_uploaded / 1e6:.1f} MB in {self.elapsed_s:.1f} s "
                f"({rate:.1f} MB/s)",
                f"manifest sha256: {self.manifest_sha256}",
                f"catalog: {self.catalog_url}"]


# --------------------------------------------------------------------------- pure helpers


def check_dataset_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"data set name {name!r} must be lower-case letters, digits, '_' or '-' (no paths)")
    return name


def parse_version(name: str) -> int | None:
    m = _VERSION.match(name)
    return int(m.group(1)) if m else None


def choose_version(states: Iterable[VersionState], content_sha256: str, requested: int | None = None
                   ) -> tuple[int, str]:
    """Which version to write and how: ``"publish"`` (a new one), ``"resume"`` (a pending one with
    the same content) or ``"already"`` (a finished one with the same content)."""
    by_version = {s.version: s for s in states}
    if requested is not None:
        if requested < 1:
            raise ValueError(f"version must be >= 1, got {requested}")
        s = by_version.get(requested)
        if s is None:
            return requested, "publish"
        if s.content_sha256 == content_sha256:
            return requested, "already" if s.complete else "resume"
        state = "a published" if s.complete else "an unfinished publish of"
        raise StoreStateError(f"v{requested} already holds {state} different content; choose another version")
    for s in sorted(by_version.values(), key=lambda s: -s.version):
        if s.content_sha256 == content_sha256:
            return s.version, "already" if s.complete else "resume"
    return max(by_version, default=0) + 1, "publish"


def _describes_full_set(key: str) -> bool:
    """Shipped-catalog keys about the full reference data set (sizes, counts), not this store."""
    return key in ("n_scenes", "n_samples", "rows", "dims") or key.endswith(("_size_bytes", "_size_bytes_estimate"))


def catalog_entry(dataset: str, version: int, manifest: Manifest, manifest_sha256: str, public: bool,
                  base: Mapping[str, Any], previous: Mapping[str, Any] | None = None, s3: bool = True,
                  dims: Mapping[str, int] | None = None) -> dict:
    """The catalog entry of a published version (no credentials, no endpoint)."""
    meta = {k: v for k, v in base.items() if k != "description" and not _describes_full_set(k)}
    versions = [v for v in ((previous or {}).get("metadata") or {}).get("versions", []) if v.get("version") != version]
    record = {"version": version, "path": f"{dataset}/v{version}", "manifest": f"{dataset}/v{version}/"
              + "/".join(MANIFEST_KEY), "manifest_sha256": manifest_sha256,
              "content_sha256": manifest.content_digest(), "n_objects": len(manifest.entries),
              "size_bytes": manifest.total_bytes, "public": bool(public),
              "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if dims:
        meta["dims"] = dict(dims)
    meta.update({"published": record, "versions": sorted([*versions, dict(record)], key=lambda v: v["version"])})
    args: dict[str, Any] = {"urlpath": "{{ CATALOG_DIR }}/" + f"{dataset}/v{version}", "consolidated": True}
    if s3:
        args["storage_options"] = {"anon": ANON_TEMPLATE}
    return {"description": base.get("description") or f"{dataset} (published by scibench-data)",
            "driver": "scibench_data.intake_source.ScibenchZarrSource", "args": args, "metadata": meta}


def merge_catalog(existing: Mapping[str, Any] | None, dataset: str, entry: Mapping[str, Any]) -> dict:
    """The catalog with ``dataset``'s entry added or replaced, other entries untouched."""
    cat = dict(existing or {})
    cat.setdefault("metadata", {"version": 1, "title": "scibench-data (published)",
                                "description": "MLCommons Science benchmark data sets as chunked Zarr; "
                                               "each entry is the latest verified version (see metadata.versions)."})
    sources = dict(cat.get("sources") or {})
    sources[dataset] = dict(entry)
    cat["sources"] = dict(sorted(sources.items()))
    return cat


# --------------------------------------------------------------------------- access


def require_write_credentials(target: PublishTarget, storage_options: Mapping[str, Any]) -> None:
    """Refuse anonymous publishing before anything is written (moto and some servers accept anonymous PUTs)."""
    if not target.is_s3:
        return
    how = ("anonymous clients can read public versions but cannot publish; give credentials through "
           "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials or the key/secret storage options")
    if is_truthy(storage_options.get("anon")):
        raise PublishAccessError(f"refusing to publish to {target.url} with anon=True: {how}")
    if storage_options.get("key") and storage_options.get("secret"):
        return
    if storage_options.get("session") is not None or storage_options.get("token"):
        return
    # botocore costs ~1 s to import; pull and verify import this module and never need it
    import botocore.session

    session = botocore.session.Session(profile=storage_options.get("profile"))
    try:
        creds = session.get_credentials()
    except Exception as err:  # noqa: BLE001 - a broken profile is also "no usable credentials"
        raise PublishAccessError(f"cannot publish to {target.url}: no usable credentials ({type(err).__name__}); {how}") from None
    if creds is None or not creds.access_key or not creds.secret_key:
        raise PublishAccessError(f"cannot publish to {target.url}: no credentials found; {how}")


# --------------------------------------------------------------------------- I/O


def version_states(target: PublishTarget, dataset: str, storage_options: Mapping[str, Any]) -> list[VersionState]:
    base = StoreLocation(f"{target.base}/{dataset}", dict(storage_options))
    try:
        names = [posixpath.basename(p.rstrip("/")) for p in base.fs.ls(base.root, detail=False, refresh=True)]
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        v = parse_version(name)
        if v is None:
            continue
        loc = StoreLocation(target.version_url(dataset, v), dict(storage_options))
        manifest = loc.read_json(*MANIFEST_KEY)
        if manifest is not None:
            out.append(VersionState(v, manifest.get("content_sha256"), True))
        else:
            pending = loc.read_json(*PENDING_KEY) or {}
            out.append(VersionState(v, pending.get("content_sha256"), False))
    return out


def take_lock(location: StoreLocation, operation: str, break_lock: bool = False) -> WriterLock:
    """The prefix's writer lock (a conditional create); one left by a dead process on this host is
    taken over atomically (:class:`~scibench_data.storage.store.lock.WriterLock`)."""
    lock = WriterLock(location, operation=operation)
    lock.acquire(break_lock=break_lock)
    return lock


def _release_quietly(lock: WriterLock) -> None:
    try:
        lock.release()
    except Exception as err:  # noqa: BLE001 - e.g. the server went away; a rerun takes the stale lock over
        log.warning("could not remove the publish lock of %s (%s); a rerun on this host takes it over",
                    lock.location.url, type(err).__name__)


def _put(location: StoreLocation, key: str, data: bytes, acl: Mapping[str, str]) -> None:
    path = location.path(key)
    if location.is_local:
        location.fs.makedirs(posixpath.dirname(path), exist_ok=True)
    location.fs.pipe_file(path, data, **acl)


def upload_objects(src: StoreLocation, dest: StoreLocation, manifest: Manifest, keys: Iterable[str],
                   acl: Mapping[str, str], workers: int, bar: tqdm) -> int:
    """Copy ``keys`` concurrently; each object is checked against the manifest before it is sent."""
    return copy_verified(src, keys, manifest, put=lambda key, data: _put(dest, key, data, acl),
                         mismatch=lambda key, _: f"{src.url}/{key} changed while publishing (sha256 differs from the manifest)",
                         workers=workers, on_bytes=bar.update)


def store_dims(location: StoreLocation) -> dict[str, int]:
    """Dimension sizes of a store, from its consolidated metadata (one read)."""
    root = location.read_json("zarr.json") or {}
    dims: dict[str, int] = {}
    for meta in ((root.get("consolidated_metadata") or {}).get("metadata") or {}).values():
        for name, n in zip(meta.get("dimension_names") or [], meta.get("shape") or []):
            if name:
                dims[name] = int(n)
    return dims


def _base_metadata(dataset: str) -> dict:
    """Description and metadata of the shipped catalog's entry, if there is one."""

    try:
        cat = open_catalog()
        return entry_metadata(cat, dataset) if dataset in cat else {}
    except Exception:  # noqa: BLE001 - metadata is a courtesy; publishing does not depend on it
        return {}


@dataclass(frozen=True)
class PublishOptions:
    version: int | None = None
    public: bool = False
    workers: int = 8
    progress: bool = True
    break_lock: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.version is not None and self.version < 1:
            raise ValueError(f"version must be >= 1, got {self.version}")


def publish(dataset: str, store: str | StoreLocation, to: str, version: int | None = None, public: bool = False,
            storage_options: Mapping[str, Any] | None = None, options: PublishOptions | None = None) -> PublishResult:
    """Upload the complete store ``store`` as ``TO/DATASET/vN`` and point ``TO/catalog.yaml`` at it."""
    t0 = time.perf_counter()
    opts = options or PublishOptions(version=version, public=public)
    if options is not None and (version is not None or public):
        opts = PublishOptions(version=version or options.version, public=public or options.public,
                              workers=options.workers, progress=options.progress, break_lock=options.break_lock,
                              metadata=options.metadata)
    check_dataset_name(dataset)
    target = PublishTarget(to)
    so = dict(storage_options or {})
    require_write_credentials(target, so)
    src = store if isinstance(store, StoreLocation) else StoreLocation(str(store))
    state = store_state(src)
    if not state.complete:
        raise StoreStateError(f"{src.url} is not a complete store (status {state.status!r}, consolidated "
                              f"{state.consolidated}); finish its conversion before publishing")
    manifest = build_manifest(src, dataset=dataset)
    content = manifest.content_digest()
    acl = {"ACL": "public-read"} if (opts.public and target.is_s3) else {}
    prefix = StoreLocation(target.base, so)
    lock = take_lock(prefix, f"publish {dataset}", break_lock=opts.break_lock)
    try:
        v, action = choose_version(version_states(target, dataset, so), content, opts.version)
        dest = StoreLocation(target.version_url(dataset, v), so)
        uploaded = skipped = nbytes = 0
        if action != "already":
            if action == "publish":
                dest.write_json({"content_sha256": content, "dataset": dataset, "version": v,
                                 "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, *PENDING_KEY)
            remote = list_objects(dest)
            expected = manifest.by_key
            stray = sorted(set(remote) - set(expected))
            if stray:
                raise StoreStateError(f"{dest.url} holds objects that are not in this store, e.g. {stray[:3]}")
            todo = [k for k in expected if remote.get(k) != expected[k].size]
            skipped = len(expected) - len(todo)
            with tqdm(total=manifest.total_bytes, unit="B", unit_scale=True, desc=f"publish {dataset} v{v}",
                      disable=bar_disable(opts.progress)) as bar:
                bar.update(sum(expected[k].size for k in expected if k not in set(todo)))
                nbytes = upload_objects(src, dest, manifest, todo, acl, opts.workers, bar)
            uploaded = len(todo)
            for attempt in range(2):
                digests = hash_objects(dest, expected, workers=opts.workers)
                bad = sorted(k for k in expected if digests.get(k) != expected[k].sha256)
                if not bad:
                    break
                if attempt == 1:
                    raise ManifestError(f"{dest.url}: {len(bad)} object(s) still differ from the manifest after "
                                        f"re-upload, e.g. {bad[:3]}")
                log.warning("%s: re-uploading %d object(s) that differ from the manifest", dest.url, len(bad))
                with tqdm(total=sum(expected[k].size for k in bad), unit="B", unit_scale=True,
                          desc="re-upload", disable=bar_disable(opts.progress)) as bar:
                    nbytes += upload_objects(src, dest, manifest, bad, acl, opts.workers, bar)
                uploaded += len(bad)
            published = manifest.with_version(dataset, v)
            _put(dest, "/".join(MANIFEST_KEY), published.to_bytes(), acl)
            try:
                dest.fs.rm_file(dest.path(*PENDING_KEY))
            except FileNotFoundError:
                pass
        published_bytes = dest.fs.cat_file(dest.path(*MANIFEST_KEY))
        published = Manifest.from_bytes(published_bytes, where=dest.url)
        if published.content_digest() != content:
            raise ManifestError(f"{dest.url}: the published manifest does not describe {src.url}")
        digest = sha256_bytes(published_bytes)
        update_catalog(target, dataset, v, published, digest, opts.public, so,
                       {**_base_metadata(dataset), **dict(opts.metadata)}, dims=store_dims(src))
    except BaseException:
        _release_quietly(lock)  # the original error matters more than a lock we could not remove
        raise
    lock.release()
    status = {"publish": "published", "resume": "resumed", "already": "already published"}[action]
    return PublishResult(dataset=dataset, version=v, url=dest.url, catalog_url=target.catalog_url(), status=status,
                         uploaded=uploaded, skipped=skipped, bytes_uploaded=nbytes, n_objects=len(manifest.entries),
                         size_bytes=manifest.total_bytes, manifest_sha256=digest,
                         elapsed_s=time.perf_counter() - t0)


def read_catalog(target: PublishTarget, storage_options: Mapping[str, Any]) -> dict | None:
    loc = StoreLocation(target.base, dict(storage_options))
    try:
        data = loc.fs.cat_file(loc.path(CATALOG_NAME))
    except FileNotFoundError:
        return None
    cat = yaml.safe_load(data)
    if not isinstance(cat, dict):
        raise StoreStateError(f"{target.catalog_url()} is not a catalog (YAML mapping)")
    return cat


def update_catalog(target: PublishTarget, dataset: str, version: int, manifest: Manifest, manifest_sha256: str,
                   public: bool, storage_options: Mapping[str, Any], base: Mapping[str, Any],
                   dims: Mapping[str, int] | None = None) -> dict:
    """Point ``dataset``'s entry at ``version`` (one PUT of the whole catalog: readers see old or new)."""
    existing = read_catalog(target, storage_options)
    previous = ((existing or {}).get("sources") or {}).get(dataset)
    entry = catalog_entry(dataset, version, manifest, manifest_sha256, public, base, previous, s3=target.is_s3,
                          dims=dims)
    cat = merge_catalog(existing, dataset, entry)
    any_public = any(((s.get("metadata") or {}).get("published") or {}).get("public")
                     for s in cat["sources"].values())
    acl = {"ACL": "public-read"} if (any_public and target.is_s3) else {}
    loc = StoreLocation(target.base, dict(storage_options))
    _put(loc, CATALOG_NAME, yaml.safe_dump(cat, sort_keys=False, width=110).encode(), acl)
    return cat
