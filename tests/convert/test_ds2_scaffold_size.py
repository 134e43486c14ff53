"""Issue 19, item 5: the scaffold's size as docs/ds2.md states it, and the dry run's full-data-set estimate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scibench_data.convert.cloudmask import (
    DS2_N_SCENES,
    CloudMaskConversion,
    scaffold_cloudmask,
)
from scibench_data.storage.store.location import StoreLocation
from scibench_data.subset.cloudmask import Selection, dry_run

REPO = Path(__file__).resolve().parents[2]
DATA_ARRAYS = ("image", "cloud_mask", "summary_cloud")


@pytest.fixture(scope="module")
def scaffold(cloudmask_raw, tmp_path_factory) -> tuple[Path, list[int]]:
    dest = tmp_path_factory.mktemp("scaffold") / "cloudmask_ds2.zarr"
    report = scaffold_cloudmask(str(cloudmask_raw["sen3"]), str(dest), CloudMaskConversion(layout="sen3",
                                                                                           progress=False))
    assert not report.failed, report.lines()
    return dest, list(report.extra["filled_scenes"])


def _bytes(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def test_scaffold_store_is_its_written_scenes_plus_the_metadata_docs_quote(scaffold):
    """Issue 19: '`scaffold cloudmask_ds2` makes a 189 MB store; docs/ds2.md says a few MB'. The size
    is the written scenes' chunks (~49 MB per full-size scene) plus metadata of all 9800 scenes; the
    page must say so, with the figure this test measures."""
    dest, filled = scaffold
    total = _bytes(dest.rglob("*"))
    data = {v: [p for p in (dest / v / "c").rglob("*") if p.is_file()] for v in DATA_ARRAYS}
    # no data chunk outside the written scenes: the first chunk index is the scene
    assert {int(p.relative_to(dest / v / "c").parts[0]) for v in DATA_ARRAYS for p in data[v]} == set(filled)
    overhead_mb = (total - sum(_bytes(ps) for ps in data.values())) / 1e6
    page = (REPO / "docs" / "ds2.md").read_text()
    said = re.search(r"plus about ([\d.]+) MB of metadata, coordinates and plan for the (\d+) scenes", page)
    assert said, "docs/ds2.md must state the scaffold's size"
    assert int(said.group(2)) == DS2_N_SCENES
    assert 0.5 * float(said.group(1)) <= overhead_mb <= 1.5 * float(said.group(1)), overhead_mb
    assert "the store is a few MB" not in page


def test_dry_run_on_a_scaffold_also_says_what_the_full_data_set_would_decode(scaffold):
    """Issue 19: 'the dry-run estimate also says what the query would decode on the full data set,
    not only the scenes that hold data'."""
    dest, _ = scaffold
    sel = Selection.parse(scenes="0:100", channels="S1,S7", window="0:32,0:48")
    plan, _ = dry_run(StoreLocation(str(dest)), sel)
    assert plan.filled == (0,) and len(plan.scenes) == 100
    by_name = {r.name: r for r in plan.reads}
    full = {r.name: r for r in plan.full_reads}
    for v in DATA_ARRAYS:  # one scene per chunk along `scene`: 100 scenes cost 100x the one with data
        assert full[v].chunks == 100 * by_name[v].chunks
        assert full[v].bytes_decoded == 100 * by_name[v].bytes_decoded
        assert full[v].bytes_selected == 100 * by_name[v].bytes_selected
    lines = plan.lines()
    decoded = sum(r.bytes_decoded for r in plan.full_reads) / 1e6
    assert any(line.startswith("on the full data set (all 100 selected scenes hold data): "
                               f"{sum(r.chunks for r in plan.full_reads)} chunks, {decoded:.1f} MB decoded")
               for line in lines), lines
    assert plan.as_dict()["full_data_set"]["chunks"] == sum(r.chunks for r in plan.full_reads)


def test_dry_run_on_a_complete_store_has_no_separate_full_estimate(cloudmask_stores):
    plan, _ = dry_run(StoreLocation(str(cloudmask_stores["sen3"])), Selection.parse(scenes="0:2"))
    assert plan.filled is None and plan.full_reads is None
    assert not any(line.startswith("on the full data set") for line in plan.lines())
