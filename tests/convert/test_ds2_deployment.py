"""Issue 19, item 1: DS2 on a cluster we did not start (`dask scheduler` + `dask worker` processes).

Each cluster here is real: a scheduler and workers started as subprocesses with the `dask` command,
reached by address, with dask's default settings (as on a user's cluster). A node that cannot see a
path runs in its own mount namespace (`unshare`) where that folder is an empty one, which is what a
node without the shared file system sees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from scibench_data.cluster import PreflightError, problems
from scibench_data.convert.cloudmask import (
    CloudMaskConversion,
    ConvertProduct,
    SourceUnavailableError,
    convert_cloudmask,
)
from scibench_data.formats import SourceFormatError
from scibench_data.formats.cloudmask import discover_products
from scibench_data.parallel import run_tasks, worker_slots
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import store_state

REPO = Path(__file__).resolve().parents[2]
DASK = shutil.which("dask")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(DASK is None, reason="the `dask` command is not installed")]


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True, check=False)
    return done.returncode == 0


def _hide(folder: Path, empty: Path) -> list[str]:
    """A command prefix that runs the rest with ``folder`` replaced by the empty folder ``empty``."""
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
            f'mount --bind "{empty}" "{folder}" && exec "$@"', "hide"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DASK_"))}
    # the workers unpickle this module's task functions by its name: its own folder goes on their path
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), str(Path(__file__).resolve().parent)])
    env.update(extra)
    return env


@contextmanager
def external_cluster(tmp: Path, workers: list[list[str]], scheduler_env: dict | None = None,
                     worker_env: dict | None = None):
    """Address of a `dask scheduler` with one 1-thread `dask worker` per entry of ``workers`` (each a
    command prefix, e.g. :func:`_hide`); everything is stopped by its own process id."""
    from distributed import Client

    tmp.mkdir(parents=True, exist_ok=True)
    info = tmp / "scheduler.json"
    logs = ExitStack()  # the processes' stderr files, closed with the cluster
    procs = [subprocess.Popen([DASK, "scheduler", "--scheduler-file", str(info), "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard"], env=scheduler_env or _env(), cwd=tmp,
                              stdout=subprocess.DEVNULL, stderr=logs.enter_context(open(tmp / "scheduler.log", "w")))]
    try:
        deadline = time.monotonic() + 120
        while not info.exists() or not info.read_text().strip():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError("scheduler did not start: " + (tmp / "scheduler.log").read_text()[-2000:])
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        for i, prefix in enumerate(workers):
            procs.append(subprocess.Popen([*prefix, DASK, "worker", "--scheduler-file", str(info), "--nthreads", "1",
                                           "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}"],
                                          env=worker_env or _env(), cwd=tmp, stdout=subprocess.DEVNULL,
                                          stderr=logs.enter_context(open(tmp / f"worker{i}.log", "w"))))
        with Client(address) as client:
            client.wait_for_workers(len(workers), timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()


@pytest.fixture(scope="module")
def plain_cluster(tmp_path_factory):
    """Two 1-thread workers with dask's defaults (worker-saturation 1.1, profiler on)."""
    with external_cluster(tmp_path_factory.mktemp("plain"), [[], []]) as address:
        yield address


def _tasks_held_by_this_worker(item: int) -> int:
    """Task body: how many of our tasks the worker running it holds (executing or waiting to)."""
    from distributed import get_worker

    worker = get_worker()
    held = sum(1 for ts in worker.state.tasks.values()
               if str(ts.key).startswith("task-") and ts.state in ("executing", "ready", "constrained", "waiting"))
    time.sleep(0.4)  # long enough for a queued second task to arrive
    return held


def test_a_one_thread_worker_of_an_external_cluster_holds_one_product_at_a_time(plain_cluster):
    """Issue 19: 'on an external one 2 tasks sat queued per 1-thread worker' (dask's default
    worker-saturation 1.1 rounds up to 2 tasks per thread)."""
    results = run_tasks(_tasks_held_by_this_worker, list(range(8)), [f"p{i}" for i in range(8)],
                        scheduler=plain_cluster, progress=False)
    assert all(r.ok for r in results), [r.error for r in results]
    assert max(r.value for r in results) == 1, sorted(r.value for r in results)


def _mark_started(item: tuple[str, int]) -> int:
    """Task body: leave a file saying this item's task has started."""
    folder, i = item
    Path(folder, f"started-{i}").touch()
    return i


