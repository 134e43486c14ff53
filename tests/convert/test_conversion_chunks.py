"""A conversion stores, chunk for chunk, exactly the objects zarr's own region write stores for the same
scenes (the direct chunk writer of ``storage/store/chunk_writer.py`` changes how, not what)."""

from __future__ import annotations

import shutil
from pathlib import Path

import fsspec
import pytest
import zarr

from scibench_data.convert.cloudmask import (
    CloudMaskConversion,
    convert_cloudmask,
    time_order,
)
from scibench_data.formats.cloudmask import discover_products, read_product

SCENE_ARRAYS = ("image", "cloud_mask", "summary_cloud")


def _chunk_objects(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for name in SCENE_ARRAYS for p in (store / name / "c").rglob("*")
            if p.is_file()}


@pytest.mark.parametrize("layout", ["hdf", "sen3"])
def test_converted_scenes_are_the_objects_zarr_writes_for_them(cloudmask_raw, tmp_path, layout):
    converted = tmp_path / "converted.zarr"
    # tile 48 on the 64 x 96 grid: interior and edge tiles (padded with NaN) in every scene
    report = convert_cloudmask(str(cloudmask_raw[layout]), str(converted),
                               CloudMaskConversion(layout=layout, tile=48, progress=False))
    assert report.ok, report.lines()
    by_zarr = tmp_path / "by_zarr.zarr"
    shutil.copytree(converted, by_zarr)  # then every scene rewritten through zarr (which also deletes all-fill chunks)
    fs = fsspec.filesystem("file")
    g = zarr.open_group(str(by_zarr), mode="r+", use_consolidated=False)
    products = time_order(discover_products(fs, str(cloudmask_raw[layout]), layout)[0])
    for i, product in enumerate(products):
        scene = read_product(fs, product)
        g["image"][i:i + 1] = scene.image[None]
        g["cloud_mask"][i:i + 1] = scene.cloud_mask[None]
        g["summary_cloud"][i:i + 1] = scene.summary_cloud[None]
    want, got = _chunk_objects(by_zarr), _chunk_objects(converted)
    assert len(got) == len(products) * (2 * 2 + 2)  # 2 x 2 image tiles and two masks per scene
    assert sorted(got) == sorted(want)
    assert [k for k in got if got[k] != want[k]] == []
