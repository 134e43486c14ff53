"""Run one task per item with Dask, with retries, a progress bar and per-item failures.

The same code runs on Dask's local threaded scheduler, on a
``dask.distributed.LocalCluster`` or on an existing cluster given by its
scheduler address (e.g. one started by dask-jobqueue or on Kubernetes).

Worker processes are tuned for tasks that decode and encode whole products
(see ``docs/ds2.md`` for the profile behind this): one thread per worker, no
nested thread pools (BLAS/OpenMP, Blosc, zarr's codec threads) and no
statistical profiler sampling the task thread every 10 ms under the GIL.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask
import numcodecs.blosc
import numpy as np
import zarr
from dask.callbacks import Callback
from tqdm.auto import tqdm

from scibench_data.formats import SourceFormatError
from scibench_data.progress import bar_disable
from scibench_data.storage.store.records import StoreFullError, is_full_disk

LOCAL_SCHEDULERS = ("sync", "threads")

#: Environment of every worker process we start: one thread per library, and glibc malloc told
#: to keep freed memory for the next product. Dask's default (``MALLOC_TRIM_THRESHOLD_=65536``)
#: hands every freed array back to the kernel, so each product's 50-200 MB of arrays were
#: page-faulted and zeroed again: measured here, 0.52 -> 0.37 CPU-s per full-size hdf product
#: and 2.40 -> 1.96 per sen3 product, for a flat peak RSS ~70-160 MB higher (docs/ds2.md).
#: One malloc arena: tasks run off the main thread, and a thread's own arena holds heaps of at most
#: 64 MB, so a bigger array (a full-size scene's image, an hdf product's bytes) was mapped and
#: faulted in afresh for every product whatever the thresholds (2-4.6 CPU-s of system time on a
#: worker's first products here; tests/convert/test_worker_memory.py). NumPy asks for no transparent
#: huge pages: with the kernel's default defrag=madvise each first touch of a 2 MB page compacted
#: memory (~1 ms a fault here, 0.15-0.3 CPU-s per sen3 product).
WORKER_ENV: dict[str, str] = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    "BLOSC_NTHREADS": "1", "ZARR_THREADING__MAX_WORKERS": "1",
    "MALLOC_TRIM_THRESHOLD_": str(512 << 20), "MALLOC_MMAP_THRESHOLD_": str(512 << 20),
    "MALLOC_TOP_PAD_": str(64 << 20), "MALLOC_ARENA_MAX": "1", "NUMPY_MADVISE_HUGEPAGE": "0",
}
#: Dask configuration of the workers we start (passed to spawned workers by the nanny).
WORKER_CONFIG: dict[str, object] = {
    "distributed.worker.profile.enabled": False,
    # one task per product and one thread per worker: hand a worker its next product only when it
    # is free (the default 1.1 lets one worker queue two while another idles at the end of a run)
    "distributed.scheduler.worker-saturation": 1.0,
    "distributed.nanny.pre-spawn-environ": WORKER_ENV,
}


@contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """This process's environment with ``values`` set (None: unset), restored on exit.

    Around starting a ``LocalCluster``: distributed's nanny prefers a variable already in
    ``os.environ`` over its ``pre-spawn-environ`` config, and writes that config into
    ``os.environ`` for good when it spawns a worker, so after a first cluster in a process
    (ours or anyone's) the next one would silently get the first one's ``MALLOC_*`` settings."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def limit_worker_threads() -> dict[str, object]:
    """Make this process single-threaded below the task: Blosc and zarr's codec pool use one
    thread. Safe to call repeatedly; returns what it set."""
    numcodecs.blosc.set_nthreads(1)
    numcodecs.blosc.use_threads = False
    zarr.config.set({"threading.max_workers": 1})
    return {"blosc_nthreads": 1, "zarr_threading_max_workers": 1}


def numpy_without_huge_pages() -> None:
    """What ``NUMPY_MADVISE_HUGEPAGE=0`` (:data:`WORKER_ENV`) does, for a process that imported NumPy
    already (NumPy reads the variable only at import)."""
    setter = getattr(getattr(getattr(np, "_core", None), "multiarray", None), "_set_madvise_hugepage", None)
    if setter is not None:
        setter(False)


def _worker_plugin() -> Any:
    """A plugin that tunes every worker of a cluster (also one we did not start)."""
    # distributed costs seconds to import; threads runs never need it
    from distributed.diagnostics.plugin import WorkerPlugin

    class SingleThreadedTasks(WorkerPlugin):
        name = "scibench-single-threaded-tasks"

        def setup(self, worker: Any) -> None:
            for name, value in WORKER_ENV.items():  # for libraries that read them late (MALLOC_* cannot)
                os.environ.setdefault(name, value)
            limit_worker_threads()
            numpy_without_huge_pages()
            # the statistical profiler samples the running task's stack every 10 ms from the
            # event loop thread; for GIL-bound decoding that costs CPU and stalls the task
            for key in ("profile", "profile-cycle"):
                pc = worker.periodic_callbacks.pop(key, None)
                if pc is not None:
                    pc.stop()

    return SingleThreadedTasks()


@dataclass(frozen=True)
class TaskResult:
    """What happened to one item."""

    key: str
    ok: bool
    value: Any = None
    error: str = ""
    attempts: int = 1
    full_disk: bool = False  # the item failed writing to a full disk (not retried)


def attempt(fn: Callable[[Any], Any], item: Any, key: str, retries: int) -> TaskResult:
    """Call ``fn(item)`` up to ``1 + retries`` times; never raises."""
    last = ""
    for n in range(1, retries + 2):
        try:
            return TaskResult(key=key, ok=True, value=fn(item), attempts=n)
        except Exception as err:  # noqa: BLE001 - reported per item, by name
            last = f"{type(err).__name__}: {err}"
            if isinstance(err, StoreFullError) or is_full_disk(err):
                said = str(err) if isinstance(err, StoreFullError) else (
                    f"out of space ({last}); the store stays incomplete: free space and rerun the same command "
                    "to finish it")
                return TaskResult(key=key, ok=False, error=said, attempts=n, full_disk=True)
            if _is_permanent(err):
                return TaskResult(key=key, ok=False, error=last, attempts=n)
    return TaskResult(key=key, ok=False, error=last, attempts=retries + 1)


def _is_permanent(err: Exception) -> bool:
    """Bad input will not get better by retrying."""
    return isinstance(err, (SourceFormatError, ValueError, KeyError, TypeError))


class SchedulerUnreachableError(ConnectionError):
    """The dask scheduler at the given address did not answer (nothing was written)."""


def is_address(scheduler: str) -> bool:
    """True for the address of an existing dask scheduler (anything but our named schedulers)."""
    return scheduler not in (*LOCAL_SCHEDULERS, "local-cluster")


def connect(scheduler: str) -> Any:
    """A ``distributed.Client`` connected to the scheduler at ``scheduler``; an unreachable one is a
    one-line :class:`SchedulerUnreachableError` naming the address (after ``distributed.comm.timeouts.connect``)."""
    # distributed costs seconds to import; threads runs never need it
    from distributed import Client

    try:
        return Client(scheduler)
    except (OSError, TimeoutError) as err:
        raise SchedulerUnreachableError(f"cannot reach the dask scheduler at {scheduler!r}: "
                              f"{' '.join(str(err).split())}") from None


@contextmanager
def distributed_client(scheduler: str, n_workers: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: a new ``LocalCluster`` of processes for ``"local-cluster"``,
    else a connection to the scheduler at the given address."""
    # distributed costs seconds to import; threads runs never need it
    from distributed import Client, LocalCluster

    if scheduler == "local-cluster":
        if n_workers is not None and n_workers < 1:
            raise ValueError(f"--workers must be >= 1, got {n_workers}")
        with environment(WORKER_ENV), dask.config.set(WORKER_CONFIG), \
                LocalCluster(n_workers=n_workers or 2, threads_per_worker=1, processes=True,
                             dashboard_address=None) as cluster, Client(cluster) as client:
            client.register_plugin(_worker_plugin())
            yield client
    else:
        with connect(scheduler) as client:
            client.register_plugin(_worker_plugin())
            yield client


def worker_slots(workers: Mapping[str, Mapping[str, Any]], task_memory: int | None = None) -> dict[str, int]:
    """Tasks each worker may hold at once: one per thread, fewer where its ``memory_limit`` holds
    fewer tasks of ``task_memory`` bytes, and at least one. ``workers``: the scheduler's
    ``{address: {"nthreads": ..., "memory_limit": ...}}``."""
    slots = {}
    for address, info in workers.items():
        n = max(1, int(info.get("nthreads") or 1))
        limit = int(info.get("memory_limit") or 0)
        if task_memory and limit:
            n = min(n, max(1, limit // task_memory))
        slots[address] = n
    return slots


def _pick_worker(slots: Mapping[str, int], busy: Mapping[str, int]) -> str | None:
    """The worker with the most free slots (None when every slot is taken)."""
    free = {a: n - busy.get(a, 0) for a, n in slots.items()}
    best = max(free, key=lambda a: (free[a], a), default=None)
    return best if best is not None and free[best] > 0 else None


def _run_bounded(client: Any, fn: Callable[[Any], Any], items: Sequence[Any], keys: Sequence[str], retries: int,
                 task_memory: int | None, done: Callable[[TaskResult], None]) -> None:
    """Submit one task per item, never more at once than the workers have slots
    (:func:`worker_slots`), each to a worker with a free slot; the next goes out as one finishes,
    before that one's result is fetched and handled.

    This holds on any cluster, whatever its ``worker-saturation``: a 1-thread worker holds one
    product, not two queued. A task is bound to its worker loosely (``allow_other_workers``), so
    a worker that dies does not strand it; the slots are read again from the scheduler as workers
    come and go."""
    # distributed costs seconds to import; threads runs never need it
    from distributed import as_completed

    pending = list(zip(items, keys))[::-1]
    busy: Counter[str] = Counter()
    placed: dict[Any, tuple[str | None, str]] = {}
    ac = as_completed()

    def fill() -> None:
        slots = worker_slots(client.scheduler_info().get("workers", {}), task_memory)
        while pending:
            address = _pick_worker(slots, busy)
            if address is None and placed:
                return
            item, key = pending.pop()
            future = client.submit(attempt, fn, item, key, retries, key=f"task-{key}", pure=False,
                                   workers=[address] if address else None, allow_other_workers=True)
            if address:
                busy[address] += 1
            placed[future.key] = (address, key)
            ac.add(future)
            if address is None:  # no worker yet: one task waits at the scheduler for the first
                return

    fill()
    for future in ac:
        address, key = placed.pop(future.key)
        if address:
            busy[address] -= 1
        # the freed slot's next task goes out first: fetching this result and handling it (progress,
        # the inventory checkpoint, an upload on S3) must not keep that worker idle
        fill()
        try:
            done(future.result())
        except Exception as err:  # noqa: BLE001 - a worker died (e.g. KilledWorker): say which item
            done(TaskResult(key=key, ok=False, error=f"worker failed: {type(err).__name__}: {err}"))
        finally:
            future.release()


def run_tasks(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    keys: Sequence[str],
    *,
    scheduler: str = "threads",
    n_workers: int | None = None,
    retries: int = 1,
    desc: str = "tasks",
    unit: str = "item",
    progress: bool = True,
    on_result: Callable[[TaskResult], None] | None = None,
    bytes_of: Callable[[Any], int] | None = None,
    task_memory: int | None = None,
) -> list[TaskResult]:
    """Run ``fn`` on every item, in parallel, and return one :class:`TaskResult` per item
    (in completion order). A failing item is retried, then reported; the rest go on. An item
    that failed on a full disk is not retried, and once all are done the run raises one
    :class:`~scibench_data.storage.store.records.StoreFullError` line instead (the items written stay
    written; the same command resumes once there is space).

    ``scheduler``: ``"sync"``, ``"threads"``, ``"local-cluster"`` or a scheduler address
    such as ``"tcp://10.0.0.5:8786"``. The progress bar shows items done, rate and ETA,
    and with ``bytes_of`` (bytes of a successful result's value) the bytes and MB/s.
    On a cluster, items travel to the workers and only the (small) results come back, and no
    worker holds more tasks than it has threads, nor more than its ``memory_limit`` holds tasks
    of ``task_memory`` bytes (:func:`_run_bounded`), whatever the cluster's own settings.
    """
    if len(items) != len(keys):
        raise ValueError(f"{len(items)} items but {len(keys)} keys")
    results: list[TaskResult] = []
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=bar_disable(progress), dynamic_ncols=True)
    t0, n_bytes = time.perf_counter(), 0

    def done(r: TaskResult) -> None:
        nonlocal n_bytes
        results.append(r)
        if r.ok and bytes_of is not None:
            n_bytes += int(bytes_of(r.value))
            rate = n_bytes / max(time.perf_counter() - t0, 1e-9) / 1e6
            bar.set_postfix_str(f"{n_bytes / 1e6:.0f} MB, {rate:.1f} MB/s", refresh=False)
        bar.update(1)
        if not r.ok:
            bar.write(f"failed: {r.key}: {r.error}")
        if on_result is not None:
            on_result(r)

    try:
        if scheduler in LOCAL_SCHEDULERS:
            names = {f"task-{i}" for i in range(len(items))}

            class _Report(Callback):  # dask runs _posttask in the calling thread
                def _posttask(self, key, result, dsk, state, worker_id):
                    if key in names:
                        done(result)

            tasks = [dask.delayed(attempt, pure=False)(fn, it, k, retries, dask_key_name=f"task-{i}")
                     for i, (it, k) in enumerate(zip(items, keys))]
            with _Report():
                dask.compute(*tasks, scheduler=scheduler, num_workers=n_workers)
        else:
            with distributed_client(scheduler, n_workers) as client:
                _run_bounded(client, fn, items, keys, retries, task_memory, done)
    finally:
        bar.close()
    full = [r for r in results if r.full_disk]
    if full:
        raise StoreFullError(f"{len(full)} {unit}(s) not written: {full[0].error}")
    return results
