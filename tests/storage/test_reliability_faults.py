"""Storage faults (issue 9): the S3 server goes away and comes back during streaming and during a
publish. Reads retry and return exactly the local store's data, or fail with an error naming what
was being read; a publish that fails leaves the catalog on the previous version and a rerun finishes it.

The server is the session's moto, reached through a loopback TCP proxy of our own that we stop and
start (moto keeps its data in memory, so a restarted moto would be empty; stopping the proxy is the
server going away with its data kept). The session's moto itself is never stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import intake
import numpy as np
import pytest
import s3fs
import xarray as xr

from loaders import chunk_reader
from loaders.cloudmask import CloudMaskPatches, PatchSpec
from scibench_data.catalog import entry_location, entry_metadata
from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
from scibench_data.storage.distribution.local_s3 import storage_options
from scibench_data.storage.distribution.publish import PublishOptions, publish
from scibench_data.storage.distribution.pull import verify_published
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.retries import RemoteReadError, with_retries

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _s3_helpers import bucket_client, wait_for_objects
from _tcp_proxy import TcpProxy

REPO = Path(__file__).resolve().parents[2]
BUCKET = "scibench-faults"
SECRET = "PLANTED-SECRET-faults-5e1d0c"
FAST = PublishOptions(progress=False, workers=4)


@pytest.fixture(scope="module")
def proxy(s3_endpoint):
    host, port = s3_endpoint.rsplit("//", 1)[1].split(":")
    p = TcpProxy(host, int(port)).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """Three tiny products converted twice: 16x16 tiles (2 x 3 chunks per scene) and 32x32 tiles."""
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    base = tmp_path_factory.mktemp("faults")
    generate(base / "raw", "hdf", SyntheticCloudMask(n_products=3, grid=(32, 48), seed=21))
    out = {}
    for tile in (16, 32):
        dest = base / f"t{tile}.zarr"
        report = convert_cloudmask(str(base / "raw"), str(dest), CloudMaskConversion(layout="hdf", tile=tile,
                                                                                      progress=False))
        assert report.ok, report.lines()
        out[f"t{tile}"] = dest
    return out


@pytest.fixture(scope="module")
def fs(s3_storage_options) -> s3fs.S3FileSystem:
    """A client that talks to moto directly (not through the proxy)."""
    return bucket_client(s3_storage_options, BUCKET)


@pytest.fixture(scope="module")
def streamed(fs, s3_storage_options, stores) -> str:
    result = publish("cloudmask_ds1", str(stores["t16"]), f"s3://{BUCKET}/stream",
                     storage_options=s3_storage_options, options=FAST)
    return result.url


SPEC = PatchSpec(mode="random", patch=16, patches_per_scene=4, seed=2)


@pytest.fixture(params=["obstore", "s3fs"])
def client(request, monkeypatch) -> str:
    """The client that reads chunks (``$SCIBENCH_S3_CLIENT``, issue 20): both retry the same way."""
    monkeypatch.setenv("SCIBENCH_S3_CLIENT", request.param)
    return request.param


def _assert_same(remote: list, local: CloudMaskPatches) -> None:
    assert len(remote) == len(local)
    for i, (image, mask) in enumerate(remote):
        want_image, want_mask = local[i]
        np.testing.assert_array_equal(image, want_image, err_msg=f"patch {i}")
        np.testing.assert_array_equal(mask, want_mask, err_msg=f"patch {i}")


def test_retry_defaults_leave_callers_settings_alone(monkeypatch):
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    so = with_retries("s3://b/x", {"key": "k"})
    assert so["config_kwargs"] == {"retries": {"max_attempts": 10, "mode": "standard"}, "connect_timeout": 10.0}
    mine = {"config_kwargs": {"retries": {"max_attempts": 2}}}
    assert with_retries("s3://b/x", mine)["config_kwargs"]["retries"] == {"max_attempts": 2}
    assert with_retries("/local/x", {}) == {} and with_retries("gs://b/x", {"a": 1}) == {"a": 1}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    assert "retries" not in with_retries("s3://b/x", {})["config_kwargs"]


def test_streaming_rides_out_a_server_outage_and_cut_responses(proxy, streamed, stores, client, monkeypatch):
    """The reader keeps its open store while the server goes away for 1 s, then while responses are
    cut off mid-body: every patch equals the local store's. Readers here keep no decoded chunks
    (a kept chunk never goes to the server, and these scenes are only 2 x 3 chunks)."""
    monkeypatch.setattr(chunk_reader, "KEEP_DECODED_BYTES", 0)
    local = CloudMaskPatches(StoreLocation(str(stores["t16"])), spec=SPEC, as_torch=False)
    remote = CloudMaskPatches(StoreLocation(streamed, storage_options(proxy.endpoint)), spec=SPEC, as_torch=False)
    got = [remote[i] for i in range(3)]
    proxy.stop()
    restart = threading.Timer(1.0, proxy.start)
    restart.start()
    t0 = time.monotonic()
    got.append(remote[3])  # blocks in botocore's retries until the server is back
    waited = time.monotonic() - t0
    restart.join()
    assert waited >= 0.8, f"the read during the outage returned after {waited:.2f} s: it cannot have been served"
    got += [remote[i] for i in range(4, 8)]
    proxy.stop()  # drop the pooled connections, so the next reads open new ones that get cut
    proxy.start()
    proxy.cut_next(24, after=700)  # image and mask requests go out together: small mask responses take slots too
    got += [remote[i] for i in range(8, len(remote))]
    assert proxy.cuts_done >= 1, "no response was cut: the test did not exercise a broken read"
    _assert_same(got, local)


def test_streaming_fails_clearly_when_the_server_stays_away(proxy, streamed, s3_storage_options, client):
    short = {**storage_options(proxy.endpoint),
             "config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 2}}
    remote = CloudMaskPatches(StoreLocation(streamed, short), spec=SPEC, as_torch=False)
    remote[0]
    proxy.stop()
    try:
        with pytest.raises(RemoteReadError) as info:
            remote[5]
    finally:
        proxy.start()
    message = str(info.value)
    scene, win = remote.items[5]
    assert message.startswith(f"{streamed}: reading scene {scene}, rows {win.y0}:{win.y0 + 16}")
    assert "failed after retries" in message and "Could not connect to the endpoint URL" in message
    assert short["secret"] not in message and short["key"] not in message
    image, _ = remote[5]  # the server is back: the same dataset reads again
    assert image.shape == (9, 16, 16)


def _cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scibench_data", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_publish_interrupted_by_an_outage_fails_clearly_and_a_rerun_finishes(fs, proxy, s3_storage_options, stores):
    to = f"s3://{BUCKET}/pub"
    first = publish("cloudmask_ds1", str(stores["t16"]), to, storage_options=s3_storage_options, options=FAST)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "planted-key-id", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard",
           "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
    args = ["publish", "cloudmask_ds1", "--to", to, "--store", str(stores["t32"]), "--workers", "1"]
    proc = _cli(args, env)
    v2 = f"{BUCKET}/pub/cloudmask_ds1/v2"
    wait_for_objects(fs, v2, 3, proc, pause=0.03)
    assert proc.poll() is None, "publish finished before the server could be stopped"
    proxy.stop()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proxy.start()
    assert proc.returncode == 3, err.decode()
    text = err.decode()
    assert "Traceback" not in text and "scibench-data: storage error (EndpointConnectionError)" in text
    assert "rerun the same command" in text
    assert not fs.exists(f"{v2}/_scibench/manifest.json")
    cat = intake.open_catalog(f"{to}/catalog.yaml", storage_options=s3_storage_options)
    assert entry_metadata(cat, "cloudmask_ds1")["published"]["manifest_sha256"] == first.manifest_sha256
    assert entry_location(cat, "cloudmask_ds1").url.endswith("/cloudmask_ds1/v1")

    rerun = _cli(args, env)  # the lock left by the failed process is taken over (it is gone)
    out2, err2 = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err2.decode()
    assert b"v2: resumed" in out2
    cat = intake.open_catalog(f"{to}/catalog.yaml", storage_options=s3_storage_options)
    assert entry_location(cat, "cloudmask_ds1").url.endswith("/cloudmask_ds1/v2")
    v2_store = StoreLocation(entry_location(cat, "cloudmask_ds1").url, s3_storage_options)
    xr.testing.assert_identical(xr.open_zarr(v2_store.zarr_store(read_only=True), consolidated=True).load(),
                                xr.open_zarr(stores["t32"], consolidated=True).load())
    assert verify_published(f"{to}/catalog.yaml", "cloudmask_ds1", s3_storage_options).ok
    for stream in (out, err, out2, err2):
        assert SECRET.encode() not in stream and b"planted-key-id" not in stream
