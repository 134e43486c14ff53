"""Score predictions saved by any framework against the catalog's ground truth.

A prediction file is a Zarr group (folder ``*.zarr``) or a NumPy ``.npz`` holding the
benchmark's prediction variable and its id variables (see
:class:`scibench_data.datasets.base.PredictionFormat` and ``docs/benchmarks.md``):

- ``cloudmask``: ``probability (scene, y, x)`` float + ``source_name (scene)`` str
- ``stemdl``: ``scores (sample, class)`` float (231 classes) + ``source_file``, ``source_key (sample)`` str
- ``stemdl_reconstruction``: ``potential (sample, y, x)`` float + ``source_file``, ``source_key (sample)``
- ``candle_uno``: ``auc (response,)`` float + ``source_row (response,)`` int

The ids must be exactly those of the test split (any order: predictions are put in
store order). Metrics run on NumPy arrays (``backend="numpy"``) or lazily on Dask
arrays (``backend="dask"``) and give the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from scibench_data.catalog import open_catalog, store_url
from scibench_data.datasets.base import PredictionError, Truth, import_function
from scibench_data.registry import Benchmark, get
from scibench_data.scoring.classification import macro_f1
from scibench_data.strings import decode_strings

__all__ = ["BACKENDS", "PredictionError", "ScoreResult", "Truth", "align", "compute_scores", "load_truth",
           "macro_f1_from_scores", "open_entry", "read_predictions", "save_predictions", "score_predictions"]

BACKENDS = ("numpy", "dask")


def macro_f1_from_scores(scores: Any, labels: Any) -> float:
    """Macro F1 of the arg-max class of ``(N, C)`` scores (adapter over
    :func:`scibench_data.scoring.classification.macro_f1`)."""
    return macro_f1(labels, scores.argmax(axis=1), scores.shape[1])


def open_entry(benchmark: Benchmark, root: str | None = None) -> Any:
    """The benchmark's catalog entry as a lazy xarray Dataset (a clear error if its store is missing)."""
    cat = open_catalog(root=root)
    try:
        return getattr(cat, benchmark.entry).to_dask()
    except (FileNotFoundError, KeyError, OSError) as err:
        raise FileNotFoundError(f"cannot open catalog entry {benchmark.entry} for benchmark {benchmark.name} "
                                f"(store {store_url(benchmark.entry, root)}): {err}") from err


def load_truth(benchmark: Benchmark, ds: Any) -> Truth:
    """Ids and lazy truth of the benchmark's test split of ``ds`` (its catalog entry; ids stored as
    codes or characters are decoded, :mod:`scibench_data.strings`), as its data set's module reads them."""
    if not benchmark.truth:
        raise PredictionError(f"no ground-truth reader for benchmark {benchmark.name!r}")
    return import_function(benchmark.truth, f"benchmark {benchmark.name} truth")(decode_strings(ds))


# --------------------------------------------------------------------------- predictions


def read_predictions(path: str | Path, benchmark: Benchmark, backend: str = "numpy") -> dict[str, Any]:
    """The prediction variable (NumPy or Dask, per ``backend``) and the id variables (NumPy) of a
    ``.npz`` file or a Zarr group; ``PredictionError`` naming the file and what is wrong."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = Path(path)
    fmt = benchmark.prediction
    wanted = (fmt.variable, *fmt.ids)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such prediction file")
    if path.suffix == ".npz" and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                present = set(f.files)
                raw = {k: f[k] for k in wanted if k in present}
        except ValueError as err:
            raise PredictionError(f"{path}: cannot read ({err}); save ids as fixed-width strings, not objects") from err
        except OSError as err:
            raise PredictionError(f"{path}: not a readable .npz file ({err})") from err
    elif path.is_dir():
        try:
            group = zarr.open_group(str(path), mode="r")
        except Exception as err:  # zarr raises several types for a folder that is not a group
            raise PredictionError(f"{path}: not a Zarr group ({err})") from err
        present = set(group.array_keys())
        raw = {k: group[k] for k in wanted if k in present}
    else:
        raise PredictionError(f"{path}: predictions must be a .npz file or a Zarr folder")
    missing = [k for k in wanted if k not in raw]
    if missing:
        raise PredictionError(f"{path}: missing variable(s) {missing} for benchmark {benchmark.name} "
                              f"(needs {fmt.variable} {fmt.dims} and ids {', '.join(fmt.ids)}; found {sorted(present)})")
    out: dict[str, Any] = {k: np.asarray(raw[k][...]) for k in fmt.ids}
    for k in fmt.ids:
        if out[k].ndim != 1:
            raise PredictionError(f"{path}: id {k} must be 1-D along {fmt.dims[0]}, got shape {out[k].shape}")
    values = raw[fmt.variable]
    if backend == "dask":
        chunks = (1, *values.shape[1:]) if len(values.shape) > 1 else (max(1, min(values.shape[0], 65536)),)
        out[fmt.variable] = da.from_array(values, chunks=chunks) if not isinstance(values, da.Array) else values
    else:
        out[fmt.variable] = np.asarray(values[...])
    if out[fmt.variable].dtype.kind not in ("f",):
        raise PredictionError(f"{path}: {fmt.variable} must be floating point, got {out[fmt.variable].dtype}")
    return out


def align(pred_ids: Mapping[str, np.ndarray], truth_ids: Mapping[str, np.ndarray], path: str | Path,
          sample_dim: str) -> np.ndarray:
    """Positions in the predictions of each truth sample, in store order; ``PredictionError`` when the ids
    are not exactly the test split's (missing, extra or repeated samples)."""
    names = list(truth_ids)
    n_pred = len(pred_ids[names[0]])
    for k in names:
        if len(pred_ids[k]) != n_pred:
            raise PredictionError(f"{path}: id variables have different lengths along {sample_dim}")

    def key(ids: Mapping[str, np.ndarray], i: int) -> tuple:
        return tuple(str(ids[k][i]) if ids[k].dtype.kind in "USOT" else int(ids[k][i]) for k in names)

    positions: dict[tuple, int] = {}
    repeated = []
    for i in range(n_pred):
        sample = key(pred_ids, i)
        if sample in positions:
            repeated.append(sample)
        positions[sample] = i
    if repeated:
        raise PredictionError(f"{path}: {len(repeated)} repeated sample id(s) in {', '.join(names)}, e.g. {repeated[0]}")
    n_truth = len(truth_ids[names[0]])
    wanted = [key(truth_ids, i) for i in range(n_truth)]
    missing = [k for k in wanted if k not in positions]
    extra = sorted(set(positions) - set(wanted))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} test sample(s) missing, e.g. {missing[0]}")
        if extra:
            parts.append(f"{len(extra)} sample(s) not in the test split, e.g. {extra[0]}")
        raise PredictionError(f"{path}: predictions are not aligned with the test split ({n_truth} samples, "
                              f"ids {', '.join(names)}): {'; '.join(parts)}")
    return np.asarray([positions[k] for k in wanted], dtype=np.int64)


