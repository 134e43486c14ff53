"""``scibench-data {generate,convert,train,evaluate,run} cloudmask``."""

from __future__ import annotations

import argparse
from pathlib import Path

from scibench_data.cli.common import (
    add_conversion_options, add_progress, add_resume_options, add_root, run_conversion,
)


def _generate(args: argparse.Namespace) -> int:
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    cfg = SyntheticCloudMask(n_products=args.products, grid=(args.height, args.width), seed=args.seed)
    paths = generate(args.dest, args.layout, cfg)
    for p in paths:
        print(p)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from scibench_data.convert.cloudmask import CloudMaskConversion, append_cloudmask, convert_cloudmask

    return run_conversion(args, append_cloudmask if args.append else convert_cloudmask, CloudMaskConversion,
                          layout=args.layout, tile=args.tile)


def _train_config(args: argparse.Namespace):
    from scibench_data.pipelines.cloudmask import TrainConfig

    return TrainConfig(entry=args.entry, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                       seed=args.seed, patch=args.patch, mode=args.mode, patches_per_scene=args.patches_per_scene,
                       num_workers=args.num_workers, max_steps=args.max_steps, checkpoint_every=args.checkpoint_every,
                       mix_scenes=args.mix_scenes)


def _train(args: argparse.Namespace) -> int:
    from scibench_data.pipelines import training_log
    from scibench_data.pipelines.cloudmask import train

    with training_log(Path(args.out) / "train-mllog.txt", "cloudmask", args.resume) as log:
        if log:
            log.start("run_start")
        result = train(args.root, _train_config(args), args.out, log=log, progress=args.progress, resume=args.resume)
        if log:
            log.end("run_stop", metadata={"status": "success"})
    print(f"trained on {len(result.splits['train'])} scenes, {result.samples} patches in {result.seconds:.0f} s; "
          f"final loss {result.losses[-1]:.4f}\nmodel: {result.model_path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from scibench_data.pipelines.cloudmask import evaluate, print_scores

    from scibench_data.scoring.mllog import BenchmarkLog

    with BenchmarkLog(Path(args.out) / "eval-mllog.txt", "cloudmask") as log:
        result = evaluate(args.root, args.model, args.entry, args.split, args.out, log=log, progress=args.progress)
    print_scores(result)
    print(f"scores: {args.out}/scores.json\nmllog:  {log.path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from scibench_data.pipelines.cloudmask import RunConfig, run

    cfg = RunConfig(train_products=args.products, test_products=args.test_products, grid=(args.height, args.width),
                    layout=args.layout)
    run(args.root, cfg, progress=args.progress, fresh=args.fresh)
    return 0


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--entry", default="cloudmask_ds1", help="catalog entry (default cloudmask_ds1)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--mode", choices=("fixed", "random"), default="fixed",
                   help="the reference's 20 fixed patches per scene, or seeded random patches")
    p.add_argument("--patches-per-scene", type=int, default=20, help="random mode only")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all (resumes count)")
    p.add_argument("--mix-scenes", type=int, default=1,
                   help="scenes whose patches are shuffled together (default 1: best read locality)")


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
    p.add_argument("--append", action="store_true",
                   help="add the products DEST lacks (later in time) to a complete store (= append cloudmask)")
    add_conversion_options(p, unit="product")

    p = cli.dataset("train", "cloudmask", _train, "train the reference U-Net on a catalog entry")
    add_root(p)
    _add_train_options(p)
    p.add_argument("--out", default="outputs/cloudmask", help="folder for model.pt and train-mllog.txt")
    add_resume_options(p)
    add_progress(p)

    p = cli.dataset("evaluate", "cloudmask", _evaluate, "score a trained U-Net (accuracy, F1, IoU, log loss per scene)")
    add_root(p)
    p.add_argument("--entry", default="cloudmask_ds1")
    p.add_argument("--model", required=True, help="model.pt written by train")
    p.add_argument("--split", choices=("train", "validation", "test"), default="test")
    p.add_argument("--out", default="outputs/cloudmask", help="folder for scores.json and eval-mllog.txt")
    add_progress(p)

    p = cli.dataset("run", "cloudmask", _run,
                    "generate small synthetic products, convert, open via the catalog, train briefly, evaluate")
    add_root(p)
    p.add_argument("--products", type=int, default=8, help="training products (default 8)")
    p.add_argument("--test-products", type=int, default=2, help="inference (test) products (default 2)")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--layout", choices=("hdf", "sen3"), default="hdf")
    p.add_argument("--fresh", action="store_true", help="regenerate and reconvert even if a store exists")
    add_progress(p)
