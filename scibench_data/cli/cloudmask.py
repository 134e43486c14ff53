"""``scibench-data {generate,convert,append,train,evaluate,predict,run} cloudmask``.

The data stack is imported inside the commands: ``--help`` stays fast."""

from __future__ import annotations

import argparse

from scibench_data.cli.common import (
    add_conversion_options,
    add_model_options,
    add_resume_options,
    add_run_options,
    add_training_options,
    break_lock_if_asked,
    dest_location,
    model_out,
    require_store,
    run_conversion,
    run_training,
    s3_storage_options,
    write_json,
)
from scibench_data.datasets.cloudmask import PATCH


def _generate(args: argparse.Namespace) -> int:
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    cfg = SyntheticCloudMask(n_products=args.products, grid=(args.height, args.width), seed=args.seed)
    paths = generate(args.dest, args.layout, cfg)
    for p in paths:
        print(p)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from scibench_data.convert.cloudmask import (
        CloudMaskConversion,
        append_cloudmask,
        convert_cloudmask,
        keep_freed_memory,
    )

    keep_freed_memory()  # this command's own process converts in-process with the sync/threaded schedulers
    return run_conversion(args, append_cloudmask if args.append else convert_cloudmask, CloudMaskConversion,
                          layout=args.layout, tile=args.tile)


def conversion_options(args: argparse.Namespace):
    """The ``CloudMaskConversion`` of ``append cloudmask`` and ``scaffold cloudmask_ds2``."""
    from scibench_data.convert.cloudmask import CloudMaskConversion

    return CloudMaskConversion(layout=args.layout, tile=args.tile, scheduler=args.scheduler, n_workers=args.workers,
                               retries=args.retries, progress=args.progress,
                               src_storage_options=s3_storage_options(args, source=True))


def _append(args: argparse.Namespace) -> int:
    from scibench_data.convert.cloudmask import append_cloudmask, keep_freed_memory

    keep_freed_memory()  # our own process (see _convert)
    break_lock_if_asked(args)
    report = append_cloudmask(args.src, dest_location(args), conversion_options(args))
    print("\n".join(report.lines()))
    if args.report:
        write_json(args.report, report.as_dict())
    return 0 if report.ok else 1


def _train_config(args: argparse.Namespace):
    from scibench_data.pipelines.cloudmask import TrainConfig

    return TrainConfig(entry=args.entry, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                       seed=args.seed, patch=args.patch, mode=args.mode, patches_per_scene=args.patches_per_scene,
                       num_workers=args.num_workers, max_steps=args.max_steps, checkpoint_every=args.checkpoint_every,
                       mix_scenes=args.mix_scenes)


