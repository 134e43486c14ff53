"""CANDLE-UNO (drug response regression): the split rule, the test-split ground truth and the benchmark."""

from __future__ import annotations

from typing import Any

import numpy as np

from scibench_data.datasets.base import (
    Benchmark,
    Metric,
    PredictionError,
    PredictionFormat,
    Reference,
    Truth,
)

SPLITS: tuple[str, ...] = ("train", "val", "test")


def split_codes(n: int, seed: int) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test) for ``n`` rows: a seeded 80/10/10 shuffle of the rows,
    the proportions of the MLCommons export (423,952 / 52,994 / 52,994) (pure)."""
    perm = np.random.default_rng([seed, 55]).permutation(n)
    split = np.zeros(n, np.int8)
    n_val = n // 10
    split[perm[n - 2 * n_val: n - n_val]] = 1
    split[perm[n - n_val:]] = 2
    return split


def truth(ds: Any) -> Truth:
    """The test responses' AUC and their ``source_row`` ids."""
    idx = np.flatnonzero(np.asarray(ds["split"].values) == SPLITS.index("test"))
    if idx.size == 0:
        raise PredictionError("the candle_uno store has no test rows")
    return Truth({"source_row": np.asarray(ds["source_row"].values)[idx].astype(np.int64)}, ds["auc"].data[idx], (),
                 idx)


_REG = "scibench_data.scoring.regression"

BENCHMARKS = (
    Benchmark(
        name="candle_uno", title="CANDLE-UNO drug response regression", entry="candle_uno",
        splits=SPLITS, test_split="test",
        split_rule="the split variable of the store (export: as exported; raw: seeded 80/10/10)",
        metrics=(
            Metric("r2", "higher", f"{_REG}:r2", truth_first=True, description="coefficient of determination"),
            Metric("mse", "lower", f"{_REG}:mse", truth_first=True, description="mean squared error"),
            Metric("mae", "lower", f"{_REG}:mae", truth_first=True, description="mean absolute error"),
            Metric("pearson", "higher", f"{_REG}:pearson", truth_first=True, description="Pearson correlation"),
        ),
        primary="r2", target=0.7486, aggregate="whole_set",
        prediction=PredictionFormat(
            "auc", ("response",), ("source_row",), "f",
            "predicted dose-response AUC per test response; source_row: the store's source_row of the response"),
        reference=Reference(
            model="UNO multi-tower network (~16.2 M parameters)",
            settings={"optimizer": "adamax", "learning_rate": 1e-4, "batch_size": 32, "loss": "mse",
                      "max_epochs": 50, "early_stopping": True},
            values={"val_r2": 0.7486, "val_mse": 0.0054, "r2": 0.75},
            source="ECP-CANDLE Benchmarks (val R2 0.7486, val MSE 0.0054; test R2 ~0.75)"),
        notes="the target is the reference validation R2",
        truth=f"{__name__}:truth", command="uno", run_model="uno_model.pt",
        predict="scibench_data.pipelines.uno:predict_model"),
)
