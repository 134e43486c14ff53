"""Every Python block of README.md and docs/*.md runs verbatim, saved as a script, in a fresh
interpreter, on the embedded default (``SCIBENCH_DATA_ROOT``) after the command the page says to
run first (issue 17, item 1). Small sizes keep it fast; the blocks themselves are not edited."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: ``scibench-data run cloudmask`` at test size (the README's first command, smaller and shorter).
RUN_CLOUDMASK = ["run", "cloudmask", "--products", "2", "--test-products", "1", "--height", "256", "--width", "320",
                 "--max-steps", "2", "-q"]


def python_blocks() -> list[tuple[str, int, str]]:
    """(page, index, code) of every Python block."""
    return [(p.name if p.parent == REPO else f"docs/{p.name}", i, m.group(1))
            for p in PAGES for i, m in enumerate(BLOCK.finditer(p.read_text()))]


def _cli(args: list[str], env: dict) -> None:
    out = subprocess.run([sys.executable, "-m", "scibench_data.cli", *args], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-2000:])


@pytest.fixture(scope="module")
def embedded_default(tmp_path_factory) -> dict:
    """A root after ``scibench-data run cloudmask`` (small), the small DS2 store docs/ds2.md describes
    and a small STEMDL store."""
    root = tmp_path_factory.mktemp("embedded") / "scibench-data"
    env = {**os.environ, "SCIBENCH_DATA_ROOT": str(root), "PYTHONPATH": str(REPO)}
    env.pop("TQDM_DISABLE", None)  # the scripts run as a user's would
    _cli(RUN_CLOUDMASK, env)
    _cli(["generate", "cloudmask", "--layout", "sen3", "--products", "3", "--height", "256", "--width", "320",
          str(root / "raw" / "cloudmask_ds2")], env)
    _cli(["convert", "cloudmask", "--layout", "sen3", str(root / "raw" / "cloudmask_ds2"),
          str(root / "cloudmask_ds2.zarr"), "-q"], env)
    # the `stemdl` entry docs/stemdl.md reads (what `run stemdl` converts, smaller)
    _cli(["generate", "stemdl", "--layout", "raw", "--classes", "3", "--materials-per-class", "3",
          "--samples-per-material", "2", "--pattern", "64", "-q", str(root / "raw" / "stemdl")], env)
    _cli(["convert", "stemdl", str(root / "raw" / "stemdl"), str(root / "stemdl.zarr"), "--preprocess", "--size", "32", "-q"], env)
    return env


@pytest.fixture(scope="module")
def published(embedded_default, s3_endpoint) -> dict:
    """docs/storage.md's setup: the store published to s3://my-bucket/scibench on the local S3 server,
    with the endpoint and credentials in the AWS_* environment as that page exports them."""
    import s3fs

    env = {**embedded_default, "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test"}
    s3fs.S3FileSystem(key="test", secret="test", client_kwargs={"endpoint_url": s3_endpoint}).mkdir("my-bucket")
    store = Path(env["SCIBENCH_DATA_ROOT"]) / "cloudmask_ds1.zarr"
    _cli(["publish", "cloudmask_ds1", "--store", str(store), "--to", "s3://my-bucket/scibench", "--public", "-q"], env)
    return env


def test_every_page_has_its_python_blocks_found():
    found = {page for page, _, _ in python_blocks()}
    assert {"README.md", "docs/benchmarks.md", "docs/cloudmask.md", "docs/ds2.md", "docs/storage.md"} <= found


@pytest.mark.slow
@pytest.mark.parametrize("page,index,code", python_blocks(), ids=[f"{p}#{i}" for p, i, _ in python_blocks()])
def test_readme_and_docs_python_blocks_run_verbatim_as_scripts(page, index, code, embedded_default, request,
                                                                tmp_path):
    env = request.getfixturevalue("published") if page == "docs/storage.md" else embedded_default
    script = tmp_path / f"block_{index}.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, f"{page} block {index} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"


@pytest.mark.slow
def test_the_demo_store_run_wrote_is_marked_synthetic_and_verifies(embedded_default):
    """`run cloudmask` used to mark its store synthetic after it was finished, so its root no longer
    matched the manifest and `verify --store` failed on the README's own demo store."""
    import xarray as xr

    store = Path(embedded_default["SCIBENCH_DATA_ROOT"]) / "cloudmask_ds1.zarr"
    assert xr.open_zarr(store).attrs["scibench_synthetic"] == "scibench_data.synthetic.cloudmask"
    done = subprocess.run([sys.executable, "-m", "scibench_data.cli", "verify", "--store", str(store)],
                          capture_output=True, text=True, env=embedded_default, timeout=300)
    assert done.returncode == 0 and "all match the manifest" in done.stdout, done.stdout + done.stderr
