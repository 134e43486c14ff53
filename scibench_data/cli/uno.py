"""``scibench-data {generate,convert,train,evaluate,run} uno``."""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from scibench_data.cli.common import (
    add_conversion_options, add_progress, add_resume_options, add_root, run_conversion,
)

#: ``run uno``: small enough for a few minutes on 2 CPU cores, full feature dimensions.
DEMO_DATA = {"n_cells": 60, "n_drugs": 40, "n_responses": 3000}
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


def _train_config(args: argparse.Namespace):  # noqa: ANN202
    from reference_models.uno import UnoModelConfig
    from scibench_data.pipelines.uno import UnoTrainConfig

    widths = {"tower": (args.width,) * 3, "dense": (args.width,) * 5} if args.width else {}
    return UnoTrainConfig(model=UnoModelConfig(**widths), lr=args.lr, batch_size=args.batch_size,
                          max_epochs=args.epochs, patience=args.patience, seed=args.seed,
                          num_workers=args.num_workers, progress=args.progress,
                          checkpoint_every=getattr(args, "checkpoint_every", 0))


def _out_dir(args: argparse.Namespace) -> Path:
    from scibench_data.catalog import default_root

    return Path(args.out or Path(args.root or default_root()) / "runs" / "candle_uno" / time.strftime("%Y%m%dT%H%M%S"))


def _train(args: argparse.Namespace) -> int:
    from loaders.uno import UnoSource
    from scibench_data.pipelines import training_log
    from scibench_data.pipelines.uno import BENCHMARK, train

    if args.resume and not args.out:
        raise ValueError("--resume needs --out: the folder of the run to continue")
    out = _out_dir(args)
    with training_log(out / "mllog.txt", BENCHMARK, args.resume) as log:
        with log.interval("run") if log else contextlib.nullcontext():
            result = train(UnoSource(root=args.root), out, _train_config(args), log, resume=args.resume)
    print(f"checkpoint: {result.checkpoint} (best epoch {result.best_epoch} of {result.epochs}, "
          f"val mse {result.best_val_mse:.5f}, {result.elapsed_s:.0f} s)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from loaders.uno import UnoSource
    from scibench_data.pipelines.uno import evaluate, report

    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    scores = evaluate(UnoSource(root=args.root), args.checkpoint)
    table, path = report(scores, out, checkpoint=str(args.checkpoint))
    print(table)
    print(f"scores: {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from loaders.uno import UnoSource
    from scibench_data.catalog import default_root, store_url
    from scibench_data.convert.uno import UnoConversion, convert_uno
    from scibench_data.pipelines.uno import BENCHMARK, evaluate, report, train
    from scibench_data.scoring.mllog import BenchmarkLog
    from scibench_data.synthetic.uno import SyntheticUno, generate

    t0 = time.perf_counter()
    root = args.root or default_root()
    out = _out_dir(args)
    raw = Path(root) / "sources" / "candle_uno_raw"
    with BenchmarkLog(out / "mllog.txt", BENCHMARK) as log:
        with log.interval("init"):
            cfg = _train_config(args)
        with log.interval("run"):
            with log.interval("staging"):
                if not (raw / "combined_single_response_agg").exists():
                    generate(raw, "raw", SyntheticUno(**DEMO_DATA, seed=args.seed))
                conv = convert_uno(raw, store_url("candle_uno", root), UnoConversion(progress=args.progress))
                print("\n".join(conv.lines()))
                if not conv.ok:
                    return 1
            result = train(UnoSource(root=root), out, cfg, log)
            with log.interval("eval"):
                scores = evaluate(UnoSource(root=root), result.checkpoint)
            log.event("eval_accuracy", scores["val"]["r2"], metadata={"metric": "val_r2", **scores["val"]})
    table, path = report(scores, out, source=str(raw), store=store_url("candle_uno", root),
                         epochs=result.epochs, best_epoch=result.best_epoch, elapsed_s=time.perf_counter() - t0)
    print(table)
    print(f"raw data:   {raw}\nstore:      {store_url('candle_uno', root)}\ncheckpoint: {result.checkpoint}\n"
          f"scores:     {path}\nmllog:      {out / 'mllog.txt'}\nruntime:    {time.perf_counter() - t0:.0f} s")
    return 0


def _train_args(p: argparse.ArgumentParser, demo: bool) -> None:
    add_root(p)
    p.add_argument("--out", default=None, help="output folder (default ROOT/runs/candle_uno/TIMESTAMP)")
    p.add_argument("--width", type=int, default=DEMO_WIDTHS["tower"][0] if demo else None,
                   help="width of every tower and dense layer (default: reference 1000" +
                        (f"; run uses {DEMO_WIDTHS['tower'][0]})" if demo else ")"))
    p.add_argument("--lr", type=float, default=1e-3 if demo else 1e-4, help="Adamax learning rate")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=8 if demo else 50, help="maximum epochs")
    p.add_argument("--patience", type=int, default=3 if demo else 5, help="early stopping patience (epochs)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=0)
    add_progress(p)


def register(cli) -> None:  # noqa: ANN001
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

    p = cli.dataset("evaluate", "uno", _evaluate, "score a UNO checkpoint (MSE, MAE, R2, Pearson) on val and test")
    add_root(p)
    p.add_argument("checkpoint", help="uno_model.pt written by train uno")
    p.add_argument("--out", default=None, help="where scores.json goes (default: next to the checkpoint)")

    p = cli.dataset("run", "uno", _run, "generate, convert, open via the catalog, train and evaluate UNO (a few minutes)")
    _train_args(p, demo=True)
