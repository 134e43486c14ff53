"""MLCommons Science submissions: write the ``{organization}/{benchmark}/{system}/{descriptor}/``
folder and validate one.

A submission folder holds:

- ``result-N.txt`` (N = 0, 1, ...): one MLPerf ``mllog`` file per run, with the
  ``submission_*`` keys, ``init_start/stop``, ``run_start/stop``, ``staging_start/stop``
  (data staging counts toward the time to solution, so it lies inside the run) and a
  ``result`` event whose value maps metric names to scores;
- ``predictions-N.npz`` or ``predictions-N.zarr`` (optional): the run's test-split
  predictions in the benchmark's format, from which validation recomputes the scores;
- ``config.yaml``: ``benchmark``, ``organization``, ``system``, ``descriptor``,
  ``code: {repository, version}``, ``data: {entry, retrieval: [commands]}``, ``run: [commands]``;
- ``README.md``: what was run, on what, how to reproduce it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scibench_data import __version__
from scibench_data.datasets.base import import_function
from scibench_data.registry import REGISTRY, get
from scibench_data.scoring.mllog import BenchmarkLog, check_compliance, read_events

SUBMISSION_KEYS = ("submission_benchmark", "submission_org", "submission_division", "submission_version",
                   "submission_status", "submission_platform")
INTERVALS = ("init", "run", "staging")
REQUIRED_KEYS = (*SUBMISSION_KEYS, *(f"{i}_{e}" for i in INTERVALS for e in ("start", "stop")), "result")
REQUIRED_FILES = ("config.yaml", "README.md")
RESULT_RE = re.compile(r"^result-(\d+)\.txt$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
RTOL = 1e-6


def _result_number(path: Path) -> int:
    """N of a ``result-N.txt`` (only called on names that match :data:`RESULT_RE`)."""
    m = RESULT_RE.match(path.name)
    if m is None:
        raise ValueError(f"{path}: not a result-N.txt file")
    return int(m.group(1))


def _name(kind: str, value: str) -> str:
    if not NAME_RE.match(value or ""):
        raise ValueError(f"{kind} must be letters, digits, '.', '_', '+' or '-' (a folder name), got {value!r}")
    return value


@dataclass(frozen=True)
class SubmissionInfo:
    """Who ran what, where, with which code, and how the data was retrieved."""

    organization: str
    benchmark: str
    system: str
    descriptor: str
    code_version: str
    code_repository: str = ""
    data_retrieval: tuple[str, ...] = ()
    run_commands: tuple[str, ...] = ()
    division: str = "open"
    status: str = "research"
    notes: str = ""
    synthetic: bool = False

    def __post_init__(self) -> None:
        for kind in ("organization", "system", "descriptor"):
            _name(kind, getattr(self, kind))
        get(self.benchmark)  # raises for an unknown benchmark
        if not self.code_version:
            raise ValueError("code_version is required (a git commit or a release)")
        if not self.data_retrieval:
            raise ValueError("data_retrieval needs at least one command (how the data was obtained)")
        object.__setattr__(self, "data_retrieval", tuple(self.data_retrieval))
        object.__setattr__(self, "run_commands", tuple(self.run_commands))

    @property
    def relative_dir(self) -> Path:
        return Path(self.organization, self.benchmark, self.system, self.descriptor)

    def config(self) -> dict:
        return {"benchmark": self.benchmark, "organization": self.organization, "system": self.system,
                "descriptor": self.descriptor, "division": self.division, "status": self.status,
                "code": {"repository": self.code_repository or code_repository(), "version": self.code_version},
                "data": {"entry": get(self.benchmark).entry, "retrieval": list(self.data_retrieval),
                         **({"synthetic": True} if self.synthetic else {})},
                "run": list(self.run_commands)}


def default_retrieval(benchmark: str) -> tuple[str, ...]:
    """The commands that fetch a benchmark's published store with this toolkit."""
    entry = get(benchmark).entry
    return (f"scibench-data pull {entry} --to $SCIBENCH_DATA_ROOT", f"scibench-data verify --store "
            f"$SCIBENCH_DATA_ROOT/{entry}.zarr")


