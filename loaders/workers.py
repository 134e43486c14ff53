"""How DataLoader workers start: the one place every loader and pipeline takes it from
(:func:`worker_context`, :func:`start_worker_server`).

``fork`` where the platform has it (Linux): a worker starts in milliseconds, needs no
``if __name__ == "__main__":`` guard in the user's script and re-imports nothing. Measured
safe with our stores (zarr 3.1.6, local and S3, two workers, after the parent had read):
zarr and fsspec reset their event-loop threads after a fork (``os.register_at_fork``) and our
datasets open their store once per process (a pid check), never using the parent's handle.
dask's threaded scheduler does not reset itself: a child inherits its thread pool without
threads and its first ``compute`` hangs, so importing this package registers a reset of that
pool in every forked child (:func:`reset_dask_after_fork`).

Elsewhere (macOS, where ``fork`` is unsafe with system frameworks, and Windows, which has no
``fork``) workers start from a ``forkserver`` with torch, zarr and the main script preloaded
(:func:`forkserver_context`), or ``spawn``; those re-import the main script, which then needs
the guard. ``SCIBENCH_WORKER_START=fork|forkserver|spawn`` overrides the choice (e.g.
``forkserver`` when the parent runs threads that must not be forked, such as a
``dask.distributed`` client).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import sys
import threading
from multiprocessing import spawn
from typing import Any

START_ENV = "SCIBENCH_WORKER_START"
START_METHODS = ("fork", "forkserver", "spawn")
#: Where the forkserver finds the parent's main script (read by :mod:`loaders._worker_server`).
MAIN_PATH = "SCIBENCH_WORKER_SERVER_MAIN_PATH"
MAIN_NAME = "SCIBENCH_WORKER_SERVER_MAIN_NAME"


def start_method() -> str:
    """The start method for DataLoader workers on this platform (or ``$SCIBENCH_WORKER_START``)."""
    chosen = os.environ.get(START_ENV)
    available = multiprocessing.get_all_start_methods()
    if chosen:
        if chosen not in START_METHODS or chosen not in available:
            raise ValueError(f"${START_ENV}={chosen!r}: must be one of "
                             f"{', '.join(m for m in START_METHODS if m in available)} on this platform")
        return chosen
    if "fork" in available and sys.platform != "darwin":
        return "fork"
    return "forkserver" if "forkserver" in available else "spawn"


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context to pass as ``DataLoader(multiprocessing_context=...)``."""
    method = start_method()
    return forkserver_context() if method == "forkserver" else multiprocessing.get_context(method)


def forkserver_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` with the main script, torch, zarr, s3fs and the CloudMask loader preloaded
    in the server, so each worker starts as a fork of a warm process instead of importing torch
    (and the script) again (the fallback where ``fork`` is not used)."""
    ctx = multiprocessing.get_context("forkserver")
    # the main script, imported once in the server (as __mp_main__: its `if __name__ == "__main__"`
    # block does not run) instead of in every worker (~1 s for a script importing xarray and dask):
    # loaders/_worker_server.py. The server starts with this process's environment at that moment.
    main = spawn.get_preparation_data("scibench-worker")
    for var in (MAIN_NAME, MAIN_PATH):
        os.environ.pop(var, None)  # this process's own main, not one inherited from a parent process
    if "init_main_from_name" in main:
        os.environ[MAIN_NAME] = main["init_main_from_name"]
    elif "init_main_from_path" in main:
        os.environ[MAIN_PATH] = main["init_main_from_path"]
    # s3fs too: importing it (and aiobotocore) costs a worker ~0.25 s before its first S3 read
    ctx.set_forkserver_preload(["loaders._worker_server", "torch", "numcodecs.blosc", "zarr", "s3fs",
                                "loaders.cloudmask"])
    return ctx


def start_worker_server(wait: bool = False) -> threading.Thread:
    """Start :func:`worker_context`'s server now, in the background, so that its one-off start-up
    (a new interpreter importing torch and zarr, about a second) overlaps with opening the
    catalog instead of delaying the first batch. ``wait`` blocks until it is ready.

    The server is started once per process; later calls return at once. Environment variables
    set after it started do not reach DataLoader workers (they fork from the server): put
    credentials and endpoints in storage options, or set them before."""
    def probe() -> None:
        ctx: Any = worker_context()  # typeshed's BaseContext lacks Process
        if ctx.get_start_method() != "forkserver":
            return  # fork or spawn: no server to start
        p = ctx.Process(target=int)  # the first fork waits for the server's preloads
        p.start()
        p.join()

    t = threading.Thread(target=probe, name="scibench-worker-server", daemon=True)
    t.start()
    if wait:
        t.join()
    return t


def reset_dask_after_fork() -> None:
    """In a forked child: drop dask's inherited thread pools (their threads did not survive the
    fork), so the child's first ``compute`` creates its own instead of waiting forever."""
    threaded: Any = sys.modules.get("dask.threaded")
    if threaded is None:
        return
    threaded.default_pool = None
    threaded.pools.clear()
    threaded.pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset_dask_after_fork)
