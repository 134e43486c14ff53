"""CloudMask DS2 conversion on dask.distributed: same store as the threaded scheduler, failures by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest
import xarray as xr

from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
from scibench_data.formats.cloudmask import ProductName
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import RecordStore, store_state


def _products(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix in (".hdf", ".SEN3")),
                  key=lambda p: (ProductName.parse(p.name).start, p.name))


def test_local_cluster_with_two_processes_equals_threaded_store(cloudmask_raw, cloudmask_stores, tmp_path):
    dest = tmp_path / "cluster.zarr"
    report = convert_cloudmask(str(cloudmask_raw["sen3"]), str(dest),
                               CloudMaskConversion(layout="sen3", scheduler="local-cluster", n_workers=2,
                                                   progress=False))
    assert report.ok and len(report.converted) == 3, report.lines()
    a = xr.open_zarr(dest, consolidated=True).load()
    b = xr.open_zarr(cloudmask_stores["sen3"], consolidated=True).load()
    xr.testing.assert_identical(a, b)  # arrays, coordinates (incl. source_sha256) and attributes
    markers_a = RecordStore(StoreLocation(str(dest)), "scene").done()
    markers_b = RecordStore(StoreLocation(str(cloudmask_stores["sen3"])), "scene").done()
    assert markers_a == markers_b  # per-product provenance: digests of every file, sizes


@pytest.fixture(scope="module")
def cluster():
    """An existing cluster, reached by its address like a dask-jobqueue or Kubernetes one."""
    import dask
    from distributed import LocalCluster


    with dask.config.set({"distributed.worker.profile.enabled": True}):  # as a foreign cluster would be
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
            yield c


def test_failing_products_on_a_cluster_are_reported_by_name(cloudmask_raw, cluster, tmp_path):
    from distributed import Client

    src = tmp_path / "src"
    shutil.copytree(cloudmask_raw["hdf"], src)
    first, second, third = _products(src)
    first.write_bytes(first.read_bytes()[:2000])  # truncated HDF5
    with h5py.File(second, "a") as f:
        del f["bts"]
    dest = tmp_path / "out.zarr"
    report = convert_cloudmask(str(src), str(dest), CloudMaskConversion(layout="hdf", scheduler=cluster.scheduler_address,
                                                                        progress=False))
    failed = dict(report.failed)
    assert set(failed) == {first.name, second.name}
    assert "cannot be read" in failed[first.name] and "missing dataset 'bts'" in failed[second.name]
    assert report.converted == (ProductName.parse(third.name).stem,)
    assert not report.complete and not store_state(StoreLocation(str(dest))).complete
    # the workers of a cluster we did not start were tuned by our plugin: no 10 ms stack sampler
    with Client(cluster.scheduler_address) as client:
        sampling = client.run(lambda dask_worker: "profile" in dask_worker.periodic_callbacks)
    assert set(sampling.values()) == {False}


def test_unreachable_scheduler_is_a_clear_error(cloudmask_raw, tmp_path):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(ConnectionError, match="cannot reach the dask scheduler at 'tcp://127.0.0.1:9'"):
        convert_cloudmask(str(cloudmask_raw["hdf"]), str(tmp_path / "x.zarr"),
                          CloudMaskConversion(layout="hdf", scheduler="tcp://127.0.0.1:9", progress=False))


def _malloc_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}


def test_our_local_cluster_workers_get_our_environment_after_another_cluster():
    """distributed's nanny keeps a variable already in os.environ over its config: a default cluster
    started first must not leave its MALLOC_TRIM_THRESHOLD_ (65536) to ours, nor ours to the next."""
    import os

    from distributed import Client, LocalCluster

    from scibench_data.parallel import WORKER_ENV, distributed_client

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as c, Client(c) as cl:
        default = next(iter(cl.run(_malloc_env).values()))
    assert default.get("MALLOC_TRIM_THRESHOLD_") == "65536" and "MALLOC_MMAP_THRESHOLD_" not in default
    # after distributed's own cluster, which writes its pre-spawn variables into this process's environment
    # (so a test run alone saw them change here): ours must leave the environment as it found it
    before = {k: os.environ.get(k) for k in WORKER_ENV}
    with distributed_client("local-cluster", n_workers=1) as client:
        ours = next(iter(client.run(_malloc_env).values()))
    assert ours == {k: v for k, v in WORKER_ENV.items() if k.startswith("MALLOC_")}
    assert {k: os.environ.get(k) for k in WORKER_ENV} == before  # this process's environment is restored
