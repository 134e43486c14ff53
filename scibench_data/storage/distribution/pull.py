"""Published versions from the reader's side: open, verify, and pull all or part of one locally.

``pull`` copies a version's objects into ``DIR/DATASET.zarr`` (so ``DIR`` works
as the catalog ``root``), each checked against the manifest, resumably; the
root ``zarr.json`` is written last, so an interrupted pull is never opened as a
consolidated store. A subset (records along the record dimension, variables)
keeps every 1-D coordinate whole and only the selected chunks of the N-D
arrays; its root ``zarr.json`` is rewritten with status ``"partial"`` and the
subset, and unselected variables are dropped from the consolidated metadata.
Records outside the subset read as the store's fill values (NaN, 255), which
cannot be mistaken for data.

``pull`` writes only into a folder it made: before any object it writes its marker
``_scibench/pull.json`` (data set, version, manifest digest, subset, keys) into an empty or new
``DATASET.zarr``, and it refuses a folder without that marker (a user's own store) and a copy
of another version (whole or subset): those go to another ``--to`` folder. ``verify --store``
checks every object of a copy, selected or not, against the marker's version.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from scibench_data.atomic import write_bytes, write_json
from scibench_data.catalog import (
    catalog_dir,
    entry_location,
    entry_metadata,
    open_catalog,
)
from scibench_data.progress import bar_disable
from scibench_data.storage.distribution.publish import is_truthy
from scibench_data.storage.store.confine import (
    PathEscapeError,
    check_within,
    confine,
    relative_part,
)
from scibench_data.storage.store.hashing import sha256_bytes
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.manifest import (
    MANIFEST_KEY,
    Manifest,
    ManifestError,
    VerifyReport,
    compare_digests,
    copy_verified,
    hash_objects,
    list_objects,
    read_manifest,
    verify_store,
)
from scibench_data.storage.store.records import (
    STATUS_ATTR,
    incomplete_reason,
    store_state,
)

PULL_KEY = ("_scibench", "pull.json")
ROOT_KEY = "zarr.json"


@dataclass(frozen=True)
class Subset:
    """Which part of a store to pull: ``records`` along ``record_dim`` and/or named N-D ``variables``."""

    records: tuple[int, ...] | None = None
    variables: tuple[str, ...] | None = None
    record_dim: str = "scene"

    def __post_init__(self) -> None:
        if self.records is not None and (not self.records or min(self.records) < 0):
            raise ValueError(f"records must be a non-empty list of indices >= 0, got {self.records}")
        if self.variables is not None and not self.variables:
            raise ValueError("variables must not be empty")
        for name in self.variables or ():
            if relative_part(name, "variable") != name or "/" in name:
                raise PathEscapeError(f"variable {name!r} is not a plain variable name")

    @property
    def everything(self) -> bool:
        return self.records is None and self.variables is None

    def as_dict(self) -> dict:
        return {"records": list(self.records) if self.records is not None else None,
                "variables": list(self.variables) if self.variables is not None else None,
                "record_dim": self.record_dim}


def parse_indices(text: str) -> tuple[int, ...]:
    """``"0,2,5-7"`` -> ``(0, 2, 5, 6, 7)``."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ValueError(f"bad index or range {part!r} in {text!r} (use e.g. 0,2,5-7)") from None
    if not out:
        raise ValueError(f"no indices in {text!r}")
    return tuple(sorted(out))


# --------------------------------------------------------------------------- pure selection


def _chunk_index(rest: str, encoding: Mapping[str, Any]) -> tuple[int, ...] | None:
    """Chunk grid index of a key below an array (``c/0/1`` or ``c.0.1``), None for metadata."""
    name = encoding.get("name", "default")
    sep = (encoding.get("configuration") or {}).get("separator", "/" if name == "default" else ".")
    if name == "default":
        if rest == "c":
            return ()
        if not rest.startswith("c" + sep):
            return None
        rest = rest[2:]
    try:
        return tuple(int(x) for x in rest.split(sep))
    except ValueError:
        return None


