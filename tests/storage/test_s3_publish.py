"""Publish to, stream from and verify against S3 (a local moto server), end to end (issue 3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import intake
import numpy as np
import pytest
import s3fs
import torch
import xarray as xr
import zarr
from _s3_helpers import bucket_client, wait_for_objects

from loaders.cloudmask import CloudMaskPatches, PatchSpec, read_patch
from loaders.patches import Window
from scibench_data.catalog import entry_location, entry_metadata
from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
from scibench_data.intake_source import open_path
from scibench_data.storage.distribution.publish import (
    PublishAccessError,
    PublishOptions,
    publish,
)
from scibench_data.storage.distribution.pull import (
    Subset,
    pull,
    verify_local,
    verify_published,
)
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.manifest import (
    MANIFEST_KEY,
    ManifestError,
    read_manifest,
)

REPO = Path(__file__).resolve().parents[2]
BUCKET = "scibench-test"
FAST = PublishOptions(progress=False, workers=4)


@pytest.fixture(scope="module")
def s3_env(s3_endpoint):
    """Credentials and endpoint in the standard places (env), as a reader of the catalog would have them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing-key")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
        mp.setenv("AWS_ENDPOINT_URL", s3_endpoint)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.delenv("SCIBENCH_S3_ANON", raising=False)
        yield s3_endpoint


@pytest.fixture(scope="module")
def s3fs_client(s3_env, s3_storage_options) -> s3fs.S3FileSystem:
    return bucket_client(s3_storage_options, BUCKET)


@pytest.fixture(scope="module")
def tiled_stores(cloudmask_raw, tmp_path_factory) -> dict[str, Path]:
    """The tiny products with 32x32 tiles (2 x 3 chunks per scene), so patches span several objects."""
    root = tmp_path_factory.mktemp("s3_stores")
    out = {}
    for layout in ("hdf", "sen3"):
        dest = root / f"{layout}.zarr"
        report = convert_cloudmask(str(cloudmask_raw[layout]), str(dest),
                                   CloudMaskConversion(layout=layout, tile=32, progress=False))
        assert report.ok, report.lines()
        out[layout] = dest
    return out


@pytest.fixture(scope="module")
def published(s3fs_client, s3_storage_options, tiled_stores) -> str:
    """The hdf store published public-read under s3://BUCKET/main; returns the catalog URL."""
    result = publish("cloudmask_ds1", str(tiled_stores["hdf"]), f"s3://{BUCKET}/main", public=True,
                     storage_options=s3_storage_options, options=FAST)
    assert (result.version, result.status, result.skipped) == (1, "published", 0)
    return result.catalog_url


class CountingCat:
    """Wraps an s3fs instance's ``_cat_file`` to count requests and the most in flight at once."""

    def __init__(self, fs) -> None:
        self.fs, self.original = fs, fs._cat_file
        self.calls = self.inflight = self.max_inflight = 0
        self.paths: list[str] = []

        async def counted(path, *args, **kwargs):
            self.calls += 1
            self.paths.append(path)
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            try:
                return await self.original(path, *args, **kwargs)
            finally:
                self.inflight -= 1

        fs._cat_file = counted

    def restore(self) -> None:
        self.fs._cat_file = self.original


def test_publish_catalog_to_dask_and_training_step(published, s3_storage_options, tiled_stores):
    cat = intake.open_catalog(published, storage_options=s3_storage_options)
    remote = cat.cloudmask_ds1.to_dask()
    xr.testing.assert_identical(remote.load(), open_path(xr.open_zarr(tiled_stores["hdf"], consolidated=True)).load())
    meta = entry_metadata(cat, "cloudmask_ds1")
    assert meta["published"]["version"] == 1 and len(meta["published"]["manifest_sha256"]) == 64
    assert meta["dims"] == {"scene": 3, "channel": 9, "y": 64, "x": 96,  # every array's dims, text's included
                            "source_name_nchar": 128, "source_sha256_nchar": 64}
    loc = entry_location(cat, "cloudmask_ds1")
    assert loc.url == f"s3://{BUCKET}/main/cloudmask_ds1/v1"

    from reference_models.unet import UNet

    torch.manual_seed(0)
    data = CloudMaskPatches(loc, spec=PatchSpec(mode="random", patch=64, patches_per_scene=2, seed=3))
    image, mask = next(iter(torch.utils.data.DataLoader(data, batch_size=6, shuffle=False)))
    assert image.shape == (6, 9, 64, 64) and mask.shape == (6, 1, 64, 64)
    local = CloudMaskPatches(StoreLocation(str(tiled_stores["hdf"])), spec=data.spec)
    np.testing.assert_array_equal(image[0].numpy(), local[0][0].numpy())
    model = UNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    valid = ~torch.isnan(mask)
    loss = torch.nn.functional.binary_cross_entropy(model(image)[valid], mask[valid])
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_dataloader_two_workers_from_s3(published, s3_storage_options, tiled_stores):
    cat = intake.open_catalog(published, storage_options=s3_storage_options)
    data = CloudMaskPatches(entry_location(cat, "cloudmask_ds1"), spec=PatchSpec(patch=64))
    data.handle.group  # opened in the parent first: workers must open their own clients
    loader = torch.utils.data.DataLoader(data, batch_size=1, num_workers=2, shuffle=False,
                                         multiprocessing_context="fork")
    got = torch.cat([img for img, _ in loader])
    local = CloudMaskPatches(StoreLocation(str(tiled_stores["hdf"])), spec=PatchSpec(patch=64))
    np.testing.assert_array_equal(got.numpy(), np.stack([local[i][0].numpy() for i in range(len(local))]))


