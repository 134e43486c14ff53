"""The obstore read path (issue 20, item 2) behaves as the s3fs one is documented to (README "Data
safety", storage/retries.py): the same settings from the same storage options, anonymous reads of a
public store, a refused credential as one line naming the store, and s3fs where only it can honour
the options. Retries of an outage and of cut responses: tests/storage/test_reliability_faults.py, on both clients."""

from __future__ import annotations

import http.server
import re
import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
import zarr.core.buffer
import zarr.core.sync
from _s3_helpers import (
    LoggedS3Server,
    publish_tiny,
    tiny_cloudmask_store,
)

from loaders.cloudmask import CloudMaskPatches, PatchSpec
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.retries import RemoteReadError, with_retries
from scibench_data.storage.store.s3_client import (
    ClientChoiceError,
    ObstoreReadStore,
    obstore_settings,
    read_store,
)

BUCKET = "client"
ENDPOINT = "http://127.0.0.1:9000"
SECRET = "PLANTED-SECRET-client-7a1c"


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> Path:
    return tiny_cloudmask_store(tmp_path_factory.mktemp("client"), grid=(32, 48), tile=16, seed=51)


@pytest.fixture(scope="module")
def public_url(s3_storage_options, local_store) -> str:
    return publish_tiny(s3_storage_options, local_store, f"s3://{BUCKET}/public", public=True).url


@pytest.fixture(scope="module")
def private_url(s3_storage_options, local_store) -> str:
    return publish_tiny(s3_storage_options, local_store, f"s3://{BUCKET}/private").url


def _clean_env(monkeypatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_PROFILE", "SCIBENCH_S3_CLIENT"):
        monkeypatch.delenv(name, raising=False)


def test_obstore_gets_the_retry_timeout_and_credential_settings_s3fs_gets(monkeypatch):
    _clean_env(monkeypatch)
    so = {"key": "k", "secret": SECRET, "client_kwargs": {"endpoint_url": ENDPOINT}}
    got, why = obstore_settings("s3://b/p/x.zarr", so)
    assert why == "" and (got.bucket, got.prefix) == ("b", "p/x.zarr")
    assert got.retry_config["max_retries"] == 10  # botocore: Config(retries={"max_attempts": 10}) is 10 retries
    assert got.retry_config["backoff"]["max_backoff"] == timedelta(seconds=20)
    assert got.client_options["connect_timeout"] == timedelta(seconds=10) and got.client_options["allow_http"]
    assert got.config["access_key_id"] == "k" and got.config["endpoint"] == ENDPOINT
    assert SECRET not in repr(got)
    mine = {**so, "config_kwargs": {"retries": {"max_attempts": 2}, "connect_timeout": 3}}
    got, _ = obstore_settings("s3://b/x", mine)
    assert got.retry_config["max_retries"] == 2 and got.client_options["connect_timeout"] == timedelta(seconds=3)
    # obstore stops retrying no earlier than botocore could: backoff bounds 1 + 2 s, 3 x (3 s connect + 60 s read)
    assert got.retry_config["retry_timeout"] == timedelta(seconds=1 + 2 + 3 * (3 + 60))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "4")
    assert obstore_settings("s3://b/x", so)[0].retry_config["max_retries"] == 3
    anon, _ = obstore_settings("s3://b/x", {"anon": "true", "endpoint_url": ENDPOINT})
    assert anon.config.get("skip_signature") is True and "access_key_id" not in anon.config
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-s")
    monkeypatch.setenv("AWS_ENDPOINT_URL", ENDPOINT)
    assert obstore_settings("s3://b/x", {})[0].config["access_key_id"] == "env-k"


@pytest.mark.parametrize("options, reason", [
    ({"profile": "p", "client_kwargs": {"endpoint_url": ENDPOINT}}, "profile"),
    ({"client_kwargs": {"endpoint_url": ENDPOINT}}, "botocore's chain"),
    ({"key": "k", "secret": "s"}, "region"),
    ({"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": ENDPOINT, "verify": False}}, "client_kwargs.verify"),
])
def test_options_only_s3fs_honours_keep_s3fs(monkeypatch, options, reason):
    _clean_env(monkeypatch)
    settings, why = obstore_settings("s3://b/x", options)
    assert settings is None and reason in why
    assert type(read_store("s3://b/x", options)).__name__ == "FsspecStore"
    monkeypatch.setenv("SCIBENCH_S3_CLIENT", "obstore")
    with pytest.raises(ClientChoiceError, match=f"obstore cannot read s3://b/x: .*{reason}"):
        read_store("s3://b/x", options)
    monkeypatch.setenv("SCIBENCH_S3_CLIENT", "boto")
    with pytest.raises(ClientChoiceError, match="expected one of auto, s3fs, obstore"):
        read_store("s3://b/x", options)


