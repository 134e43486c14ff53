"""The leaderboard (issue 17, item 6): synthetic runs marked and not ranked, reference lines inside the
axes, one line instead of an empty plot, rows linked to their folders; and the page as a browser
renders it (headless Chromium, Debian's ``chromium``: every image loads, every table renders)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _run_logs import run_folder

from scibench_data.cli import main

CLOUD = {"pixel_accuracy": 0.95, "f1": 0.9, "iou": 0.8, "log_loss": 0.2}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def site(tmp_path) -> Path:
    """Submissions: a synthetic demo run scoring above the target, a real one below it; the page."""
    subs = tmp_path / "subs"
    for run, system in ((run_folder(tmp_path / "demo", "cloudmask", CLOUD, synthetic=True), "laptop"),
                        (run_folder(tmp_path / "real", "cloudmask", {**CLOUD, "pixel_accuracy": 0.85}, False), "cluster")):
        assert main(["submission", "from-run", str(run), "--out", str(subs), "--system", system,
                     "--descriptor", "demo" if system == "laptop" else "real"]) == 0
    assert main(["leaderboard", str(subs), "--out", str(tmp_path / "site")]) == 0
    return tmp_path / "site"


def _cloud_rows(md: str) -> list[str]:
    section = md.split("## CloudMask")[1].split("## ")[0]
    return [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| rank")]


def test_synthetic_demo_run_is_marked_and_not_ranked_above_the_mlcommons_target(site):
    rows = _cloud_rows((site / "index.md").read_text())
    assert [r.split("|")[1].strip() for r in rows] == ["ref", "ref", "1", "synthetic"], rows
    assert "(synthetic data)" in rows[-1] and "laptop" in rows[-1]
    assert 'class="synthetic"' in (site / "index.html").read_text()


def test_synthetic_runs_rank_with_the_others_only_when_asked(site, tmp_path):
    assert main(["leaderboard", str(tmp_path / "subs"), "--out", str(tmp_path / "all"), "--include-synthetic"]) == 0
    rows = _cloud_rows((tmp_path / "all" / "index.md").read_text())
    assert rows[0].startswith("| 1 | scibench-data | laptop") and "(synthetic data)" in rows[0]


def test_reference_line_is_inside_the_axes():
    from scibench_data.leaderboard import value_limits

    lo, hi = value_limits([0.896, 0.9, 0.95, 0.85])
    assert lo < 0.85 and hi > 0.95
    lo, hi = value_limits([0.9])  # a lone reference line: not on an edge either
    assert lo < 0.9 < hi


def test_benchmark_without_submissions_gets_one_line_not_an_empty_plot(site):
    page = (site / "index.html").read_text()
    assert not (site / "stemdl.png").exists() and (site / "cloudmask.png").exists()
    assert page.count('class="no-plot"') == 3 and "No submission with a time to solution yet" in page


def test_rows_link_to_their_submission_folders(site):
    page = (site / "index.html").read_text()
    links = re.findall(r'<a href="([^"]+)">', page)
    assert len(links) == 2
    for link in links:
        assert (site / link / "result-0.txt").is_file(), link


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed (.ci/run installs it with apt-get)")
    return path


#: Appended to a copy of the page: after everything loaded, what the browser made of images and tables.
PROBE = """<script>
window.addEventListener("load", function () {
  var out = {images: [], tables: [], th: [], td: []};
  Array.from(document.images).forEach(function (i) {
    out.images.push({src: i.getAttribute("src"), complete: i.complete, width: i.naturalWidth});
  });
  Array.from(document.querySelectorAll("table")).forEach(function (t) {
    out.tables.push({rows: t.rows.length, height: t.getBoundingClientRect().height,
                     header: t.rows[0].cells.length, cells: t.rows[t.rows.length - 1].cells.length});
    var last = t.rows[t.rows.length - 1];
    for (var c = 0; c < t.rows[0].cells.length && t.rows.length > 1 && last.cells.length > c; c++) {
      out.th.push(getComputedStyle(t.rows[0].cells[c]).textAlign);
      out.td.push(getComputedStyle(last.cells[c]).textAlign);
    }
  });
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.mark.slow
def test_leaderboard_page_renders_in_headless_chromium_every_image_loads_every_table_renders(site, tmp_path):
    page = (site / "index.html").read_text()
    (site / "check.html").write_text(page.replace("</body>", PROBE + "</body>"))
    out = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=10000", "--dump-dom",
                          (site / "check.html").as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', out.stdout, re.DOTALL)
    assert found, (out.returncode, out.stderr[-2000:])
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert [i["src"] for i in result["images"]] == ["cloudmask.png"]
    assert all(i["complete"] and i["width"] == 640 for i in result["images"]), result["images"]
    assert len(result["tables"]) == 4
    assert all(t["rows"] >= 2 and t["height"] > 20 for t in result["tables"]), result["tables"]
    assert result["th"] == result["td"], "header alignment differs from its column's"
