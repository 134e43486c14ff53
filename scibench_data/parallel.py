"""Run one task per item with Dask, with retries, a progress bar and per-item failures.

The same code runs on Dask's local threaded scheduler, on a
``dask.distributed.LocalCluster`` or on an existing cluster given by its
scheduler address (e.g. one started by dask-jobqueue or on Kubernetes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask
from tqdm.auto import tqdm

LOCAL_SCHEDULERS = ("sync", "threads")


@dataclass(frozen=True)
class TaskResult:
    """What happened to one item."""

    key: str
    ok: bool
    value: Any = None
    error: str = ""
    attempts: int = 1


def attempt(fn: Callable[[Any], Any], item: Any, key: str, retries: int) -> TaskResult:
    """Call ``fn(item)`` up to ``1 + retries`` times; never raises."""
    last = ""
    for n in range(1, retries + 2):
        try:
            return TaskResult(key=key, ok=True, value=fn(item), attempts=n)
        except Exception as err:  # noqa: BLE001 - reported per item, by name
            last = f"{type(err).__name__}: {err}"
            if _is_permanent(err):
                return TaskResult(key=key, ok=False, error=last, attempts=n)
    return TaskResult(key=key, ok=False, error=last, attempts=retries + 1)


def _is_permanent(err: Exception) -> bool:
    """Bad input will not get better by retrying."""
    from scibench_data.formats import SourceFormatError

    return isinstance(err, (SourceFormatError, ValueError, KeyError, TypeError))


@contextmanager
def distributed_client(scheduler: str, n_workers: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: a new ``LocalCluster`` of processes for ``"local-cluster"``,
    else a connection to the scheduler at the given address."""
    from distributed import Client, LocalCluster

    if scheduler == "local-cluster":
        with LocalCluster(n_workers=n_workers or 2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
    else:
        with Client(scheduler) as client:
            yield client


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
) -> list[TaskResult]:
    """Run ``fn`` on every item, in parallel, and return one :class:`TaskResult` per item
    (in completion order). A failing item is retried, then reported; the rest go on.

    ``scheduler``: ``"sync"``, ``"threads"``, ``"local-cluster"`` or a scheduler address
    such as ``"tcp://10.0.0.5:8786"``.
    """
    if len(items) != len(keys):
        raise ValueError(f"{len(items)} items but {len(keys)} keys")
    results: list[TaskResult] = []
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)

    def done(r: TaskResult) -> None:
        results.append(r)
        bar.update(1)
        if not r.ok:
            bar.write(f"failed: {r.key}: {r.error}")
        if on_result is not None:
            on_result(r)

    try:
        if scheduler in LOCAL_SCHEDULERS:
            from dask.callbacks import Callback

            names = {f"task-{i}" for i in range(len(items))}

            class _Report(Callback):  # dask runs _posttask in the calling thread
                def _posttask(self, key, result, dsk, state, worker_id):  # noqa: ANN001
                    if key in names:
                        done(result)

            tasks = [dask.delayed(attempt, pure=False)(fn, it, k, retries, dask_key_name=f"task-{i}")
                     for i, (it, k) in enumerate(zip(items, keys))]
            with _Report():
                dask.compute(*tasks, scheduler=scheduler, num_workers=n_workers)
        else:
            from distributed import as_completed

            with distributed_client(scheduler, n_workers) as client:
                futures = client.map(attempt, [fn] * len(items), items, keys, [retries] * len(items),
                                     key=[f"task-{k}" for k in keys], pure=False)
                for f in as_completed(futures):
                    try:
                        done(f.result())
                    except Exception as err:  # noqa: BLE001 - a worker died: say which item
                        done(TaskResult(key=str(f.key).removeprefix("task-"), ok=False,
                                        error=f"worker failed: {type(err).__name__}: {err}"))
    finally:
        bar.close()
    return results