def select_keys(manifest: Manifest, root_meta: Mapping[str, Any], subset: Subset) -> list[str]:
    """The manifest keys a subset needs: metadata, whole 1-D arrays, selected chunks of N-D arrays."""
    if subset.everything:
        return sorted(manifest.by_key)
    arrays = {name: meta for name, meta in ((root_meta.get("consolidated_metadata") or {}).get("metadata") or {}).items()
              if meta.get("node_type") == "array"}
    if not arrays:
        raise ManifestError("the store has no consolidated metadata to select a subset from")
    if subset.variables is not None:
        unknown = sorted(set(subset.variables) - set(arrays))
        if unknown:
            raise ValueError(f"no variable(s) {unknown} in the store; it has {sorted(arrays)}")
    records = set(subset.records) if subset.records is not None else None
    if records is not None:
        n = max((m["shape"][0] for m in arrays.values() if (m.get("dimension_names") or [None])[0] == subset.record_dim),
                default=None)
        if n is None:
            raise ValueError(f"no array has {subset.record_dim!r} as its first dimension")
        if max(records) >= n:
            raise IndexError(f"{subset.record_dim} indices {sorted(r for r in records if r >= n)[:5]} outside 0..{n - 1}")
    out = []
    for key in sorted(manifest.by_key):
        name = next((a for a in sorted(arrays, key=len, reverse=True) if key.startswith(a + "/")), None)
        if name is None:  # group metadata
            out.append(key)
            continue
        meta = arrays[name]
        if len(meta["shape"]) <= 1:
            out.append(key)
            continue
        if subset.variables is not None and name not in subset.variables:
            continue
        idx = _chunk_index(key[len(name) + 1:], meta.get("chunk_key_encoding") or {})
        if idx is None or records is None or (meta.get("dimension_names") or [None])[0] != subset.record_dim:
            out.append(key)
            continue
        cs = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        if any(r // cs == idx[0] for r in records):
            out.append(key)
    return out


def partial_root(root_meta: Mapping[str, Any], subset: Subset) -> dict:
    """The root ``zarr.json`` of a partial copy: status ``"partial"``, unselected N-D arrays dropped."""
    meta = json.loads(json.dumps(root_meta))
    attrs = meta.setdefault("attributes", {})
    attrs[STATUS_ATTR] = "partial"
    attrs["scibench_subset"] = subset.as_dict()
    if subset.variables is not None:
        cm = meta["consolidated_metadata"]["metadata"]
        for name in list(cm):
            if cm[name].get("node_type") == "array" and len(cm[name]["shape"]) > 1 and name not in subset.variables:
                del cm[name]
    return meta


# --------------------------------------------------------------------------- opening a published entry


@dataclass(frozen=True)
class Published:
    dataset: str
    location: StoreLocation
    manifest_sha256: str
    metadata: dict = field(default_factory=dict, hash=False, compare=False)


def normalise_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Storage options as rendered from a catalog: ``anon`` ("true"/"") becomes a bool."""
    out = dict(options)
    if "anon" in out:
        out["anon"] = is_truthy(out["anon"])
    return out


def open_published(catalog_url: str, dataset: str, storage_options: Mapping[str, Any] | None = None,
                   allow_outside: bool = False) -> Published:
    """The store, manifest digest and metadata of a published entry.

    The catalog is opened as data (:func:`scibench_data.catalog.load_checked`): no templates but
    ``{{ CATALOG_DIR }}``, only the ``anon`` storage option. The entry's store must lie under the
    catalog's folder (our publisher writes it there); a catalog pointing elsewhere (another prefix
    or bucket, a ``::`` chain) is refused unless ``allow_outside`` (chains always are).

    The caller's ``storage_options`` (an endpoint, credentials, ``anon``) open the catalog and the
    store; the entry's own ``anon`` fills in only when the caller sets none.
    """
    so = dict(storage_options or {})
    cat = open_catalog(catalog_url, storage_options=so, allow_outside=allow_outside)
    loc = entry_location(cat, dataset)
    check_within(catalog_dir(catalog_url), loc.url, allow_escape=allow_outside, what=f"catalog entry {dataset!r} store")
    meta = entry_metadata(cat, dataset)
    published = meta.get("published") or {}
    digest = published.get("manifest_sha256")
    if not digest:
        raise ManifestError(f"catalog entry {dataset!r} in {catalog_url} records no manifest_sha256: not a published version")
    options = {**normalise_options(loc.storage_options), **so}
    return Published(dataset, StoreLocation(loc.url, options), digest, meta)


def verify_published(catalog_url: str, dataset: str, storage_options: Mapping[str, Any] | None = None,
                     workers: int = 16) -> VerifyReport:
    """Check a published version: manifest digest against the catalog, every object against the manifest."""
    pub = open_published(catalog_url, dataset, storage_options)
    manifest = read_manifest(pub.location, pub.manifest_sha256)
    report = verify_store(pub.location, manifest, workers=workers)
    return report.with_state(incomplete_reason(store_state(pub.location)))


def verify_local(path: str | os.PathLike, workers: int = 16, expected_digest: str | None = None) -> VerifyReport:
    """Check a local store: a pulled copy (all or a subset) against its manifest, else its completeness."""
    loc = StoreLocation(str(path))
    info = loc.read_json(*PULL_KEY)
    if info is None and not loc.fs.exists(loc.path(*MANIFEST_KEY)):
        state = store_state(loc)
        if not state.complete:
            return VerifyReport(loc.url, 0, missing=(ROOT_KEY,) if state.status == "absent" else (),
                                incomplete=incomplete_reason(state))
        return VerifyReport(loc.url, 0, notes=("complete store, but it has no manifest to check its objects "
                                               "against (publish it, or pull a published version)",))
    digest = expected_digest or (info or {}).get("manifest_sha256")
    manifest = read_manifest(loc, digest)
    keys = (info or {}).get("keys")
    subset = (info or {}).get("subset") or {}
    partial = bool(subset) and not Subset(**subset).everything
    if partial and keys is not None:
        keys = [k for k in keys if k != ROOT_KEY]
    report = verify_store(loc, manifest, keys=keys, workers=workers)
    if keys is not None:
        report = _check_unselected(loc, manifest, set(keys), report, workers)
    notes = list(report.notes)
    if partial:
        root = loc.read_json(ROOT_KEY)
        if root is None:
            report = VerifyReport(report.location, report.checked, missing=(*report.missing, ROOT_KEY),
                                  extra=report.extra, corrupted=report.corrupted)
        notes.append(f"partial copy ({Subset(**subset).as_dict()}); {ROOT_KEY} is rewritten for the subset")
    reason = incomplete_reason(store_state(loc), accept=("partial",) if partial else ("complete",))
    return VerifyReport(report.location, report.checked, report.missing, report.extra, report.corrupted, tuple(notes),
                        reason)


def _check_unselected(loc: StoreLocation, manifest: Manifest, keys: set[str], report: VerifyReport,
                      workers: int) -> VerifyReport:
    """Objects of a copy outside its pulled keys (a subset over an earlier copy) must be this version's too:
    each is hashed against the manifest, so chunks left by another version are named."""
    others = [k for k in list_objects(loc) if k not in keys and k != ROOT_KEY and k in manifest.by_key]
    if not others:
        return report
    wrong = [(k, f"not this version's object ({why}): left by another version or altered")
             for k, why in compare_digests(manifest.by_key, hash_objects(loc, others, workers=workers))]
    return VerifyReport(report.location, report.checked + len(others), report.missing, report.extra,
                        tuple(sorted((*report.corrupted, *wrong))), report.notes, report.incomplete)


# --------------------------------------------------------------------------- pull


class PullDestinationError(ValueError):
    """The destination is not a copy of this version that ``pull`` made; nothing was written."""


def claim_destination(dest: Path, info: Mapping[str, Any]) -> None:
    """Make ``dest`` ours before any object is written: new or empty -> write the marker ``info``;
    our copy of the same version (same manifest digest) -> resume; anything else is refused."""
    marker = dest.joinpath(*PULL_KEY)
    if dest.exists() and not dest.is_dir():
        raise PullDestinationError(f"{dest} exists and is not a folder; refusing to pull into it")
    if dest.is_dir() and any(dest.iterdir()):
        try:
            held = json.loads(marker.read_bytes())
        except (OSError, ValueError):
            held = None
        if not isinstance(held, dict) or not held.get("manifest_sha256"):
            raise PullDestinationError(f"{dest} is not a copy that pull made (no {'/'.join(PULL_KEY)}); refusing to "
                                       "write into it: pull into another --to folder")
        if held["manifest_sha256"] != info["manifest_sha256"] or held.get("dataset") != info["dataset"]:
            what = "a subset of " if Subset(**(info.get("subset") or {})) != Subset() else ""
            raise PullDestinationError(
                f"{dest} holds v{held.get('version')} of {held.get('dataset')} (manifest "
                f"{str(held['manifest_sha256'])[:12]}...); refusing to pull {what}v{info.get('version')} over it: "
                "pull into another --to folder (or delete that copy)")
    write_json(marker, {**info, "complete": False}, sort_keys=False)


@dataclass(frozen=True)
class PullResult:
    dataset: str
    dest: str
    version: int | None
    fetched: int
    skipped: int
    bytes_fetched: int
    total_bytes: int
    partial: bool


def _local_ok(path: Path, size: int, sha: str) -> bool:
    return path.is_file() and path.stat().st_size == size and sha256_bytes(path.read_bytes()) == sha


def download(src: StoreLocation, dest: Path, manifest: Manifest, keys: Iterable[str], workers: int,
             bar: tqdm) -> int:
    """Fetch ``keys`` concurrently, each checked against the manifest before it lands."""
    expected = manifest.by_key
    return copy_verified(
        src, keys, manifest, put=lambda key, data: write_bytes(Path(confine(str(dest), key, what="manifest key")), data, fsync=False),
        mismatch=lambda key, got: (f"{src.url}/{key} does not match the manifest (sha256 {got[:12]}... != "
                                   f"{expected[key].sha256[:12]}...): the published object is corrupted"),
        workers=workers, on_bytes=bar.update)


def pull(catalog_url: str, dataset: str, to: str | os.PathLike, subset: Subset = Subset(),
         storage_options: Mapping[str, Any] | None = None, workers: int = 16, progress: bool = True) -> PullResult:
    """Copy a published version (or a subset) into ``TO/DATASET.zarr``; resumable, verified."""
    pub = open_published(catalog_url, dataset, storage_options)
    manifest_bytes = pub.location.fs.cat_file(pub.location.path(*MANIFEST_KEY))
    if sha256_bytes(manifest_bytes) != pub.manifest_sha256:
        raise ManifestError(f"the manifest of {pub.location.url} does not match the catalog's manifest_sha256")
    manifest = Manifest.from_bytes(manifest_bytes, where=pub.location.url)
    root_bytes = pub.location.fs.cat_file(pub.location.path(ROOT_KEY))
    if sha256_bytes(root_bytes) != manifest.by_key[ROOT_KEY].sha256:
        raise ManifestError(f"{pub.location.url}/{ROOT_KEY} does not match the manifest")
    root_meta = json.loads(root_bytes)
    keys = select_keys(manifest, root_meta, subset)
    dest = Path(confine(str(to), f"{dataset}.zarr", what="data set name"))
    partial = not subset.everything
    version: int | None = (pub.metadata.get("published") or {}).get("version")
    info = {"catalog": catalog_url, "dataset": dataset, "source": pub.location.url, "version": version,
            "manifest_sha256": pub.manifest_sha256, "subset": subset.as_dict(), "keys": keys}
    claim_destination(dest, info)  # before any write: never into a store pull did not make
    (dest / ROOT_KEY).unlink(missing_ok=True)  # not openable until the pull is complete
    write_bytes(dest.joinpath(*MANIFEST_KEY), manifest_bytes)
    body = [k for k in keys if k != ROOT_KEY]
    expected = manifest.by_key
    todo = [k for k in body if not _local_ok(Path(confine(str(dest), k, what="manifest key")), expected[k].size,
                                             expected[k].sha256)]
    total = sum(expected[k].size for k in keys)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"pull {dataset}", disable=bar_disable(progress)) as bar:
        bar.update(total - sum(expected[k].size for k in todo) - len(root_bytes))
        nbytes = download(pub.location, dest, manifest, todo, workers, bar)
        write_json(dest.joinpath(*PULL_KEY), {**info, "complete": True}, sort_keys=False)
        root_out = json.dumps(partial_root(root_meta, subset), indent=2).encode() if partial else root_bytes
        write_bytes(dest / ROOT_KEY, root_out)
        bar.update(len(root_bytes))
    return PullResult(dataset, str(dest), version, len(todo), len(body) - len(todo), nbytes, total, partial)
