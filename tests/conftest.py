"""Shared fixtures: tiny synthetic CloudMask products in both layouts, and their stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Two cores: keep torch from oversubscribing them in every test process.
torch.set_num_threads(2)
os.environ.setdefault("TQDM_DISABLE", "1")

TINY_GRID = (64, 96)


@pytest.fixture(scope="session")
def cloudmask_raw(tmp_path_factory) -> dict[str, Path]:
    """Three tiny products per layout, drawn from the same seed (same truth)."""
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    root = tmp_path_factory.mktemp("cloudmask_raw")
    cfg = SyntheticCloudMask(n_products=3, grid=TINY_GRID, seed=7)
    out = {}
    for layout in ("hdf", "sen3"):
        generate(root / layout, layout, cfg)
        out[layout] = root / layout
    return out


@pytest.fixture(scope="session")
def cloudmask_stores(cloudmask_raw, tmp_path_factory) -> dict[str, Path]:
    from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask

    root = tmp_path_factory.mktemp("cloudmask_stores")
    out = {}
    for layout, src in cloudmask_raw.items():
        dest = root / f"{layout}.zarr"
        report = convert_cloudmask(str(src), str(dest), CloudMaskConversion(layout=layout, progress=False))
        assert report.ok, report.lines()
        out[layout] = dest
    return out


@pytest.fixture(scope="session")
def cloudmask_training_root(tmp_path_factory) -> Path:
    """A catalog root holding ``cloudmask_ds1.zarr``: 6 training + 2 inference products of 256x320."""
    from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    base = tmp_path_factory.mktemp("cloudmask_train")
    generate(base / "raw" / "training", "hdf", SyntheticCloudMask(n_products=6, grid=(256, 320), seed=11))
    generate(base / "raw" / "inference", "hdf", SyntheticCloudMask(n_products=2, grid=(256, 320), seed=12))
    report = convert_cloudmask(str(base / "raw"), str(base / "root" / "cloudmask_ds1.zarr"),
                               CloudMaskConversion(layout="hdf", progress=False))
    assert report.ok, report.lines()
    return base / "root"


# --------------------------------------------------------------------------- S3 (moto_server), issue 3


@pytest.fixture(scope="session")
def s3_endpoint():
    """A ``moto_server`` on 127.0.0.1 (a free port) for the session; stopped by its process."""
    from scibench_data.storage.distribution.local_s3 import moto_server

    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_storage_options(s3_endpoint) -> dict:
    """s3fs storage options for the moto server (any key and secret)."""
    from scibench_data.storage.distribution.local_s3 import storage_options

    return storage_options(s3_endpoint)


@pytest.fixture(scope="session")
def logged_s3_server(tmp_path_factory):
    """One ``moto_server`` whose request log tests count (``tests/_s3_helpers.LoggedS3Server``), shared by
    the modules that count requests under their own bucket."""
    from _s3_helpers import LoggedS3Server

    server = LoggedS3Server(tmp_path_factory.mktemp("moto_log"))
    try:
        yield server
    finally:
        server.stop()
