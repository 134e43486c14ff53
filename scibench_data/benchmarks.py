"""Benchmarks as first-class objects: data (a catalog entry and its splits), criteria
(metrics with a direction, a target) and a reference implementation (model, settings,
published values).

Metric functions are named by import path (``"package.module:function"``) and
imported only when a metric is computed, so the registry loads without torch and
without every benchmark's code. Each metric is called as
``fn(prediction, truth, **kwargs)`` (or ``fn(truth, prediction, ...)`` when
``truth_first``), on NumPy or Dask arrays alike, and returns a float.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DIRECTIONS = ("higher", "lower")
AGGREGATES = ("per_sample_mean", "whole_set")
_FN_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class UnknownBenchmarkError(KeyError):
    """A benchmark name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def _pairs(value: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((str(k), v) for k, v in items)


@dataclass(frozen=True)
class Metric:
    """One criterion: ``name``, ``direction`` (``"higher"`` or ``"lower"`` is better) and the
    function computing it, by import path ``"module:function"``."""

    name: str
    direction: str
    fn: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    truth_first: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"metric name must be an identifier, got {self.name!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric {self.name}: direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if not _FN_PATH.match(self.fn):
            raise ValueError(f"metric {self.name}: fn must be 'package.module:function', got {self.fn!r}")
        object.__setattr__(self, "kwargs", _pairs(self.kwargs))

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher"

    def resolve(self) -> Callable[..., float]:
        """Import the metric function (raises ``ImportError`` naming the metric when it does not exist)."""
        module, _, name = self.fn.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise ImportError(f"metric {self.name}: cannot import {self.fn} ({err})") from err

    def __call__(self, prediction: Any, truth: Any) -> float:
        fn = self.resolve()
        args = (truth, prediction) if self.truth_first else (prediction, truth)
        return float(fn(*args, **dict(self.kwargs)))

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` is strictly better than ``b`` (NaN is never better)."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        return a > b if self.higher_is_better else a < b


@dataclass(frozen=True)
class PredictionFormat:
    """How predictions of one benchmark are saved (a Zarr group or an ``.npz``).

    ``variable`` holds the outputs, with ``dims`` (the first is the sample dimension);
    ``ids`` are 1-D variables along the sample dimension that identify each sample in the
    store (they must match the test split's values exactly, in any order).
    """

    variable: str
    dims: tuple[str, ...]
    ids: tuple[str, ...]
    dtype: str  # numpy kind: "f" float
    description: str

    def __post_init__(self) -> None:
        if not self.dims or not self.ids:
            raise ValueError(f"prediction format of {self.variable!r} needs dims and ids")
        if self.variable in self.ids:
            raise ValueError(f"prediction variable {self.variable!r} cannot also be an id")


@dataclass(frozen=True)
class Reference:
    """The reference implementation: model, its settings, and published values with their source."""

    model: str
    settings: tuple[tuple[str, Any], ...] = ()
    values: tuple[tuple[str, float], ...] = ()
    source: str = ""
    time_to_solution_s: float | None = None  # as published, when known

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", _pairs(self.settings))
        object.__setattr__(self, "values", _pairs(self.values))


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: a catalog entry and its splits, metrics, target and reference."""

    name: str
    title: str
    entry: str
    splits: tuple[str, ...]
    test_split: str
    metrics: tuple[Metric, ...]
    primary: str
    target: float | None
    aggregate: str
    prediction: PredictionFormat
    reference: Reference
    split_rule: str = ""
    notes: str = ""
    metric_index: dict[str, Metric] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.test_split not in self.splits:
            raise ValueError(f"benchmark {self.name}: test split {self.test_split!r} not in {self.splits}")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark {self.name}: duplicate metric names {names}")
        if self.primary not in names:
            raise ValueError(f"benchmark {self.name}: primary metric {self.primary!r} not among {names}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"benchmark {self.name}: aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        unknown = [k for k, _ in self.reference.values if k.split("_", 1)[-1] not in names and k not in names]
        if unknown:
            raise ValueError(f"benchmark {self.name}: reference values for unknown metrics {unknown}")
        object.__setattr__(self, "metric_index", {m.name: m for m in self.metrics})

    def metric(self, name: str) -> Metric:
        try:
            return self.metric_index[name]
        except KeyError:
            raise KeyError(f"benchmark {self.name} has no metric {name!r}; metrics: {', '.join(self.metric_index)}") from None

    @property
    def primary_metric(self) -> Metric:
        return self.metric(self.primary)

    def meets_target(self, score: float) -> bool | None:
        """Whether a primary score reaches the target (None when there is no target)."""
        if self.target is None:
            return None
        return score >= self.target if self.primary_metric.higher_is_better else score <= self.target


_SEG = "scibench_data.scoring.segmentation"
_CLS = "scibench_data.scoring.classification"
_REC = "scibench_data.scoring.reconstruction"
_REG = "scibench_data.scoring.regression"
_PRED = "scibench_data.scoring.predictions"

REGISTRY: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark(
        name="cloudmask", title="CloudMask (Sentinel-3 SLSTR cloud segmentation)", entry="cloudmask_ds1",
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
            "store's source_name of the scene (the product name)"),
        reference=Reference(
            model="U-Net 32-64-128-256 (~1.95 M parameters), 9 channels, sigmoid output",
            settings={"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 32, "loss": "binary cross-entropy",
                      "seed": 1234, "patch": 256, "inference_stride": 176, "border": 80},
            values={"pixel_accuracy": 0.896},
            source="sciml-bench slstr_cloud (best published test accuracy); MLCommons target 0.9",
            time_to_solution_s=None),
        notes="scores are computed per scene and averaged over scenes (sciml-bench)"),
    Benchmark(
        name="stemdl", title="STEMDL space-group classification from CBED stacks", entry="stemdl",
        splits=("train", "dev", "test", "inference"), test_split="test",
        split_rule="the split coordinate of the store (source folders, by material)",
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
            source="MLCommons Science STEMDL baseline (formats.md)")),
    Benchmark(
        name="stemdl_reconstruction", title="STEMDL projected-potential reconstruction (scibench-data task)",
        entry="stemdl_reconstruction", splits=("train", "dev", "test"), test_split="test",
        split_rule="the split coordinate of the store (source folders, by material)",
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
        notes="no published score exists; the metrics are ours"),
    Benchmark(
        name="candle_uno", title="CANDLE-UNO drug response regression", entry="candle_uno",
        splits=("train", "val", "test"), test_split="test",
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
        notes="the target is the reference validation R2"),
)}


def get(name: str) -> Benchmark:
    """The registered benchmark ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownBenchmarkError(f"unknown benchmark {name!r}; registered: {', '.join(REGISTRY)}") from None


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class DataSizes:
    """An entry's sizes: as the catalog declares them and, when the store is present, as measured."""

    catalog_uncompressed: int | None
    catalog_compressed: int | None
    compressed_is_estimate: bool
    measured_uncompressed: int | None = None
    measured_compressed: int | None = None
    store: str | None = None


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def measure_store(path: str | Path) -> tuple[int, int]:
    """``(uncompressed, compressed)`` bytes of a local Zarr store: the arrays' ``nbytes`` and the
    files on disk (chunks and metadata)."""
    import zarr

    path = Path(path)
    group = zarr.open_group(str(path), mode="r")
    uncompressed = sum(int(a.nbytes) for _, a in group.arrays())
    compressed = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "_scibench" not in f.parts)
    return uncompressed, compressed


def data_sizes(benchmark: Benchmark, root: str | None = None) -> DataSizes:
    """Catalog sizes of the benchmark's entry, plus measured ones when its store exists locally."""
    from scibench_data.catalog import entry_metadata, open_catalog, store_url

    meta = entry_metadata(open_catalog(root=root), benchmark.entry)
    comp = meta.get("compressed_size_bytes")
    estimate = comp is None
    if comp is None:
        comp = meta.get("compressed_size_bytes_estimate")
    sizes = DataSizes(_int(meta.get("uncompressed_size_bytes")), _int(comp), estimate)
    url = store_url(benchmark.entry, root)
    if "://" not in url and Path(url).is_dir():
        unc, cmp_ = measure_store(url)
        sizes = DataSizes(sizes.catalog_uncompressed, sizes.catalog_compressed, estimate, unc, cmp_, url)
    return sizes


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def describe(root: str | None = None) -> str:
    """The registry as text: each benchmark's entry, splits, metrics, target, sizes and reference."""
    lines = []
    for b in REGISTRY.values():
        s = data_sizes(b, root)
        metrics = ", ".join(f"{m.name} ({m.direction})" for m in b.metrics)
        target = "none (no published score)" if b.target is None else f"{b.primary} {b.target}"
        comp = human_bytes(s.catalog_compressed) + (" (estimate)" if s.compressed_is_estimate else "")
        lines += [f"{b.name}: {b.title}",
                  f"  entry      {b.entry}; splits {', '.join(b.splits)} (test: {b.test_split}; {b.split_rule})",
                  f"  metrics    {metrics}; primary {b.primary}, target {target}",
                  f"  data       catalog: {human_bytes(s.catalog_uncompressed)} uncompressed, {comp} compressed"]
        if s.store:
            lines.append(f"             local store {s.store}: {human_bytes(s.measured_uncompressed)} uncompressed, "
                         f"{human_bytes(s.measured_compressed)} on disk")
        else:
            lines.append("             local store: not present")
        ref = ", ".join(f"{k} {v}" for k, v in b.reference.values) or "none published"
        lines += [f"  reference  {b.reference.model}", f"             values: {ref} ({b.reference.source})",
                  f"  predict    {b.prediction.variable} {b.prediction.dims} + ids {', '.join(b.prediction.ids)}", ""]
    return "\n".join(lines).rstrip() + "\n"
