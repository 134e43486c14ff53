"""Raw sources over S3: fetch-raw (anonymous, resumable) and the converter reading s3:// products directly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import s3fs
import xarray as xr

from scibench_data.cli import main
from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
from scibench_data.sources import SOURCES, get_source, safe_relpath
from scibench_data.strings import decode_strings

PREFIX = "sciml-datasets/es/cloud_slstr_ds1/training"


@pytest.fixture(scope="module")
def raw_on_s3(s3_storage_options, cloudmask_raw) -> list[Path]:
    """The DS1 layout on the moto server, public-read as STFC serves it."""
    fs = s3fs.S3FileSystem(**s3_storage_options)
    if not fs.exists("sciml-datasets"):
        fs.mkdir("sciml-datasets", acl="public-read")
    files = sorted(Path(cloudmask_raw["hdf"]).glob("*.hdf"))  # the products, as STFC serves them
    for f in files:
        fs.pipe_file(f"{PREFIX}/{f.name}", f.read_bytes(), ACL="public-read")
    return files


def test_registry_points_at_the_real_sources():
    ds1 = get_source("cloudmask_ds1")
    assert ds1.url == "s3://sciml-datasets/es/cloud_slstr_ds1/" and ds1.anon
    assert ds1.storage_options() == {"anon": True, "client_kwargs": {"endpoint_url": "https://s3.echo.stfc.ac.uk"}}
    assert SOURCES["stemdl_ds1a"].url.endswith("/stemdl_ds1a/") and SOURCES["stemdl_ds1a"].doi
    assert all(u.startswith("https://ftp.mcs.anl.gov/") for u in SOURCES["candle_uno_raw"].files)
    with pytest.raises(ValueError, match="no raw source"):
        get_source("nope")
    with pytest.raises(ValueError, match="outside the destination"):
        safe_relpath("../etc/passwd")


def test_fetch_raw_anonymous_and_resumable(raw_on_s3, s3_endpoint, tmp_path, capsys, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    args = ["fetch-raw", "cloudmask_ds1", "--to", str(tmp_path), "--endpoint-url", s3_endpoint, "--no-progress"]
    assert main(args) == 0
    err = capsys.readouterr().err
    total = sum(f.stat().st_size for f in raw_on_s3)
    assert f"{len(raw_on_s3)} file(s), {total / 1e9:.3f} GB in total" in err
    for f in raw_on_s3:
        got = tmp_path / "training" / f.name
        assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(f.read_bytes()).digest()
    (tmp_path / "training" / raw_on_s3[0].name).unlink()  # an interrupted copy: one file missing
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fetched 1 file(s)" in out and f"{len(raw_on_s3) - 1} already present" in out


def test_converter_reads_products_from_s3(raw_on_s3, s3_endpoint, cloudmask_stores, tmp_path):
    opts = CloudMaskConversion(layout="hdf", progress=False,
                               src_storage_options={"anon": True, "client_kwargs": {"endpoint_url": s3_endpoint}})
    report = convert_cloudmask("s3://sciml-datasets/es/cloud_slstr_ds1/", str(tmp_path / "s3.zarr"), opts)
    assert report.ok, report.lines()
    remote = xr.open_zarr(tmp_path / "s3.zarr", consolidated=True)
    local = xr.open_zarr(cloudmask_stores["hdf"], consolidated=True)
    for name in ("image", "cloud_mask", "summary_cloud", "source_sha256", "source_name"):
        np.testing.assert_array_equal(remote[name].values, local[name].values)
    assert list(decode_strings(remote)["split"].values) == ["training"] * len(raw_on_s3)