def test_anonymous_reads_of_a_public_store_through_obstore(monkeypatch, s3_endpoint, public_url, private_url,
                                                           local_store):
    _clean_env(monkeypatch)
    monkeypatch.setenv("SCIBENCH_S3_CLIENT", "obstore")
    anon = {"anon": True, "client_kwargs": {"endpoint_url": s3_endpoint}}
    spec = PatchSpec(mode="random", patch=16, patches_per_scene=3, seed=5)
    remote = CloudMaskPatches(StoreLocation(public_url, anon), spec=spec, as_torch=False)
    assert isinstance(remote.handle.group.store, ObstoreReadStore)
    local = CloudMaskPatches(StoreLocation(str(local_store)), spec=spec, as_torch=False)
    got, want = remote.batch(list(range(len(remote)))), local.batch(list(range(len(local))))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    # the private version: the server refuses unsigned reads, and the error says so in one line
    with pytest.raises(PermissionError) as info:
        zarr.open_group(StoreLocation(private_url, anon).zarr_store(read_only=True), mode="r")
    message = str(info.value)
    assert message.startswith(f"{private_url}/") and "access denied by the server" in message and "403 Forbidden" in message
    assert "\n" not in message


@pytest.fixture(scope="module")
def checking_server(tmp_path_factory):
    """A moto server that checks every request's credentials (it knows no access key)."""
    s = LoggedS3Server(tmp_path_factory.mktemp("auth"), env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.parametrize("client", ["obstore", "s3fs"])
def test_a_refused_credential_is_one_line_naming_the_store_and_not_the_secret(monkeypatch, checking_server, client):
    _clean_env(monkeypatch)
    monkeypatch.setenv("SCIBENCH_S3_CLIENT", client)
    url = "s3://somebucket/x.zarr"
    bad = {"key": "no-such-key", "secret": SECRET, "client_kwargs": {"endpoint_url": checking_server.endpoint}}
    with pytest.raises(PermissionError) as info:
        zarr.open_group(StoreLocation(url, bad).zarr_store(read_only=True), mode="r")
    message = str(info.value)
    assert "\n" not in message and SECRET not in message
    assert "does not exist in our records" in message  # the server's own words (InvalidAccessKeyId)
    if client == "obstore":
        assert message.startswith(f"{url}/") and "InvalidAccessKeyId" in message
    assert checking_server.requests(), "the server saw no request"


def test_a_server_that_stays_away_is_a_remote_read_error_through_obstore(monkeypatch, local_store, public_url,
                                                                        s3_endpoint):
    """The loader's error names the store and window; obstore's multi-line debug dump is not in it."""
    from scibench_data.storage.distribution.local_s3 import free_port

    _clean_env(monkeypatch)
    monkeypatch.setenv("SCIBENCH_S3_CLIENT", "obstore")
    so = {"anon": True, "client_kwargs": {"endpoint_url": s3_endpoint}}
    remote = CloudMaskPatches(StoreLocation(public_url, so), spec=PatchSpec(mode="random", patch=16), as_torch=False)
    dead = {"anon": True, "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}"},
            "config_kwargs": {"retries": {"max_attempts": 2}, "connect_timeout": 1}}
    remote.open()  # the layout is read from the live server (constructors read nothing)
    remote.handle = type(remote.handle)(StoreLocation(public_url, dead))
    remote.handle.check = None  # the store was checked complete above; now the server is gone
    with pytest.raises(RemoteReadError) as info:
        remote[0]
    message = str(info.value)
    assert message.startswith(f"{public_url}: reading scene ") and "failed after retries" in message
    assert "Could not connect to the endpoint URL" in message and "Debug source" not in message


class _StoreKind(torch.utils.data.Dataset):
    """Each patch's sum and the class of the store that read it (in the worker that read it)."""

    def __init__(self, data: CloudMaskPatches) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[str, float]:
        image, _ = self.data[i]
        return type(self.data.handle.group.store).__name__, float(np.asarray(image, np.float64).sum())


