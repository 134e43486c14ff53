"""STEMDL: train and evaluate both tasks on catalog entries, and run the whole benchmark end to end.

Classification: a ResNet (ResNet-50 by default; ``resnet-small`` for the CPU
demo) on the ``stemdl`` entry, cross-entropy, AdamW lr 1e-3, weight decay
5e-5, batch 32 (the reference settings). Reconstruction: the encoder-decoder
on ``stemdl_reconstruction``, MSE on standardised potentials. Data is opened
only through the catalog (``root`` is the catalog parameter).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from loaders.stemdl import DEFAULT_ENTRY, from_catalog, stemdl_loader
from loaders.workers import worker_context
from reference_models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from reference_models.resnet import build as build_resnet
from reference_models.training import (
    Checkpoints,
    TrainingProgress,
    data_parallel,
    init_distributed,
    is_main_process,
    run_epoch,
)
from scibench_data.atomic import write_json
from scibench_data.catalog import default_root, open_catalog, store_url
from scibench_data.convert.stemdl import STEMDLConversion, convert_stemdl
from scibench_data.formats.stemdl import N_CLASSES
from scibench_data.pipelines import (
    epoch_desc,
    epochs_to_run,
    new_run,
    predictions_path,
    raw_dir,
)
from scibench_data.progress import bar_disable
from scibench_data.registry import get
from scibench_data.scoring.classification import classification_scores
from scibench_data.scoring.mllog import BenchmarkLog
from scibench_data.scoring.predictions import load_truth, save_predictions
from scibench_data.scoring.reconstruction import mse, reconstruction_scores
from scibench_data.scoring.report import format_table, write_scores
from scibench_data.synthetic.stemdl import SyntheticSTEMDL, generate

BENCHMARK = "stemdl"
#: What the demo data of ``run`` is, recorded in its stores (``scibench_synthetic``).
SYNTHETIC = "scibench_data.synthetic.stemdl"
#: The benchmark (prediction format) of each task.
TASK_BENCHMARK = {"classification": "stemdl", "reconstruction": "stemdl_reconstruction"}
log_ = logging.getLogger(__name__)
TASKS = ("classification", "reconstruction")
#: Reference baseline of the classification task (formats.md).
TARGET = {"top1": 0.57, "macro_f1": 0.43}


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``model`` and ``input_mode`` apply to classification only."""

    task: str = "classification"
    entry: str | None = None
    model: str = "resnet50"
    input_mode: str = "stack"  # or "random_projection" (1 channel; logits averaged over 3 at evaluation)
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 5e-5
    widths: tuple[int, ...] = (16, 32, 64)  # encoder-decoder
    seed: int = 1234
    num_workers: int = 0
    max_steps: int = 0  # 0: no limit
    select_split: str | None = "dev"  # keep the epoch with the lowest loss on this split (None: the last)
    checkpoint_every: int = 0  # steps between checkpoints (0: at the end of each epoch only)
    remainder: str = "pad"  # several ranks: pad the epoch to a multiple of them by repetition, or "drop"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.input_mode not in ("stack", "random_projection"):
            raise ValueError(f"input_mode must be 'stack' or 'random_projection', got {self.input_mode!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0 or self.num_workers < 0:
            raise ValueError(f"epochs, batch_size must be >= 1, learning_rate > 0, num_workers >= 0: {self}")
        if self.checkpoint_every < 0 or self.remainder not in ("pad", "drop"):
            raise ValueError(f"checkpoint_every must be >= 0 and remainder 'pad' or 'drop', got "
                             f"{self.checkpoint_every}, {self.remainder!r}")

    @property
    def entry_name(self) -> str:
        return self.entry or DEFAULT_ENTRY[self.task]


@dataclass
class TrainResult:
    model_path: Path
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0
    selected_epoch: int = 0


def _loader(data, cfg: TrainConfig, shuffle: bool) -> DataLoader:
    return DataLoader(data, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=cfg.num_workers,
                      generator=torch.Generator().manual_seed(cfg.seed),
                      multiprocessing_context=worker_context() if cfg.num_workers else None)


def target_stats(data) -> tuple[float, float]:
    """Mean and standard deviation of the reconstruction targets of a dataset."""
    as_torch, data.as_torch = data.as_torch, False
    try:
        values = np.stack([data[i][1] for i in range(len(data))])
    finally:
        data.as_torch = as_torch
    return float(values.mean()), float(values.std() + 1e-8)


def build_model(cfg: TrainConfig, in_channels: int, size: int) -> torch.nn.Module:
    if cfg.task == "classification":
        return build_resnet(cfg.model, in_channels=in_channels, num_classes=N_CLASSES)
    return EncoderDecoder(EncoderDecoderConfig(size=size, widths=cfg.widths))


def train(root: str | None, cfg: TrainConfig, outdir: str | Path, log: BenchmarkLog | None = None,
          progress: bool = True, resume: bool = False) -> TrainResult:
    """Train on the ``train`` split of the task's catalog entry; saves ``model-{task}.pt`` in ``outdir``.

    Under ``torchrun`` each rank trains on its share of every epoch (DistributedDataParallel);
    rank 0 alone selects the epoch, logs and writes ``checkpoint.pt`` (each epoch, and every
    ``checkpoint_every`` steps) and the model. ``resume`` continues from ``outdir/checkpoint.pt``."""
    init_distributed()
    main = is_main_process()
    log = log if main else None
    torch.manual_seed(cfg.seed)
    kwargs = {"mode": cfg.input_mode, "seed": cfg.seed} if cfg.task == "classification" else {}
    data = from_catalog(cfg.task, "train", root, cfg.entry, **kwargs)  # before any output: a missing store writes nothing
    log_.info("training %s on %d samples of %s", cfg.task, len(data), cfg.entry_name)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stats = target_stats(data) if cfg.task == "reconstruction" else (0.0, 1.0)
    size = int(data[0][0].shape[-1])
    model = build_model(cfg, getattr(data, "in_channels", 3), size)
    net = data_parallel(model)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss() if cfg.task == "classification" else torch.nn.MSELoss()
    # this rank's share of each epoch, store chunks shuffled then their samples; one read per batch
    loader = stemdl_loader(data, cfg.batch_size, num_workers=cfg.num_workers, seed=cfg.seed, remainder=cfg.remainder)
    if log:
        log.event("seed", cfg.seed)
        log.event("global_batch_size", cfg.batch_size * loader.dataset.spec.world_size)
        log.event("train_samples", len(data))
        log.event("opt_name", "adamw")
        log.event("opt_base_learning_rate", cfg.learning_rate)
        log.event("opt_weight_decay", cfg.weight_decay)
    result = TrainResult(model_path=outdir / f"model-{cfg.task}.pt")
    calibration = _loader(data, cfg, shuffle=False)
    selection = None
    if cfg.select_split and main:
        eval_kwargs = {"mode": "projections" if cfg.input_mode == "random_projection" else "stack"} \
            if cfg.task == "classification" else {}
        selection = from_catalog(cfg.task, cfg.select_split, root, cfg.entry, **eval_kwargs)
    best: dict = {"loss": float("inf"), "state": {}, "epoch": 0}
    progress_ = TrainingProgress()
    checkpoints = Checkpoints(outdir, net, opt, loader, progress_, cfg.checkpoint_every, extra=lambda: {"best": best})
    first_epoch = 0
    if resume:
        first_epoch, extra = checkpoints.resume()
        best = extra["best"]

    def loss_of_batch(batch):
        x, y = batch
        out = net(x)
        loss = loss_fn(out, y) if cfg.task == "classification" else loss_fn(out, (y - stats[0]) / stats[1])
        return loss, len(x)

    t0 = time.perf_counter()
    n_epochs = epochs_to_run(cfg.epochs, len(loader), cfg.max_steps)
    for epoch in range(first_epoch, n_epochs):
        loader.set_epoch(epoch)
        if log:
            log.start("epoch_start", metadata={"epoch_num": epoch + 1, "task": cfg.task})
        stopped = run_epoch(net, loader, opt, loss_of_batch, progress_, max_steps=cfg.max_steps,
                            desc=epoch_desc(f"train {cfg.task}", epoch, n_epochs, cfg.max_steps),
                            show=progress and main, after_step=checkpoints.after_step)
        meta = {"epoch_num": epoch + 1, "loss": progress_.last_loss}
        cut_short = stopped and not loader.finished
        if cut_short:
            checkpoints.save()  # mid-epoch: resume from the weights before the selection below
        if selection is not None:
            recalibrate_batchnorm(model, calibration)
            meta[f"{cfg.select_split}_loss"] = selection_loss(model, selection, loss_fn, stats)
            if meta[f"{cfg.select_split}_loss"] < best["loss"]:
                best = {"loss": meta[f"{cfg.select_split}_loss"], "state": copy.deepcopy(model.state_dict()),
                        "epoch": epoch + 1}
        if not cut_short:
            checkpoints.save(epoch_done=True)
        if log:
            log.end("epoch_stop", metadata=meta)
        if stopped:
            break
    result.losses, result.samples = progress_.losses, progress_.samples
    if best["state"]:
        model.load_state_dict(best["state"])  # its BatchNorm statistics were recalibrated when it was chosen
        result.selected_epoch = best["epoch"]
    elif main:
        recalibrate_batchnorm(model, calibration)
    result.seconds = time.perf_counter() - t0
    if main:
        torch.save({"state_dict": model.state_dict(), "config": asdict(cfg), "target_stats": stats,
                    "in_channels": getattr(data, "in_channels", 3), "size": size}, result.model_path)
    return result


@torch.no_grad()
def selection_loss(model: torch.nn.Module, data, loss_fn, stats: tuple[float, float], batch_size: int = 64) -> float:
    """Mean training loss of the model (in eval mode) over a held-out dataset."""
    model.eval()
    total, n = 0.0, 0
    for x, y in DataLoader(data, batch_size=batch_size):
        if x.ndim == 5:
            b, k = x.shape[:2]
            out = model(x.flatten(0, 1)).view(b, k, -1).mean(dim=1)
        else:
            out = model(x)
        loss = loss_fn(out, y) if y.ndim == 1 else loss_fn(out, (y - stats[0]) / stats[1])
        total += float(loss) * len(x)
        n += len(x)
    return total / max(n, 1)


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, loader: DataLoader) -> None:
    """Recompute BatchNorm running statistics as exact averages over one pass of the training data
    with the final weights ("precise BN"): short runs otherwise evaluate with stale statistics."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for x, _ in loader:
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def load_model(path: str | Path) -> tuple[torch.nn.Module, TrainConfig, dict]:
    # weights_only: a checkpoint is data (tensors, numbers, strings, lists, dicts); a pickled
    # object in it is refused instead of run (pickle.UnpicklingError)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    c = ckpt["config"]
    cfg = TrainConfig(**{**c, "widths": tuple(c["widths"])})
    model = build_model(cfg, ckpt["in_channels"], ckpt["size"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, cfg, ckpt


@torch.no_grad()
def predict(model: torch.nn.Module, data, batch_size: int = 64, progress: bool = True,
            desc: str = "evaluate") -> tuple[np.ndarray, np.ndarray]:
    """Model outputs and targets over a dataset; ``(B, 3, 1, H, W)`` inputs get their logits averaged."""
    outs, targets = [], []
    for x, y in tqdm(DataLoader(data, batch_size=batch_size), desc=desc, unit="batch", disable=bar_disable(progress)):
        if x.ndim == 5:
            b, k = x.shape[:2]
            out = model(x.flatten(0, 1)).view(b, k, -1).mean(dim=1)
        else:
            out = model(x)
        outs.append(out.numpy())
        targets.append(y.numpy())
    return np.concatenate(outs), np.concatenate(targets)


def evaluate(root: str | None, model_path: str | Path, split: str = "test", outdir: str | Path | None = None,
             log: BenchmarkLog | None = None, progress: bool = True) -> dict:
    """Score a trained model on ``split`` of its catalog entry; writes ``scores-{task}.json`` in ``outdir``."""
    model, cfg, ckpt = load_model(model_path)
    t0 = time.perf_counter()
    if log:
        log.start("eval_start", metadata={"task": cfg.task})
    if cfg.task == "classification":
        mode = "projections" if cfg.input_mode == "random_projection" else "stack"
        data = from_catalog("classification", split, root, cfg.entry, mode=mode)
        logits, labels = predict(model, data, progress=progress, desc=f"evaluate {split}")
        scores = classification_scores(logits, labels)
        extra = {"chance_top1": 1.0 / len(np.unique(labels)), "n_classes_present": len(np.unique(labels))}
    else:
        data = from_catalog("reconstruction", split, root, cfg.entry)
        mean, std = ckpt["target_stats"]
        pred, target = predict(model, data, progress=progress, desc=f"evaluate {split}")
        pred = pred * std + mean
        scores = reconstruction_scores(pred, target)
        extra = {"baseline_mean_image_mse": mse(np.broadcast_to(mean_image(root, cfg.entry), target.shape), target)}
    if log:
        log.event("eval_samples", len(data))
        for k, v in scores.items():
            log.event(f"eval_{k}", v, metadata={"task": cfg.task})
        log.end("eval_stop", metadata={"task": cfg.task})
    result = {"task": cfg.task, "entry": cfg.entry_name, "split": split, "n_samples": len(data), "scores": scores,
              "model": cfg.model if cfg.task == "classification" else "encoder-decoder",
              "seconds": round(time.perf_counter() - t0, 2), **extra}
    if outdir is not None:
        write_scores(Path(outdir) / f"scores-{cfg.task}.json", BENCHMARK, scores,
                     **{k: v for k, v in result.items() if k != "scores"})
    return result


def predict_model(model_path: str | Path, out: str | Path, root: str | None = None) -> Path:
    """:func:`predict_test` without progress bars (``Benchmark.predict``: a run folder's model)."""
    return predict_test(root, model_path, out, progress=False)


def predict_test(root: str | None, model_path: str | Path, out: str | Path | None = None,
                 progress: bool = True) -> Path:
    """A trained model's predictions of the test split, saved in its task's prediction format
    (``stemdl``: class scores; ``stemdl_reconstruction``: potentials); default
    ``predictions-{benchmark}.npz`` next to the model."""
    model, cfg, ckpt = load_model(model_path)
    b = get(TASK_BENCHMARK[cfg.task])
    truth = load_truth(b, getattr(open_catalog(root=root), cfg.entry_name).to_dask())
    if cfg.task == "classification":
        mode = "projections" if cfg.input_mode == "random_projection" else "stack"
        data = from_catalog("classification", "test", root, cfg.entry, mode=mode)
        values, _ = predict(model, data, progress=progress, desc="predict test")
        if values.shape[1] < truth.sample_shape[0]:  # the model's classes first, the store's others never predicted
            values = np.pad(values, ((0, 0), (0, truth.sample_shape[0] - values.shape[1])), constant_values=-1e9)
    else:
        data = from_catalog("reconstruction", "test", root, cfg.entry)
        mean, std = ckpt["target_stats"]
        values, _ = predict(model, data, progress=progress, desc="predict test")
        values = (values * std + mean).reshape(len(values), *truth.sample_shape)
    out = Path(out) if out else predictions_path(Path(model_path).parent, b.name)
    return save_predictions(out, b, values.astype(np.float32), **truth.ids)


def mean_image(root: str | None, entry: str | None = None) -> np.ndarray:
    """The mean training target ``(1, H, W)``: the trivial reconstruction baseline."""
    data = from_catalog("reconstruction", "train", root, entry, as_torch=False)
    return np.mean([data[i][1] for i in range(len(data))], axis=0)


def print_scores(result: dict) -> None:
    title = f"STEMDL {result['task']} ({result['entry']}, {result['split']} split, {result['n_samples']} samples)"
    print(format_table(result["scores"], title, TARGET if result["task"] == "classification" else None))


@dataclass(frozen=True)
class RunConfig:
    """The end-to-end demo on the embedded default: small synthetic raw files, the two stores
    (preprocessed to ``size``, so the demo fits a few CPU minutes), both tasks."""

    n_classes: int = 8
    materials_per_class: int = 12
    samples_per_material: int = 3
    pattern: int = 128
    size: int = 64
    seed: int = 0
    classification: TrainConfig = TrainConfig(model="resnet-small", epochs=10, batch_size=32)
    reconstruction: TrainConfig = TrainConfig(task="reconstruction", epochs=8, batch_size=16, learning_rate=3e-3)


def run(root: str | None, cfg: RunConfig = RunConfig(), progress: bool = True, fresh: bool = False) -> dict:
    """Generate -> convert (twice) -> open through the catalog -> train and evaluate both tasks."""
    root = root or default_root()
    raw = raw_dir(root, BENCHMARK)
    stores = {"stemdl": store_url("stemdl", root), "stemdl_reconstruction": store_url("stemdl_reconstruction", root)}
    t0 = time.perf_counter()
    outdir, log = new_run(root, BENCHMARK, synthetic=True)
    with log.interval("staging", metadata={"stores": list(stores.values())}):
        if fresh:
            shutil.rmtree(raw, ignore_errors=True)
            for s in stores.values():
                shutil.rmtree(s, ignore_errors=True)
        synth = SyntheticSTEMDL(n_classes=cfg.n_classes, materials_per_class=cfg.materials_per_class,
                                samples_per_material=cfg.samples_per_material, pattern=cfg.pattern, seed=cfg.seed)
        if not (raw.exists() and any(raw.iterdir())):
            print(f"generating {synth.n_samples} synthetic raw samples ({cfg.pattern}x{cfg.pattern}) in {raw}")
            generate(raw, "raw", synth, progress=progress)
        # Both demo stores are preprocessed to ``size`` to fit a few CPU minutes; a real
        # stemdl_reconstruction store keeps the raw 512 x 512 intensities (no --preprocess).
        for dest in stores.values():
            opts = STEMDLConversion(preprocess=True, size=cfg.size, progress=progress, synthetic=SYNTHETIC)
            report = convert_stemdl(str(raw), dest, opts)
            print("\n".join(report.lines()))
            if not report.ok:
                raise RuntimeError(f"conversion into {dest} did not complete: {report.failed or report.rejected}")
    results: dict[str, dict] = {}
    models: dict[str, Path] = {}
    for tcfg in (cfg.classification, cfg.reconstruction):
        trained = train(root, tcfg, outdir, log=log, progress=progress)
        print(f"trained {tcfg.task}: {trained.samples} samples in {trained.seconds:.0f} s "
              f"(final loss {trained.losses[-1]:.4f}; kept epoch {trained.selected_epoch or tcfg.epochs}, "
              f"the lowest {tcfg.select_split} loss)")
        results[tcfg.task] = evaluate(root, trained.model_path, "test", outdir, log=log, progress=progress)
        models[TASK_BENCHMARK[tcfg.task]] = trained.model_path
    log.event("result", results["classification"]["scores"], metadata={"benchmark": BENCHMARK})
    log.end("run_stop", metadata={"status": "success"})
    log.close()
    elapsed = time.perf_counter() - t0
    predictions = {b: str(predict_test(root, m, predictions_path(outdir, b), progress=progress))
                   for b, m in models.items()}
    for r in results.values():
        print_scores(r)
    rec = results["reconstruction"]
    print(f"reconstruction baseline (mean training image) MSE: {rec['baseline_mean_image_mse']:.4f}; "
          f"classification chance top-1: {results['classification']['chance_top1']:.3f}")
    summary = {"root": root, "raw": str(raw), "stores": stores, "outputs": str(outdir), "mllog": str(log.path),
               "seconds": round(elapsed, 1), "results": results, "predictions": predictions, "synthetic": True}
    write_json(outdir / "run.json", summary, sort_keys=False)
    print(json.dumps({t: r["scores"] for t, r in results.items()}, indent=2))
    print(f"\nraw files:   {raw}\nZarr stores: {stores['stemdl']}\n             {stores['stemdl_reconstruction']}\n"
          f"outputs:     {outdir} (models, scores-*.json, predictions-*.npz, run.json)\nmllog:       {log.path}\n"
          f"total time:  {elapsed:.0f} s (synthetic data)")
    return summary
