"""Subsetting on a store with DS2's full shape (9800 scenes, a few written): the dry run's numbers
are what is read, the subset equals xarray's selection on the source, and opening costs what it
costs for a small store."""

from __future__ import annotations

import collections
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from zarr.storage import LocalStore, WrapperStore

from scibench_data.cli import main
from scibench_data.convert.cloudmask import (
    DS2_N_SCENES,
    CloudMaskConversion,
    scaffold_cloudmask,
    scaffold_slots,
    scaffold_times,
)
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import store_state
from scibench_data.strings import decode_strings
from scibench_data.subset.cloudmask import (
    DATA_VARIABLES,
    Selection,
    SelectionError,
    dry_run,
    plan_subset,
    select,
    write_subset,
)


class CountingStore(WrapperStore):
    """Counts every read request by key (a chunk never written is still one request)."""

    def __init__(self, store) -> None:
        super().__init__(store)
        self.reads: collections.Counter[str] = collections.Counter()

    async def get(self, key, prototype, byte_range=None):
        self.reads[key] += 1
        return await self._store.get(key, prototype, byte_range)

    def _with_store(self, store):
        return CountingStore(store)

    def data_chunk_reads(self) -> int:
        return sum(n for k, n in self.reads.items() if k.split("/")[0] in DATA_VARIABLES and "/c/" in k)


TILE = 32  # a 64x96 scene is 2x3 tiles, so windows cross chunk boundaries


@pytest.fixture(scope="module")
def full_shape(cloudmask_raw, tmp_path_factory) -> Path:
    """A catalog root with cloudmask_ds2.zarr: 9800 scenes, the 3 tiny sen3 products at slots 0, 4900, 9799."""
    root = tmp_path_factory.mktemp("ds2root")
    report = scaffold_cloudmask(str(cloudmask_raw["sen3"]), str(root / "cloudmask_ds2.zarr"),
                                CloudMaskConversion(layout="sen3", tile=TILE, progress=False))
    assert not report.failed and report.extra["filled_scenes"] == [0, 4900, 9799]
    return root


