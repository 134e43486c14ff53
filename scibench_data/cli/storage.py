"""``scibench-data publish | verify | pull | fetch-raw``: object storage with verifiable integrity.

Credentials are never taken on the command line: they come from the standard
places (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``~/.aws``); the endpoint from ``--endpoint-url`` or ``AWS_ENDPOINT_URL``.

The data stack is imported inside the commands: ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from scibench_data.cli.common import add_progress

CATALOG_ENV = "SCIBENCH_CATALOG"


def _storage_options(args: argparse.Namespace) -> dict:
    so: dict = {}
    if getattr(args, "anon", False):
        so["anon"] = True
    if getattr(args, "endpoint_url", None):
        so["client_kwargs"] = {"endpoint_url": args.endpoint_url}
    return so


def _add_access(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint (default: $AWS_ENDPOINT_URL, else AWS); credentials come from AWS_* / profiles")
    p.add_argument("--anon", action="store_true", help="anonymous access (public versions; read only)")


def _catalog(args: argparse.Namespace) -> str:
    url = args.catalog or os.environ.get(CATALOG_ENV)
    if not url:
        raise ValueError(f"give --catalog s3://BUCKET/PREFIX/catalog.yaml (or set ${CATALOG_ENV})")
    return url


def _publish(args: argparse.Namespace) -> int:
    from scibench_data.catalog import store_url
    from scibench_data.storage.distribution.publish import PublishOptions, publish

    store = args.store or store_url(args.dataset, args.root)
    opts = PublishOptions(version=args.version, public=args.public, workers=args.workers, progress=args.progress,
                          break_lock=args.break_lock)
    result = publish(args.dataset, store, args.to, storage_options=_storage_options(args), options=opts)
    print("\n".join(result.lines()))
    return 0


def _verify_local(path: str, workers: int):
    """A local store against its manifest (written when its conversion finished, or pulled); without one,
    a complete store's chunks against their checksums, saying so."""
    from scibench_data.storage.distribution.pull import verify_local
    from scibench_data.storage.store.integrity import unchecked_note, verify_checksums
    from scibench_data.storage.store.location import StoreLocation
    from scibench_data.storage.store.manifest import MANIFEST_KEY
    from scibench_data.storage.store.records import store_state

    loc = StoreLocation(str(path))
    if not loc.fs.exists(loc.path(*MANIFEST_KEY)) and loc.read_json("_scibench", "pull.json") is None \
            and store_state(loc).complete:
        return verify_checksums(loc, workers=workers)
    report = verify_local(path, workers=workers)
    note = unchecked_note(loc)
    return replace(report, notes=(*report.notes, note)) if note else report


def _verify(args: argparse.Namespace) -> int:
    from scibench_data.storage.distribution.pull import verify_published

    if args.store:
        report = _verify_local(args.store, workers=args.workers)
    elif not args.dataset:
        raise ValueError("give a DATASET (with --catalog for a published version, else its local store under "
                         "--root is checked) or --store PATH")
    elif args.catalog or os.environ.get(CATALOG_ENV):
        report = verify_published(_catalog(args), args.dataset, _storage_options(args), workers=args.workers)
    else:
        from scibench_data.catalog import open_catalog, store_url

        cat = open_catalog()
        if args.dataset not in cat:
            raise KeyError(f"catalog has no entry {args.dataset!r}; entries: {', '.join(sorted(cat))}")
        report = _verify_local(store_url(args.dataset, args.root), workers=args.workers)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _pull(args: argparse.Namespace) -> int:
    from scibench_data.storage.distribution.pull import (
        Subset,
        parse_indices,
        pull,
        verify_local,
    )

    records = None
    if args.scenes and args.samples:
        raise ValueError("give --scenes or --samples, not both")
    if args.scenes or args.samples:
        records = parse_indices(args.scenes or args.samples)
    dim = args.record_dim or ("sample" if args.samples else "scene")
    variables = tuple(v.strip() for v in args.variables.split(",") if v.strip()) if args.variables else None
    subset = Subset(records=records, variables=variables, record_dim=dim)
    result = pull(_catalog(args), args.dataset, args.to, subset, _storage_options(args), workers=args.workers,
                  progress=args.progress)
    print(f"{result.dataset} v{result.version} -> {result.dest}: fetched {result.fetched} object(s) "
          f"({result.bytes_fetched / 1e6:.1f} MB), {result.skipped} already here"
          + (" (partial copy)" if result.partial else ""))
    report = verify_local(result.dest, workers=args.workers)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _fetch_raw(args: argparse.Namespace) -> int:
    from scibench_data.sources import SOURCES, fetch_raw

    if args.list:
        for s in SOURCES.values():
            where = s.url or ", ".join(s.files)
            print(f"{s.name:20s} {where}" + (f" (endpoint {s.endpoint_url})" if s.endpoint_url else "")
                  + (f" doi:{s.doi}" if s.doi else "") + f"\n{'':20s} {s.description}")
        return 0
    if not args.name or not args.to:
        raise ValueError("give a source NAME and --to DIR (or --list)")
    result = fetch_raw(args.name, args.to, endpoint_url=args.endpoint_url, progress=args.progress,
                       echo=lambda line: print(line, file=sys.stderr))
    print(f"{result.source}: fetched {result.fetched} file(s) ({result.bytes_fetched / 1e6:.1f} MB), "
          f"{result.skipped} already present, into {result.dest}")
    return 0


