"""Memory reuse in the processes that convert (issue 19, item 4): a product's big arrays are
allocated in the task's threads (a dask worker runs tasks off its main thread; the sen3 reader
adds channel and inflate threads), and glibc gives each thread its own arena of heaps of at most
64 MB. An array over 64 MB (a full-size scene's 9-channel image is 64.8 MB, an hdf product's
bytes 112 MB) was then mapped afresh for every product and page-faulted again, whatever
``MALLOC_MMAP_THRESHOLD_`` says; on this VM that was 2-4.6 CPU-s of system time on a worker's
first products. One arena (``MALLOC_ARENA_MAX=1``) keeps them for the next product."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from scibench_data.parallel import WORKER_ENV

#: Faults of one allocation of ``mb`` MiB in a thread, three times, first in one thread then each in a
#: fresh thread (as the reader's thread pools do); huge pages off so that faults count 4 KiB pages.
_PROBE = textwrap.dedent("""
    import json, resource, sys, threading
    import numpy as np
    np._core.multiarray._set_madvise_hugepage(False)
    if sys.argv[1] == "cli":
        from scibench_data.convert.cloudmask import keep_freed_memory
        assert keep_freed_memory()

    def rounds(nbytes, fresh):
        got = []
        def one():
            f0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            a = np.ones(nbytes, np.uint8)
            del a
            got.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0)
        def loop():
            for _ in range(3):
                one()
        for _ in range(3 if fresh else 1):
            t = threading.Thread(target=one if fresh else loop)
            t.start()
            t.join()
        return got

    print(json.dumps({mb: [rounds(mb << 20, False), rounds(mb << 20, True)] for mb in (58, 65, 120)}))
""")


@pytest.mark.parametrize("process", ["worker", "cli"])
def test_arrays_over_64_mb_freed_by_a_task_thread_are_reused_not_faulted_in_again(process):
    """``worker``: a process started with ``WORKER_ENV`` (what the nanny gives the workers we start);
    ``cli``: a process that called ``keep_freed_memory()`` (the conversion commands). Before, a 65 or
    120 MB array faulted in all its pages every time (16641 and 30721 faults), a 58 MB one when a
    fresh thread allocated it."""
    env = {**os.environ, **(WORKER_ENV if process == "worker" else {})}
    if process == "cli":
        env = {k: v for k, v in env.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", _PROBE, process], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for mb, (same_thread, fresh_threads) in json.loads(done.stdout).items():
        pages = (int(mb) << 20) // 4096
        again = same_thread[1:] + fresh_threads[1:]  # the first allocation faults its pages in once
        assert max(again) < pages // 20, f"{mb} MB: faults per allocation {same_thread} (one thread), " \
                                         f"{fresh_threads} (fresh threads), of {pages} pages"


_HUGEPAGE_PROBE = textwrap.dedent("""
    import sys
    import numpy as np
    if sys.argv[1] == "cli":
        from scibench_data.convert.cloudmask import keep_freed_memory
        keep_freed_memory()
    print(int(np._core.multiarray._get_madvise_hugepage()))
""")


@pytest.mark.parametrize("process", ["worker", "cli"])
def test_numpy_does_not_ask_for_huge_pages_in_the_processes_that_convert(process):
    """NumPy madvises every array of 4 MB or more for transparent huge pages; with the kernel's
    default ``defrag=madvise`` a first touch then compacts memory for each 2 MB page (here ~1 ms a
    fault: 0.3 CPU-s of system time per sen3 product in the band arithmetic, 0.8-1 s on a worker's
    first product). ``worker``: started with ``WORKER_ENV``; ``cli``: after ``keep_freed_memory()``."""
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if process == "worker":
        env.update(WORKER_ENV)
    done = subprocess.run([sys.executable, "-c", _HUGEPAGE_PROBE, process], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "0"
