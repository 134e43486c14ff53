"""Where the real raw archives live, and a resumable copy of them (``scibench-data fetch-raw``).

Each source is a frozen description: a URL prefix (S3, copied recursively) or a
list of file URLs (HTTP), plus how to reach it (endpoint, anonymous access).
Endpoints are configuration: ``fetch_raw(..., endpoint_url=...)`` or
``$SCIBENCH_RAW_ENDPOINT_URL`` points a source at another server (tests use a
moto server holding the same layout). The converters read these URLs
directly too (``convert cloudmask s3://... DEST``), without staging.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from tqdm.auto import tqdm

from scibench_data.progress import bar_disable

ENDPOINT_ENV = "SCIBENCH_RAW_ENDPOINT_URL"
STFC_ENDPOINT = "https://s3.echo.stfc.ac.uk"


@dataclass(frozen=True)
class RawSource:
    """One public raw archive."""

    name: str
    description: str
    url: str = ""  # a prefix copied recursively (s3://...), or "" when ``files`` lists each file
    files: tuple[str, ...] = ()  # individual file URLs (https://...)
    endpoint_url: str | None = None  # S3 endpoint (not AWS)
    anon: bool = True
    doi: str | None = None
    approx_bytes: int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"source name {self.name!r} must be a plain name")
        if bool(self.url) == bool(self.files):
            raise ValueError(f"source {self.name!r}: give exactly one of url (a prefix) or files")
        if self.url and "://" not in self.url:
            raise ValueError(f"source {self.name!r}: url {self.url!r} needs a protocol (s3://, https://)")

    @property
    def protocol(self) -> str:
        return (self.url or self.files[0]).split("://", 1)[0]

    def storage_options(self, endpoint_url: str | None = None) -> dict[str, Any]:
        """fsspec options: anonymous S3 on the configured endpoint (override > env > registry)."""
        if self.protocol not in ("s3", "s3a"):
            return {}
        endpoint = endpoint_url or os.environ.get(ENDPOINT_ENV) or self.endpoint_url
        opts: dict[str, Any] = {"anon": self.anon}
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
        return opts


SOURCES: dict[str, RawSource] = {s.name: s for s in (
    RawSource(
        name="cloudmask_ds1",
        description="CloudMask DS1: preprocessed per-product HDF5 (training/ and inference/), ~180 GB",
        url="s3://sciml-datasets/es/cloud_slstr_ds1/", endpoint_url=STFC_ENDPOINT, anon=True,
        approx_bytes=180_000_000_000,
        note="STFC SciML-Bench object store; aws s3 --no-sign-request --endpoint-url " + STFC_ENDPOINT),
    RawSource(
        name="stemdl_ds1a",
        description="STEMDL stemdl_ds1a: preprocessed sample-{i}.npz in training/validation/testing/inference, ~35 GB",
        url="s3://sciml-datasets/ms/stemdl_ds1a/", endpoint_url=STFC_ENDPOINT, anon=True,
        doi="10.13139/OLCF/1510313", approx_bytes=35_000_000_000,
        note="raw CBED HDF5 (548.7 GiB) is published under the DOI (OLCF, via Globus), not here"),
    RawSource(
        name="candle_uno_export",
        description="CANDLE-UNO exported HDF5 used by the MLCommons run (top_21_auc_1fold.uno.h5)",
        files=("https://ftp.mcs.anl.gov/pub/candle/public/benchmarks/Pilot1/uno/top_21_auc_1fold.uno.h5",),
        anon=True, approx_bytes=6_400_000_000),
    RawSource(
        name="candle_uno_raw",
        description="CANDLE Pilot1 raw tables: aggregated single-drug response and lincs1000 RNA-seq",
        files=("https://ftp.mcs.anl.gov/pub/candle/public/benchmarks/Pilot1/combo/combined_single_response_agg",
               "https://ftp.mcs.anl.gov/pub/candle/public/benchmarks/Pilot1/combo/"
               "combined_rnaseq_data_lincs1000_source_scale"),
        anon=True,
        note="drug descriptor and fingerprint TSVs (*_dragon7_*.tsv) are in the same folder; add them by name"),
)}


def get_source(name: str) -> RawSource:
    if name not in SOURCES:
        raise ValueError(f"no raw source {name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


@dataclass(frozen=True)
class RawFile:
    url: str  # as given to the filesystem
    relpath: str  # where it goes under the destination
    size: int


@dataclass(frozen=True)
class FetchPlan:
    source: str
    files: tuple[RawFile, ...]
    storage_options: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def safe_relpath(rel: str) -> str:
    """A relative path that stays under the destination."""
    norm = posixpath.normpath(rel.lstrip("/"))
    if norm in ("", ".") or norm.startswith("../") or norm == "..":
        raise ValueError(f"refusing to write {rel!r} outside the destination")
    return norm


def plan_fetch(source: RawSource, endpoint_url: str | None = None) -> FetchPlan:
    """List the source's files and sizes (one listing for a prefix, one HEAD per listed file)."""
    so = source.storage_options(endpoint_url)
    files = []
    if source.url:
        fs, root = fsspec.core.url_to_fs(source.url, **so)
        root = root.rstrip("/")
        for path, info in sorted(fs.find(root, detail=True).items()):
            if info.get("type") == "directory":
                continue
            files.append(RawFile(fs.unstrip_protocol(path), safe_relpath(path[len(root):]), int(info["size"])))
    else:
        for url in source.files:
            fs, path = fsspec.core.url_to_fs(url, **so)
            files.append(RawFile(url, safe_relpath(posixpath.basename(path)), int(fs.size(path) or 0)))
    if not files:
        raise FileNotFoundError(f"{source.name}: nothing found at {source.url or source.files}")
    return FetchPlan(source.name, tuple(files), so)


@dataclass(frozen=True)
class FetchResult:
    source: str
    dest: str
    fetched: int
    skipped: int
    bytes_fetched: int
    total_bytes: int


def fetch_raw(name: str, dest: str | os.PathLike, endpoint_url: str | None = None, progress: bool = True,
              echo=print, storage_options: Mapping[str, Any] | None = None) -> FetchResult:
    """Copy a raw source under ``dest``; files already there with the right size are kept (resume)."""
    source = get_source(name)
    plan = plan_fetch(source, endpoint_url)
    so = {**plan.storage_options, **dict(storage_options or {})}
    dest = Path(dest)
    todo = [f for f in plan.files if not ((dest / f.relpath).is_file() and (dest / f.relpath).stat().st_size == f.size)]
    echo(f"{name}: {len(plan.files)} file(s), {plan.total_bytes / 1e9:.3f} GB in total; "
         f"{len(plan.files) - len(todo)} already here, {sum(f.size for f in todo) / 1e9:.3f} GB to fetch into {dest}")
    done = 0
    with tqdm(total=sum(f.size for f in todo), unit="B", unit_scale=True, desc=f"fetch {name}",
              disable=bar_disable(progress)) as bar:
        for f in todo:
            fs, path = fsspec.core.url_to_fs(f.url, **so)
            target = dest / f.relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            with fs.open(path, "rb", block_size=8 * 2**20) as src, open(tmp, "wb") as out:
                while block := src.read(8 * 2**20):
                    out.write(block)
                    bar.update(len(block))
            if tmp.stat().st_size != f.size:
                raise OSError(f"{f.url}: got {tmp.stat().st_size} bytes, expected {f.size}; rerun to retry")
            os.replace(tmp, target)
            done += f.size
    return FetchResult(name, str(dest), len(todo), len(plan.files) - len(todo), done, plan.total_bytes)