def register(cli) -> None:
    p = cli.command("publish", _publish, "upload a complete store as a new verified version and update the catalog")
    p.add_argument("dataset", help="catalog entry name, e.g. cloudmask_ds1")
    p.add_argument("--to", required=True, help="s3://BUCKET/PREFIX (versions go to PREFIX/DATASET/vN/)")
    p.add_argument("--store", default=None, help="the local store (default: ROOT/DATASET.zarr)")
    p.add_argument("--root", default=None, help="where local stores live (default $SCIBENCH_DATA_ROOT)")
    p.add_argument("--version", type=int, default=None, help="version number (default: the next free one)")
    p.add_argument("--public", action="store_true", help="public-read ACL, so readers can use anonymous access")
    p.add_argument("--workers", type=int, default=8, help="concurrent uploads (default 8)")
    p.add_argument("--break-lock", action="store_true", help="remove a publish lock left by a process that is gone")
    _add_access(p)
    add_progress(p)

    p = cli.command("verify", _verify, "check a published version (or a local copy) against its manifest")
    p.add_argument("dataset", nargs="?", default=None, help="catalog entry name (for a published version)")
    p.add_argument("--catalog", default=None, help=f"published catalog URL (default ${CATALOG_ENV})")
    p.add_argument("--store", default=None, help="verify this local store (e.g. a pulled copy) instead")
    p.add_argument("--root", default=None,
                   help="without --catalog: verify the local store ROOT/DATASET.zarr (default $SCIBENCH_DATA_ROOT)")
    p.add_argument("--workers", type=int, default=16, help="concurrent hashing requests (default 16)")
    _add_access(p)

    p = cli.command("pull", _pull, "copy a published version (all or a subset) locally, resumably and verified")
    p.add_argument("dataset", help="catalog entry name")
    p.add_argument("--to", required=True, help="folder: the copy goes to DIR/DATASET.zarr (usable as --root)")
    p.add_argument("--catalog", default=None, help=f"published catalog URL (default ${CATALOG_ENV})")
    p.add_argument("--scenes", default=None, help="scene indices, e.g. 0,3,10-19 (CloudMask)")
    p.add_argument("--samples", default=None, help="sample indices (STEMDL)")
    p.add_argument("--record-dim", default=None, help="record dimension name if neither scene nor sample")
    p.add_argument("--variables", default=None, help="comma-separated data variables, e.g. image,cloud_mask")
    p.add_argument("--workers", type=int, default=16, help="concurrent downloads (default 16)")
    _add_access(p)
    add_progress(p)

    p = cli.command("fetch-raw", _fetch_raw, "copy a raw archive from its public source (resumable)")
    p.add_argument("name", nargs="?", default=None, help="source name (see --list)")
    p.add_argument("--to", default=None, help="destination folder")
    p.add_argument("--list", action="store_true", help="list the known raw sources")
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint override (default $SCIBENCH_RAW_ENDPOINT_URL, else the source's own)")
    add_progress(p)