def _train(args: argparse.Namespace) -> int:
    from scibench_data.pipelines.cloudmask import BENCHMARK, train

    cfg = _train_config(args)
    result = run_training(args, BENCHMARK, cfg.entry, lambda out, log: train(
        args.root, cfg, out, log=log, progress=args.progress, resume=args.resume))
    print(f"trained on {len(result.splits['train'])} scenes, {result.samples} patches in {result.seconds:.0f} s; "
          f"final loss {result.losses[-1]:.4f}\nmodel: {result.model_path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from scibench_data.pipelines.cloudmask import BENCHMARK, evaluate, print_scores
    from scibench_data.scoring.mllog import BenchmarkLog

    require_store(args.root, args.entry)
    out = model_out(args)
    with BenchmarkLog(out / "eval-mllog.txt", BENCHMARK) as log:
        result = evaluate(args.root, args.model, args.entry, args.split, out, log=log, progress=args.progress)
    print_scores(result)
    print(f"scores: {out / 'scores.json'}\nmllog:  {log.path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from scibench_data.pipelines.cloudmask import predict_test

    require_store(args.root, "cloudmask_ds1")
    path = predict_test(args.root, args.model, args.out, progress=args.progress)
    print(f"predictions: {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import dataclasses

    from scibench_data.pipelines.cloudmask import RunConfig, run

    train = dataclasses.replace(RunConfig.train, epochs=args.epochs, max_steps=args.max_steps,
                                batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                                num_workers=args.num_workers)
    cfg = RunConfig(train_products=args.products, test_products=args.test_products, grid=(args.height, args.width),
                    layout=args.layout, train=train)
    run(args.root, cfg, progress=args.progress, fresh=args.fresh)
    return 0


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--entry", default="cloudmask_ds1", help="catalog entry (default cloudmask_ds1)")
    p.add_argument("--patch", type=int, default=PATCH, help=f"patch size in pixels (default {PATCH})")
    p.add_argument("--mode", choices=("fixed", "random"), default="fixed",
                   help="the reference's 20 fixed patches per scene, or seeded random patches")
    p.add_argument("--patches-per-scene", type=int, default=20, help="random mode only")
    p.add_argument("--mix-scenes", type=int, default=1,
                   help="scenes whose patches are shuffled together (default 1: best read locality)")


def add_source_options(p: argparse.ArgumentParser, dest_help: str = "the Zarr store (local path or fsspec URL)") -> None:
    """``--layout SRC DEST --tile``: what the CloudMask conversions (convert, append, scaffold) read and write."""
    p.add_argument("--layout", choices=("hdf", "sen3"), required=True)
    p.add_argument("src", help="folder (local path or fsspec URL) holding the products")
    p.add_argument("dest", help=dest_help)
    p.add_argument("--tile", type=int, default=256, help="y/x chunk size (default 256)")


def register(cli) -> None:
    p = cli.dataset("generate", "cloudmask", _generate, "synthetic SLSTR products in layout hdf or sen3")
    p.add_argument("--layout", choices=("hdf", "sen3"), required=True)
    p.add_argument("dest", help="folder to write the products into")
    p.add_argument("--products", type=int, default=4, help="number of products (default 4)")
    p.add_argument("--height", type=int, default=1200, help="rows of the 1 km grid (default 1200, full size)")
    p.add_argument("--width", type=int, default=1500, help="columns of the 1 km grid (default 1500, full size)")
    p.add_argument("--seed", type=int, default=0)

    p = cli.dataset("convert", "cloudmask", _convert, "a folder of CloudMask products -> one Zarr store")
    add_source_options(p, "the Zarr store to create or resume (local path or fsspec URL)")
    p.add_argument("--append", action="store_true",
                   help="add the products DEST lacks (later in time) to a complete store (= append cloudmask)")
    add_conversion_options(p, unit="product")

    p = cli.dataset("train", "cloudmask", _train, "train the reference U-Net on a catalog entry")
    add_training_options(p, "cloudmask", epochs=1, batch_size=32, lr=1e-3, seed=1234)
    _add_train_options(p)
    add_resume_options(p)

    p = cli.dataset("evaluate", "cloudmask", _evaluate, "score a trained U-Net (accuracy, F1, IoU, log loss per scene)")
    add_model_options(p, "model.pt", "folder for scores.json and eval-mllog.txt (default: the model's folder)")
    p.add_argument("--entry", default="cloudmask_ds1")
    p.add_argument("--split", choices=("train", "validation", "test"), default="test")

    p = cli.dataset("predict", "cloudmask", _predict, "cloud probabilities of the test scenes (cloudmask prediction format)")
    add_model_options(p, "model.pt", "prediction file (default: predictions-cloudmask.npz next to the model)")

    p = cli.dataset("run", "cloudmask", _run, "generate small synthetic products, convert, open via the catalog, "
                    "train briefly, evaluate, predict")
    # the defaults of pipelines.cloudmask.RunConfig.train (not imported here: --help stays fast)
    add_training_options(p, "cloudmask", epochs=10, batch_size=16, lr=1e-3, seed=1234, max_steps=60, out=False)
    add_run_options(p)
    p.add_argument("--products", type=int, default=8, help="training products (default 8)")
    p.add_argument("--test-products", type=int, default=2, help="inference (test) products (default 2)")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--layout", choices=("hdf", "sen3"), default="hdf")

    # after run: the verbs keep the order of --help
    p = cli.dataset("append", "cloudmask", _append,
                    "append the products of SRC that DEST lacks (any time: late products too) to a complete CloudMask "
                    "store; a reprocessed version of a scene replaces it")
    add_source_options(p)
    add_conversion_options(p, unit="product")