def test_workers_forked_after_an_obstore_read_use_s3fs_and_read_the_same(monkeypatch, s3_endpoint, public_url):
    """obstore's tokio runtime does not survive fork: a forked worker whose parent read through
    obstore would hang on its first request; it reads through s3fs instead, the same values."""
    _clean_env(monkeypatch)
    so = {"anon": True, "client_kwargs": {"endpoint_url": s3_endpoint}}
    data = CloudMaskPatches(StoreLocation(public_url, so), spec=PatchSpec(mode="random", patch=16, patches_per_scene=2),
                            as_torch=False)
    want = [("ObstoreReadStore", float(np.asarray(data[i][0], np.float64).sum())) for i in range(len(data))]
    loader = torch.utils.data.DataLoader(_StoreKind(data), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork", timeout=120)
    got = list(loader)
    assert [kind for kind, _ in got] == ["FsspecStore"] * len(data)
    assert [total for _, total in got] == [total for _, total in want]


class _Unavailable:
    """A server that answers every request 503 Service Unavailable (retried by both clients) and
    counts the requests it saw."""

    def __init__(self) -> None:
        count = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                count.append((self.command, self.path))
                body = b"<Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>"
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def unavailable():
    server = _Unavailable()
    yield server
    server.close()


def test_obstore_makes_as_many_attempts_as_s3fs_when_the_server_stays_away(monkeypatch, unavailable):
    """``max_attempts=2`` (botocore: 2 retries, 3 attempts) on both clients, even after s3fs has read
    with the same options first (the store's completeness check does): botocore rewrites the caller's
    ``retries`` dict in place (``max_attempts`` -> ``total_max_attempts``), and obstore then fell back
    to the default 10 attempts (41 s instead of s3fs's 2.5 s in test_reliability_faults)."""
    _clean_env(monkeypatch)
    monkeypatch.setenv("SCIBENCH_S3_CLIENT", "obstore")
    so = {"key": "k", "secret": SECRET, "client_kwargs": {"endpoint_url": unavailable.endpoint},
          "config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 2}}
    location = StoreLocation("s3://b/x.zarr", so)
    with pytest.raises(OSError):
        location.fs.cat_file(location.path("zarr.json"))
    by_s3fs = len(unavailable.seen)
    unavailable.seen.clear()
    store = location.zarr_store(read_only=True)
    assert isinstance(store, ObstoreReadStore)
    with pytest.raises(ConnectionError, match="503"):  # a chunk: read through obstore (metadata: s3fs)
        zarr.core.sync.sync(store.get("image/c/0/0/0/0", zarr.core.buffer.default_buffer_prototype()))
    by_obstore = len(unavailable.seen)
    assert by_s3fs == 3, f"s3fs sent {by_s3fs} requests for one read with max_attempts=2"
    assert by_obstore == by_s3fs, f"obstore sent {by_obstore} requests, s3fs {by_s3fs}"
    assert so["config_kwargs"]["retries"] == {"max_attempts": 2, "mode": "standard"}, "the caller's options changed"


def test_metadata_read_through_s3fs_fails_in_one_line_as_obstore_does(monkeypatch, unavailable):
    """An obstore-backed store reads zarr.json through s3fs (so opening a store never starts obstore's
    runtime); its failure reads like obstore's: one line naming the object, the server's status."""
    _clean_env(monkeypatch)
    so = {"key": "k", "secret": SECRET, "client_kwargs": {"endpoint_url": unavailable.endpoint},
          "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
    store = StoreLocation("s3://b/x.zarr", so).zarr_store(read_only=True)
    assert isinstance(store, ObstoreReadStore)
    with pytest.raises(ConnectionError) as info:
        zarr.open_group(store, mode="r")
    message = str(info.value)
    assert re.match(r"s3://b/x\.zarr/(zarr\.json|\.zgroup|\.zattrs|\.zmetadata): ", message), message
    assert "503 Service Unavailable" in message
    assert "\n" not in message and SECRET not in message
    assert unavailable.seen and {method for method, _ in unavailable.seen} == {"GET"}


def test_with_retries_never_hands_botocore_the_callers_retries_dict():
    """botocore rewrites a client config's ``retries`` dict in place (``max_attempts`` becomes
    ``total_max_attempts``); handed the caller's own dict, every later reader of the same options
    (obstore's settings) saw the rewritten one and fell back to its defaults."""
    caller = {"config_kwargs": {"retries": {"max_attempts": 2}}}
    out = with_retries("s3://bucket/x.zarr", caller)
    assert out["config_kwargs"]["retries"] == {"max_attempts": 2}
    assert out["config_kwargs"]["retries"] is not caller["config_kwargs"]["retries"]
