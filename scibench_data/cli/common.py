"""Argument helpers shared by the data set commands.

The command modules import the data stack inside their functions, so that every parse of the command
line (``scibench-data --help``) stays fast: storage alone costs ~0.3 s to import.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from scibench_data.atomic import write_json
from scibench_data.catalog import default_root

if TYPE_CHECKING:
    from scibench_data.storage.store.location import StoreLocation

T = TypeVar("T")


def add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None,
                   help=f"where stores live (default $SCIBENCH_DATA_ROOT, else {default_root()})")


def add_scheduler(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", default="threads",
                   help="'threads' (default), 'sync', 'local-cluster' (dask.distributed processes) "
                        "or the address of an existing dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--workers", type=int, default=None, help="number of workers (threads or processes)")


def add_s3_options(p: argparse.ArgumentParser) -> None:
    """S3 access for the sources and the destination, shipped to every Dask worker as storage
    options (credentials themselves are never taken on the command line)."""
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint of the sources and the destination (default: $AWS_ENDPOINT_URL on each node, "
                        "else AWS); sent to the workers")
    p.add_argument("--profile", default=None,
                   help="AWS profile (~/.aws on each node) for the sources and the destination; sent to the workers")
    p.add_argument("--anon", action="store_true", help="read the sources anonymously (a public bucket)")


def s3_storage_options(args: argparse.Namespace, *, source: bool) -> dict[str, Any]:
    """fsspec storage options from :func:`add_s3_options` (``--anon`` applies to the source only:
    a destination is never written anonymously). Empty when none was given."""
    so: dict[str, Any] = {}
    if getattr(args, "endpoint_url", None):
        so["client_kwargs"] = {"endpoint_url": args.endpoint_url}
    if getattr(args, "profile", None):
        so["profile"] = args.profile
    if source and getattr(args, "anon", False):
        so.pop("profile", None)
        so["anon"] = True
    return so


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run_conversion(args: argparse.Namespace, convert: Callable, options: type, **fields: Any) -> int:
    """A ``convert`` command: break a stale lock if asked, run ``convert(src, dest, options(...))``
    with ``fields`` and the options of :func:`add_conversion_options`, print the report (and
    write it as JSON with ``--report``). Exit status 0 when the store is complete."""
    break_lock_if_asked(args)
    if "src_storage_options" in getattr(options, "__dataclass_fields__", {}):
        fields = {**fields, "src_storage_options": s3_storage_options(args, source=True)}
    elif s3_storage_options(args, source=True):
        raise ValueError(f"--endpoint-url, --profile and --anon: {options.__name__} reads local sources only")
    opts = options(**fields, scheduler=args.scheduler, n_workers=args.workers, retries=args.retries,
                   progress=args.progress)
    report = convert(args.src, dest_location(args) if s3_storage_options(args, source=False) else args.dest, opts)
    print("\n".join(report.lines()))
    if args.report:
        write_json(args.report, report.as_dict())
    return 0 if report.ok else 1


def dest_location(args: argparse.Namespace) -> StoreLocation:
    """``DEST`` with the S3 options of :func:`add_s3_options`."""
    from scibench_data.storage.store.location import StoreLocation

    return StoreLocation(args.dest, s3_storage_options(args, source=False))


def break_lock_if_asked(args: argparse.Namespace) -> None:
    """``--break-lock`` of :func:`add_conversion_options`: remove DEST's lock before the writer takes it."""
    from scibench_data.storage.store.lock import break_lock

    if args.break_lock and break_lock(dest_location(args)):
        print(f"removed the lock of {args.dest}")


def add_conversion_options(p: argparse.ArgumentParser, unit: str = "task") -> None:
    """What every ``convert`` command takes: retries, a JSON report, breaking a stale lock,
    the scheduler and progress bars."""
    p.add_argument("--retries", type=int, default=1, help=f"retries per {unit} before it is reported failed")
    p.add_argument("--report", default=None, help="also write the conversion report as JSON here")
    p.add_argument("--break-lock", action="store_true", help="remove a lock left by a writer that is gone")
    add_scheduler(p)
    add_s3_options(p)
    add_progress(p)


