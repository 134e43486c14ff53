"""CloudMask: train the reference U-Net on a catalog entry, evaluate it, or run it all.

Data is always opened through the catalog (``root`` is the catalog-level
parameter); patches stream from the entry's Zarr store.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from loaders.cloudmask import (
    CloudMaskPatches,
    PatchSpec,
    patch_loader,
    read_scene,
    start_worker_server,
)
from loaders.patches import inference_tiles, mosaic, pad_for_tiles
from reference_models.layers import n_parameters
from reference_models.training import (
    Checkpoints,
    TrainingProgress,
    data_parallel,
    init_distributed,
    is_main_process,
    run_epoch,
)
from reference_models.unet import UNet
from scibench_data.atomic import write_json
from scibench_data.catalog import default_root, entry_location, open_catalog, store_url
from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
from scibench_data.datasets.cloudmask import (
    PATCH,
    SPLIT_SEED,
    VAL_FRACTION,
    split_scenes,
)
from scibench_data.pipelines import (
    epoch_desc,
    epochs_to_run,
    is_synthetic,
    new_run,
    predictions_path,
    raw_dir,
)
from scibench_data.progress import bar_disable
from scibench_data.registry import get
from scibench_data.scoring.mllog import BenchmarkLog
from scibench_data.scoring.predictions import load_truth, save_predictions
from scibench_data.scoring.report import format_table, write_scores
from scibench_data.scoring.segmentation import (
    average_scores,
    fit_single_channel_threshold,
    scene_scores,
)
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import store_state
from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

BENCHMARK = "cloudmask"
#: What the demo data of ``run`` is, recorded in its stores (``scibench_synthetic``).
SYNTHETIC = "scibench_data.synthetic.cloudmask"
log_ = logging.getLogger(__name__)
TARGET = {"pixel_accuracy": 0.9}


@dataclass(frozen=True)
class TrainConfig:
    """Reference settings by default (Adam 1e-3, batch 32, seed 1234, 20 fixed patches per scene)."""

    entry: str = "cloudmask_ds1"
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 1234
    split_seed: int = SPLIT_SEED
    val_fraction: float = VAL_FRACTION
    patch: int = PATCH
    mode: str = "fixed"
    patches_per_scene: int = 20
    num_workers: int = 0
    max_steps: int | None = None
    checkpoint_every: int = 0  # steps between checkpoints (0: at the end of each epoch only)
    mix_scenes: int = 1  # scenes whose patches are shuffled together (1: one scene at a time, best locality)
    remainder: str = "pad"  # several ranks: pad the epoch to a multiple of them by repetition, or "drop"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patch", "mix_scenes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.remainder not in ("pad", "drop"):
            raise ValueError(f"remainder must be 'pad' or 'drop', got {self.remainder!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.patch % 8:
            raise ValueError(f"patch must be a multiple of 8 for the U-Net, got {self.patch}")


@dataclass(frozen=True)
class OpenedEntry:
    """A catalog entry opened once: its name, lazy dataset and store location (passed down by ``run``
    so that one run opens the catalog once)."""

    entry: str
    ds: xr.Dataset
    location: StoreLocation


def open_entry(root: str | None, entry: str) -> OpenedEntry:
    """Open the catalog under ``root`` and its ``entry`` (``KeyError`` when the catalog has none)."""
    cat = open_catalog(root=root)
    if entry not in cat:
        raise KeyError(f"catalog has no entry {entry!r}")
    ds = getattr(cat, entry).to_dask()
    location = entry_location(cat, entry)
    log_.info("opened catalog entry %s: %s, store %s", entry, dict(ds.sizes), location.url)
    return OpenedEntry(entry, ds, location)


def _open(root: str | None, entry: str, opened: OpenedEntry | None) -> tuple[xr.Dataset, StoreLocation]:
    """``opened`` when it is ``entry``, else the entry opened now."""
    if opened is None or opened.entry != entry:
        opened = open_entry(root, entry)
    return opened.ds, opened.location


def masked_bce(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    valid = ~torch.isnan(mask)
    target = torch.nan_to_num(mask, nan=0.0)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * valid).sum() / valid.sum().clamp_min(1)


@dataclass
class TrainResult:
    model_path: Path
    splits: dict[str, list[int]]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0


def train(root: str | None, cfg: TrainConfig, outdir: str | Path, log: BenchmarkLog | None = None,
          progress: bool = True, resume: bool = False, opened: OpenedEntry | None = None) -> TrainResult:
    """Train the U-Net on the catalog entry's training scenes; saves ``model.pt`` in ``outdir``.

    Under ``torchrun`` each rank trains on its share of every epoch (DistributedDataParallel);
    rank 0 alone logs and writes ``checkpoint.pt`` (each epoch, and every ``checkpoint_every``
    steps) and ``model.pt``. ``resume`` continues from ``outdir/checkpoint.pt`` mid-epoch."""
    init_distributed()
    main = is_main_process()
    log = log if main else None
    torch.manual_seed(cfg.seed)
    if cfg.num_workers:
        start_worker_server()  # its start-up overlaps with opening the store
    ds, location = _open(root, cfg.entry, opened)  # before any output is written: a missing store writes nothing
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    splits = split_scenes(ds["split"].values, cfg.val_fraction, cfg.split_seed)
    if not splits["train"]:
        raise ValueError(f"{cfg.entry} has no training scenes")
    data = CloudMaskPatches(location, splits["train"], PatchSpec(cfg.mode, cfg.patch, cfg.patches_per_scene, cfg.seed))
    # this rank's share of each epoch: scenes shuffled, then their patches (cfg.mix_scenes at a time);
    # workers read and build whole batches (one concurrent read per batch, no collate copy)
    loader = patch_loader(data, cfg.batch_size, num_workers=cfg.num_workers, shuffle=True, seed=cfg.seed,
                          mix=cfg.mix_scenes, remainder=cfg.remainder)
    model = UNet()
    net = data_parallel(model)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    if log:
        log.event("seed", cfg.seed)
        log.event("global_batch_size", cfg.batch_size * loader.dataset.spec.world_size)
        log.event("train_samples", len(data))
        log.event("opt_name", "adam")
        log.event("opt_base_learning_rate", cfg.learning_rate)
    result = TrainResult(model_path=outdir / "model.pt", splits=splits)
    progress_ = TrainingProgress()
    checkpoints = Checkpoints(outdir, net, opt, loader, progress_, cfg.checkpoint_every)
    first_epoch = checkpoints.resume()[0] if resume else 0

    def loss_of_batch(batch):
        image, mask = batch
        return masked_bce(net(image), mask), len(image)

    try:
        steps_per_epoch = len(loader)
    except TypeError:
        steps_per_epoch = None
    n_epochs = epochs_to_run(cfg.epochs, steps_per_epoch, cfg.max_steps)
    for epoch in range(first_epoch, n_epochs):
        loader.set_epoch(epoch)
        if log:
            log.start("epoch_start", metadata={"epoch_num": epoch + 1})
        stopped = run_epoch(net, loader, opt, loss_of_batch, progress_, max_steps=cfg.max_steps,
                            desc=epoch_desc("train epoch", epoch, n_epochs, cfg.max_steps), show=progress and main,
                            after_step=checkpoints.after_step)
        checkpoints.save(epoch_done=not (stopped and not loader.finished))
        if log:
            log.end("epoch_stop", metadata={"epoch_num": epoch + 1, "loss": progress_.last_loss})
        if stopped:
            break
    result.losses, result.samples, result.seconds = progress_.losses, progress_.samples, progress_.seconds
    if main:
        torch.save({"state_dict": model.state_dict(), "config": asdict(cfg), "splits": splits,
                    "parameters": n_parameters(model)}, result.model_path)
    return result


def load_model(path: str | Path) -> tuple[UNet, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = UNet()
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def predict_scene(model: UNet, image: np.ndarray, patch: int = PATCH, stride: int = 176, batch: int = 8) -> np.ndarray:
    """Cloud probability of a whole normalised scene ``(9, H, W)``: reference inference tiling."""
    h, w = image.shape[1:]
    tiles, padding = inference_tiles(h, w, patch, stride)
    padded = pad_for_tiles(image, padding)
    preds: list[np.ndarray] = []
    for start in range(0, len(tiles), batch):
        chunk = tiles[start:start + batch]
        x = np.stack([padded[:, ty.start:ty.start + patch, tx.start:tx.start + patch] for ty, tx in chunk])
        preds.extend(model.predict_proba(torch.from_numpy(x))[:, 0].numpy())
    return mosaic(preds, tiles, (h, w))


def evaluate(root: str | None, model_path: str | Path, entry: str = "cloudmask_ds1", split: str = "test",
             outdir: str | Path | None = None, log: BenchmarkLog | None = None, progress: bool = True,
             baseline: bool = True, opened: OpenedEntry | None = None,
             predictions: str | Path | None = None) -> dict:
    """Per-scene pixel accuracy, F1, IoU and log loss of a model, averaged over the split's scenes.

    With ``baseline``, the best single-channel threshold (fitted on the training
    scenes) is scored on the same scenes. Each scene of the split is read once. With
    ``predictions``, the test split's probabilities are saved there too (``cloudmask`` prediction
    format), from the scenes already predicted.
    """
    ds, location = _open(root, entry, opened)
    model, ckpt = load_model(model_path)
    splits = split_scenes(ds["split"].values, ckpt["config"]["val_fraction"], ckpt["config"]["split_seed"])
    scenes = splits[split]
    if not scenes:
        raise ValueError(f"{entry}: split {split!r} has no scenes")
    if log:
        log.start("eval_start", metadata={"split": split})
        log.event("eval_samples", len(scenes))
    rule = fit_single_channel_threshold(*_pixels(location, splits["train"]))[0] if baseline else None
    per_scene: list[dict] = []
    probs: dict[int, np.ndarray] = {}
    base: list[dict] = []
    for s in tqdm(scenes, desc=f"evaluate {split}", unit="scene", disable=bar_disable(progress)):
        image, mask = read_scene(location, s)
        prob = predict_scene(model, image)
        probs[s] = prob
        per_scene.append({"scene": int(s), "source_name": str(ds["source_name"].values[s]), **scene_scores(prob, mask)})
        if rule is not None:
            base.append(scene_scores(rule.predict(image), mask))
    scores = average_scores([{k: v for k, v in r.items() if k not in ("scene", "source_name")} for r in per_scene])
    out: dict = {"scores": scores, "per_scene": per_scene, "split": split, "entry": entry}
    if rule is not None:
        out["baseline_single_channel"] = {"channel": str(ds["channel"].values[rule.channel]),
                                          "threshold": rule.threshold, "sign": rule.sign,
                                          **average_scores(base)}
    if predictions is not None:
        save_test_predictions(ds, location, model, predictions, probs, progress)
    if log:
        log.end("eval_stop", metadata={"split": split})
        log.event("result", scores)
    if outdir is not None:
        write_scores(Path(outdir) / "scores.json", BENCHMARK, scores, entry=entry, split=split,
                     per_scene=per_scene, baseline=out.get("baseline_single_channel"), model=str(model_path))
    return out


def _pixels(location, scenes: list[int], max_pixels: int = 400_000) -> tuple[np.ndarray, np.ndarray]:
    """Normalised images and masks of some scenes, subsampled to at most ``max_pixels`` per scene."""
    images, masks = [], []
    for s in scenes:
        img, m = read_scene(location, s)
        step = max(1, int(np.sqrt(m.size / max_pixels)))
        images.append(img[:, ::step, ::step])
        masks.append(m[::step, ::step])
    shape = min(i.shape[1] for i in images), min(i.shape[2] for i in images)
    return (np.stack([i[:, :shape[0], :shape[1]] for i in images]),
            np.stack([m[:shape[0], :shape[1]] for m in masks]))


def save_test_predictions(ds: xr.Dataset, location: StoreLocation, model: UNet, out: str | Path,
                          known: Mapping[int, np.ndarray], progress: bool = True) -> Path:
    """The test split's cloud probabilities saved in the ``cloudmask`` prediction format; scenes in
    ``known`` (scene -> probabilities) are not read or predicted again."""
    b = get(BENCHMARK)
    truth = load_truth(b, ds)
    probs = np.stack([known[int(s)] if int(s) in known else predict_scene(model, read_scene(location, int(s))[0])
                      for s in tqdm(truth.indices, desc="predict test", unit="scene", disable=bar_disable(progress))])
    return save_predictions(out, b, probs.astype(np.float32), **truth.ids)


def predict_test(root: str | None, model_path: str | Path, out: str | Path | None = None,
                 progress: bool = True) -> Path:
    """The test split's cloud probabilities of a trained model, saved in the ``cloudmask`` prediction
    format (default: ``predictions-cloudmask.npz`` next to the model)."""
    ds, location = _open(root, get(BENCHMARK).entry, None)
    model, _ = load_model(model_path)
    out = Path(out) if out else predictions_path(Path(model_path).parent, BENCHMARK)
    return save_test_predictions(ds, location, model, out, {}, progress)


def predict_model(model_path: str | Path, out: str | Path, root: str | None = None) -> Path:
    """:func:`predict_test` without progress bars (``Benchmark.predict``: a run folder's model)."""
    return predict_test(root, model_path, out, progress=False)


def print_scores(result: dict) -> None:
    print(format_table(result["scores"], f"CloudMask scores ({result['entry']}, {result['split']} split, "
                                         f"{len(result['per_scene'])} scenes)", TARGET))
    if "baseline_single_channel" in result:
        b = result["baseline_single_channel"]
        print(f"best single-channel threshold ({b['channel']} {'>' if b['sign'] > 0 else '<'} {b['threshold']:.3f}): "
              f"pixel accuracy {b['pixel_accuracy']:.4f}")


@dataclass(frozen=True)
class RunConfig:
    """The end-to-end demo: a few small synthetic products, converted, opened via the catalog,
    a brief training run and an evaluation."""

    train_products: int = 8
    test_products: int = 2
    grid: tuple[int, int] = (512, 640)
    layout: str = "hdf"
    seed: int = 0
    train: TrainConfig = TrainConfig(mode="random", patch=128, patches_per_scene=64, batch_size=16, max_steps=60,
                                     epochs=10)


def run(root: str | None, cfg: RunConfig = RunConfig(), progress: bool = True, fresh: bool = False) -> dict:
    """Generate -> convert -> open through the catalog -> train -> evaluate; returns a summary."""
    root = root or default_root()
    raw = raw_dir(root, BENCHMARK)
    store = store_url(cfg.train.entry, root)
    t0 = time.perf_counter()
    outdir, log = new_run(root, BENCHMARK, synthetic=True)
    with log.interval("staging", metadata={"store": store}):
        if fresh:
            shutil.rmtree(raw, ignore_errors=True)
            shutil.rmtree(store, ignore_errors=True)
        if store_state(StoreLocation(store)).complete:
            print(f"using the existing complete store {store}")
        else:
            for split, n, seed in (("training", cfg.train_products, cfg.seed), ("inference", cfg.test_products, cfg.seed + 1)):
                folder = raw / split
                if folder.exists() and any(folder.iterdir()):
                    continue
                print(f"generating {n} synthetic {cfg.layout} products ({cfg.grid[0]}x{cfg.grid[1]}) in {folder}")
                generate(folder, cfg.layout, SyntheticCloudMask(n_products=n, grid=cfg.grid, seed=seed))
            report = convert_cloudmask(str(raw), store, CloudMaskConversion(layout=cfg.layout, progress=progress,
                                                                            synthetic=SYNTHETIC))
            print("\n".join(report.lines()))
            if not report.ok:
                raise RuntimeError(f"conversion did not complete: {report.failed or report.rejected}")
    t_open = time.perf_counter()
    opened = open_entry(root, cfg.train.entry)
    ds = opened.ds
    print(f"opened {cfg.train.entry} through the catalog in {time.perf_counter() - t_open:.2f} s: "
          f"{dict(ds.sizes)}, image {ds['image'].dtype}, lazy={ds['image'].chunks is not None}"
          f"{', synthetic data' if is_synthetic(ds) else ''}")
    result = train(root, cfg.train, outdir, log=log, progress=progress, opened=opened)
    print(f"trained {result.samples} patches in {result.seconds:.0f} s (final loss {result.losses[-1]:.4f})")
    predictions = predictions_path(outdir, BENCHMARK)
    scores = evaluate(root, result.model_path, cfg.train.entry, "test", outdir, log=log, progress=progress,
                      opened=opened, predictions=predictions if cfg.train.entry == get(BENCHMARK).entry else None)
    log.end("run_stop", metadata={"status": "success"})
    log.close()
    elapsed = time.perf_counter() - t0
    if cfg.train.entry != get(BENCHMARK).entry:
        predictions = predict_test(root, result.model_path, predictions, progress=progress)
    print_scores(scores)
    summary = {"root": root, "raw": str(raw), "store": store, "outputs": str(outdir), "model": str(result.model_path),
               "predictions": str(predictions), "synthetic": True,
               "scores_json": str(outdir / "scores.json"), "mllog": str(log.path), "seconds": round(elapsed, 1),
               "scores": scores["scores"], "baseline_single_channel": scores.get("baseline_single_channel")}
    write_json(outdir / "run.json", summary, sort_keys=False)
    print(f"\nraw products: {raw}\nZarr store:   {store}\nmodel:        {result.model_path}\n"
          f"scores:       {outdir / 'scores.json'}\npredictions:  {predictions}\nmllog:        {log.path}\n"
          f"total time:   {elapsed:.0f} s (synthetic data)")
    return summary
