"""A run folder's MLPerf log as ``scibench-data run`` leaves it, as far as ``submission from-run`` and
the leaderboard read it (shared by the submission and leaderboard tests)."""

from __future__ import annotations

from pathlib import Path

from scibench_data.scoring.mllog import BenchmarkLog


def run_folder(path: Path, benchmark: str, scores: dict, synthetic: bool = True) -> Path:
    with BenchmarkLog(path / "result-0.txt", benchmark) as log:
        log.start("init_start")
        log.event("data_synthetic", synthetic)
        log.end("init_stop")
        log.start("run_start")
        with log.interval("staging"):
            pass
        log.event("result", scores)
        log.end("run_stop", metadata={"status": "success"})
    return path