def add_resume_options(p: argparse.ArgumentParser) -> None:
    """``train``: continue from the last checkpoint in the output folder; how often to write one."""
    p.add_argument("--resume", action="store_true",
                   help="continue from checkpoint.pt in --out (default: the newest run folder of this benchmark "
                        "that has one), mid-epoch where it stopped")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="steps between checkpoints (default 0: at the end of each epoch only)")


# --------------------------------------------------------------------------- the benchmark verbs, one shape


def require_store(root: str | None, entry: str) -> None:
    """Open ``entry`` through the catalog before a command writes anything: a missing store is then
    one line naming the entry and the command that creates it, and no output folder is left behind."""
    from scibench_data.catalog import open_catalog

    getattr(open_catalog(root=root), entry).to_dask()


def add_training_options(p: argparse.ArgumentParser, benchmark: str, *, epochs: int, batch_size: int, lr: float,
                         seed: int, max_steps: int | None = None, out: bool = True) -> None:
    """What ``train`` and ``run`` take for every benchmark (each keeps its own defaults; ``run`` always
    writes a fresh run folder: no ``--out``)."""
    add_root(p)
    p.add_argument("--epochs", type=int, default=epochs, help=f"maximum epochs (default {epochs})")
    p.add_argument("--max-steps", type=int, default=max_steps,
                   help="stop after this many optimiser steps, across epochs" +
                        (f" (default {max_steps})" if max_steps else " (default: no cap)"))
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"default {batch_size}")
    p.add_argument("--lr", type=float, default=lr, help=f"learning rate (default {lr:g})")
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    if out:
        p.add_argument("--out", default=None, help=f"output folder (default ROOT/outputs/{benchmark}/run-TIME)")
    add_progress(p)


def add_model_options(p: argparse.ArgumentParser, what: str, out_help: str) -> None:
    """What ``evaluate`` and ``predict`` take for every benchmark."""
    add_root(p)
    p.add_argument("--model", required=True, help=f"{what} written by train or run")
    p.add_argument("--out", default=None, help=out_help)
    add_progress(p)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """What only ``run`` adds."""
    p.add_argument("--fresh", action="store_true", help="regenerate and reconvert even if a store exists")


def run_training(args: argparse.Namespace, benchmark: str, entry: str, train: Callable[[Path, Any], T]) -> T:
    """What every ``train`` command does around its pipeline: refuse a missing store before anything is
    written, pick the output folder (:func:`train_out`), and call ``train(out, log)`` between
    ``run_start`` and ``run_stop`` of rank 0's MLPerf log ``OUT/train-mllog.txt`` (``log`` is None on
    other ranks; a resumed run writes ``train-mllog.resume-K.txt``)."""
    from scibench_data.pipelines import training_log

    require_store(args.root, entry)
    out = train_out(args, benchmark)
    with training_log(out / "train-mllog.txt", benchmark, args.resume) as log:
        if log:
            log.start("run_start")
        result = train(out, log)
        if log:
            log.end("run_stop", metadata={"status": "success"})
    return result


def train_out(args: argparse.Namespace, benchmark: str) -> Path:
    """``--out``; else with ``--resume`` the newest ``ROOT/outputs/{benchmark}/run-*`` holding a
    ``checkpoint.pt``; else a fresh ``ROOT/outputs/{benchmark}/run-TIME`` (not created)."""
    from scibench_data.pipelines import run_dir

    if args.out:
        return Path(args.out)
    if getattr(args, "resume", False):
        base = Path(args.root or default_root()) / "outputs" / benchmark
        runs = sorted((p.parent for p in base.glob("run-*/checkpoint.pt")), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise ValueError(f"--resume: no run folder with a checkpoint.pt under {base}; pass --out RUN_FOLDER")
        return runs[-1]
    return run_dir(args.root, benchmark)


def model_out(args: argparse.Namespace) -> Path:
    """``--out`` or the model's own folder: evaluation and predictions go next to the model."""
    return Path(args.out) if args.out else Path(args.model).parent


def show_out(args: argparse.Namespace, benchmark: str, name: str) -> Path:
    """``--out`` or ``ROOT/outputs/{benchmark}/pictures/{name}.png``."""
    return Path(args.out) if args.out else Path(args.root or default_root()) / "outputs" / benchmark / "pictures" / \
        f"{name}.png"
