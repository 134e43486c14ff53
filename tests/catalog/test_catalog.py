"""The intake catalog: lazy opening, where stores live, entry metadata."""

from __future__ import annotations

import shutil

import dask.array as da
import intake
import numpy as np
import pytest

import scibench_data
from scibench_data.catalog import entry_location, entry_metadata, open_catalog


@pytest.fixture()
def root_with_ds1(cloudmask_stores, tmp_path):
    shutil.copytree(cloudmask_stores["hdf"], tmp_path / "cloudmask_ds1.zarr")
    return tmp_path


def test_package_catalog_is_the_repository_catalog():
    from pathlib import Path

    repo_catalog = Path(__file__).resolve().parents[2] / "catalog" / "scibench.yaml"
    assert Path(scibench_data.catalog_path()).read_text() == repo_catalog.read_text()


def test_to_dask_is_lazy_with_the_documented_dims(root_with_ds1):
    cat = intake.open_catalog(scibench_data.catalog_path())(root=str(root_with_ds1))
    ds = cat.cloudmask_ds1.to_dask()
    assert dict(ds.sizes) == {"scene": 3, "channel": 9, "y": 64, "x": 96}
    assert ds["image"].dims == ("scene", "channel", "y", "x")
    assert ds["image"].dtype == np.float32 and ds["cloud_mask"].dtype == np.uint8
    assert isinstance(ds["image"].data, da.Array) and isinstance(ds["cloud_mask"].data, da.Array)
    assert list(ds["channel"].values) == [f"S{i}" for i in range(1, 10)]
    assert ds["time"].dtype.kind == "M"


def test_root_from_environment_variable(root_with_ds1, monkeypatch):
    monkeypatch.setenv("SCIBENCH_DATA_ROOT", str(root_with_ds1))
    ds = intake.open_catalog(scibench_data.catalog_path()).cloudmask_ds1.to_dask()
    assert ds.sizes["scene"] == 3


def test_catalog_parameter_beats_the_environment(root_with_ds1, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SCIBENCH_DATA_ROOT", str(tmp_path_factory.mktemp("empty")))
    with pytest.raises(FileNotFoundError):
        open_catalog().cloudmask_ds1.to_dask()
    assert open_catalog(root=str(root_with_ds1)).cloudmask_ds1.to_dask().sizes["scene"] == 3


def test_default_root_is_home(monkeypatch, tmp_path):
    monkeypatch.delenv("SCIBENCH_DATA_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    loc = entry_location(open_catalog(), "cloudmask_ds2")
    assert loc.url == f"{tmp_path}/scibench-data/cloudmask_ds2.zarr"


def test_entry_metadata_says_what_a_user_needs():
    cat = open_catalog(root="/nowhere")
    for name in ("cloudmask_ds1", "cloudmask_ds2"):
        md = entry_metadata(cat, name)
        for key in ("description", "citation", "doi", "license", "source", "n_scenes", "uncompressed_size_bytes",
                    "compressed_size_bytes_estimate", "chunks", "benchmark"):
            assert md.get(key), (name, key)
        assert md["benchmark"] == "cloudmask"
        dims = md["dims"]
        # uncompressed size is what the dims and dtypes say it is
        assert md["uncompressed_size_bytes"] == dims["scene"] * dims["y"] * dims["x"] * (9 * 4 + 2)


def test_incomplete_store_does_not_open(root_with_ds1):
    import json

    zj = root_with_ds1 / "cloudmask_ds1.zarr" / "zarr.json"
    meta = json.loads(zj.read_text())
    meta.pop("consolidated_metadata")
    zj.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="[Cc]onsolidated"):
        open_catalog(root=str(root_with_ds1)).cloudmask_ds1.to_dask()


@pytest.mark.parametrize("env_root", [None, "/data/scibench"])
def test_the_catalog_template_and_default_root_name_the_same_folder(env_root, tmp_path, monkeypatch):
    """The default root is declared in ``catalog.default_root``; the template, which intake renders
    without our code, must say the same for every entry (``$SCIBENCH_DATA_ROOT``, else ``$HOME/scibench-data``)."""
    from scibench_data.catalog import default_root, store_url

    monkeypatch.setenv("HOME", str(tmp_path))
    if env_root:
        monkeypatch.setenv("SCIBENCH_DATA_ROOT", env_root)
    else:
        monkeypatch.delenv("SCIBENCH_DATA_ROOT", raising=False)
    cat = intake.open_catalog(scibench_data.catalog_path())
    entries = list(cat)
    assert entries
    rendered = {e: getattr(cat, e).urlpath for e in entries}
    assert rendered == {e: store_url(e) for e in entries}
    assert default_root() == (env_root or str(tmp_path / "scibench-data"))


def test_the_default_root_is_built_in_one_place():
    """Only ``catalog.default_root`` turns ``$HOME`` into a folder for the stores."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "scibench_data"
    hits = [str(p.relative_to(root)) for p in sorted(root.rglob("*.py"))
            if any(s in p.read_text() for s in ("Path.home()", "expanduser(", "environ[\"HOME\"]", "getenv(\"HOME\")"))]
    assert hits == ["catalog.py"]
