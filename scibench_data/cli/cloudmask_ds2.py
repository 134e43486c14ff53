"""``scibench-data scaffold cloudmask_ds2`` (DS2's full shape, holding only some products).

The data stack is imported inside the command: ``--help`` stays fast."""

from __future__ import annotations

import argparse

from scibench_data.cli.cloudmask import add_source_options, conversion_options
from scibench_data.cli.common import (
    add_conversion_options,
    break_lock_if_asked,
    dest_location,
    write_json,
)


def _scaffold(args: argparse.Namespace) -> int:
    from scibench_data.convert.cloudmask import keep_freed_memory, scaffold_cloudmask

    keep_freed_memory()  # our own process (see cli.cloudmask._convert)
    break_lock_if_asked(args)
    slots = [int(s) for s in args.slots.split(",")] if args.slots else None
    report = scaffold_cloudmask(args.src, dest_location(args), conversion_options(args), n_scenes=args.scenes,
                                slots=slots)
    lines = [line for line in report.lines() if not line.startswith("status:")]
    print("\n".join(lines))
    print(f"status: {report.extra['status']} ({len(report.extra['filled_scenes'])} of {report.total} scenes hold data: "
          f"{report.extra['filled_scenes'][:8]}{' ...' if len(report.extra['filled_scenes']) > 8 else ''})")
    if args.report:
        write_json(args.report, report.as_dict())
    return 0 if not report.failed else 1


def register(cli) -> None:
    p = cli.dataset("scaffold", "cloudmask_ds2", _scaffold,
                    "a store with DS2's full shape (9800 scenes by default) holding only the products of SRC")
    add_source_options(p)
    add_conversion_options(p, unit="product")
    p.add_argument("--scenes", type=int, default=9800, help="scenes of the full shape (default 9800, DS2)")
    p.add_argument("--slots", default=None, help="comma-separated scene indices for the products (default: spread)")
