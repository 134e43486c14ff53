"""Benchmark pipelines: train, evaluate and run end to end, per data set."""

from __future__ import annotations

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