def test_a_slow_result_handler_does_not_keep_the_worker_idle(plain_cluster, tmp_path):
    """The client handled a finished task's result (progress, the inventory checkpoint, which on S3
    uploads an object that grows with the run) before it submitted the worker's next task, so the
    worker sat idle for as long as the handler took, and for the round trip fetching the result.
    The next task must be on its way before the handler runs: here the handler waits (up to 20 s)
    for the next item's task to start."""
    waited = []

    def on_result(r):
        if waited:  # the first result only: by then the third item's task must be on its way
            return
        third = tmp_path / "started-2"
        deadline = time.monotonic() + 20
        while not third.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        waited.append(third.exists())

    # two 1-thread workers: the first two items start at once, the third when one of them is done
    results = run_tasks(_mark_started, [(str(tmp_path), i) for i in range(3)], ["p0", "p1", "p2"],
                        scheduler=plain_cluster, progress=False, on_result=on_result)
    assert all(r.ok for r in results), [r.error for r in results]
    assert waited == [True], "the next task was submitted only after the result handler returned"


def test_worker_slots_are_threads_bounded_by_memory():
    workers = {"a": {"nthreads": 4, "memory_limit": 2 << 30}, "b": {"nthreads": 1, "memory_limit": 0},
               "c": {"nthreads": 2, "memory_limit": 100 << 20}}
    assert worker_slots(workers, task_memory=1 << 30) == {"a": 2, "b": 1, "c": 1}
    assert worker_slots(workers) == {"a": 4, "b": 1, "c": 2}


def test_unreachable_scheduler_is_one_line_and_writes_no_store(cloudmask_raw, tmp_path):
    """Issue 19: 'an unreachable scheduler is reported after 37 s as a "storage error", after the
    store's metadata was already written'."""
    import dask

    dest = tmp_path / "x.zarr"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), \
            pytest.raises(ConnectionError, match="cannot reach the dask scheduler at 'tcp://127.0.0.1:9'") as err:
        convert_cloudmask(str(cloudmask_raw["hdf"]), str(dest),
                          CloudMaskConversion(layout="hdf", scheduler="tcp://127.0.0.1:9", progress=False))
    assert "\n" not in str(err.value)
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_unreachable_scheduler_on_the_command_line_is_one_line_and_writes_no_store(cloudmask_raw, tmp_path):
    dest = tmp_path / "x.zarr"
    done = subprocess.run([sys.executable, "-m", "scibench_data.cli", "convert", "cloudmask", "--layout", "hdf",
                           str(cloudmask_raw["hdf"]), str(dest), "--scheduler", "tcp://127.0.0.1:9", "--no-progress"],
                          capture_output=True, text=True, env=_env(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="1s"),
                          timeout=300, check=False)
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and "cannot reach the dask scheduler at 'tcp://127.0.0.1:9'" in said[0], done.stderr
    assert "storage error" not in done.stderr and not dest.exists()


needs_unshare = pytest.mark.skipif(not _unshare_works(), reason="unshare --user --mount is not allowed here")


@needs_unshare
def test_preflight_names_the_worker_that_cannot_see_the_sources(cloudmask_raw, tmp_path):
    from distributed import Client

    src = tmp_path / "shared" / "raw"
    shutil.copytree(cloudmask_raw["sen3"], src)
    empty = tmp_path / "empty"
    empty.mkdir()
    dest = tmp_path / "out" / "ds2.zarr"
    with external_cluster(tmp_path / "cluster", [[], _hide(src, empty)]) as address:
        with Client(address) as client:
            blind = next(a for a, name in client.run(lambda dask_worker: dask_worker.name).items() if name == "w1")
        with pytest.raises(PreflightError) as err:
            convert_cloudmask(str(src), str(dest), CloudMaskConversion(layout="sen3", scheduler=address,
                                                                       progress=False))
    said = str(err.value)
    assert "\n" not in said and f"worker {blind} cannot read the source" in said, said
    assert "w0" not in said and not dest.exists() and not list(dest.parent.iterdir())


@needs_unshare
def test_preflight_names_the_worker_that_cannot_see_the_destination(cloudmask_raw, tmp_path):
    """Issue 19: 'a destination invisible on a worker gives GroupNotFoundError' (after the metadata was
    written): the worker writes its own folder of that name, the client's files are not there."""
    from distributed import Client

    out = tmp_path / "out"
    out.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    dest = out / "ds2.zarr"
    with external_cluster(tmp_path / "cluster", [_hide(out, empty), []]) as address:
        with Client(address) as client:
            blind = next(a for a, name in client.run(lambda dask_worker: dask_worker.name).items() if name == "w0")
        with pytest.raises(PreflightError) as err:
            convert_cloudmask(str(cloudmask_raw["hdf"]), str(dest),
                              CloudMaskConversion(layout="hdf", scheduler=address, progress=False))
    said = str(err.value)
    assert "\n" not in said and f"worker {blind} cannot see the destination" in said, said
    assert list(out.iterdir()) == [] and list(empty.iterdir()) == []  # the probes are gone, no store


