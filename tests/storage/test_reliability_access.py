"""Access (issue 9): anonymous clients pull and verify public versions; a planted secret appears in no
output of a conversion from S3, a publish, a pull, a verify or a failing S3 read; catalogs and
manifests cannot make our code read or write outside their prefix or destination."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import s3fs
import xarray as xr
import yaml
from _s3_helpers import bucket_client

from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
from scibench_data.storage.distribution.local_s3 import free_port
from scibench_data.storage.distribution.publish import PublishOptions, publish
from scibench_data.storage.distribution.pull import pull, verify_published
from scibench_data.storage.store.confine import PathEscapeError
from scibench_data.storage.store.manifest import ManifestError

REPO = Path(__file__).resolve().parents[2]
BUCKET = "scibench-access"
SECRET = "PLANTED-SECRET-access-93b7f2"
KEY_ID = "planted-key-id-access"


@pytest.fixture(scope="module")
def fs(s3_storage_options) -> s3fs.S3FileSystem:
    return bucket_client(s3_storage_options, BUCKET)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    base = tmp_path_factory.mktemp("access_raw")
    generate(base, "hdf", SyntheticCloudMask(n_products=2, grid=(32, 48), seed=31))
    return base


@pytest.fixture(scope="module")
def store(raw, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("access_store") / "s.zarr"
    assert convert_cloudmask(str(raw), str(dest), CloudMaskConversion(layout="hdf", tile=16, progress=False)).ok
    return dest


def _env(endpoint: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "SCIBENCH_S3_ANON"}
    env.update({"AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true", "TQDM_DISABLE": "1",
                "PYTHONPATH": str(REPO), "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                "AWS_CONFIG_FILE": "/nonexistent", "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                **extra})
    return env


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scibench_data", *args], cwd=REPO, env=env, capture_output=True,
                          timeout=180)


def _files_under(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*") if p.is_file()]


def test_planted_secret_is_in_no_output_and_anonymous_clients_pull_and_verify(fs, s3_endpoint, raw, store, tmp_path):
    fs.put(str(raw), f"{BUCKET}/raw", recursive=True)
    prefix = f"s3://{BUCKET}/public"
    catalog = f"{prefix}/catalog.yaml"
    creds = _env(s3_endpoint)
    dead = _env(f"http://127.0.0.1:{free_port()}", AWS_MAX_ATTEMPTS="1")
    converted = tmp_path / "converted.zarr"
    runs = {
        "convert from S3": (["convert", "cloudmask", "--layout", "hdf", f"s3://{BUCKET}/raw", str(converted),
                             "--tile", "16", "--report", str(tmp_path / "reports" / "convert.json"),
                             "--no-progress"], creds, 0),
        "publish": (["publish", "cloudmask_ds1", "--to", prefix, "--store", str(store), "--public", "--no-progress"],
                    creds, 0),
        # anonymous (unsigned) requests, with the secret still in the environment
        "anonymous pull": (["pull", "cloudmask_ds1", "--catalog", catalog, "--to", str(tmp_path / "anon"), "--anon",
                            "--no-progress"], creds, 0),
        "anonymous verify": (["verify", "cloudmask_ds1", "--catalog", catalog, "--anon"], creds, 0),
        "failing S3 read": (["verify", "cloudmask_ds1", "--catalog", catalog], dead, 3),
    }
    outputs = []
    for name, (args, env, expected) in runs.items():
        done = _cli(args, env)
        assert done.returncode == expected, (name, done.stdout.decode(), done.stderr.decode())
        assert b"Traceback" not in done.stderr, (name, done.stderr.decode())
        outputs += [(f"{name} stdout", done.stdout), (f"{name} stderr", done.stderr)]
        if name.startswith("anonymous verify"):
            assert b"all match the manifest" in done.stdout
        if name == "failing S3 read":
            assert done.stderr.decode().startswith("scibench-data: storage error (")
    local = xr.open_zarr(store, consolidated=True).load()
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "anon" / "cloudmask_ds1.zarr").load(), local)
    xr.testing.assert_identical(xr.open_zarr(converted).load(), local)

    fs.invalidate_cache()
    outputs += [(f"file {p}", p.read_bytes()) for p in _files_under(tmp_path)]
    outputs += [(f"object {k}", fs.cat_file(k)) for k in fs.find(f"{BUCKET}/public")]
    assert len(outputs) > 30
    for where, data in outputs:
        assert SECRET.encode() not in data and KEY_ID.encode() not in data, where


def _rewrite_catalog(fs: s3fs.S3FileSystem, src: str, dest: str, change) -> str:
    cat = yaml.safe_load(fs.cat_file(src))
    change(cat["sources"]["cloudmask_ds1"])
    fs.pipe_file(dest, yaml.safe_dump(cat).encode())
    return f"s3://{dest}"


@pytest.mark.parametrize("urlpath", ["s3://another-bucket/cloudmask_ds1/v1",
                                     "{{ CATALOG_DIR }}/../other/cloudmask_ds1/v1"])
def test_a_catalog_pointing_outside_its_prefix_is_refused(fs, s3_storage_options, store, tmp_path, urlpath):
    result = publish("cloudmask_ds1", str(store), f"s3://{BUCKET}/other", storage_options=s3_storage_options,
                     options=PublishOptions(progress=False))
    evil = _rewrite_catalog(fs, f"{BUCKET}/other/catalog.yaml", f"{BUCKET}/evil/catalog.yaml",
                            lambda entry: entry["args"].update(urlpath=urlpath))
    for attempt in (lambda: verify_published(evil, "cloudmask_ds1", s3_storage_options),
                    lambda: pull(evil, "cloudmask_ds1", tmp_path, storage_options=s3_storage_options, progress=False)):
        with pytest.raises(PathEscapeError, match="catalog entry 'cloudmask_ds1' store .* is outside s3://"):
            attempt()
    assert list(tmp_path.iterdir()) == []
    assert verify_published(result.catalog_url, "cloudmask_ds1", s3_storage_options).ok  # the genuine one is fine


@pytest.mark.parametrize("key", ["../../escape", "/tmp/escape-abs"])
def test_a_manifest_with_an_escaping_key_is_refused(fs, s3_storage_options, store, tmp_path, key):
    prefix = f"{BUCKET}/evil-manifest-{'rel' if key.startswith('..') else 'abs'}"
    result = publish("cloudmask_ds1", str(store), f"s3://{prefix}", storage_options=s3_storage_options,
                     options=PublishOptions(progress=False))
    manifest_key = f"{prefix}/cloudmask_ds1/v{result.version}/_scibench/manifest.json"
    manifest = json.loads(fs.cat_file(manifest_key))
    manifest["objects"].append({"key": key, "size": 1, "sha256": hashlib.sha256(b"x").hexdigest()})
    data = json.dumps(manifest).encode()
    fs.pipe_file(manifest_key, data)
    digest = hashlib.sha256(data).hexdigest()
    catalog = _rewrite_catalog(fs, f"{prefix}/catalog.yaml", f"{prefix}/catalog.yaml",
                               lambda entry: entry["metadata"]["published"].update(manifest_sha256=digest))
    dest = tmp_path / "a" / "b"
    dest.mkdir(parents=True)
    with pytest.raises(ManifestError, match="refusing the manifest"):
        pull(catalog, "cloudmask_ds1", dest, storage_options=s3_storage_options, progress=False)
    with pytest.raises(ManifestError, match="refusing the manifest"):
        verify_published(catalog, "cloudmask_ds1", s3_storage_options)
    assert _files_under(tmp_path) == [] and not Path("/tmp/escape-abs").exists()


def test_anonymous_pull_of_a_private_version_is_refused(fs, s3_endpoint, s3_storage_options, store, tmp_path):
    result = publish("cloudmask_ds1", str(store), f"s3://{BUCKET}/private", storage_options=s3_storage_options,
                     options=PublishOptions(progress=False))
    anon = {"anon": True, "client_kwargs": {"endpoint_url": s3_endpoint}}
    with pytest.raises(PermissionError):
        pull(result.catalog_url, "cloudmask_ds1", tmp_path, storage_options=anon, progress=False)
    assert _files_under(tmp_path) == []
