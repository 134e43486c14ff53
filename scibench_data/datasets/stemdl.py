"""STEMDL (CBED stacks): the split rule, the test-split ground truth of both tasks and their benchmarks
(space-group classification, ``stemdl``; projected-potential reconstruction, ``stemdl_reconstruction``)."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from scibench_data.datasets.base import (
    Benchmark,
    Metric,
    PredictionError,
    PredictionFormat,
    Reference,
    Truth,
    strings,
)

#: The 230 space groups plus the unused class 0.
N_CLASSES = 231
#: train/dev/test fractions of materials when the source has no split folders.
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def split_of_material(material: str, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> str:
    """Split of a material when the source has no split folders: train/dev/test by a stable
    hash of the material id, so a material never lands in two splits (pure)."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    u = (zlib.crc32(material.encode()) % 10_000) / 10_000
    if u < fractions[0]:
        return "train"
    return "dev" if u < fractions[0] + fractions[1] else "test"


def split_indices(splits: np.ndarray, split: str) -> np.ndarray:
    """Sample indices of ``split`` (pure); ``ValueError`` naming the splits present if it is empty."""
    splits = strings(splits)
    idx = np.flatnonzero(splits == split)
    if idx.size == 0:
        raise ValueError(f"no samples in split {split!r}; the store has {sorted(set(splits.tolist()))}")
    return idx


def _ids(ds: Any, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: strings(ds[k].values)[idx] for k in ("source_file", "source_key")}


def classification_truth(ds: Any) -> Truth:
    """The test samples' space-group labels and their ``source_file``/``source_key`` ids."""
    idx = split_indices(ds["split"].values, "test")
    labels = ds["label"].data[idx].astype(np.int64)
    n_classes = int(ds.attrs.get("scibench_n_classes", N_CLASSES))
    return Truth(_ids(ds, idx), labels, (n_classes,), idx)


def reconstruction_truth(ds: Any) -> Truth:
    """The test samples' projected potentials and their ``source_file``/``source_key`` ids."""
    idx = split_indices(ds["split"].values, "test")
    if "potential" not in ds:
        raise PredictionError("the stemdl_reconstruction store has no 'potential' variable (convert without "
                              "--preprocess from sources that carry one)")
    pot = ds["potential"].data[idx]
    return Truth(_ids(ds, idx), pot, tuple(pot.shape[1:]), idx)


_CLS = "scibench_data.scoring.classification"
_REC = "scibench_data.scoring.reconstruction"
_PRED = "scibench_data.scoring.predictions"
_SPLIT_RULE = "the split coordinate of the store (source folders, by material)"

BENCHMARKS = (
    Benchmark(
        name="stemdl", title="STEMDL space-group classification from CBED stacks", entry="stemdl",
        splits=("train", "dev", "test", "inference"), test_split="test", split_rule=_SPLIT_RULE,
        metrics=(
            Metric("top1", "higher", f"{_CLS}:top_k_accuracy", kwargs={"k": 1}, description="top-1 accuracy"),
            Metric("top5", "higher", f"{_CLS}:top_k_accuracy", kwargs={"k": 5}, description="top-5 accuracy"),
            Metric("macro_f1", "higher", f"{_PRED}:macro_f1_from_scores", description="unweighted mean F1 over classes"),
        ),
        primary="top1", target=0.57, aggregate="whole_set",
        prediction=PredictionFormat(
            "scores", ("sample", "class"), ("source_file", "source_key"), "f",
            "logits or probabilities over the 231 space-group classes (0 unused) per test sample; source_file and "
            "source_key: the store's coordinates of the sample"),
        reference=Reference(
            model="ResNet-50, the 3 projections as 3 channels, 231-way head",
            settings={"optimizer": "adamw", "learning_rate": 1e-3, "weight_decay": 5e-5, "batch_size": 32,
                      "loss": "cross-entropy"},
            values={"top1": 0.57, "macro_f1": 0.43},
            source="MLCommons Science STEMDL baseline (formats.md)"),
        truth=f"{__name__}:classification_truth", command="stemdl", run_model="model-classification.pt",
        predict="scibench_data.pipelines.stemdl:predict_model"),
    Benchmark(
        name="stemdl_reconstruction", title="STEMDL projected-potential reconstruction (scibench-data task)",
        entry="stemdl_reconstruction", splits=("train", "dev", "test"), test_split="test", split_rule=_SPLIT_RULE,
        metrics=(
            Metric("mse", "lower", f"{_REC}:mse", description="mean squared error"),
            Metric("psnr", "higher", f"{_REC}:psnr", description="PSNR in dB, data range of the test targets"),
            Metric("ssim", "higher", f"{_REC}:ssim", description="mean SSIM (Gaussian 11-tap window)"),
        ),
        primary="ssim", target=None, aggregate="whole_set",
        prediction=PredictionFormat(
            "potential", ("sample", "y", "x"), ("source_file", "source_key"), "f",
            "predicted projected potential per test sample, on the store's grid"),
        reference=Reference(
            model="encoder-decoder (reference_models/encoder_decoder.py), MSE on standardised potentials",
            settings={"optimizer": "adamw", "learning_rate": 1e-3, "batch_size": 32},
            values={}, source="no published score; ours are in docs/stemdl.md"),
        notes="no published score exists; the metrics are ours",
        truth=f"{__name__}:reconstruction_truth", command="stemdl", run_model="model-reconstruction.pt",
        predict="scibench_data.pipelines.stemdl:predict_model"),
)
