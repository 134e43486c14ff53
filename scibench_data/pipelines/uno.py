"""CANDLE-UNO benchmark steps: train, evaluate, run (generate -> convert -> catalog -> train -> evaluate).

Data is opened only through the catalog (``candle_uno`` under the
catalog-level ``root``). Each step is a plain function; the CLI is a thin shell.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypedDict, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from loaders.uno import (
    UnoArrays,
    UnoDataset,
    UnoSource,
    load_arrays,
    numpy_batches,
    uno_loader,
)
from reference_models.layers import n_parameters
from reference_models.training import (
    Checkpoints,
    TrainingProgress,
    data_parallel,
    init_distributed,
    is_main_process,
)
from reference_models.uno import UnoModel, UnoModelConfig
from scibench_data.atomic import write_json
from scibench_data.catalog import default_root, store_url
from scibench_data.convert.uno import UnoConversion, convert_uno
from scibench_data.pipelines import (
    epoch_desc,
    epochs_to_run,
    new_run,
    predictions_path,
    raw_dir,
)
from scibench_data.progress import bar_disable
from scibench_data.registry import get
from scibench_data.scoring.mllog import BenchmarkLog
from scibench_data.scoring.predictions import load_truth, save_predictions
from scibench_data.scoring.regression import regression_scores
from scibench_data.scoring.report import format_table, write_scores
from scibench_data.synthetic.uno import SyntheticUno, generate

BENCHMARK = "candle_uno"
#: What the demo data of ``run`` is, recorded in its stores (``scibench_synthetic``).
SYNTHETIC = "scibench_data.synthetic.uno"
#: MLCommons reference (formats.md): val R2 0.7486, val MSE 0.0054.
TARGET = {"r2": 0.7486, "mse": 0.0054}
log_ = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnoTrainConfig:
    """Training options; the defaults are the reference (Adamax 1e-4, batch 32, 50 epochs, early stopping)."""

    model: UnoModelConfig = field(default_factory=UnoModelConfig)
    lr: float = 1e-4
    batch_size: int = 32
    max_epochs: int = 50
    patience: int = 5
    seed: int = 0
    num_workers: int = 0
    threads: int | None = None
    progress: bool = True
    checkpoint_every: int = 0  # steps between checkpoints (0: at the end of each epoch only)
    remainder: str = "pad"  # several ranks: pad the epoch to a multiple of them by repetition, or "drop"
    max_steps: int = 0  # optimiser steps across epochs (resumes included); 0: no cap

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1 or self.num_workers < 0 \
                or self.max_steps < 0:
            raise ValueError(f"bad training options: lr={self.lr}, batch_size={self.batch_size}, "
                             f"max_epochs={self.max_epochs}, patience={self.patience}, num_workers={self.num_workers}")
        if self.checkpoint_every < 0 or self.remainder not in ("pad", "drop"):
            raise ValueError(f"checkpoint_every must be >= 0 and remainder 'pad' or 'drop', got "
                             f"{self.checkpoint_every}, {self.remainder!r}")


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    epochs: int
    best_epoch: int
    best_val_mse: float
    history: list[dict]
    elapsed_s: float


def predict(model: UnoModel, arrays: UnoArrays, split: str, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(targets, predictions) for every row of ``split``, in store order."""
    model.eval()
    ys, ps = [], []
    with torch.no_grad():
        for b in numpy_batches(UnoDataset(arrays, split, as_torch=False), batch_size, shuffle=False):
            ps.append(model(torch.from_numpy(b["cell"]), torch.from_numpy(b["drug"])).numpy())
            ys.append(b["auc"])
    if not ys:
        raise ValueError(f"split {split!r} has no rows")
    return np.concatenate(ys), np.concatenate(ps)


class _TrainState(TypedDict):
    """Early stopping and the running epoch totals of :func:`train` (saved with every checkpoint)."""

    best: float
    best_epoch: int
    history: list[dict]
    waited: int
    total: float
    n: int
    done: bool


