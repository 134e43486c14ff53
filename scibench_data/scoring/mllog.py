"""MLPerf ``mllog`` files in the MLCommons Science conventions, via ``mlperf-logging``.

Each run gets its own log file (``:::MLLOG {...}`` lines) with the
``submission_*`` keys, ``init``/``run``/``staging``/``eval`` intervals and the
result; data staging counts toward benchmark time.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlperf_logging.compliance_checker import mlp_compliance, mlp_parser
from mlperf_logging.mllog import constants as C
from mlperf_logging.mllog.mllog import MLLogger

SUBMISSION_VERSION = "1.0"
#: Frames between a ``with log.interval(...)`` line and mllog's own logging call.
INTERVAL_STACK_OFFSET = 3


class BenchmarkLog:
    """An ``mllog`` logger writing to one file (not the process-wide default logger)."""

    def __init__(self, path: str | Path, benchmark: str, *, org: str = "scibench-data", division: str = "open",
                 status: str = "research", system: str | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._logger = logging.getLogger(f"scibench_data.mllog.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._handler = logging.FileHandler(self.path, mode="w")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(self._handler)
        self._ml = MLLogger(logger=self._logger, default_namespace="", default_stack_offset=2)
        self.event(C.SUBMISSION_BENCHMARK, benchmark)
        self.event(C.SUBMISSION_ORG, org)
        self.event(C.SUBMISSION_DIVISION, division)
        self.event("submission_version", SUBMISSION_VERSION)
        self.event(C.SUBMISSION_STATUS, status)
        self.event(C.SUBMISSION_PLATFORM, system or f"{platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'})")

    def event(self, key: str, value: Any = None, metadata: dict | None = None) -> None:
        self._ml.event(key=key, value=value, metadata=metadata)

    def start(self, key: str, value: Any = None, metadata: dict | None = None) -> None:
        self._ml.start(key=key, value=value, metadata=metadata)

    def end(self, key: str, value: Any = None, metadata: dict | None = None) -> None:
        self._ml.end(key=key, value=value, metadata=metadata)

    @contextmanager
    def interval(self, name: str, metadata: dict | None = None) -> Iterator[None]:
        """``{name}_start`` ... ``{name}_stop`` around a block (events name the caller's line,
        not contextlib's: two more frames to skip)."""
        self._ml.start(key=f"{name}_start", metadata=metadata, stack_offset=INTERVAL_STACK_OFFSET)
        try:
            yield
        finally:
            self._ml.end(key=f"{name}_stop", metadata=metadata, stack_offset=INTERVAL_STACK_OFFSET)

    def close(self) -> None:
        self._handler.close()
        self._logger.removeHandler(self._handler)

    def __enter__(self) -> BenchmarkLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | Path) -> list[dict]:
    """Parse an mllog file; raises ``ValueError`` naming the line that is not a well-formed event."""
    events = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        if not line.startswith(":::MLLOG "):
            raise ValueError(f"{path}:{n}: not an mllog line (must start with ':::MLLOG ')")
        try:
            ev = json.loads(line[len(":::MLLOG "):])
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: malformed JSON ({err.msg})") from err
        missing = {"namespace", "time_ms", "event_type", "key", "value", "metadata"} - set(ev)
        if missing:
            raise ValueError(f"{path}:{n}: event lacks {sorted(missing)}")
        events.append(ev)
    return events


#: mlperf_logging compliance-checker configs: ``common.yaml`` and one ``{benchmark}.yaml`` per benchmark.
COMPLIANCE_DIR = Path(__file__).resolve().parents[1] / "data" / "mllog"
#: The mllog parser's rule set our lines follow.
COMPLIANCE_RULESET = "4.1.0"


def check_compliance(path: str | Path, benchmark: str | None = None) -> list[str]:
    """Problems ``mlperf_logging``'s compliance checker finds in an mllog file, with our configs
    (``scibench_data/data/mllog/common.yaml``, then ``{benchmark}.yaml``); empty when it complies.
    Each problem is one line."""
    checker = mlp_compliance.make_checker("hpc", "3.0.0", quiet=True, werror=False)
    lines, errors = mlp_parser.parse_file(str(path), ruleset=COMPLIANCE_RULESET)
    problems = [f"line {line!s:.60}: {err}" for line, err in errors]
    configs = [COMPLIANCE_DIR / "common.yaml"]
    if benchmark is not None:
        config = COMPLIANCE_DIR / f"{benchmark}.yaml"
        if not config.is_file():
            raise ValueError(f"no compliance config for benchmark {benchmark!r} in {COMPLIANCE_DIR}")
        configs.append(config)
    for config in configs:
        checker.configured_checks(lines, str(config))
    messages = [*checker.overwritable.values(), *checker.not_overwritable]
    return problems + [_one_line(m) for m in messages]


def _one_line(message: str) -> str:
    """A compliance-checker message on one line: what failed and which test, without the log line and state."""
    lines = message.splitlines()
    test = next((ln.strip() for ln in lines if ln.startswith("failed test:")), "")
    return f"mlperf compliance: {lines[0].rstrip(':')}" + (f" ({test})" if test else "")
