"""Benchmark pipelines: train, evaluate and run end to end, per data set."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from scibench_data.scoring.mllog import BenchmarkLog


def new_run(root: str, benchmark: str) -> tuple[Path, BenchmarkLog]:
    """A fresh ``outputs/{benchmark}/run-{time}/`` folder under ``root`` and its ``result-0.txt`` log,
    with ``init`` logged and ``run_start`` opened."""
    outdir = Path(root) / "outputs" / benchmark / time.strftime("run-%Y%m%d-%H%M%S")
    outdir.mkdir(parents=True, exist_ok=True)
    log = BenchmarkLog(outdir / "result-0.txt", benchmark)
    log.start("init_start")
    log.end("init_stop")
    log.start("run_start")
    return outdir, log


def training_log(path: str | Path, benchmark: str, resume: bool = False):
    """The MLPerf log of a ``train`` command as a context manager: on rank 0 only (other ranks of a
    ``torchrun`` job get ``None``); a resumed run writes ``NAME.resume-K.txt`` next to it and keeps
    the interrupted run's log."""
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
