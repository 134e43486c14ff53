"""The benchmark registry: every benchmark that a data-set module declares
(:mod:`scibench_data.datasets`: its catalog entry and splits, metrics, target, reference and ground
truth), looked up by name, with the sizes of each entry's data.

The declarations' types (:class:`Benchmark`, :class:`Metric`, ...) live in
:mod:`scibench_data.datasets.base` and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr

from scibench_data.catalog import entry_metadata, open_catalog, store_url
from scibench_data.datasets import cloudmask, stemdl, uno
from scibench_data.datasets.base import (
    AGGREGATES,
    DIRECTIONS,
    Benchmark,
    Metric,
    PredictionFormat,
    Reference,
    Truth,
)

__all__ = ["AGGREGATES", "DIRECTIONS", "REGISTRY", "Benchmark", "DataSizes", "Metric", "PredictionFormat", "Reference",
           "Truth", "UnknownBenchmarkError", "data_sizes", "describe", "get", "human_bytes", "measure_store", "names"]


class UnknownBenchmarkError(KeyError):
    """A benchmark name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


#: Every benchmark, as its data set's module declares it (:mod:`scibench_data.datasets`).
REGISTRY: dict[str, Benchmark] = {b.name: b for b in (*cloudmask.BENCHMARKS, *stemdl.BENCHMARKS, *uno.BENCHMARKS)}

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
    path = Path(path)
    group = zarr.open_group(str(path), mode="r")
    uncompressed = sum(int(a.nbytes) for _, a in group.arrays())
    compressed = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "_scibench" not in f.parts)
    return uncompressed, compressed


def data_sizes(benchmark: Benchmark, root: str | None = None) -> DataSizes:
    """Catalog sizes of the benchmark's entry, plus measured ones when its store exists locally."""
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
