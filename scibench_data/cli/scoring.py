"""``benchmarks``, ``score``, ``submission validate|create|from-run`` and ``leaderboard``.

The data stack is imported inside the commands: ``--help`` stays fast."""

from __future__ import annotations

import argparse

from scibench_data.cli.common import add_root


def _benchmarks(args: argparse.Namespace) -> int:
    from scibench_data.registry import describe

    print(describe(args.root), end="")
    return 0


def _score(args: argparse.Namespace) -> int:
    from scibench_data.registry import get
    from scibench_data.scoring.predictions import score_predictions
    from scibench_data.scoring.report import format_table, write_scores

    b = get(args.benchmark)
    result = score_predictions(b, args.predictions, root=args.root, backend=args.backend)
    target = {b.primary: b.target} if b.target is not None else None
    print(format_table(result.scores, f"{b.name}: {args.predictions} ({result.split} split of {result.entry}, "
                                      f"{result.n_samples} samples)", target))
    if args.json:
        write_scores(args.json, b.name, result.scores, entry=result.entry, split=result.split,
                     n_samples=result.n_samples, predictions=result.predictions)
        print(f"scores written to {args.json}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from scibench_data.submission import summary_json, validate

    v = validate(args.folder, root=args.root, rescore=args.rescore)
    print(summary_json(v) if args.json else "\n".join(v.lines()))
    return 0 if v.ok else 1


def _create(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from scibench_data.registry import get
    from scibench_data.scoring.predictions import open_entry, score_predictions
    from scibench_data.submission import (
        SubmissionInfo,
        code_version,
        default_retrieval,
        write_run_log,
        write_submission,
    )

    b = get(args.benchmark)
    info = SubmissionInfo(organization=args.org, benchmark=b.name, system=args.system, descriptor=args.descriptor,
                          code_version=args.code_version or code_version(),
                          data_retrieval=tuple(args.retrieval or default_retrieval(b.name)),
                          run_commands=tuple(args.run or ()), division=args.division, status=args.status)
    staged: dict = {}

    def staging() -> None:
        staged["ds"] = open_entry(b, args.root)

    def evaluate() -> tuple[dict, int]:
        r = score_predictions(b, args.predictions, root=args.root, ds=staged["ds"])
        return r.scores, r.n_samples

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "result-0.txt"
        write_run_log(log, info, evaluate, staging)
        dest = write_submission(args.out, info, [log], [args.predictions])
    print(f"submission written to {dest}")
    return 0


def _from_run(args: argparse.Namespace) -> int:
    from scibench_data.submission import from_run

    dest = from_run(args.run_dir, args.out, args.system, args.descriptor, args.org, data_root=args.root,
                    force=args.force, predict=args.predict)
    print(f"submission written to {dest}")
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from scibench_data.leaderboard import render

    written = render(args.submissions, args.out, include_synthetic=args.include_synthetic)
    print(f"leaderboard: {written['html']} and {written['markdown']} (+ {len(written) - 2} plots)")
    return 0


def register(cli) -> None:
    from scibench_data.registry import names

    p = cli.command("benchmarks", _benchmarks, "list the benchmarks: data, splits, metrics, targets, sizes, references")
    add_root(p)

    p = cli.command("score", _score, "score saved predictions (.npz or Zarr) against the catalog's test split")
    p.add_argument("benchmark", choices=names())
    p.add_argument("predictions", help="prediction file in the benchmark's format (docs/benchmarks.md)")
    p.add_argument("--backend", choices=("numpy", "dask"), default="numpy", help="in memory (default) or lazily")
    p.add_argument("--json", default=None, help="also write the scores to this JSON file")
    add_root(p)

    sub = cli.group("submission", "MLCommons Science submission folders: validate, create, from-run")
    p = sub.add_parser("validate", help="check a {organization}/{benchmark}/{system}/{descriptor} folder")
    p.add_argument("folder")
    p.add_argument("--no-rescore", dest="rescore", action="store_false",
                   help="do not recompute scores from predictions-N.* (no data needed)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_root(p)
    p.set_defaults(func=_validate)

    p = sub.add_parser("create", help="score a prediction file and write a submission folder around it")
    p.add_argument("benchmark", choices=names())
    p.add_argument("predictions")
    p.add_argument("--out", required=True, help="submissions root; the folder goes to OUT/ORG/BENCHMARK/SYSTEM/DESCRIPTOR")
    p.add_argument("--org", required=True)
    p.add_argument("--system", required=True)
    p.add_argument("--descriptor", required=True)
    p.add_argument("--division", default="open")
    p.add_argument("--status", default="research")
    p.add_argument("--code-version", default=None, help="default: this package's version and git commit")
    p.add_argument("--retrieval", action="append", help="a data retrieval command (repeat; default: scibench-data pull)")
    p.add_argument("--run", action="append", help="a command that produced the predictions (repeat)")
    add_root(p)
    p.set_defaults(func=_create)

    p = sub.add_parser("from-run", help="a submission from a 'scibench-data run {cloudmask,stemdl,uno}' output folder")
    p.add_argument("run_dir", help="ROOT/outputs/BENCHMARK/run-TIME (the benchmark is its log's)")
    p.add_argument("--out", required=True, help="submissions root")
    p.add_argument("--system", required=True)
    p.add_argument("--descriptor", required=True)
    p.add_argument("--org", default=None, help="default: the log's submission_org")
    p.add_argument("--predict", action="store_true",
                   help="predict the test split with the run's model (default: the run's predictions-BENCHMARK.npz)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing submission folder of the same benchmark (never another benchmark's)")
    add_root(p)
    p.set_defaults(func=_from_run)

    p = cli.command("leaderboard", _leaderboard, "render a leaderboard (Markdown + HTML with plots) from submissions")
    p.add_argument("submissions", help="folder of {organization}/{benchmark}/{system}/{descriptor} submissions")
    p.add_argument("--out", default="leaderboard", help="output folder (default ./leaderboard)")
    p.add_argument("--include-synthetic", action="store_true",
                   help="rank submissions on synthetic data with the others (default: listed apart, unranked)")
