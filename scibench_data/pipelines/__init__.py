"""Benchmark pipelines: train, evaluate, predict and run end to end, per data set.

Every benchmark writes the same layout: ``ROOT/outputs/{benchmark}/run-{time}/`` holds a run's
model, ``scores*.json``, ``predictions-{benchmark}.npz`` (the test split in the benchmark's
prediction format), its mllog (``result-0.txt`` for ``run``; ``train-mllog.txt`` and
``eval-mllog.txt`` for the separate steps) and ``run.json``; raw synthetic files go to
``ROOT/raw/{benchmark}/``.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

from scibench_data.catalog import default_root
from scibench_data.convert import SYNTHETIC_ATTR
from scibench_data.scoring.mllog import BenchmarkLog


def run_dir(root: str | None, benchmark: str) -> Path:
    """A fresh ``ROOT/outputs/{benchmark}/run-{time}/`` path (not created)."""
    base = Path(root or default_root()) / "outputs" / benchmark
    path = base / time.strftime("run-%Y%m%d-%H%M%S")
    n = 1
    while path.exists():
        n += 1
        path = base / time.strftime(f"run-%Y%m%d-%H%M%S-{n}")
    return path


def raw_dir(root: str | None, benchmark: str) -> Path:
    """Where ``run`` writes a benchmark's synthetic raw files: ``ROOT/raw/{benchmark}/``."""
    return Path(root or default_root()) / "raw" / benchmark


def new_run(root: str, benchmark: str, synthetic: bool = False) -> tuple[Path, BenchmarkLog]:
    """A fresh ``outputs/{benchmark}/run-{time}/`` folder under ``root`` and its ``result-0.txt`` log,
    with ``init`` logged and ``run_start`` opened."""
    outdir = run_dir(root, benchmark)
    outdir.mkdir(parents=True, exist_ok=True)
    log = BenchmarkLog(outdir / "result-0.txt", benchmark)
    log.start("init_start")
    log.event("data_synthetic", bool(synthetic))
    log.end("init_stop")
    log.start("run_start")
    return outdir, log


def training_log(path: str | Path, benchmark: str, resume: bool = False):
    """The MLPerf log of a ``train`` command as a context manager: on rank 0 only (other ranks of a
    ``torchrun`` job get ``None``); a resumed run writes ``NAME.resume-K.txt`` next to it and keeps
    the interrupted run's log."""
    # torch costs seconds to import: run_dir and raw_dir (the CLI, submissions) do without it
    from reference_models.training import is_main_process

    if not is_main_process():
        return contextlib.nullcontext()
    path = Path(path)
    if resume:
        k = 1
        while (candidate := path.with_name(f"{path.stem}.resume-{k}{path.suffix}")).exists():
            k += 1
        path = candidate
    return BenchmarkLog(path, benchmark)
def predictions_path(outdir: str | Path, benchmark: str) -> Path:
    """The prediction file of ``benchmark`` in a run folder."""
    return Path(outdir) / f"predictions-{benchmark}.npz"


def epochs_to_run(epochs: int, steps_per_epoch: int | None, max_steps: int | None) -> int:
    """How many epochs a run with a step cap really starts (pure): at most ``epochs``, and no more
    than the cap needs (``max_steps`` counted across epochs; 0 or None: no cap)."""
    if not max_steps or not steps_per_epoch:
        return epochs
    return max(1, min(epochs, math.ceil(max_steps / steps_per_epoch)))


def epoch_desc(what: str, epoch: int, n_epochs: int, max_steps: int | None) -> str:
    """A progress bar's label: ``train epoch 2/3 (60-step cap)``."""
    return f"{what} {epoch + 1}/{n_epochs}" + (f" ({max_steps}-step cap)" if max_steps else "")


def is_synthetic(ds) -> bool:
    """Whether an opened store (xarray Dataset or attrs mapping) holds synthetic data."""
    attrs = getattr(ds, "attrs", ds)
    return bool(attrs.get(SYNTHETIC_ATTR))
