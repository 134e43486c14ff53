"""CANDLE-UNO benchmark steps: train, evaluate, run (generate -> convert -> catalog -> train -> evaluate).

Data is opened only through the catalog (``candle_uno`` under the
catalog-level ``root``). Each step is a plain function; the CLI is a thin shell.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from loaders.workers import worker_context
from loaders.uno import UnoArrays, UnoBatchSampler, UnoDataset, UnoSource, load_arrays, numpy_batches
from reference_models.uno import UnoModel, UnoModelConfig, n_parameters
from scibench_data.scoring.mllog import BenchmarkLog
from scibench_data.scoring.regression import regression_scores
from scibench_data.scoring.report import format_table, write_scores

BENCHMARK = "candle_uno"
#: MLCommons reference (formats.md): val R2 0.7486, val MSE 0.0054.
TARGET = {"r2": 0.7486, "mse": 0.0054}


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

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1 or self.num_workers < 0:
            raise ValueError(f"bad training options: lr={self.lr}, batch_size={self.batch_size}, "
                             f"max_epochs={self.max_epochs}, patience={self.patience}, num_workers={self.num_workers}")


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
        for b in numpy_batches(arrays, split, batch_size):
            ps.append(model(torch.from_numpy(b["cell"]), torch.from_numpy(b["drug"])).numpy())
            ys.append(b["auc"])
    if not ys:
        raise ValueError(f"split {split!r} has no rows")
    return np.concatenate(ys), np.concatenate(ps)


def train(source: UnoSource, out_dir: str | Path, cfg: UnoTrainConfig = UnoTrainConfig(),
          log: BenchmarkLog | None = None) -> TrainResult:
    """Train on ``train``, early-stop on ``val`` MSE; the best weights go to ``out_dir/uno_model.pt``."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    dataset = UnoDataset(source, "train")
    arrays = dataset.arrays
    mc = UnoModelConfig(**{**asdict(cfg.model), "n_genes": arrays.rnaseq.shape[1],
                           "n_descriptors": arrays.descriptors.shape[1]})
    model = UnoModel(mc)
    with torch.no_grad():  # start at the mean response instead of 0 (AUC is ~0.75): fewer epochs wasted
        model.out.bias.fill_(float(arrays.auc[arrays.rows("train")].mean()))
    opt = torch.optim.Adamax(model.parameters(), lr=cfg.lr)
    sampler = UnoBatchSampler(len(dataset), cfg.batch_size, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=cfg.num_workers,
                                         persistent_workers=cfg.num_workers > 0,
                                         multiprocessing_context=worker_context() if cfg.num_workers else None)
    if log:
        log.event("global_batch_size", cfg.batch_size)
        log.event("opt_name", "adamax")
        log.event("opt_base_learning_rate", cfg.lr)
        log.event("train_samples", len(dataset))
        log.event("eval_samples", int(len(arrays.rows("val"))))
        log.event("model_parameters", n_parameters(model))
    ckpt = out / "uno_model.pt"
    best, best_epoch, history, waited = float("inf"), -1, [], 0
    for epoch in range(cfg.max_epochs):
        sampler.set_epoch(epoch)
        model.train()
        total, n = 0.0, 0
        bar = tqdm(loader, desc=f"uno epoch {epoch + 1}/{cfg.max_epochs}", unit="batch", disable=not cfg.progress,
                   leave=False, dynamic_ncols=True)
        for batch in bar:
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(batch["cell"], batch["drug"]), batch["auc"])
            loss.backward()
            opt.step()
            total += loss.item() * len(batch["auc"])
            n += len(batch["auc"])
        y, p = predict(model, arrays, "val")
        val = regression_scores(y, p)
        history.append({"epoch": epoch + 1, "train_mse": total / max(n, 1), **{f"val_{k}": v for k, v in val.items()}})
        if log:
            log.event("eval_accuracy", val["r2"], metadata={"epoch_num": epoch + 1, "val_mse": val["mse"]})
        if cfg.progress:
            tqdm.write(f"epoch {epoch + 1}: train mse {total / max(n, 1):.5f}  val mse {val['mse']:.5f}  "
                       f"val r2 {val['r2']:.4f}")
        if val["mse"] < best:
            best, best_epoch, waited = val["mse"], epoch + 1, 0
            torch.save({"config": mc.as_dict(), "state_dict": model.state_dict(), "epoch": epoch + 1}, ckpt)
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    (out / "train_history.json").write_text(json.dumps(history, indent=2) + "\n")
    return TrainResult(ckpt, len(history), best_epoch, best, history, time.perf_counter() - t0)


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
