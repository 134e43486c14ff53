"""``scibench-data {generate,convert,train,evaluate,run} stemdl``."""

from __future__ import annotations

import argparse
import json
import warnings

from scibench_data.cli.common import (
    add_conversion_options, add_progress, add_resume_options, add_root, run_conversion,
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
    from scibench_data.pipelines.stemdl import TrainConfig, train

    _quiet_intake()
    cfg = TrainConfig(task=args.task, entry=args.entry, model=args.model, input_mode=args.input_mode,
                      epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                      weight_decay=args.weight_decay, seed=args.seed, num_workers=args.num_workers,
                      max_steps=args.max_steps, checkpoint_every=args.checkpoint_every)
    result = train(args.root, cfg, args.out, progress=args.progress, resume=args.resume)
    print(f"trained {cfg.task} on {result.samples} samples in {result.seconds:.0f} s; model: {result.model_path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from scibench_data.pipelines.stemdl import evaluate, print_scores

    _quiet_intake()
    result = evaluate(args.root, args.model, args.split, args.out, progress=args.progress)
    print_scores(result)
    print(json.dumps(result["scores"], indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    from scibench_data.pipelines.stemdl import run

    _quiet_intake()
    run(args.root, progress=args.progress, fresh=args.fresh)
    return 0


def register(cli) -> None:  # noqa: ANN001
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
    add_root(p)
    p.add_argument("--task", choices=("classification", "reconstruction"), default="classification")
    p.add_argument("--entry", default=None, help="catalog entry (default stemdl / stemdl_reconstruction)")
    p.add_argument("--model", choices=("resnet50", "resnet-small"), default="resnet50")
    p.add_argument("--input-mode", choices=("stack", "random_projection"), default="stack")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--out", default="outputs/stemdl", help="folder for the model (default outputs/stemdl)")
    add_resume_options(p)
    add_progress(p)

    p = cli.dataset("evaluate", "stemdl", _evaluate, "score a trained STEMDL model on a split of its catalog entry")
    add_root(p)
    p.add_argument("model", help="model file written by train stemdl")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default="outputs/stemdl", help="folder for scores-{task}.json")
    add_progress(p)

    p = cli.dataset("run", "stemdl", _run, "STEMDL end to end on synthetic data: generate, convert, train, evaluate")
    add_root(p)
    p.add_argument("--fresh", action="store_true", help="regenerate and reconvert from scratch")
    add_progress(p)
