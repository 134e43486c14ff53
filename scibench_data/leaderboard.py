"""A leaderboard from a repository of submissions: a Markdown table and a static HTML page
with one plot per benchmark (primary score vs time to solution), reference rows included.

Each submission folder (``{organization}/{benchmark}/{system}/{descriptor}``) is validated
without rescoring; invalid ones are listed with their problems, not ranked. Submissions on
synthetic data (``data.synthetic`` in ``config.yaml``, or ``data_synthetic`` in a log) are
marked and, by default, listed after the ranking instead of in it.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from scibench_data.registry import REGISTRY, Benchmark, get
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
    synthetic: bool = False


def _mean(values: Sequence[float | None]) -> float | None:
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


def _synthetic(folder: Path, events: list[dict]) -> bool:
    """Whether a submission says its data was synthetic (config.yaml or its logs)."""
    try:
        cfg = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    data = cfg.get("data") if isinstance(cfg, dict) else None
    if isinstance(data, dict) and data.get("synthetic"):
        return True
    return any(e["key"] == "data_synthetic" and e["value"] for e in events)


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
                        str(folder.relative_to(submissions)),
                        _synthetic(folder, [e for r in v.runs for e in r.events])))
    return rows, problems


def ranked(rows: list[Row], benchmark: Benchmark, include_synthetic: bool = False) -> list[Row]:
    """Rows of one benchmark, best primary score first (rows without one last); synthetic-data rows
    after all the others unless ``include_synthetic``."""
    sign = -1 if benchmark.primary_metric.higher_is_better else 1
    mine = [r for r in rows if r.benchmark == benchmark.name]
    return sorted(mine, key=lambda r: (r.synthetic and not include_synthetic, benchmark.primary not in r.scores,
                                       sign * r.scores.get(benchmark.primary, 0.0), r.reference))


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _time(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


#: Columns holding text (left-aligned, header and cells alike); the others hold numbers (right-aligned).
TEXT_COLUMNS = (1, 2, 3)
#: The one row of a benchmark with neither submissions nor published values.
EMPTY = "no submissions and no published reference values yet"
#: The rank cell of rows that are not ranked.
REFERENCE, SYNTHETIC = "ref", "synthetic"


def table_rows(rows: list[Row], b: Benchmark,
               include_synthetic: bool = False) -> tuple[list[str], list[list[str]], list[Row]]:
    """Header, cells and the row behind each line of one benchmark's table."""
    header = ["rank", "organization", "system", "descriptor", *[f"{m.name} ({'↑' if m.higher_is_better else '↓'})"
                                                                for m in b.metrics], "time to solution (s)", "runs"]
    body, order, rank = [], ranked(rows, b, include_synthetic), 0
    for r in order:
        if r.reference:
            cell = REFERENCE
        elif r.synthetic and not include_synthetic:
            cell = SYNTHETIC
        else:
            rank += 1
            cell = str(rank)
        descriptor = r.descriptor + (" (synthetic data)" if r.synthetic else "")
        body.append([cell, r.organization, r.system, descriptor,
                     *[_fmt(r.scores.get(m.name)) for m in b.metrics], _time(r.time_to_solution_s),
                     str(r.runs) if not r.reference else "-"])
    return header, body, order


def _link(row: Row, submissions: str | Path | None, out: str | Path | None) -> str | None:
    """A relative link from the page's folder to a submission's folder."""
    if row.reference or not row.path or submissions is None or out is None:
        return None
    return os.path.relpath(Path(submissions) / row.path, Path(out)).replace(os.sep, "/") + "/"


def _no_plot_line(rows: list[Row], b: Benchmark) -> str:
    refs = ", ".join(f"{r.organization} {r.descriptor} {r.scores[b.primary]:.3f}" for r in rows
                     if r.benchmark == b.name and r.reference and b.primary in r.scores)
    return f"No submission with a time to solution yet{f' (reference: {refs})' if refs else ''}."


