"""A leaderboard from a repository of submissions: a Markdown table and a static HTML page
with one plot per benchmark (primary score vs time to solution), reference rows included.

Each submission folder (``{organization}/{benchmark}/{system}/{descriptor}``) is validated
without rescoring; invalid ones are listed with their problems, not ranked.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scibench_data.benchmarks import REGISTRY, Benchmark, get
from scibench_data.submission import find_submissions, validate


@dataclass(frozen=True)
class Row:
    """One leaderboard row: mean scores over a submission's runs, or a reference."""

    benchmark: str
    organization: str
    system: str
    descriptor: str
    scores: dict[str, float]
    time_to_solution_s: float | None
    runs: int
    reference: bool = False
    path: str = ""


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def reference_rows() -> list[Row]:
    """One row per benchmark with published reference values (test-set values only)."""
    rows = []
    for b in REGISTRY.values():
        names = {m.name for m in b.metrics}
        scores = {k: float(v) for k, v in b.reference.values if k in names}
        if b.target is not None:
            rows.append(Row(b.name, "MLCommons", "target", f"target {b.primary}", {b.primary: b.target}, None, 0, True,
                            b.reference.source))
        if scores:
            rows.append(Row(b.name, "reference", b.reference.model.split(",")[0], "published", scores,
                            b.reference.time_to_solution_s, 0, True, b.reference.source))
    return rows


def collect(submissions: str | Path) -> tuple[list[Row], list[str]]:
    """Rows of every valid submission under ``submissions`` and the problems of the invalid ones."""
    rows, problems = [], []
    for folder in find_submissions(submissions):
        v = validate(folder, rescore=False)
        if not v.ok:
            problems += [str(p) for p in v.problems]
            continue
        org, bench, system, descriptor = folder.parts[-4:]
        names = [m.name for m in get(bench).metrics]
        scores = {n: _mean([r.scores.get(n, float("nan")) for r in v.runs]) for n in names}
        rows.append(Row(bench, org, system, descriptor, {k: x for k, x in scores.items() if x is not None},
                        _mean([r.time_to_solution_s for r in v.runs]), len(v.runs), False,
                        str(folder.relative_to(submissions))))
    return rows, problems


def ranked(rows: list[Row], benchmark: Benchmark) -> list[Row]:
    """Rows of one benchmark, best primary score first (rows without one last)."""
    sign = -1 if benchmark.primary_metric.higher_is_better else 1
    mine = [r for r in rows if r.benchmark == benchmark.name]
    return sorted(mine, key=lambda r: (benchmark.primary not in r.scores,
                                       sign * r.scores.get(benchmark.primary, 0.0), r.reference))


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _time(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def table_rows(rows: list[Row], b: Benchmark) -> tuple[list[str], list[list[str]]]:
    header = ["rank", "organization", "system", "descriptor", *[f"{m.name} ({'↑' if m.higher_is_better else '↓'})"
                                                                for m in b.metrics], "time to solution (s)", "runs"]
    body, rank = [], 0
    for r in ranked(rows, b):
        if not r.reference:
            rank += 1
        body.append([str(rank) if not r.reference else "ref", r.organization, r.system, r.descriptor,
                     *[_fmt(r.scores.get(m.name)) for m in b.metrics], _time(r.time_to_solution_s),
                     str(r.runs) if not r.reference else "-"])
    return header, body


def markdown(rows: list[Row], problems: list[str] = ()) -> str:
    out = ["# scibench-data leaderboard", ""]
    for b in REGISTRY.values():
        header, body = table_rows(rows, b)
        target = "no published target" if b.target is None else f"target {b.primary} {b.target}"
        out += [f"## {b.title}", "", f"Benchmark `{b.name}`, primary metric `{b.primary}` ({target}); "
                f"time to solution includes data staging.", "",
                "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        out += ["", f"![{b.name}]({b.name}.png)", ""]
    if problems:
        out += ["## Submissions not ranked (invalid)", "", *[f"- {p}" for p in problems], ""]
    return "\n".join(out)


def plot(rows: list[Row], b: Benchmark, path: str | Path) -> Path:
    """Primary score vs time to solution of one benchmark (PNG); references without a time as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    mine = [r for r in rows if r.benchmark == b.name and b.primary in r.scores]
    timed = [r for r in mine if r.time_to_solution_s is not None]
    for r in timed:
        marker, colour = ("*", "tab:red") if r.reference else ("o", "tab:blue")
        ax.scatter(r.time_to_solution_s, r.scores[b.primary], marker=marker, color=colour, s=60, zorder=3)
        ax.annotate(f"{r.organization}/{r.system}", (r.time_to_solution_s, r.scores[b.primary]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    for r in mine:
        if r.time_to_solution_s is None:
            style = "--" if r.organization == "MLCommons" else ":"
            ax.axhline(r.scores[b.primary], color="tab:red", linestyle=style, linewidth=1,
                       label=f"{r.organization} {r.descriptor}: {r.scores[b.primary]:.3f}")
    times = [r.time_to_solution_s for r in timed if r.time_to_solution_s and r.time_to_solution_s > 0]
    if times and max(times) / min(times) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("time to solution (s, data staging included)")
    ax.set_ylabel(f"{b.primary} ({'higher' if b.primary_metric.higher_is_better else 'lower'} is better)")
    ax.set_title(b.title, fontsize=10)
    if not timed:
        ax.text(0.5, 0.5, "no timed submissions yet", transform=ax.transAxes, ha="center", va="center", color="grey")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def html_page(rows: list[Row], problems: list[str] = ()) -> str:
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>scibench-data leaderboard</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}tr.ref{color:#a00;font-style:italic}"
             "td:nth-child(2),td:nth-child(3),td:nth-child(4){text-align:left}</style></head><body>",
             "<h1>scibench-data leaderboard</h1>",
             "<p>Time to solution includes data staging. Reference rows in red.</p>"]
    for b in REGISTRY.values():
        header, body = table_rows(rows, b)
        parts += [f"<h2>{html.escape(b.title)}</h2>", "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                  + "</tr>"]
        for row in body:
            cls = ' class="ref"' if row[0] == "ref" else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts += ["</table>", f'<p><img src="{b.name}.png" alt="{b.name}: {b.primary} vs time to solution"></p>']
    if problems:
        parts += ["<h2>Submissions not ranked (invalid)</h2>", "<ul>"]
        parts += [f"<li>{html.escape(p)}</li>" for p in problems]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render(submissions: str | Path, out: str | Path) -> dict[str, Path]:
    """Write ``index.md``, ``index.html`` and one ``{benchmark}.png`` per benchmark into ``out``."""
    rows, problems = collect(submissions)
    rows = rows + reference_rows()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {b: plot(rows, REGISTRY[b], out / f"{b}.png") for b in REGISTRY}
    written["markdown"] = out / "index.md"
    written["markdown"].write_text(markdown(rows, problems))
    written["html"] = out / "index.html"
    written["html"].write_text(html_page(rows, problems))
    return written