def train(source: UnoSource, out_dir: str | Path, cfg: UnoTrainConfig = UnoTrainConfig(),
          log: BenchmarkLog | None = None, resume: bool = False) -> TrainResult:
    """Train on ``train``, early-stop on ``val`` MSE; the best weights go to ``out_dir/uno_model.pt``.

    Under ``torchrun`` each rank trains on its share of every epoch (DistributedDataParallel);
    rank 0 alone logs and writes ``checkpoint.pt`` (each epoch, and every ``checkpoint_every``
    steps), ``uno_model.pt`` and the history. ``resume`` continues from ``out_dir/checkpoint.pt``."""
    t0 = time.perf_counter()
    init_distributed()
    main = is_main_process()
    log = log if main else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    dataset = UnoDataset(source, "train")
    arrays = dataset.arrays  # before any output: a missing store writes nothing
    log_.info("training UNO on %d responses", len(dataset))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mc = UnoModelConfig(**{**asdict(cfg.model), "n_genes": arrays.rnaseq.shape[1],
                           "n_descriptors": arrays.descriptors.shape[1]})
    model = UnoModel(mc)
    with torch.no_grad():  # start at the mean response instead of 0 (AUC is ~0.75): fewer epochs wasted
        model.out.bias.fill_(float(arrays.auc[arrays.rows("train")].mean()))
    net = data_parallel(model)
    opt = torch.optim.Adamax(net.parameters(), lr=cfg.lr)
    loader = uno_loader(dataset, cfg.batch_size, num_workers=cfg.num_workers, seed=cfg.seed, remainder=cfg.remainder)
    if log:
        log.event("global_batch_size", cfg.batch_size * loader.dataset.spec.world_size)
        log.event("opt_name", "adamax")
        log.event("opt_base_learning_rate", cfg.lr)
        log.event("train_samples", len(dataset))
        log.event("eval_samples", len(arrays.rows("val")))
        log.event("model_parameters", n_parameters(model))
    ckpt = out / "uno_model.pt"
    # early stopping and the running epoch totals: saved with every checkpoint
    state: _TrainState = {"best": float("inf"), "best_epoch": -1, "history": [], "waited": 0, "total": 0.0, "n": 0,
                          "done": False}
    progress = TrainingProgress()
    checkpoints = Checkpoints(out, net, opt, loader, progress, cfg.checkpoint_every, extra=lambda: dict(state))
    first_epoch = 0
    if resume:
        first_epoch, extra = checkpoints.resume()
        state.update(cast(_TrainState, extra))  # the checkpoint holds what extra() saved: a _TrainState
    n_epochs = epochs_to_run(cfg.max_epochs, len(loader), cfg.max_steps)
    for epoch in range(first_epoch, n_epochs):
        if state["done"] or (cfg.max_steps and progress.steps >= cfg.max_steps):
            break
        loader.set_epoch(epoch)
        net.train()
        left = len(loader) if not cfg.max_steps else min(len(loader), cfg.max_steps - progress.steps)
        bar = tqdm(total=left, desc=epoch_desc("uno epoch", epoch, n_epochs, cfg.max_steps)
                   + (" (early stopping)" if cfg.patience < n_epochs else ""), unit="batch",
                   disable=bar_disable(cfg.progress and main), dynamic_ncols=True)
        for batch in loader:
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(batch["cell"], batch["drug"]), batch["auc"])
            loss.backward()
            opt.step()
            state["total"] += loss.item() * len(batch["auc"])
            state["n"] += len(batch["auc"])
            progress.steps += 1
            bar.update(1)
            checkpoints.after_step()
            if cfg.max_steps and progress.steps >= cfg.max_steps:
                break
        y, p = predict(model, arrays, "val")
        val = regression_scores(y, p)
        train_mse = state["total"] / max(state["n"], 1)
        state["total"], state["n"] = 0.0, 0
        state["history"].append({"epoch": epoch + 1, "train_mse": train_mse, **{f"val_{k}": v for k, v in val.items()}})
        if log:
            log.event("eval_accuracy", val["r2"], metadata={"epoch_num": epoch + 1, "val_mse": val["mse"]})
        bar.close()
        if cfg.progress and main:
            tqdm.write(f"epoch {epoch + 1}: train mse {train_mse:.5f}  val mse {val['mse']:.5f}  "
                       f"val r2 {val['r2']:.4f}")
        if val["mse"] < state["best"]:
            state["best"], state["best_epoch"], state["waited"] = val["mse"], epoch + 1, 0
            if main:
                torch.save({"config": mc.as_dict(), "state_dict": model.state_dict(), "epoch": epoch + 1}, ckpt)
        else:
            state["waited"] += 1
            state["done"] = state["waited"] >= cfg.patience
        checkpoints.save(epoch_done=True)
    history = state["history"]
    if main:
        write_json(out / "train_history.json", history, sort_keys=False)
    return TrainResult(ckpt, len(history), state["best_epoch"], state["best"], history, time.perf_counter() - t0)


def load_model(checkpoint: str | Path) -> UnoModel:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = UnoModel(UnoModelConfig.from_dict(state["config"]))
    model.load_state_dict(state["state_dict"])
    return model