def test_patch_reads_are_concurrent_and_cache_serves_repeats(published, s3_storage_options, tmp_path, monkeypatch):
    monkeypatch.setenv("SCIBENCH_S3_CLIENT", "s3fs")  # counts s3fs's requests (obstore: tests/storage/test_s3_requests.py)
    loc = StoreLocation(f"s3://{BUCKET}/main/cloudmask_ds1/v1", dict(s3_storage_options))
    win = Window(16, 16, 32)  # spans 2 x 2 chunks of 32
    store = loc.zarr_store(read_only=True)
    counter = CountingCat(store.fs)
    try:
        expected = read_patch(zarr.open_group(store, mode="r"), 1, win)
    finally:
        counter.restore()
    assert counter.max_inflight >= 4, f"chunk reads were not concurrent (max in flight {counter.max_inflight})"

    cached = StoreLocation(loc.url, dict(s3_storage_options), cache_dir=str(tmp_path / "cache"))
    for expect_remote in (True, False):  # first epoch fills the cache, the second reads only from it
        store = cached.zarr_store(read_only=True)
        counter = CountingCat(store._store.fs)
        try:
            image, mask = read_patch(zarr.open_group(store, mode="r"), 1, win)
        finally:
            counter.restore()
        np.testing.assert_array_equal(image, expected[0])
        np.testing.assert_array_equal(mask, expected[1])
        chunk_reads = [p for p in counter.paths if "/c/" in p]
        assert (len(chunk_reads) > 0) == expect_remote, chunk_reads


def test_anonymous_read_of_public_version(published, s3_endpoint, tiled_stores, monkeypatch):
    monkeypatch.setenv("SCIBENCH_S3_ANON", "1")
    anon = {"anon": True, "client_kwargs": {"endpoint_url": s3_endpoint}}
    cat = intake.open_catalog(published, storage_options=anon)
    loc = entry_location(cat, "cloudmask_ds1")
    assert loc.storage_options == {"anon": "true"}
    remote = xr.open_zarr(loc.zarr_store(read_only=True), consolidated=True)
    xr.testing.assert_identical(remote.load(), xr.open_zarr(tiled_stores["hdf"], consolidated=True).load())
    assert verify_published(published, "cloudmask_ds1", anon).ok