def test_preflight_names_a_scheduler_with_another_scibench_data(cloudmask_raw, tmp_path):
    """Issue 19: the scheduler needs scibench-data too ('Error during deserialization of the task
    graph'); here it imports another version of it."""
    other = tmp_path / "other" / "scibench_data"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text('__version__ = "0.0.1"\n')
    shutil.copy(REPO / "scibench_data" / "cluster.py", other / "cluster.py")
    dest = tmp_path / "x.zarr"
    env = {**_env(), "PYTHONPATH": str(other.parent)}
    with external_cluster(tmp_path / "cluster", [[]], scheduler_env=env) as address, \
            pytest.raises(PreflightError, match=r"the scheduler imports scibench-data 0\.0\.1 \(code [0-9a-f]+\), "
                                                r"this machine"):
            convert_cloudmask(str(cloudmask_raw["hdf"]), str(dest),
                              CloudMaskConversion(layout="hdf", scheduler=address, progress=False))
    assert not dest.exists()


def test_problems_name_each_node_in_one_line():
    me = "1.0 (code aaa)"
    found = problems(me, "ModuleNotFoundError: No module named 'scibench_data'",
                     {"tcp://b:2": {"identity": me, "source": "cannot read the source /x (PermissionError: no)"},
                      "tcp://a:1": {"identity": "0.9 (code bbb)"}, "tcp://c:3": {"identity": me},
                      "tcp://d:4": ModuleNotFoundError("No module named 'scibench_data'")})
    assert found == [
        ("the scheduler cannot run scibench-data's check (ModuleNotFoundError: No module named 'scibench_data'); "
         "install this scibench-data on the scheduler too (it deserializes the tasks)"),
        "worker tcp://a:1 imports scibench-data 0.9 (code bbb), this machine 1.0 (code aaa)",
        "worker tcp://b:2 cannot read the source /x (PermissionError: no)",
        ("worker tcp://d:4 cannot run scibench-data's check (ModuleNotFoundError: No module named 'scibench_data'); "
         "install this scibench-data on every worker")]


def test_a_product_invisible_on_a_worker_is_not_reported_as_bad_input(cloudmask_raw, tmp_path):
    """Issue 19: 'sources invisible on a worker are reported as bad input (SourceFormatError: ...
    missing file in product folder, not retried)'."""
    import fsspec

    from scibench_data.parallel import attempt

    src = tmp_path / "raw"
    shutil.copytree(cloudmask_raw["sen3"], src)
    fs = fsspec.filesystem("file")
    products, _ = discover_products(fs, str(src), "sen3")
    shutil.rmtree(products[0].path)  # listed by the client, absent where the task runs
    task = ConvertProduct(StoreLocation(str(tmp_path / "x.zarr")), str(src), {}, (64, 96))
    with pytest.raises(SourceUnavailableError, match="not visible on") as err:
        task((0, products[0]))
    assert not isinstance(err.value, SourceFormatError)
    result = attempt(task, (0, products[0]), products[0].name.name, retries=2)
    assert not result.ok and result.attempts == 3 and "SourceUnavailableError" in result.error


@pytest.fixture(scope="module")
def aws_profile(tmp_path_factory, s3_endpoint):
    """A shared ~/.aws (config + credentials files) holding profile ``ds2`` for the local S3 server,
    with a bucket holding the three sen3 products; no AWS_* variable names the endpoint."""
    home = tmp_path_factory.mktemp("aws")
    (home / "credentials").write_text("[ds2]\naws_access_key_id = test\naws_secret_access_key = test\n")
    (home / "config").write_text("[profile ds2]\n")
    return {"AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"), "AWS_CONFIG_FILE": str(home / "config")}