def test_full_shape_store_is_honest_about_what_it_holds(full_shape, cloudmask_stores):
    from scibench_data.catalog import open_catalog

    store = full_shape / "cloudmask_ds2.zarr"
    state = store_state(StoreLocation(str(store)))
    assert state.status == "scaffold" and state.consolidated and not state.complete
    ds = open_catalog(root=str(full_shape)).cloudmask_ds2.to_dask()
    assert ds.sizes == {"scene": DS2_N_SCENES, "channel": 9, "y": 64, "x": 96}
    assert ds.attrs["scibench_filled_scenes"] == [0, 4900, 9799]
    ref = decode_strings(xr.open_zarr(cloudmask_stores["sen3"], consolidated=True))
    np.testing.assert_array_equal(ds["image"][[0, 4900, 9799]].values, ref["image"].values)
    assert np.isnan(ds["image"][1].values).all() and (ds["cloud_mask"][1].values == 255).all()
    assert list(ds["source_sha256"].values[[0, 4900, 9799]]) == list(ref["source_sha256"].values)
    t = ds["time"].values
    assert (np.diff(t) > np.timedelta64(0)).all()  # planned scenes interpolated, strictly increasing
    n_chunk_files = sum(1 for p in (store / "image").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert n_chunk_files == 3 * 2 * 3  # only the written scenes' chunks exist


def test_opening_costs_the_same_as_for_a_small_store(full_shape, cloudmask_stores):
    def open_reads(path: Path) -> collections.Counter:
        store = CountingStore(LocalStore(str(path), read_only=True))
        ds = xr.open_zarr(store, consolidated=True)  # what the catalog entry does
        _ = ds["time"].values  # the time coordinate: one chunk
        return store.reads

    big, small = open_reads(full_shape / "cloudmask_ds2.zarr"), open_reads(cloudmask_stores["sen3"])
    assert big == small  # the same requests, key for key: nothing per scene
    # root zarr.json (consolidated), 3 probes for zarr v2 keys, the channel, y and x indexes, and the
    # single time chunk: twice while xarray infers the decoded dtype (first and last value), once for .values
    assert sum(big.values()) <= 10 and big["time/c/0"] <= 3


@pytest.mark.parametrize("spec", [
    dict(time="AROUND_4900", channels="S1,S8", window="10:40,20:90"),
    dict(scenes="0:3,4900,9799", channels="S9", window="0:64,64:96", variables="image,cloud_mask"),
])
def test_dry_run_counts_what_is_read_and_subset_equals_xarray(full_shape, tmp_path, spec):
    src_path = full_shape / "cloudmask_ds2.zarr"
    if spec.get("time") == "AROUND_4900":  # scenes 4899, 4900 (written) and 4901
        t = xr.open_zarr(src_path, consolidated=True)["time"].values
        spec = {**spec, "time": f"{t[4899]}/{t[4902]}"}
    sel = Selection.parse(**spec)
    source = CountingStore(LocalStore(str(src_path), read_only=True))
    plan, _ = dry_run(source, sel)
    assert source.data_chunk_reads() == 0  # the dry run reads metadata and coordinates only
    assert plan.filled is not None and len(plan.filled) >= 1 and len(plan.scenes) > len(plan.filled)

    report = write_subset(source, tmp_path / "sub.zarr", sel, progress=False)
    assert report.ok and report.status == "scaffold", report.lines()
    assert source.data_chunk_reads() == plan.chunks  # exactly the planned chunks, each once
    assert max(n for k, n in source.reads.items() if "/c/" in k and k.split("/")[0] in DATA_VARIABLES) == 1

    got = decode_strings(xr.open_zarr(tmp_path / "sub.zarr", consolidated=True))
    want = select(decode_strings(xr.open_zarr(src_path, consolidated=True)), sel)
    for v in sel.variables:
        np.testing.assert_array_equal(got[v].values, want[v].values)
    for c in ("time", "source_name", "channel"):
        np.testing.assert_array_equal(got[c].values, want[c].values)
    assert list(got["source_scene"].values) == list(plan.scenes)
    assert got.attrs["scibench_filled_scenes"] == [i for i, s in enumerate(plan.scenes) if s in plan.filled]


def test_cli_dry_run_prints_the_plan_and_writes_nothing(full_shape, tmp_path, capsys):
    args = ["subset", "cloudmask_ds2", "--root", str(full_shape), "--scenes", "0,1", "--window", "0:33,0:32",
            "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    # scene 0 holds data (scene 1 does not); a 33-row window crosses one image tile boundary: 2 x 1
    # image chunks; each mask is one chunk per scene
    assert "scenes: 2 (1 hold data)" in out and "image: 2 chunks" in out and "cloud_mask: 1 chunks" in out
    assert "summary_cloud: 1 chunks" in out and "total: 4 chunks" in out
    assert main(["subset", "cloudmask_ds2", "--root", str(full_shape), "--scenes", "4900", "--to",
                 str(tmp_path / "one.zarr"), "--no-progress"]) == 0
    one = xr.open_zarr(tmp_path / "one.zarr", consolidated=True)
    assert one.attrs["scibench_status"] == "complete" and one.sizes["scene"] == 1


def test_plan_arithmetic_and_validation():
    from scibench_data.subset.cloudmask import ArrayLayout

    layouts = {"image": ArrayLayout(("scene", "channel", "y", "x"), (10, 9, 1200, 1500), (1, 9, 256, 256), 4)}
    times = np.arange(10).astype("datetime64[D]").astype("datetime64[ns]")
    names = [f"p{i}" for i in range(10)]
    plan = plan_subset(Selection(time=("1970-01-03", "1970-01-06"), window=(250, 260, 0, 1500),
                                 variables=("image",)), times=times, names=names, channel_names=[f"S{i}" for i in range(1, 10)],
                       layouts=layouts)
    assert plan.scenes == (2, 3, 4) and plan.chunks == 3 * 2 * 6
    assert plan.bytes_selected == 3 * 9 * 10 * 1500 * 4 and plan.bytes_decoded == 36 * 9 * 256 * 256 * 4
    with pytest.raises(SelectionError, match="exceeds the grid"):
        plan_subset(Selection(window=(0, 1300, 0, 10), variables=("image",)), times=times, names=names, channel_names=["S1"],
                    layouts=layouts)
    with pytest.raises(SelectionError, match="unknown channel"):
        plan_subset(Selection(channels=("S10",), variables=("image",)), times=times, names=names,
                    channel_names=["S1"], layouts=layouts)
    with pytest.raises(SelectionError, match="no scene named 'p99'"):
        plan_subset(Selection(scenes=("p99",), variables=("image",)), times=times, names=names,
                    channel_names=["S1"], layouts=layouts)
    for bad in (dict(time="2019-10-01"), dict(window="1:2"), dict(time="2019-10-02/2019-10-01")):
        with pytest.raises(SelectionError):
            Selection.parse(**bad)


def test_scaffold_slot_and_time_arithmetic():
    from datetime import datetime

    assert scaffold_slots(9800, 3) == [0, 4900, 9799]
    times = scaffold_times([datetime(2020, 1, 1), datetime(2020, 1, 2)], [2, 5], 8)
    assert times[2] == datetime(2020, 1, 1) and times[5] == datetime(2020, 1, 2)
    assert all(b > a for a, b in pairwise(times))
    assert (times[2] - times[1]).total_seconds() == 180
    with pytest.raises(ValueError, match="increasing time order"):
        scaffold_times([datetime(2020, 1, 2), datetime(2020, 1, 1)], [0, 1], 2)