def markdown(rows: list[Row], problems: Sequence[str] = (), plots: dict | None = None, submissions: str | Path | None = None,
             out_dir: str | Path | None = None, include_synthetic: bool = False) -> str:
    out = ["# scibench-data leaderboard", ""]
    for b in REGISTRY.values():
        header, body, order = table_rows(rows, b, include_synthetic)
        for cells, r in zip(body, order):
            link = _link(r, submissions, out_dir)
            if link:
                cells[3] = f"[{cells[3]}]({link})"
        target = "no published target" if b.target is None else f"target {b.primary} {b.target}"
        out += [f"## {b.title}", "", f"Benchmark `{b.name}`, primary metric `{b.primary}` ({target}); "
                f"time to solution includes data staging.", "",
                "| " + " | ".join(header) + " |",
                "|" + "|".join(":---" if i in TEXT_COLUMNS else "---:" for i in range(len(header))) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        if not body:
            out.append("| - | " + EMPTY + " |" + " |" * (len(header) - 2))
        if plots is None or b.name in plots:
            out += ["", f"![{b.name}]({b.name}.png)", ""]
        else:
            out += ["", _no_plot_line(rows, b), ""]
    if problems:
        out += ["## Submissions not ranked (invalid)", "", *[f"- {p}" for p in problems], ""]
    return "\n".join(out)


def plot(rows: list[Row], b: Benchmark, path: str | Path) -> Path | None:
    """Primary score vs time to solution of one benchmark (PNG), references without a time as lines,
    every line and point inside the axes; None (no picture) when no row has a time."""
    # matplotlib costs seconds to import; only the plots need it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in rows if r.benchmark == b.name and b.primary in r.scores]
    timed = [r for r in mine if r.time_to_solution_s is not None]
    if not timed:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for r in timed:
        marker, colour = ("*", "tab:red") if r.reference else ("s", "tab:grey") if r.synthetic else ("o", "tab:blue")
        ax.scatter(float(r.time_to_solution_s or 0.0), r.scores[b.primary], marker=marker, color=colour, s=60, zorder=3)
        ax.annotate(f"{r.organization}/{r.system}" + (" (synthetic)" if r.synthetic else ""),
                    (r.time_to_solution_s, r.scores[b.primary]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    for r in mine:
        if r.time_to_solution_s is None:
            style = "--" if r.organization == "MLCommons" else ":"
            ax.axhline(r.scores[b.primary], color="tab:red", linestyle=style, linewidth=1,
                       label=f"{r.organization} {r.descriptor}: {r.scores[b.primary]:.3f}")
    ax.set_ylim(*value_limits([r.scores[b.primary] for r in mine]))
    times = [r.time_to_solution_s for r in timed if r.time_to_solution_s and r.time_to_solution_s > 0]
    if times and max(times) / min(times) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("time to solution (s, data staging included)")
    ax.set_ylabel(f"{b.primary} ({'higher' if b.primary_metric.higher_is_better else 'lower'} is better)")
    ax.set_title(b.title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def value_limits(values: list[float], margin: float = 0.08) -> tuple[float, float]:
    """Y limits holding every value (points and reference lines) with a margin on both sides (pure)."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * margin if hi > lo else max(abs(hi) * margin, 0.01)
    return lo - pad, hi + pad


def html_page(rows: list[Row], problems: Sequence[str] = (), plots: dict | None = None,
              submissions: str | Path | None = None, out_dir: str | Path | None = None,
              include_synthetic: bool = False) -> str:
    align = "".join(f"td:nth-child({i + 1}),th:nth-child({i + 1}){{text-align:left}}" for i in TEXT_COLUMNS)
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>scibench-data leaderboard</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}tr.ref{color:#a00;font-style:italic}"
             f"tr.synthetic{{color:#777}}{align}</style></head><body>",
             "<h1>scibench-data leaderboard</h1>",
             "<p>Time to solution includes data staging. Reference rows in red; runs on synthetic data in grey, "
             + ("ranked with the others." if include_synthetic else "not ranked.") + "</p>"]
    for b in REGISTRY.values():
        header, body, order = table_rows(rows, b, include_synthetic)
        parts += [f"<h2>{html.escape(b.title)}</h2>", "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                  + "</tr>"]
        for row, r in zip(body, order):
            cls = ' class="ref"' if r.reference else ' class="synthetic"' if r.synthetic else ""
            cells = [html.escape(c) for c in row]
            link = _link(r, submissions, out_dir)
            if link:
                cells[3] = f'<a href="{html.escape(link)}">{cells[3]}</a>'
            parts.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        if not body:
            parts.append(f'<tr class="empty"><td>-</td><td colspan="{len(header) - 1}">{EMPTY}</td></tr>')
        parts.append("</table>")
        if plots is None or b.name in plots:
            parts.append(f'<p><img src="{b.name}.png" alt="{b.name}: {b.primary} vs time to solution"></p>')
        else:
            parts.append(f"<p class=\"no-plot\">{html.escape(_no_plot_line(rows, b))}</p>")
    if problems:
        parts += ["<h2>Submissions not ranked (invalid)</h2>", "<ul>"]
        parts += [f"<li>{html.escape(p)}</li>" for p in problems]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render(submissions: str | Path, out: str | Path, include_synthetic: bool = False) -> dict[str, Path]:
    """Write ``index.md``, ``index.html`` and a ``{benchmark}.png`` for each benchmark with a timed row."""
    rows, problems = collect(submissions)
    rows = rows + reference_rows()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = {b: p for b in REGISTRY if (p := plot(rows, REGISTRY[b], out / f"{b}.png")) is not None}
    written: dict[str, Path] = dict(plots)
    written["markdown"] = out / "index.md"
    written["markdown"].write_text(markdown(rows, problems, plots, submissions, out, include_synthetic))
    written["html"] = out / "index.html"
    written["html"].write_text(html_page(rows, problems, plots, submissions, out, include_synthetic))
    return written