def evaluate(source: UnoSource, checkpoint: str | Path, splits: tuple[str, ...] = ("val", "test")) -> dict[str, dict]:
    """Scores (MSE, MAE, R2, Pearson) of a checkpoint on each split."""
    model = load_model(checkpoint)
    arrays = load_arrays(source.open())
    return {s: regression_scores(*predict(model, arrays, s)) for s in splits}


def flat_scores(scores: dict[str, dict]) -> dict[str, float]:
    return {f"{split}_{k}": v for split, d in scores.items() for k, v in d.items()}


def report(scores: dict[str, dict], out_dir: Path, **context: object) -> tuple[str, Path]:
    """The printed table and the JSON file of the scores."""
    flat = flat_scores(scores)
    table = format_table(flat, "CANDLE-UNO scores", {f"val_{k}": v for k, v in TARGET.items()})
    path = write_scores(out_dir / "scores.json", BENCHMARK, flat, **context)
    return table, path


def predict_model(model_path: str | Path, out: str | Path, root: str | None = None) -> Path:
    """:func:`predict_test` of the catalog's entry under ``root`` (``Benchmark.predict``: a run folder's model)."""
    return predict_test(UnoSource(root=root), model_path, out)


def predict_test(source: UnoSource, checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """A checkpoint's AUC predictions of the test split, saved in the ``candle_uno`` prediction format
    (default: ``predictions-candle_uno.npz`` next to the checkpoint)."""
    ds = source.open()
    truth = load_truth(get(BENCHMARK), ds)
    _, p = predict(load_model(checkpoint), load_arrays(ds), "test")
    out = Path(out) if out else predictions_path(Path(checkpoint).parent, BENCHMARK)
    return save_predictions(out, BENCHMARK, p.astype(np.float32), **truth.ids)


#: ``run uno``: small enough for seconds on 2 CPU cores, full feature dimensions.
DEMO_DATA = {"n_cells": 60, "n_drugs": 40, "n_responses": 3000}


def run(root: str | None, cfg: UnoTrainConfig, fresh: bool = False, seed: int = 0,
        data: dict | None = None) -> dict:
    """Generate (synthetic raw TSVs in ``ROOT/raw/candle_uno``) -> convert -> open through the catalog ->
    train -> evaluate -> predict, into ``ROOT/outputs/candle_uno/run-{time}/``; returns a summary."""
    t0 = time.perf_counter()
    root = root or default_root()
    raw, store = raw_dir(root, BENCHMARK), store_url(BENCHMARK, root)
    outdir, log = new_run(root, BENCHMARK, synthetic=True)
    with log.interval("staging", metadata={"store": store}):
        if fresh:
            shutil.rmtree(raw, ignore_errors=True)
            shutil.rmtree(store, ignore_errors=True)
        if not (raw / "combined_single_response_agg").exists():
            synth = SyntheticUno(**(data or DEMO_DATA), seed=seed)
            print(f"generating synthetic CANDLE-UNO raw data ({synth.n_cells} cells, {synth.n_drugs} drugs, "
                  f"{synth.n_responses} responses) in {raw}")
            generate(raw, "raw", synth)
        conv = convert_uno(raw, store, UnoConversion(progress=cfg.progress, synthetic=SYNTHETIC))
        print("\n".join(conv.lines()))
        if not conv.ok:
            raise RuntimeError(f"conversion did not complete: {conv.failed or conv.rejected}")
    source = UnoSource(root=root)
    result = train(source, outdir, cfg, log)
    with log.interval("eval"):
        scores = evaluate(source, result.checkpoint)
    log.event("eval_accuracy", scores["val"]["r2"], metadata={"metric": "val_r2", **scores["val"]})
    log.event("result", scores["test"])
    log.end("run_stop", metadata={"status": "success"})
    log.close()
    predictions = predict_test(source, result.checkpoint, predictions_path(outdir, BENCHMARK))
    elapsed = time.perf_counter() - t0
    table, path = report(scores, outdir, source=str(raw), store=store, epochs=result.epochs,
                         best_epoch=result.best_epoch, elapsed_s=elapsed, synthetic=True)
    summary = {"root": root, "raw": str(raw), "store": store, "outputs": str(outdir), "model": str(result.checkpoint),
               "scores_json": str(path), "predictions": str(predictions), "mllog": str(log.path),
               "seconds": round(elapsed, 1), "scores": scores, "synthetic": True}
    write_json(outdir / "run.json", summary, sort_keys=False)
    print(table)
    print(f"\nraw data:    {raw}\nZarr store:  {store}\nmodel:       {result.checkpoint}\nscores:      {path}\n"
          f"predictions: {predictions}\nmllog:       {log.path}\ntotal time:  {elapsed:.0f} s (synthetic data)")
    return summary
