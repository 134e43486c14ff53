"""CloudMask (Sentinel-3 SLSTR cloud segmentation): its split rule, test-split ground truth and benchmark."""

from __future__ import annotations

from typing import Any

import numpy as np

from scibench_data.datasets.base import (
    Benchmark,
    Metric,
    PredictionFormat,
    Reference,
    Truth,
    strings,
)

ENTRY = "cloudmask_ds1"
#: Fraction of the training products held out for validation, and the seed of that draw (sciml-bench).
VAL_FRACTION = 0.2
SPLIT_SEED = 42
#: The reference model's patch (training) and inference tile size, in pixels.
PATCH = 256


def split_scenes(splits: np.ndarray, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> dict[str, list[int]]:
    """80/20 of the training scenes by file (seeded); test = the inference scenes, if any,
    else the validation scenes (pure)."""
    splits = strings(splits)
    training = np.flatnonzero(splits != "inference")
    inference = np.flatnonzero(splits == "inference")
    order = np.random.default_rng(seed).permutation(training)
    n_val = round(len(order) * val_fraction) if len(order) > 1 else 0
    val, train = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    return {"train": train, "validation": val, "test": sorted(inference.tolist()) or val}


def _where(cond: Any, a: Any, b: Any) -> Any:
    import dask.array as da  # only when truth is lazy; keeps this module free of Dask at import

    return da.where(cond, a, b) if isinstance(b, da.Array) else np.where(cond, a, b)


def truth(ds: Any) -> Truth:
    """The test scenes' cloud masks as float (NaN where unlabelled) and their ``source_name`` ids."""
    idx = np.asarray(split_scenes(ds["split"].values)["test"], dtype=np.int64)
    mask = ds["cloud_mask"].data[idx].astype(np.float32)
    mask = _where(mask > 1, np.nan, mask)  # fill (255) = unlabelled
    return Truth({"source_name": strings(ds["source_name"].values)[idx]}, mask, tuple(mask.shape[1:]), idx)


_SEG = "scibench_data.scoring.segmentation"

BENCHMARKS = (
    Benchmark(
        name="cloudmask", title="CloudMask (Sentinel-3 SLSTR cloud segmentation)", entry=ENTRY,
        splits=("train", "validation", "test"), test_split="test",
        split_rule="80/20 of the training products by file (seed 42); test = the inference products",
        metrics=(
            Metric("pixel_accuracy", "higher", f"{_SEG}:pixel_accuracy", description="fraction of labelled pixels right"),
            Metric("f1", "higher", f"{_SEG}:f1_score", description="F1 of the cloud class"),
            Metric("iou", "higher", f"{_SEG}:iou", description="intersection over union of the cloud class"),
            Metric("log_loss", "lower", f"{_SEG}:log_loss", description="binary cross-entropy of the probabilities"),
        ),
        primary="pixel_accuracy", target=0.9, aggregate="per_sample_mean",
        prediction=PredictionFormat(
            "probability", ("scene", "y", "x"), ("source_name",), "f",
            "cloud probability in [0, 1] per pixel of each test scene, on the store's grid; source_name: the "
            "store's source_name of the scene (the product name)", value_range=(0.0, 1.0)),
        reference=Reference(
            model="U-Net 32-64-128-256 (~1.95 M parameters), 9 channels, sigmoid output",
            settings={"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 32, "loss": "binary cross-entropy",
                      "seed": 1234, "patch": PATCH, "inference_stride": 176, "border": 80},
            values={"pixel_accuracy": 0.896},
            source="sciml-bench slstr_cloud (best published test accuracy); MLCommons target 0.9",
            time_to_solution_s=None),
        notes="scores are computed per scene and averaged over scenes (sciml-bench)",
        truth=f"{__name__}:truth", command="cloudmask", run_model="model.pt",
        predict="scibench_data.pipelines.cloudmask:predict_model"),
)
