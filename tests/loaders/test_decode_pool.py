"""A batch's chunks are decoded on the process's decode threads: same values, failures named as before."""

from __future__ import annotations

import multiprocessing
import os
import threading

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader, Dataset
from zarr.codecs import Crc32cCodec

from loaders import decode_pool
from loaders.chunk_reader import ChunkReader, read_regions
from scibench_data.storage.store.encoding import DEFAULT_CODEC
from scibench_data.storage.store.integrity import ChunkChecksumError


def _array(root, shape=(2, 3, 40, 36), chunks=(1, 3, 8, 6)):
    arr = zarr.create_array(root, shape=shape, chunks=chunks, dtype="float32", fill_value=np.nan,
                            compressors=[DEFAULT_CODEC.compressor(4), Crc32cCodec()])
    arr[...] = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    return arr


class _SeenThreads(ChunkReader):
    """A reader that notes the thread each chunk is decoded on (then decodes as any reader does)."""

    def __init__(self, array) -> None:
        super().__init__(array)
        self.threads: set[str] = set()

    def decode(self, raw, coords=None, into=None):
        self.threads.add(threading.current_thread().name)
        return super().decode(raw, coords, into)


WINDOWS = [(s, slice(y, y + 13), slice(x, x + 11)) for s in (0, 1) for y in (0, 9, 27) for x in (1, 14, 25)]


def _requests(reader):
    outs = [np.full((1, 3, ys.stop - ys.start, xs.stop - xs.start), -7, np.float32) for _, ys, xs in WINDOWS]
    return [(reader, (slice(s, s + 1), slice(0, 3), ys, xs), out) for (s, ys, xs), out in zip(WINDOWS, outs)], outs


def test_a_process_reading_its_own_batches_decodes_chunks_on_its_decode_threads(tmp_path, monkeypatch):
    monkeypatch.setenv(decode_pool.THREADS_ENV, "3")
    arr = _array(tmp_path / "a")
    reader = _SeenThreads(arr)
    requests, outs = _requests(reader)
    read_regions(requests)
    for (s, ys, xs), out in zip(WINDOWS, outs):
        np.testing.assert_array_equal(out, arr[s:s + 1, :, ys, xs])
    assert reader.threads and all(name.startswith("chunk-decode") for name in reader.threads), reader.threads
    monkeypatch.setenv(decode_pool.THREADS_ENV, "1")
    one = _SeenThreads(arr)
    read_regions(_requests(one)[0])
    assert one.threads == {threading.current_thread().name}  # one thread: no pool, no hop


def test_a_kept_buffer_is_not_reused_while_its_chunk_is_still_decoding(tmp_path, monkeypatch):
    """With few kept buffers and many chunks per read, buffers are reused inside one read: each must
    wait for the decode that fills it. Every value must still be zarr's, read after read."""
    monkeypatch.setenv(decode_pool.THREADS_ENV, "4")
    arr = _array(tmp_path / "a")
    reader = ChunkReader(arr)
    reader.keep = 2
    for _ in range(5):
        requests, outs = _requests(reader)
        read_regions(requests)
        for (s, ys, xs), out in zip(WINDOWS, outs):
            np.testing.assert_array_equal(out, arr[s:s + 1, :, ys, xs])
        assert len(reader._kept) <= 2 and not reader._pending


@pytest.mark.parametrize("threads", ["1", "4"])
def test_of_two_damaged_chunks_the_first_is_named_and_neither_is_kept(tmp_path, monkeypatch, threads):
    monkeypatch.setenv(decode_pool.THREADS_ENV, threads)
    arr = _array(tmp_path / "a")
    for key in ("c/0/0/1/2", "c/0/0/3/4"):
        path = tmp_path / "a" / key
        data = bytearray(path.read_bytes())
        data[-9] ^= 1
        path.write_bytes(bytes(data))
    reader = ChunkReader(arr)
    out = np.empty((1, 3, 40, 36), np.float32)
    with pytest.raises(ChunkChecksumError, match=r"chunk c/0/0/1/2: crc32c checksum mismatch"):
        read_regions([(reader, (slice(0, 1), slice(0, 3), slice(0, 40), slice(0, 36)), out)])
    assert (0, 0, 1, 2) not in reader._kept and (0, 0, 3, 4) not in reader._kept and not reader._pending
    assert (0, 0, 0, 0) in reader._kept  # the good chunks read before the first bad one are kept


class _ThreadsInWorker(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i):
        return torch.tensor(decode_pool.threads())


def test_a_dataloader_worker_decodes_on_its_own_thread_and_the_main_process_on_its_cores(monkeypatch):
    monkeypatch.delenv(decode_pool.THREADS_ENV, raising=False)
    (in_worker,) = DataLoader(_ThreadsInWorker(), batch_size=None, num_workers=1, multiprocessing_context="fork")
    assert int(in_worker) == 1
    cores = len(os.sched_getaffinity(0))
    assert decode_pool.threads() == max(1, min(decode_pool.MAX_THREADS, cores))


@pytest.mark.parametrize("bad", ["0", "two", "-3"])
def test_a_bad_decode_thread_count_is_named(monkeypatch, bad):
    monkeypatch.setenv(decode_pool.THREADS_ENV, bad)
    with pytest.raises(ValueError, match=rf"\$SCIBENCH_DECODE_THREADS='{bad}': expected a whole number"):
        decode_pool.threads()


def test_split_apply_covers_every_leading_block_once(monkeypatch):
    monkeypatch.setenv(decode_pool.THREADS_ENV, "3")
    data = np.zeros((7, 1 << 18), np.float32)  # 7 MB: split over the 3 threads
    seen: list[str] = []

    def bump(block: np.ndarray) -> None:
        seen.append(threading.current_thread().name)
        block += 1

    decode_pool.split_apply(bump, data)
    assert (data == 1).all() and len(seen) == 3 and all(n.startswith("chunk-decode") for n in seen)


def test_a_forked_child_makes_its_own_decode_pool(tmp_path, monkeypatch):
    """The parent's pool has no threads in a forked child: the child must not hand work to it."""
    monkeypatch.setenv(decode_pool.THREADS_ENV, "2")
    arr = _array(tmp_path / "a")
    reader = ChunkReader(arr)
    read_regions(_requests(reader)[0])  # the parent's pool exists now
    assert any(pid == os.getpid() for pid, _ in decode_pool._POOLS)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        ok = pool.apply_async(_read_in_child, (str(tmp_path / "a"),)).get(timeout=60)
    assert ok


def _read_in_child(path: str) -> bool:
    arr = zarr.open_array(path, mode="r")
    reader = ChunkReader(arr)
    requests, outs = _requests(reader)
    read_regions(requests)
    return all(np.array_equal(out, arr[s:s + 1, :, ys, xs]) for (s, ys, xs), out in zip(WINDOWS, outs))

