"""``scibench-data {generate,convert,train,evaluate,run} cloudmask``."""

from __future__ import annotations

import argparse

from scibench_data.cli.common import add_progress, add_root, add_scheduler, write_json


def _generate(args: argparse.Namespace) -> int:
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    cfg = SyntheticCloudMask(n_products=args.products, grid=(args.height, args.width), seed=args.seed)
    paths = generate(args.dest, args.layout, cfg)
    for p in paths:
        print(p)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
    from scibench_data.storage.lock import WriterLock
    from scibench_data.storage.location import StoreLocation

    if args.break_lock:
        WriterLock(StoreLocation(args.dest)).acquire(break_lock=True)
        WriterLock(StoreLocation(args.dest), held=True).release()
    opts = CloudMaskConversion(layout=args.layout, tile=args.tile, scheduler=args.scheduler,
                               n_workers=args.workers, retries=args.retries, progress=args.progress)
    report = convert_cloudmask(args.src, args.dest, opts)
    print("\n".join(report.lines()))
    if args.report:
        write_json(args.report, report.as_dict())
    return 0 if report.ok else 1


def register(cli) -> None:  # noqa: ANN001
    p = cli.dataset("generate", "cloudmask", _generate, "synthetic SLSTR products in layout hdf or sen3")
    p.add_argument("--layout", choices=("hdf", "sen3"), required=True)
    p.add_argument("dest", help="folder to write the products into")
    p.add_argument("--products", type=int, default=4, help="number of products (default 4)")
    p.add_argument("--height", type=int, default=1200, help="rows of the 1 km grid (default 1200, full size)")
    p.add_argument("--width", type=int, default=1500, help="columns of the 1 km grid (default 1500, full size)")
    p.add_argument("--seed", type=int, default=0)

    p = cli.dataset("convert", "cloudmask", _convert, "a folder of CloudMask products -> one Zarr store")
    p.add_argument("--layout", choices=("hdf", "sen3"), required=True)
    p.add_argument("src", help="folder (local path or fsspec URL) holding the products")
    p.add_argument("dest", help="the Zarr store to create or resume (local path or fsspec URL)")
    p.add_argument("--tile", type=int, default=256, help="y/x chunk size (default 256)")
    p.add_argument("--retries", type=int, default=1, help="retries per product before it is reported failed")
    p.add_argument("--report", default=None, help="also write the conversion report as JSON here")
    p.add_argument("--break-lock", action="store_true", help="remove a lock left by a writer that is gone")
    add_scheduler(p)
    add_progress(p)
    _ = add_root  # train/evaluate/run take --root
