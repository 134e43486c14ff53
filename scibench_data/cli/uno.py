"""``scibench-data {generate,convert,train,evaluate,predict,run} uno``.

The data stack is imported inside the commands: ``--help`` stays fast."""

from __future__ import annotations

import argparse
from typing import Any

from scibench_data.cli.common import (
    add_conversion_options,
    add_model_options,
    add_resume_options,
    add_run_options,
    add_training_options,
    model_out,
    require_store,
    run_conversion,
    run_training,
)

#: ``run uno``: the network's widths (its data: pipelines.uno.DEMO_DATA).
DEMO_WIDTHS = {"tower": (256, 256, 256), "dense": (256,) * 5}


def _generate(args: argparse.Namespace) -> int:
    from scibench_data.synthetic.uno import SyntheticUno, generate

    cfg = SyntheticUno(n_cells=args.cells, n_drugs=args.drugs, n_responses=args.responses, n_genes=args.genes,
                       n_descriptors=args.descriptors, seed=args.seed)
    for p in generate(args.dest, args.layout, cfg):
        print(p)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from scibench_data.convert.uno import UnoConversion, convert_uno

    return run_conversion(args, convert_uno, UnoConversion, split_seed=args.split_seed)


def _train_config(args: argparse.Namespace):
    from reference_models.uno import UnoModelConfig
    from scibench_data.pipelines.uno import UnoTrainConfig

    widths: dict[str, Any] = {"tower": (args.width,) * 3, "dense": (args.width,) * 5} if args.width else {}
    return UnoTrainConfig(model=UnoModelConfig(**widths), lr=args.lr, batch_size=args.batch_size,
                          max_epochs=args.epochs, patience=args.patience, seed=args.seed,
                          num_workers=args.num_workers, progress=args.progress, max_steps=args.max_steps or 0,
                          checkpoint_every=getattr(args, "checkpoint_every", 0))


def _train(args: argparse.Namespace) -> int:
    from loaders.uno import UnoSource
    from scibench_data.pipelines.uno import BENCHMARK, train

    cfg = _train_config(args)
    result = run_training(args, BENCHMARK, BENCHMARK, lambda out, log: train(
        UnoSource(root=args.root), out, cfg, log, resume=args.resume))
    print(f"model: {result.checkpoint} (best epoch {result.best_epoch} of {result.epochs}, "
          f"val mse {result.best_val_mse:.5f}, {result.elapsed_s:.0f} s)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from loaders.uno import UnoSource
    from scibench_data.pipelines.uno import BENCHMARK, evaluate, report
    from scibench_data.scoring.mllog import BenchmarkLog

    require_store(args.root, BENCHMARK)
    out = model_out(args)
    with BenchmarkLog(out / "eval-mllog.txt", BENCHMARK) as log, log.interval("eval"):
        scores = evaluate(UnoSource(root=args.root), args.model)
        log.event("result", scores["test"])
    table, path = report(scores, out, model=str(args.model))
    print(table)
    print(f"scores: {path}\nmllog:  {log.path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from loaders.uno import UnoSource
    from scibench_data.pipelines.uno import BENCHMARK, predict_test

    require_store(args.root, BENCHMARK)
    print(f"predictions: {predict_test(UnoSource(root=args.root), args.model, args.out)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from scibench_data.pipelines.uno import run

    run(args.root, _train_config(args), fresh=args.fresh, seed=args.seed)
    return 0


def _train_args(p: argparse.ArgumentParser, demo: bool) -> None:
    add_training_options(p, "candle_uno", epochs=8 if demo else 50, batch_size=32, lr=1e-3 if demo else 1e-4, seed=0,
                         out=not demo)
    p.add_argument("--width", type=int, default=DEMO_WIDTHS["tower"][0] if demo else None,
                   help="width of every tower and dense layer (default: reference 1000" +
                        (f"; run uses {DEMO_WIDTHS['tower'][0]})" if demo else ")"))
    p.add_argument("--patience", type=int, default=3 if demo else 5, help="early stopping patience (epochs)")


def register(cli) -> None:
    p = cli.dataset("generate", "uno", _generate, "synthetic CANDLE-UNO data: raw Pilot1 TSVs or the exported HDFStore")
    p.add_argument("--layout", choices=("raw", "export"), required=True)
    p.add_argument("dest", help="folder to write into")
    p.add_argument("--cells", type=int, default=200)
    p.add_argument("--drugs", type=int, default=150)
    p.add_argument("--responses", type=int, default=20_000, help="raw response rows before filtering")
    p.add_argument("--genes", type=int, default=942, help="default 942 (full size)")
    p.add_argument("--descriptors", type=int, default=5270, help="default 5270 (full size)")
    p.add_argument("--seed", type=int, default=0)

    p = cli.dataset("convert", "uno", _convert, "UNO export (HDFStore file) or raw TSV folder -> one normalised Zarr store")
    p.add_argument("src", help="top_21_auc_1fold.uno.h5 or a folder of Pilot1 TSVs")
    p.add_argument("dest", help="the Zarr store to create or resume")
    p.add_argument("--split-seed", type=int, default=42, help="raw layout: seed of the 80/10/10 split")
    add_conversion_options(p)

    p = cli.dataset("train", "uno", _train, "train the UNO reference network on catalog entry candle_uno")
    _train_args(p, demo=False)
    add_resume_options(p)

    p = cli.dataset("evaluate", "uno", _evaluate, "score a UNO model (MSE, MAE, R2, Pearson) on val and test")
    add_model_options(p, "uno_model.pt", "folder for scores.json and eval-mllog.txt (default: the model's folder)")

    p = cli.dataset("predict", "uno", _predict, "a UNO model's AUC predictions of the test split (candle_uno format)")
    add_model_options(p, "uno_model.pt", "prediction file (default: predictions-candle_uno.npz next to the model)")

    p = cli.dataset("run", "uno", _run, "generate synthetic raw data, convert, open via the catalog, train, evaluate "
                    "and predict UNO (seconds)")
    _train_args(p, demo=True)
    add_run_options(p)
