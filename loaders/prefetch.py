"""The next batch's chunks in flight while this one is built: prefetch from object stores.

A loader process builds its batches one after another: every chunk of a batch is fetched
at once (:func:`loaders.chunk_reader.read_regions`), then decoded, checked and handed over.
While it decodes, its share of the link is idle. :func:`start` begins fetching the remote
chunks of the batch the process builds next, on zarr's event loop (no thread of its own),
and returns at once; :func:`fetch` is how ``read_regions`` gets a remote chunk: the bytes of
a fetch started earlier where there is one, else a fetch now. A prefetch that failed is
fetched again by the batch's own read, so errors and retries are those of a read without
prefetch.

Bounded: at most ``max_chunks`` fetches, of at most ``max_bytes`` (each counted at its
chunk's decoded size, which bounds the stored size), are held at once per process; chunks
beyond that are left to the batch's own read. A fetch not used by the batch after the one
it was started for (its chunk was kept decoded, or the pass moved on) is cancelled when the
next batch's prefetch starts; :func:`cancel` drops them all (``loaders.sharding`` calls it
when a pass ends, is closed or its worker exits). Per process: a forked worker starts empty.
Only the fast path's remote chunks are prefetched; local chunk files are read as they are
decoded.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.core.sync import sync

from scibench_data.storage.store.regions import chunks_touched

if TYPE_CHECKING:  # chunk_reader imports this module
    from loaders.chunk_reader import ChunkReader

Slices = tuple[slice, ...]


@dataclass(frozen=True)
class PrefetchLimits:
    """How much one process may have prefetched and not yet used."""

    max_chunks: int = 96
    max_bytes: int = 256 << 20

    def __post_init__(self) -> None:
        if self.max_chunks < 1 or self.max_bytes < 1:
            raise ValueError(f"prefetch limits must be >= 1, got max_chunks={self.max_chunks}, "
                             f"max_bytes={self.max_bytes}")


@dataclass
class _Fetch:
    reader: ChunkReader  # held, so that its id() is not reused while the fetch is kept
    task: asyncio.Task
    batch: int  # the prefetch call that started it
    nbytes: int


class _Ahead:
    """One process's prefetched fetches, by (reader, chunk)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.fetches: dict[tuple[int, tuple[int, ...]], _Fetch] = {}
        self.batch = 0
        self.nbytes = 0

    def drop(self, keys: Sequence[tuple[int, tuple[int, ...]]]) -> None:
        """Cancel and forget ``keys`` (the lock held)."""
        for key in keys:
            f = self.fetches.pop(key)
            self.nbytes -= f.nbytes
            if not f.task.done():
                f.task.get_loop().call_soon_threadsafe(f.task.cancel)


_AHEAD: list[_Ahead] = []


def _ahead() -> _Ahead:
    if not _AHEAD or _AHEAD[0].pid != os.getpid():  # a forked child: its parent's fetches are not its own
        _AHEAD[:] = [_Ahead()]
    return _AHEAD[0]


def chunk_coords(region: Slices, chunks: Sequence[int]) -> list[tuple[int, ...]]:
    """Every chunk a region (step-1 slices with explicit bounds) touches (pure)."""
    return list(itertools.product(*(chunks_touched(sl.start, sl.stop, n) for sl, n in zip(region, chunks))))


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # a prefetch nobody uses may fail: not "never retrieved"


async def _launch(coros: list[Coroutine[Any, Any, Any]]) -> list[asyncio.Task]:
    tasks = [asyncio.ensure_future(c) for c in coros]
    for t in tasks:
        t.add_done_callback(_retrieve)
    return tasks


def start(requests: Sequence[tuple[ChunkReader, Slices]], limits: PrefetchLimits = PrefetchLimits()) -> int:
    """Start fetching the remote chunks of ``requests`` (``(reader, region)``, the batch this
    process builds next) that are neither kept decoded nor already on their way, within
    ``limits``; returns how many fetches it started. Fetches started two calls ago and still
    unused are cancelled first."""
    a = _ahead()
    todo: list[tuple[tuple[int, tuple[int, ...]], ChunkReader, tuple[int, ...], int]] = []
    with a.lock:
        a.batch += 1
        a.drop([k for k, f in a.fetches.items() if f.batch < a.batch - 1])
        held, nbytes = len(a.fetches), a.nbytes
        wanted = ((reader, coords) for reader, region in requests if reader.fast and reader.fetched
                  for coords in chunk_coords(region, reader.chunks))
        seen: set[tuple[int, tuple[int, ...]]] = set()
        for reader, coords in wanted:
            key = (id(reader), coords)
            if key in a.fetches or key in seen or reader.kept(coords) is not None:
                continue
            size = int(np.prod(reader.chunks)) * reader.dtype.itemsize
            if held + len(todo) >= limits.max_chunks or nbytes + size > limits.max_bytes:
                break
            seen.add(key)
            todo.append((key, reader, coords, size))
            nbytes += size
    if not todo:
        return 0
    tasks = sync(_launch([reader.fetch(coords) for _, reader, coords, _ in todo]))
    with a.lock:
        for (key, reader, _, size), task in zip(todo, tasks):
            a.fetches[key] = _Fetch(reader, task, a.batch, size)
            a.nbytes += size
    return len(todo)


async def fetch(reader: ChunkReader, coords: tuple[int, ...]):
    """A chunk's stored bytes (:meth:`ChunkReader.fetch`): from its prefetch where one was started."""
    a = _ahead()
    with a.lock:
        f = a.fetches.pop((id(reader), coords), None)
        if f is not None:
            a.nbytes -= f.nbytes
    if f is None:
        return await reader.fetch(coords)
    try:
        return await f.task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            raise  # this read itself was cancelled, not only the prefetch (cancel(), or dropped as stale)
        return await reader.fetch(coords)
    except Exception:  # noqa: BLE001 - any failure: the read below reports its own
        return await reader.fetch(coords)  # a failed prefetch: fetched again, so the read reports its own errors


def cancel() -> int:
    """Cancel and forget every prefetch of this process; returns how many there were."""
    a = _ahead()
    with a.lock:
        n = len(a.fetches)
        a.drop(list(a.fetches))
    return n


def held() -> tuple[int, int]:
    """(chunks, bytes at their decoded size) prefetched by this process and not yet used or dropped."""
    a = _ahead()
    with a.lock:
        return len(a.fetches), a.nbytes