def code_version() -> str:
    """``scibench-data <version>`` plus the git commit of this checkout when there is one."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"scibench-data {__version__}" + (f" (git {sha})" if sha else "")


def code_repository() -> str:
    """The ``origin`` remote of this checkout, else a plain description."""
    try:
        url = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        url = ""
    return url or "scibench-data (local checkout, no git remote)"


def result_log(path: str | Path, info: SubmissionInfo, platform: str | None = None) -> BenchmarkLog:
    """An mllog for one run of a submission (the ``submission_*`` keys of ``info``); log ``init``,
    ``run`` and ``staging`` intervals and ``result`` through it, then close it."""
    return BenchmarkLog(path, info.benchmark, org=info.organization, division=info.division, status=info.status,
                        system=platform or info.system)


def readme(info: SubmissionInfo, scores: Sequence[Mapping[str, float]] = ()) -> str:
    b = get(info.benchmark)
    lines = [f"# {b.title}: {info.organization} / {info.system} / {info.descriptor}", "",
             f"Benchmark `{b.name}` (catalog entry `{b.entry}`, test split `{b.test_split}`), division "
             f"{info.division}, status {info.status}. Code: {info.code_repository} at {info.code_version}.", ""]
    if info.synthetic:
        lines += ["**Synthetic data**: this run used data generated by scibench-data, not the benchmark's real "
                  "data; its scores are not comparable with real-data submissions.", ""]
    if info.notes:
        lines += [info.notes, ""]
    if scores:
        names = [m.name for m in b.metrics]
        lines += ["| run | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for i, s in enumerate(scores):
            lines.append(f"| {i} | " + " | ".join(f"{s.get(n, float('nan')):.4f}" for n in names) + " |")
        lines.append("")
    lines += ["## Reproduce", "", "Data:", "", "```", *info.data_retrieval, "```", ""]
    if info.run_commands:
        lines += ["Run:", "", "```", *info.run_commands, "```", ""]
    lines += ["Validate: `scibench-data submission validate .`", ""]
    return "\n".join(lines)


def write_submission(root: str | Path, info: SubmissionInfo, logs: Sequence[str | Path],
                     predictions: Sequence[str | Path | None] = ()) -> Path:
    """Create ``root/{organization}/{benchmark}/{system}/{descriptor}/`` with ``result-N.txt`` (copies of
    ``logs``), ``predictions-N.*`` (where given), ``config.yaml`` and ``README.md``; returns the folder."""
    if not logs:
        raise ValueError("a submission needs at least one result log")
    if predictions and len(predictions) != len(logs):
        raise ValueError(f"{len(predictions)} prediction files for {len(logs)} result logs")
    dest = Path(root) / info.relative_dir
    dest.mkdir(parents=True, exist_ok=True)
    scores = []
    for n, log in enumerate(logs):
        read_events(log)  # refuse a malformed log before copying it
        shutil.copyfile(log, dest / f"result-{n}.txt")
        result = [e for e in read_events(log) if e["key"] == "result"]
        scores.append(result[-1]["value"] if result and isinstance(result[-1]["value"], dict) else {})
    for n, p in enumerate(predictions):
        if p is None:
            continue
        p = Path(p)
        target = dest / f"predictions-{n}{'.npz' if p.suffix == '.npz' else '.zarr'}"
        if p.is_dir():
            shutil.copytree(p, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(p, target)
    (dest / "config.yaml").write_text(yaml.safe_dump(info.config(), sort_keys=False))
    (dest / "README.md").write_text(readme(info, scores))
    return dest


#: The ``scibench-data`` data set name of each benchmark's commands (``run uno`` for ``candle_uno``).
COMMAND_NAME = {b.name: b.command for b in REGISTRY.values()}
#: The model file a run folder holds, per benchmark.
RUN_MODEL = {b.name: b.run_model for b in REGISTRY.values()}


class SubmissionExistsError(FileExistsError):
    """A submission folder that is already there (``--force`` replaces one of the same benchmark)."""


def run_benchmark(run_dir: str | Path) -> tuple[Path, list[dict], str, bool]:
    """A run folder's ``result-0.txt``, its events, its benchmark and whether its data was synthetic."""
    run_dir = Path(run_dir)
    log = run_dir / "result-0.txt"
    if not log.is_file():
        raise FileNotFoundError(f"{run_dir}: no result-0.txt (not a 'scibench-data run ...' output folder)")
    events = read_events(log)
    bench = next((e["value"] for e in events if e["key"] == "submission_benchmark"), None)
    if bench not in REGISTRY:
        raise ValueError(f"{log}: submission_benchmark {bench!r} is not a benchmark ({', '.join(REGISTRY)})")
    synthetic = any(e["key"] == "data_synthetic" and e["value"] for e in events)
    return log, events, str(bench), synthetic