def test_anonymous_write_refused_before_anything_is_written(s3fs_client, s3_endpoint, tiled_stores, monkeypatch,
                                                            tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    endpoint = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    for options in ({"anon": True, **endpoint}, endpoint):
        with pytest.raises(PublishAccessError, match="cannot publish|refusing to publish"):
            publish("cloudmask_ds1", str(tiled_stores["hdf"]), f"s3://{BUCKET}/anon-attempt",
                    storage_options=options, options=FAST)
    assert not s3fs_client.exists(f"{BUCKET}/anon-attempt")


def test_incomplete_store_is_not_published(s3fs_client, s3_storage_options, tmp_path):
    loc = StoreLocation(str(tmp_path / "x.zarr"))
    zarr.open_group(loc.zarr_store(), mode="w", attributes={"scibench_status": "incomplete"})
    with pytest.raises(Exception, match="not a complete store"):
        publish("cloudmask_ds1", loc, f"s3://{BUCKET}/incomplete", storage_options=s3_storage_options, options=FAST)
    assert not s3fs_client.exists(f"{BUCKET}/incomplete")


def test_verify_names_exactly_the_flipped_chunk(s3fs_client, s3_storage_options, tiled_stores):
    result = publish("cloudmask_ds1", str(tiled_stores["hdf"]), f"s3://{BUCKET}/flip",
                     storage_options=s3_storage_options, options=FAST)
    catalog = result.catalog_url
    assert verify_published(catalog, "cloudmask_ds1", s3_storage_options).ok
    key = "image/c/1/0/1/2"
    path = f"{BUCKET}/flip/cloudmask_ds1/v1/{key}"
    data = bytearray(s3fs_client.cat_file(path))
    data[len(data) // 2] ^= 0x01
    s3fs_client.pipe_file(path, bytes(data))
    s3fs_client.rm_file(f"{BUCKET}/flip/cloudmask_ds1/v1/summary_cloud/c/2/0/0")
    s3fs_client.pipe_file(f"{BUCKET}/flip/cloudmask_ds1/v1/stray", b"x")
    report = verify_published(catalog, "cloudmask_ds1", s3_storage_options)
    assert [k for k, _ in report.corrupted] == [key]
    assert report.missing == ("summary_cloud/c/2/0/0",) and report.extra == ("stray",)
    # an altered manifest is caught by the digest the catalog records
    loc = StoreLocation(result.url, dict(s3_storage_options))
    s3fs_client.pipe_file(loc.path(*MANIFEST_KEY), s3fs_client.cat_file(loc.path(*MANIFEST_KEY)) + b" ")
    with pytest.raises(ManifestError, match="altered"):
        verify_published(catalog, "cloudmask_ds1", s3_storage_options)


def _run_cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scibench_data", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_killed_publish_keeps_previous_version_and_rerun_finishes(s3fs_client, s3_storage_options, s3_endpoint,
                                                                  tiled_stores):
    """SIGKILL a real publish part-way; also plants a secret and checks it is never written or logged."""
    secret = "PLANTED-SECRET-8f3a1c9e77d2"
    to = f"s3://{BUCKET}/kill"
    first = publish("cloudmask_ds1", str(tiled_stores["hdf"]), to, storage_options=s3_storage_options, options=FAST)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "planted-key-id", "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_ENDPOINT_URL": s3_endpoint, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
    proc = _run_cli(["publish", "cloudmask_ds1", "--to", to, "--store", str(tiled_stores["sen3"]), "--workers", "1"],
                    env)
    v2 = f"{BUCKET}/kill/cloudmask_ds1/v2"
    wait_for_objects(s3fs_client, v2, 5, proc, pause=0.05)
    assert proc.poll() is None, "publish finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not s3fs_client.exists(f"{v2}/_scibench/manifest.json")
    cat = intake.open_catalog(f"{to}/catalog.yaml", storage_options=s3_storage_options)
    assert entry_metadata(cat, "cloudmask_ds1")["published"]["manifest_sha256"] == first.manifest_sha256
    assert entry_location(cat, "cloudmask_ds1").url.endswith("/v1")

    rerun = _run_cli(["publish", "cloudmask_ds1", "--to", to, "--store", str(tiled_stores["sen3"])], env)
    out2, err2 = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err2.decode()
    assert b"v2: resumed" in out2 and b"already there 0" not in out2
    cat = intake.open_catalog(f"{to}/catalog.yaml", storage_options=s3_storage_options)
    assert entry_location(cat, "cloudmask_ds1").url.endswith("/v2")
    assert [v["version"] for v in entry_metadata(cat, "cloudmask_ds1")["versions"]] == [1, 2]
    xr.testing.assert_identical(cat.cloudmask_ds1.to_dask().load(),
                                open_path(xr.open_zarr(tiled_stores["sen3"], consolidated=True)).load())
    assert verify_published(f"{to}/catalog.yaml", "cloudmask_ds1", s3_storage_options).ok
    # the planted secret appears in no published object and no output
    s3fs_client.invalidate_cache()
    for path in s3fs_client.find(f"{BUCKET}/kill"):
        assert secret.encode() not in s3fs_client.cat_file(path), path
    catalog_text = s3fs_client.cat_file(f"{BUCKET}/kill/catalog.yaml").decode()
    assert "planted-key-id" not in catalog_text and s3_endpoint not in catalog_text
    bad = _run_cli(["verify", "nonexistent", "--catalog", f"{to}/catalog.yaml"], env)
    out3, err3 = bad.communicate(timeout=120)
    assert bad.returncode != 0
    for stream in (out, err, out2, err2, out3, err3):
        assert secret.encode() not in stream


def test_pull_subset_resume_and_verify(published, s3_storage_options, tiled_stores, tmp_path):
    subset = Subset(records=(1,), variables=("image",))
    result = pull(published, "cloudmask_ds1", tmp_path, subset, s3_storage_options, progress=False)
    assert result.partial and result.skipped == 0 and result.fetched > 0
    dest = Path(result.dest)
    assert verify_local(dest).ok
    ds = xr.open_zarr(dest, consolidated=True)
    assert ds.attrs["scibench_status"] == "partial" and "cloud_mask" not in ds
    local = xr.open_zarr(tiled_stores["hdf"], consolidated=True)
    np.testing.assert_array_equal(ds["image"][1].values, local["image"][1].values)
    assert np.isnan(ds["image"][0].values).all()  # not pulled: fill value, never data
    assert not any((dest / "image" / "c" / "0").iterdir()) if (dest / "image" / "c" / "0").exists() else True

    chunk = dest / "image/c/1/0/0/0"
    chunk.write_bytes(b"garbage")
    report = verify_local(dest)
    assert [k for k, _ in report.corrupted] == ["image/c/1/0/0/0"]
    again = pull(published, "cloudmask_ds1", tmp_path, subset, s3_storage_options, progress=False)
    assert again.fetched == 1 and again.skipped == result.fetched - 1
    assert verify_local(dest).ok

    full = pull(published, "cloudmask_ds1", tmp_path / "full", Subset(), s3_storage_options, progress=False)
    xr.testing.assert_identical(xr.open_zarr(full.dest, consolidated=True).load(), local.load())
    manifest = read_manifest(StoreLocation(full.dest))
    assert json.loads((Path(full.dest) / "_scibench/pull.json").read_text())["keys"] == sorted(manifest.by_key)