# --------------------------------------------------------------------------- scoring


def compute_scores(benchmark: Benchmark, prediction: Any, truth: Any) -> dict[str, float]:
    """Every metric of the benchmark on aligned arrays (NumPy or Dask): per sample then averaged
    (``per_sample_mean``), or once over the whole set (``whole_set``)."""
    if benchmark.aggregate == "per_sample_mean":
        rows = [{m.name: m(prediction[i], truth[i]) for m in benchmark.metrics} for i in range(len(truth))]
        if not rows:
            raise PredictionError(f"{benchmark.name}: no samples to score")
        return {m.name: float(np.mean([r[m.name] for r in rows])) for m in benchmark.metrics}
    return {m.name: m(prediction, truth) for m in benchmark.metrics}


@dataclass(frozen=True)
class ScoreResult:
    benchmark: str
    entry: str
    split: str
    n_samples: int
    scores: dict[str, float]
    predictions: str


def score_predictions(benchmark: str | Benchmark, predictions: str | Path, root: str | None = None,
                      backend: str = "numpy", ds: Any = None) -> ScoreResult:
    """Score a prediction file against the benchmark's test split in the catalog (under ``root``)."""
    b = get(benchmark) if isinstance(benchmark, str) else benchmark
    ds = open_entry(b, root) if ds is None else ds
    truth = load_truth(b, ds)
    pred = read_predictions(predictions, b, backend)
    fmt = b.prediction
    values = pred[fmt.variable]
    if values.ndim != len(fmt.dims):
        raise PredictionError(f"{predictions}: {fmt.variable} must have dims {fmt.dims}, got {values.ndim}-D "
                              f"shape {values.shape}")
    if values.shape[0] != len(pred[fmt.ids[0]]):
        raise PredictionError(f"{predictions}: {fmt.variable} has {values.shape[0]} {fmt.dims[0]}s but the ids have "
                              f"{len(pred[fmt.ids[0]])}")
    order = align({k: pred[k] for k in fmt.ids}, truth.ids, predictions, fmt.dims[0])
    if tuple(values.shape[1:]) != truth.sample_shape:
        want = dict(zip(fmt.dims[1:], truth.sample_shape))
        raise PredictionError(f"{predictions}: {fmt.variable} per-{fmt.dims[0]} shape {tuple(values.shape[1:])} does "
                              f"not match the store's {want}")
    values = values[order]
    target = truth.values
    if backend == "numpy":
        target = np.asarray(target.compute() if hasattr(target, "compute") else target)
    if fmt.value_range is not None:
        lo, hi = fmt.value_range
        bad = (values < lo) | (values > hi) | (values != values)
        if bool(bad.any()):
            raise PredictionError(f"{predictions}: {fmt.variable} must be in [{lo:g}, {hi:g}] (no NaN)")
    scores = compute_scores(b, values, target)
    return ScoreResult(b.name, b.entry, b.test_split, len(order), scores, str(predictions))


def save_predictions(path: str | Path, benchmark: str | Benchmark, values: np.ndarray, **ids: np.ndarray) -> Path:
    """Write predictions in the benchmark's format: ``.npz`` by suffix, else a Zarr group."""
    b = get(benchmark) if isinstance(benchmark, str) else benchmark
    fmt = b.prediction
    if set(ids) != set(fmt.ids):
        raise ValueError(f"{b.name} predictions need ids {fmt.ids}, got {sorted(ids)}")
    arrays = {fmt.variable: np.asarray(values), **{k: np.asarray(v) for k, v in ids.items()}}
    for k in fmt.ids:
        if arrays[k].dtype.kind in "OT":
            arrays[k] = arrays[k].astype(str)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
        return path
    group = zarr.open_group(str(path), mode="w")
    for k, v in arrays.items():
        if v.dtype.kind == "U":
            v = v.astype(object)
            arr = group.create_array(k, shape=v.shape, dtype=str)
        else:
            chunks = (1, *v.shape[1:]) if v.ndim > 1 else v.shape
            arr = group.create_array(k, shape=v.shape, dtype=v.dtype, chunks=chunks)
        arr[...] = v
        arr.attrs["_ARRAY_DIMENSIONS"] = [fmt.dims[0]] if k in fmt.ids else list(fmt.dims)
    return path