def predict_run(run_dir: str | Path, benchmark: str, out: str | Path, root: str | None = None) -> Path:
    """Test-split predictions of a run folder's model, in ``benchmark``'s prediction format."""
    model = Path(run_dir) / RUN_MODEL[benchmark]
    if not model.is_file():
        raise FileNotFoundError(f"{run_dir}: no {model.name} to predict with")
    b = get(benchmark)
    return import_function(b.predict, f"benchmark {b.name} predict")(model, out, root)


def _refuse_overwrite(dest: Path, benchmark: str, force: bool) -> None:
    if not dest.exists():
        return
    theirs = None
    if (dest / "config.yaml").is_file():
        try:
            theirs = (yaml.safe_load((dest / "config.yaml").read_text()) or {}).get("benchmark")
        except yaml.YAMLError:
            theirs = "?"
    for log in dest.glob("result-*.txt"):
        try:
            theirs = theirs or next((e["value"] for e in read_events(log) if e["key"] == "submission_benchmark"), None)
        except ValueError:
            continue
    if theirs and theirs != benchmark:
        raise SubmissionExistsError(f"{dest} holds a {theirs} submission; a {benchmark} run never replaces it")
    if not force:
        raise SubmissionExistsError(f"{dest} already exists; pass --force to replace it")
    shutil.rmtree(dest)


def from_run(run_dir: str | Path, root: str | Path, system: str, descriptor: str, organization: str | None = None,
             predictions: str | Path | None = None, data_root: str | None = None, force: bool = False,
             predict: bool = False) -> Path:
    """A submission from a ``scibench-data run {cloudmask,stemdl,uno}`` output folder: its ``result-0.txt``
    and its test predictions (``predictions-{benchmark}.npz``, or made with the run's model when
    ``predict``). The benchmark is the log's; an existing folder is replaced only with ``force``, and
    never one of another benchmark. Synthetic runs say so in ``config.yaml`` and the README."""
    run_dir = Path(run_dir)
    log, events, benchmark, synthetic = run_benchmark(run_dir)
    logged = next((e["value"] for e in events if e["key"] == "submission_org"), None)
    if organization and logged and organization != logged:
        raise ValueError(f"{log}: its submission_org is {logged!r}, not {organization!r} (the log is copied as it is)")
    org = organization or logged
    if org is None:
        raise ValueError(f"{log}: no submission_org event; pass organization")
    cli = COMMAND_NAME[benchmark]
    root_opt = f" --root {data_root}" if data_root else ""
    retrieval = (f"scibench-data run {cli}{root_opt}  # synthetic data, generated locally",) if synthetic \
        else default_retrieval(benchmark)
    info = SubmissionInfo(organization=str(org), benchmark=benchmark, system=system, descriptor=descriptor,
                          code_version=code_version(), data_retrieval=retrieval,
                          run_commands=(f"scibench-data run {cli}{root_opt}",), synthetic=synthetic,
                          notes=f"From the run folder {run_dir.name}." + (
                              " Synthetic data: not comparable with runs on the benchmark's real data."
                              if synthetic else ""))
    dest = Path(root) / info.relative_dir
    _refuse_overwrite(dest, benchmark, force)
    if predictions is None:
        # the pipelines import the catalog (intake): only from-run needs them
        from scibench_data.pipelines import predictions_path

        found = predictions_path(run_dir, benchmark)
        if predict:
            predictions = predict_run(run_dir, benchmark, found, data_root)
        elif found.is_file():
            predictions = found
    return write_submission(root, info, [log], [predictions] if predictions else ())


def from_cloudmask_run(run_dir: str | Path, root: str | Path, system: str, descriptor: str,
                       organization: str | None = None, predictions: str | Path | None = None,
                       data_root: str | None = None) -> Path:
    """:func:`from_run` for a CloudMask run folder (kept for existing callers)."""
    if run_benchmark(run_dir)[2] != "cloudmask":
        raise ValueError(f"{run_dir}: not a CloudMask run folder")
    return from_run(run_dir, root, system, descriptor, organization, predictions, data_root)


def predict_cloudmask_run(run_dir: str | Path, out: str | Path, root: str | None = None) -> Path:
    """Test-split predictions of a CloudMask run's ``model.pt``, saved in the prediction format."""
    return predict_run(run_dir, "cloudmask", out, root)


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a submission: the file concerned and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class RunRecord:
    """One parsed, well-formed ``result-N.txt``."""

    path: Path
    events: tuple[dict, ...]
    scores: dict[str, float]
    time_to_solution_s: float | None
    staging_s: float | None


