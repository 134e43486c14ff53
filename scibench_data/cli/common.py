"""Argument helpers shared by the data set commands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scibench_data.catalog import default_root


def add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None,
                   help=f"where stores live (default $SCIBENCH_DATA_ROOT, else {default_root()})")


def add_scheduler(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", default="threads",
                   help="'threads' (default), 'sync', 'local-cluster' (dask.distributed processes) "
                        "or the address of an existing dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--workers", type=int, default=None, help="number of workers (threads or processes)")


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run_conversion(args: argparse.Namespace, convert: Callable, options: type, **fields: Any) -> int:
    """A ``convert`` command: break a stale lock if asked, run ``convert(src, dest, options(...))``
    with ``fields`` and the options of :func:`add_conversion_options`, print the report (and
    write it as JSON with ``--report``). Exit status 0 when the store is complete."""
    from scibench_data.storage.location import StoreLocation
    from scibench_data.storage.lock import break_lock

    if args.break_lock and break_lock(StoreLocation(args.dest)):
        print(f"removed the lock of {args.dest}")
    opts = options(**fields, scheduler=args.scheduler, n_workers=args.workers, retries=args.retries,
                   progress=args.progress)
    report = convert(args.src, args.dest, opts)
    print("\n".join(report.lines()))
    if args.report:
        write_json(args.report, report.as_dict())
    return 0 if report.ok else 1


def add_conversion_options(p: argparse.ArgumentParser, unit: str = "task") -> None:
    """What every ``convert`` command takes: retries, a JSON report, breaking a stale lock,
    the scheduler and progress bars."""
    p.add_argument("--retries", type=int, default=1, help=f"retries per {unit} before it is reported failed")
    p.add_argument("--report", default=None, help="also write the conversion report as JSON here")
    p.add_argument("--break-lock", action="store_true", help="remove a lock left by a writer that is gone")
    add_scheduler(p)
    add_progress(p)


def write_json(path: str | Path, obj: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return path


def add_resume_options(p: argparse.ArgumentParser) -> None:
    """``train``: continue from the last checkpoint in the output folder; how often to write one."""
    p.add_argument("--resume", action="store_true",
                   help="continue from checkpoint.pt in the output folder, mid-epoch where it stopped")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="steps between checkpoints (default 0: at the end of each epoch only)")
