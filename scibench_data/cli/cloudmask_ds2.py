"""``scibench-data append cloudmask``, ``scaffold cloudmask_ds2`` and ``subset ENTRY`` (CloudMask DS1/DS2)."""

from __future__ import annotations

import argparse

from scibench_data.cli.common import (
    add_progress,
    add_root,
    add_s3_options,
    add_scheduler,
    s3_storage_options,
    write_json,
)

SUBSET_ENTRIES = ("cloudmask_ds2", "cloudmask_ds1")


def _options(args: argparse.Namespace):
    from scibench_data.convert.cloudmask import CloudMaskConversion

    return CloudMaskConversion(layout=args.layout, tile=args.tile, scheduler=args.scheduler, n_workers=args.workers,
                               retries=args.retries, progress=args.progress,
                               src_storage_options=s3_storage_options(args, source=True))


def _dest(args: argparse.Namespace):
    from scibench_data.storage.store.location import StoreLocation

    return StoreLocation(args.dest, s3_storage_options(args, source=False))


def _append(args: argparse.Namespace) -> int:
    from scibench_data.convert.cloudmask import append_cloudmask

    report = append_cloudmask(args.src, _dest(args), _options(args))
    print("\n".join(report.lines()))
    extra = report.extra
    print(f"appended: {len(extra.get('appended', []))} product(s), replaced by a reprocessed version: "
          f"{len(extra.get('replaced', []))}, older versions skipped: {len(extra.get('superseded', []))}")
    if args.report:
        write_json(args.report, report.as_dict())
    return 0 if report.ok else 1


def _scaffold(args: argparse.Namespace) -> int:
    from scibench_data.convert.cloudmask import scaffold_cloudmask

    slots = [int(s) for s in args.slots.split(",")] if args.slots else None
    report = scaffold_cloudmask(args.src, _dest(args), _options(args), n_scenes=args.scenes, slots=slots)
    lines = [line for line in report.lines() if not line.startswith("status:")]
    print("\n".join(lines))
    print(f"status: {report.extra['status']} ({len(report.extra['filled_scenes'])} of {report.total} scenes hold data: "
          f"{report.extra['filled_scenes'][:8]}{' ...' if len(report.extra['filled_scenes']) > 8 else ''})")
    if args.report:
        write_json(args.report, report.as_dict())
    return 0 if not report.failed else 1


def _subset(args: argparse.Namespace) -> int:
    from scibench_data.catalog import entry_location, open_catalog
    from scibench_data.storage.store.location import StoreLocation
    from scibench_data.subset.cloudmask import Selection, dry_run, write_subset

    sel = Selection.parse(time=args.time, scenes=args.scenes, channels=args.channels, window=args.window,
                          variables=args.variables)
    if not args.dry_run and not args.to:
        raise ValueError("give --to DEST to write the subset, or --dry-run to see what it would read")
    source = entry_location(open_catalog(root=args.root), args.entry)
    if s3_storage_options(args, source=True):  # the command line's S3 access over the catalog's
        source = StoreLocation(source.url, {**source.storage_options, **s3_storage_options(args, source=True)})
    plan, summary = dry_run(source, sel)
    print(f"source: {source.url}")
    print("\n".join(plan.lines(summary.names)))
    if args.json:
        write_json(args.json, {"source": source.url, "selection": sel.as_dict(), **plan.as_dict()})
    if args.dry_run:
        return 0
    report = write_subset(source, StoreLocation(args.to, s3_storage_options(args, source=False)), sel, scheduler=args.scheduler, n_workers=args.workers,
                          retries=args.retries, progress=args.progress)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _add_conversion_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", choices=("hdf", "sen3"), required=True)
    p.add_argument("src", help="folder (local path or fsspec URL) holding the products")
    p.add_argument("dest", help="the Zarr store (local path or fsspec URL)")
    p.add_argument("--tile", type=int, default=256, help="y/x chunk size (default 256)")
    p.add_argument("--retries", type=int, default=1, help="retries per product before it is reported failed")
    p.add_argument("--report", default=None, help="also write the report as JSON here")
    add_scheduler(p)
    add_s3_options(p)
    add_progress(p)


def register(cli) -> None:
    p = cli.dataset("append", "cloudmask", _append,
                    "append the products of SRC that DEST lacks (any time: late products too) to a complete CloudMask "
                    "store; a reprocessed version of a scene replaces it")
    _add_conversion_options(p)

    p = cli.dataset("scaffold", "cloudmask_ds2", _scaffold,
                    "a store with DS2's full shape (9800 scenes by default) holding only the products of SRC")
    _add_conversion_options(p)
    p.add_argument("--scenes", type=int, default=9800, help="scenes of the full shape (default 9800, DS2)")
    p.add_argument("--slots", default=None, help="comma-separated scene indices for the products (default: spread)")

    for entry in SUBSET_ENTRIES:
        p = cli.dataset("subset", entry, _subset,
                        f"select scenes, channels and a pixel window of {entry} into a new store (or --dry-run)")
        p.set_defaults(entry=entry)
        add_root(p)
        p.add_argument("--time", default=None, help="START/END, half-open, ISO 8601; either side may be empty")
        p.add_argument("--scenes", default=None, help="indices, ranges a:b, or source names, comma-separated")
        p.add_argument("--channels", default=None, help="e.g. S1,S2,S7 (default all nine)")
        p.add_argument("--window", default=None, help="y0:y1,x0:x1 on the 1 km grid (default whole scene)")
        p.add_argument("--variables", default=None, help="default image,cloud_mask,summary_cloud")
        p.add_argument("--to", default=None, help="destination store (local path or fsspec URL)")
        p.add_argument("--dry-run", action="store_true", help="print scenes, chunks and bytes; read no data")
        p.add_argument("--json", default=None, help="also write the plan as JSON here")
        p.add_argument("--retries", type=int, default=1)
        add_scheduler(p)
        add_s3_options(p)
        add_progress(p)