@dataclass
class Validation:
    folder: Path
    problems: list[Problem] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    rescored: list[str] = field(default_factory=list)
    benchmark: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path: str | Path, message: str) -> None:
        self.problems.append(Problem(str(path), message))

    def lines(self) -> list[str]:
        if self.ok:
            extra = f"; scores recomputed from {', '.join(self.rescored)}" if self.rescored else ""
            return [f"{self.folder}: valid submission ({len(self.runs)} run(s){extra})"]
        return [str(p) for p in self.problems]


def _first(events: Sequence[dict], key: str) -> dict | None:
    return next((e for e in events if e["key"] == key), None)


def _interval_ms(events: Sequence[dict], name: str) -> float | None:
    start, stop = _first(events, f"{name}_start"), _first(events, f"{name}_stop")
    if start is None or stop is None:
        return None
    return float(stop["time_ms"]) - float(start["time_ms"])


def parse_result(path: Path, v: Validation, benchmark: str | None) -> RunRecord | None:
    """Check one result log: well-formed, required keys, consistent timings, a result with the benchmark's
    metrics. Problems go to ``v``; returns the record when the log can be used."""
    try:
        events = read_events(path)
    except (ValueError, OSError) as err:
        msg = str(err)
        where, _, what = msg.partition(": ")  # read_events names "file:line"
        v.add(where, what) if msg.startswith(str(path)) and what else v.add(path, msg)
        return None
    n_problems = len(v.problems)
    present = {e["key"] for e in events}
    missing = [k for k in REQUIRED_KEYS if k not in present]
    if missing:
        v.add(path, f"missing required mllog key(s): {', '.join(missing)}")
    bench_ev = _first(events, "submission_benchmark")
    if bench_ev and benchmark and bench_ev["value"] != benchmark:
        v.add(path, f"submission_benchmark is {bench_ev['value']!r} but the folder is for {benchmark!r}")
    for name in INTERVALS:
        dt = _interval_ms(events, name)
        if dt is not None and dt < 0:
            v.add(path, f"{name}_stop is before {name}_start")
    run_start, run_stop = _first(events, "run_start"), _first(events, "run_stop")
    st_start, st_stop = _first(events, "staging_start"), _first(events, "staging_stop")
    if run_start and run_stop and st_start and st_stop and not (
            run_start["time_ms"] <= st_start["time_ms"] <= st_stop["time_ms"] <= run_stop["time_ms"]):
        v.add(path, "data staging must lie inside run_start..run_stop (staging counts toward the benchmark time)")
    result = [e for e in events if e["key"] == "result"]
    scores: dict[str, float] = {}
    if result:
        value = result[-1]["value"]
        b = REGISTRY.get(benchmark or "")
        if not isinstance(value, dict):
            v.add(path, f"result must map metric names to numbers, got {value!r}")
        else:
            bad = {k: x for k, x in value.items() if not isinstance(x, (int, float)) or isinstance(x, bool)}
            if bad:
                v.add(path, f"result has non-numeric score(s): {bad}")
            scores = {k: float(x) for k, x in value.items() if k not in bad}
            if b is not None and b.primary not in value:
                v.add(path, f"result lacks the primary metric {b.primary!r} of {b.name}")
    if len(v.problems) == n_problems and benchmark in REGISTRY:  # ours pass: the maintained checker on top
        for problem in check_compliance(path, benchmark):
            v.add(path, problem)
    run_ms = _interval_ms(events, "run")
    staging_ms = _interval_ms(events, "staging")
    return RunRecord(path, tuple(events), scores, None if run_ms is None else run_ms / 1000,
                     None if staging_ms is None else staging_ms / 1000)


def _check_config(folder: Path, v: Validation, parts: dict[str, str]) -> None:
    path = folder / "config.yaml"
    if not path.is_file():
        return
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        v.add(path, f"not valid YAML ({str(err).splitlines()[0]})")
        return
    if not isinstance(cfg, dict):
        v.add(path, "must be a mapping")
        return
    code = cfg.get("code")
    if not isinstance(code, dict) or not code.get("version"):
        v.add(path, "code.version is required (the code version that produced the results)")
    data = cfg.get("data")
    retrieval = data.get("retrieval") if isinstance(data, dict) else None
    if not isinstance(retrieval, list) or not retrieval or not all(isinstance(c, str) and c for c in retrieval):
        v.add(path, "data.retrieval must list the commands that retrieve the data")
    for key, expected in parts.items():
        if key in cfg and str(cfg[key]) != expected:
            v.add(path, f"{key} is {cfg[key]!r} but the folder layout says {expected!r}")


def _prediction_file(folder: Path, n: int) -> Path | None:
    for suffix in (".npz", ".zarr"):
        p = folder / f"predictions-{n}{suffix}"
        if p.exists():
            return p
    return None