def test_convert_and_subset_on_the_command_line_ship_s3_options_to_the_workers(cloudmask_raw, cloudmask_stores,
                                                                                 s3_endpoint, aws_profile, tmp_path):
    """The workers have no endpoint and no credentials in their environment, only the shared ~/.aws:
    `--endpoint-url` and `--profile` travel with the tasks."""
    import s3fs
    import xarray as xr

    fs = s3fs.S3FileSystem(key="test", secret="test", client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("deploy")
    fs.put(str(cloudmask_raw["sen3"]) + "/", "deploy/raw/", recursive=True)
    env = _env(**aws_profile)
    with external_cluster(tmp_path / "cluster", [[], []], worker_env=env) as address:
        cmd = [sys.executable, "-m", "scibench_data.cli", "convert", "cloudmask", "--layout", "sen3",
               "s3://deploy/raw", "s3://deploy/cloudmask_ds2.zarr", "--scheduler", address, "--endpoint-url", s3_endpoint,
               "--profile", "ds2", "--no-progress"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        subset = subprocess.run([sys.executable, "-m", "scibench_data.cli", "subset", "cloudmask_ds2",
                                 "--root", "s3://deploy", "--scenes", "0:2", "--window", "0:32,0:32",
                                 "--to", "s3://deploy/week.zarr", "--scheduler", address, "--endpoint-url",
                                 s3_endpoint, "--profile", "ds2", "--no-progress"],
                                capture_output=True, text=True, env=env, timeout=1800, check=False)
    so = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": s3_endpoint}}
    assert store_state(StoreLocation("s3://deploy/cloudmask_ds2.zarr", so)).complete
    got = xr.open_zarr(fs.get_mapper("deploy/cloudmask_ds2.zarr"), consolidated=True).load()
    want = xr.open_zarr(cloudmask_stores["sen3"], consolidated=True).load()
    xr.testing.assert_equal(got["image"], want["image"])
    assert subset.returncode == 0, subset.stdout[-2000:] + subset.stderr[-2000:]
    assert store_state(StoreLocation("s3://deploy/week.zarr", so)).complete


def test_s3_options_from_the_command_line():
    import argparse

    from scibench_data.cli.common import add_s3_options, s3_storage_options

    p = argparse.ArgumentParser()
    add_s3_options(p)
    args = p.parse_args(["--endpoint-url", "http://s3.local:9000", "--profile", "hpc", "--anon"])
    assert s3_storage_options(args, source=True) == {"client_kwargs": {"endpoint_url": "http://s3.local:9000"},
                                                     "anon": True}
    assert s3_storage_options(args, source=False) == {"client_kwargs": {"endpoint_url": "http://s3.local:9000"},
                                                      "profile": "hpc"}
    assert s3_storage_options(p.parse_args([]), source=True) == {}


def test_the_slurm_recipe_of_the_docs_renders_the_intended_job_script(capsys):
    """docs/ds2.md's dask-jobqueue block, run up to where it would submit jobs (no SLURM here): one
    job is 8 one-thread workers of 4 GB with the memory variables set; the page's block test skips
    it (fenced ``python cluster``)."""
    import re

    pytest.importorskip("dask_jobqueue")
    page = (REPO / "docs" / "ds2.md").read_text()
    blocks = re.findall(r"^```python cluster\n(.*?)^```", page, re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1
    setup, _, submit = blocks[0].partition("# --- submit (needs SLURM) ---")
    assert "cluster.scale(" in submit and "scheduler=cluster.scheduler_address" in submit
    namespace: dict = {}
    exec(compile(setup, "docs/ds2.md#slurm", "exec"), namespace)  # noqa: S102 - the page's own code
    cluster = namespace["cluster"]
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert script in capsys.readouterr().out  # the block prints it
    assert "#SBATCH --cpus-per-task=8" in script and "#SBATCH -p compute" in script
    worker = next(line for line in script.splitlines() if "dask_worker" in line)
    assert worker.startswith("/shared/venvs/scibench/bin/python -m distributed.cli.dask_worker")
    assert "--nthreads 1" in worker and "--nworkers 8" in worker and "--memory-limit 3.73GiB" in worker
    assert "export MALLOC_TRIM_THRESHOLD_=536870912 MALLOC_MMAP_THRESHOLD_=536870912 MALLOC_TOP_PAD_=67108864 MALLOC_ARENA_MAX=1" \
        in script.splitlines()
    assert script.index("source /shared/venvs/scibench/bin/activate") < script.index("dask_worker")


def _die_once(item: tuple[int, str]) -> int:
    """Task body: the first time item 0 runs, its worker process dies (as an OOM-killed one would)."""
    index, marker = item
    if index == 0 and not os.path.exists(marker):
        Path(marker).write_text("died")
        os._exit(1)
    time.sleep(0.2)
    return index


def test_a_product_bound_to_a_worker_that_dies_runs_on_another(plain_cluster, tmp_path):
    """Tasks go to a worker with a free slot, bound loosely: when that worker dies, its product is
    not stranded waiting for it; it runs elsewhere and every item completes."""
    marker = str(tmp_path / "died")
    items = [(i, marker) for i in range(6)]
    results = run_tasks(_die_once, items, [f"p{i}" for i in range(6)], scheduler=plain_cluster, progress=False)
    assert Path(marker).exists()
    assert sorted(r.value for r in results if r.ok) == list(range(6)), [r.error for r in results]
