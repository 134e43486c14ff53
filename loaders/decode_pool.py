"""The threads one process checks, decodes and places chunks on.

Blosc's decode and NumPy's copies and arithmetic release the GIL, so a batch's chunks can be
decoded on every core of the process that reads them. Blosc's own threads do not do this for
our chunks: a 2.4 MB chunk is five 512 KB blocks, and called from the main thread it ran at
1.0 core of 2 here (``docs/performance.md``). So :func:`loaders.chunk_reader.read_regions`
hands each chunk to a pool of its own:

- in a process reading batches itself (``num_workers=0``, a notebook, inference): as many
  threads as the cores it may run on, at most :data:`MAX_THREADS`;
- inside a torch DataLoader worker: none (the chunks are decoded on the worker's own thread),
  as torch does for its own threads there: the workers already share the cores;
- ``$SCIBENCH_DECODE_THREADS`` overrides both (``1``: no pool).

The pool is made once per process: a forked child makes its own (the parent's threads do not
survive a fork).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

THREADS_ENV = "SCIBENCH_DECODE_THREADS"
#: Most threads a process decodes on by default (more brought nothing measurable on a batch).
MAX_THREADS = 4
#: Smallest leading block :func:`split_apply` gives a thread (elementwise work below it is not split).
_MIN_SPLIT_BYTES = 1 << 20

T = TypeVar("T")


class _Inline(Executor):
    """Runs each call at once on the caller's thread (one thread: no pool, no hop)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        done: Future[T] = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to the caller through the future, as a pool does
            done.set_exception(err)
        return done


_INLINE = _Inline()
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (pid, threads) -> this process's one pool


def _in_dataloader_worker() -> bool:
    data = sys.modules.get("torch.utils.data")  # only if the caller uses torch: no import here
    return data is not None and data.get_worker_info() is not None


def threads() -> int:
    """Threads this process decodes on now (see the module)."""
    chosen = os.environ.get(THREADS_ENV)
    if chosen:
        try:
            n = int(chosen)
        except ValueError:
            raise ValueError(f"${THREADS_ENV}={chosen!r}: expected a whole number of threads >= 1") from None
        if n < 1:
            raise ValueError(f"${THREADS_ENV}={chosen!r}: expected a whole number of threads >= 1")
        return n
    if _in_dataloader_worker():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_THREADS, cores))


def executor() -> Executor:
    """This process's decode pool (an inline executor for one thread)."""
    n = threads()
    if n == 1:
        return _INLINE
    key = (os.getpid(), n)
    pool = _POOLS.get(key)
    if pool is None:
        for (pid, _), stale in list(_POOLS.items()):
            if pid == key[0]:
                stale.shutdown(wait=False)  # this process's pool of another size: its threads end when idle
        _POOLS.clear()  # and a forked child's copy of its parent's pool has no threads behind it
        pool = _POOLS[key] = ThreadPoolExecutor(n, thread_name_prefix="chunk-decode")
    return pool


def wait_all(futures: Sequence[Future[T]]) -> list[T]:
    """Every future's result, in order, once all have finished; the first failure (in order) is
    raised only after the others are done, so none still writes into the caller's buffers."""
    for f in futures:
        f.exception()  # waits, raises nothing
    return [f.result() for f in futures]


def split_apply(fn: Callable[[np.ndarray], object], array: np.ndarray) -> None:
    """``fn`` on blocks of ``array``'s leading axis, on the decode pool (for in-place elementwise work)."""
    n = min(threads(), array.shape[0] if array.ndim else 1, max(1, array.nbytes // _MIN_SPLIT_BYTES))
    if n <= 1:
        fn(array)
        return
    bounds = np.linspace(0, array.shape[0], n + 1).astype(int)
    pool = executor()
    wait_all([pool.submit(fn, array[a:b]) for a, b in itertools.pairwise(bounds)])