def validate(folder: str | Path, root: str | None = None, rescore: bool = True) -> Validation:
    """Check a submission folder ``.../{organization}/{benchmark}/{system}/{descriptor}``; every problem is
    one :class:`Problem`. With ``rescore``, scores are recomputed from ``predictions-N.*`` against the
    catalog's ground truth (under ``root``) and compared with the logged ``result``."""
    folder = Path(folder)
    v = Validation(folder)
    if not folder.is_dir():
        v.add(folder, "not a folder")
        return v
    resolved = folder.resolve()
    parents = resolved.parts[-4:]
    parts: dict[str, str] = {}
    if len(parents) == 4:
        parts = dict(zip(("organization", "benchmark", "system", "descriptor"), parents))
    benchmark = parts.get("benchmark")
    if benchmark not in REGISTRY:
        v.add(folder, f"not in the {{organization}}/{{benchmark}}/{{system}}/{{descriptor}} layout: "
                      f"{benchmark!r} is not a benchmark ({', '.join(REGISTRY)})")
        benchmark = None
    v.benchmark = benchmark
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            v.add(folder / name, "required file is missing")
    results = sorted((p for p in folder.iterdir() if RESULT_RE.match(p.name)), key=_result_number)
    if not results:
        v.add(folder / "result-0.txt", "required file is missing (no result-N.txt)")
    numbers = [_result_number(p) for p in results]
    if numbers != list(range(len(numbers))):
        v.add(folder, f"result files must be numbered 0..{len(numbers) - 1}, found {numbers}")
    _check_config(folder, v, {k: parts[k] for k in ("benchmark", "organization", "system", "descriptor")
                               if k in parts})
    for path in results:
        rec = parse_result(path, v, benchmark)
        if rec is None:
            continue
        v.runs.append(rec)
        org = _first(rec.events, "submission_org")
        if org and parts.get("organization") and org["value"] != parts["organization"]:
            v.add(path, f"submission_org is {org['value']!r} but the folder is {parts['organization']!r}")
        n = _result_number(path)
        pred = _prediction_file(folder, n)
        if pred is not None and rescore and benchmark:
            _rescore(pred, rec, benchmark, root, v)
    return v


def _rescore(pred: Path, rec: RunRecord, benchmark: str, root: str | None, v: Validation) -> None:
    # scoring imports Dask and xarray (~1 s): validate --no-rescore and the leaderboard's checks do without
    from scibench_data.scoring.predictions import score_predictions

    try:
        result = score_predictions(benchmark, pred, root=root)
    except FileNotFoundError as err:
        v.add(pred, f"cannot recompute the scores: {err} (pass --root, or --no-rescore)")
        return
    except ValueError as err:
        v.add(pred, str(err).removeprefix(f"{pred}: "))
        return
    v.rescored.append(pred.name)
    for name, value in result.scores.items():
        logged = rec.scores.get(name)
        if logged is None:
            continue
        if not math.isclose(logged, value, rel_tol=RTOL, abs_tol=1e-9) and not (math.isnan(logged) and math.isnan(value)):
            v.add(rec.path, f"logged {name} {logged:.6g} does not match {value:.6g} recomputed from {pred.name}")


def summary_json(v: Validation) -> str:
    return json.dumps({"folder": str(v.folder), "ok": v.ok, "problems": [str(p) for p in v.problems],
                       "runs": len(v.runs), "rescored": v.rescored}, indent=2)


def find_submissions(root: str | Path) -> list[Path]:
    """Every folder ``root/{organization}/{benchmark}/{system}/{descriptor}`` that holds a result log."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such submissions folder")
    return sorted({p.parent for p in root.glob("*/*/*/*/result-*.txt")})


def write_run_log(path: str | Path, info: SubmissionInfo, evaluate: Callable[[], tuple[Mapping[str, float], int]],
                  staging: Callable[[], Any] | None = None, platform: str | None = None) -> dict[str, float]:
    """Log one run: ``staging()`` (data staging, inside the run) then ``evaluate()``, which returns
    ``(scores, eval_samples)``; the scores are logged as the ``result``. Returns the scores."""
    with result_log(path, info, platform) as log:
        log.start("init_start")
        log.end("init_stop")
        log.start("run_start")
        with log.interval("staging"):
            if staging is not None:
                staging()
        with log.interval("eval"):
            scores, n = evaluate()
            log.event("eval_samples", int(n))
        log.event("result", {k: float(v) for k, v in scores.items()})
        log.end("run_stop", metadata={"status": "success"})
    return dict(scores)
