"""``scibench-data {generate,convert,train,evaluate,predict,run} stemdl``.

The data stack is imported inside the commands: ``--help`` stays fast."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from scibench_data.cli.common import (
    add_conversion_options,
    add_model_options,
    add_progress,
    add_resume_options,
    add_run_options,
    add_training_options,
    model_out,
    run_conversion,
    run_training,
)


def _quiet_intake() -> None:
    warnings.filterwarnings("ignore", message="Shell command not executed")


def _generate(args: argparse.Namespace) -> int:
    from scibench_data.synthetic.stemdl import SyntheticSTEMDL, generate

    cfg = SyntheticSTEMDL(n_classes=args.classes, materials_per_class=args.materials_per_class,
                          samples_per_material=args.samples_per_material, pattern=args.pattern,
                          seed=args.seed, samples_per_file=args.samples_per_file, npz_size=args.npz_size)
    paths = generate(args.dest, args.layout, cfg, progress=args.progress)
    print(f"wrote {cfg.n_samples} samples in {len(paths)} files under {args.dest}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from scibench_data.convert.stemdl import STEMDLConversion, convert_stemdl

    return run_conversion(args, convert_stemdl, STEMDLConversion, preprocess=args.preprocess, size=args.size,
                          sample_chunk=args.sample_chunk, files_per_task=args.files_per_task)


def _train(args: argparse.Namespace) -> int:
    from scibench_data.pipelines.stemdl import BENCHMARK, TrainConfig, train

    _quiet_intake()
    cfg = TrainConfig(task=args.task, entry=args.entry, model=args.arch, input_mode=args.input_mode,
                      epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                      weight_decay=args.weight_decay, seed=args.seed, num_workers=args.num_workers,
                      max_steps=args.max_steps or 0, checkpoint_every=args.checkpoint_every)
    result = run_training(args, BENCHMARK, cfg.entry_name, lambda out, log: train(
        args.root, cfg, out, log=log, progress=args.progress, resume=args.resume))
    print(f"trained {cfg.task} on {result.samples} samples in {result.seconds:.0f} s; model: {result.model_path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from scibench_data.pipelines.stemdl import BENCHMARK, evaluate, print_scores
    from scibench_data.scoring.mllog import BenchmarkLog

    _quiet_intake()
    if not Path(args.model).is_file():
        raise FileNotFoundError(f"{args.model}: no such model file (written by train stemdl or run stemdl)")
    out = model_out(args)
    with BenchmarkLog(out / "eval-mllog.txt", BENCHMARK) as log:
        result = evaluate(args.root, args.model, args.split, out, log=log, progress=args.progress)
    print_scores(result)
    print(f"scores: {out / ('scores-' + result['task'] + '.json')}\nmllog:  {log.path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from scibench_data.pipelines.stemdl import predict_test

    _quiet_intake()
    path = predict_test(args.root, args.model, args.out, progress=args.progress)
    print(f"predictions: {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import dataclasses

    from scibench_data.pipelines.stemdl import RunConfig, run

    _quiet_intake()
    over = {"seed": args.seed, "num_workers": args.num_workers, "max_steps": args.max_steps or 0}
    over |= {k: v for k, v in (("batch_size", args.batch_size), ("learning_rate", args.lr)) if v is not None}
    cfg = RunConfig(classification=dataclasses.replace(RunConfig.classification, epochs=args.epochs, **over),
                    reconstruction=dataclasses.replace(RunConfig.reconstruction,
                                                       epochs=min(args.epochs, RunConfig.reconstruction.epochs), **over))
    run(args.root, cfg, progress=args.progress, fresh=args.fresh)
    return 0


def register(cli) -> None:
    p = cli.dataset("generate", "stemdl", _generate, "synthetic STEMDL samples in layout raw (*.h5) or npz")
    p.add_argument("--layout", choices=("raw", "npz"), required=True)
    p.add_argument("dest", help="folder to write train/ dev/ test/ into")
    p.add_argument("--classes", type=int, default=20, help="space groups drawn (default 20)")
    p.add_argument("--materials-per-class", type=int, default=5)
    p.add_argument("--samples-per-material", type=int, default=4)
    p.add_argument("--pattern", type=int, default=512, help="pattern size (default 512, full size)")
    p.add_argument("--npz-size", type=int, default=128, help="npz pattern size after preprocessing (default 128)")
    p.add_argument("--samples-per-file", type=int, default=64, help="samples per raw HDF5 file")
    p.add_argument("--seed", type=int, default=0)
    add_progress(p)

    p = cli.dataset("convert", "stemdl", _convert, "a folder of STEMDL *.h5 or sample-*.npz files -> one Zarr store")
    p.add_argument("src", help="folder (local path or fsspec URL), flat or with train/ test/ dev/ subfolders")
    p.add_argument("dest", help="the Zarr store to create or resume")
    p.add_argument("--preprocess", action="store_true",
                   help="apply the reference log scaling, clip and area resize (raw sources only)")
    p.add_argument("--size", type=int, default=128, help="pattern size after --preprocess (default 128)")
    p.add_argument("--sample-chunk", type=int, default=1, help="samples per chunk (default 1)")
    p.add_argument("--files-per-task", type=int, default=256, help="npz files per task (multiple of --sample-chunk)")
    add_conversion_options(p)

    p = cli.dataset("train", "stemdl", _train, "train the reference model of one STEMDL task on a catalog entry")
    add_training_options(p, "stemdl", epochs=10, batch_size=32, lr=1e-3, seed=1234)
    p.add_argument("--task", choices=("classification", "reconstruction"), default="classification")
    p.add_argument("--entry", default=None, help="catalog entry (default stemdl / stemdl_reconstruction)")
    p.add_argument("--arch", choices=("resnet50", "resnet-small"), default="resnet50",
                   help="classification network (default resnet50)")
    p.add_argument("--input-mode", choices=("stack", "random_projection"), default="stack")
    p.add_argument("--weight-decay", type=float, default=5e-5)
    add_resume_options(p)

    p = cli.dataset("evaluate", "stemdl", _evaluate, "score a trained STEMDL model on a split of its catalog entry")
    add_model_options(p, "model-{task}.pt", "folder for scores-{task}.json and eval-mllog.txt (default: the model's "
                                           "folder)")
    p.add_argument("--split", default="test")

    p = cli.dataset("predict", "stemdl", _predict, "a trained model's test predictions (stemdl class scores or "
                    "stemdl_reconstruction potentials)")
    add_model_options(p, "model-{task}.pt", "prediction file (default: predictions-{benchmark}.npz next to the model)")

    p = cli.dataset("run", "stemdl", _run, "STEMDL end to end on synthetic data: generate, convert, train, evaluate "
                    "and predict both tasks")
    add_training_options(p, "stemdl", epochs=10, batch_size=32, lr=1e-3, seed=1234, out=False)
    p.set_defaults(batch_size=None, lr=None)  # each task keeps its own unless given (32 / 16, 1e-3 / 3e-3)
    add_run_options(p)
