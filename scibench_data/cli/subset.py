"""``scibench-data subset ENTRY``: scenes, times, channels and a pixel window of a CloudMask store
(DS1 or DS2) into a new store, or ``--dry-run``.

The data stack is imported inside the command: ``--help`` stays fast."""

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

#: The catalog entries ``subset`` selects from.
SUBSET_ENTRIES = ("cloudmask_ds2", "cloudmask_ds1")


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
    report = write_subset(source, StoreLocation(args.to, s3_storage_options(args, source=False)), sel,
                          scheduler=args.scheduler, n_workers=args.workers, retries=args.retries,
                          progress=args.progress)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def register(cli) -> None:
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
