"""What each data-set module declares (:mod:`scibench_data.datasets`): benchmarks as first-class
objects -- data (a catalog entry and its splits), criteria (metrics with a direction, a target), a
reference implementation (model, settings, published values) -- and the ground truth of a test split.

Metric and ground-truth functions are named by import path (``"package.module:function"``) and
imported only when used, so the registry loads without torch and without every benchmark's code.
Each metric is called as ``fn(prediction, truth, **kwargs)`` (or ``fn(truth, prediction, ...)`` when
``truth_first``), on NumPy or Dask arrays alike, and returns a float.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DIRECTIONS = ("higher", "lower")
AGGREGATES = ("per_sample_mean", "whole_set")
#: A mapping or ``(key, value)`` pairs when given; stored as a tuple of pairs (hashable, ordered).
Pairs = Any
_FN_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class PredictionError(ValueError):
    """Predictions that cannot be scored (missing variable, misaligned ids, wrong shape)."""


def import_function(path: str, what: str) -> Callable[..., Any]:
    """The function at ``"package.module:function"`` (``ImportError`` naming ``what`` when it does not exist)."""
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ImportError(f"{what}: cannot import {path} ({err})") from err


@dataclass(frozen=True)
class Truth:
    """The test split of a benchmark's store: ids (NumPy), truth (lazy Dask), the per-sample shape
    expected of a prediction, and the store indices of the samples."""

    ids: dict[str, np.ndarray]
    values: Any
    sample_shape: tuple[int, ...]
    indices: np.ndarray


def strings(a: Any) -> np.ndarray:
    """Any array of text as a flat NumPy array of ``str`` (pure)."""
    return np.asarray([str(s) for s in np.asarray(a).ravel()])


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
    kwargs: Pairs = ()
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
        return import_function(self.fn, f"metric {self.name}")

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
    value_range: tuple[float, float] | None = None  # allowed values, inclusive (NaN refused); None: any

    def __post_init__(self) -> None:
        if not self.dims or not self.ids:
            raise ValueError(f"prediction format of {self.variable!r} needs dims and ids")
        if self.variable in self.ids:
            raise ValueError(f"prediction variable {self.variable!r} cannot also be an id")
        if self.value_range is not None and not self.value_range[0] <= self.value_range[1]:
            raise ValueError(f"prediction variable {self.variable!r}: empty value_range {self.value_range}")


@dataclass(frozen=True)
class Reference:
    """The reference implementation: model, its settings, and published values with their source."""

    model: str
    settings: Pairs = ()
    values: Pairs = ()
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
    truth: str = ""  # "module:function" returning the test split's Truth of the entry's dataset
    command: str = ""  # the data set's name in ``scibench-data run <command>``
    run_model: str = ""  # the model file a ``scibench-data run`` output folder holds
    predict: str = ""  # "module:function" (model_path, out, root) -> Path: test predictions of a model
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
        for what in ("truth", "predict"):
            if getattr(self, what) and not _FN_PATH.match(getattr(self, what)):
                raise ValueError(f"benchmark {self.name}: {what} must be 'package.module:function', "
                                 f"got {getattr(self, what)!r}")
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
