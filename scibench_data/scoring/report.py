"""Scores as a printed table and a JSON file."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scibench_data.atomic import write_json


def format_table(scores: Mapping[str, float], title: str, target: Mapping[str, float] | None = None) -> str:
    """A plain-text table of metric, value (and target where one exists)."""
    target = target or {}
    width = max([len(k) for k in scores] + [6])
    lines = [title, "-" * (width + 26), f"{'metric':<{width}}  {'value':>10}  {'target':>10}"]
    for k, v in scores.items():
        t = target.get(k)
        ts = f"{t:>10.4f}" if t is not None else f"{'':>10}"
        vs = f"{v:>10.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else f"{v!s:>10}"
        lines.append(f"{k:<{width}}  {vs}  {ts}")
    return "\n".join(lines)


def write_scores(path: str | Path, benchmark: str, scores: Mapping[str, float], **context: Any) -> Path:
    """Write ``{"benchmark", "scores", ...context}`` as JSON; returns the path."""
    return write_json(path, {"benchmark": benchmark, "scores": dict(scores), **context})
