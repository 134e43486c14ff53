"""Values of HDF5 datasets decoded straight from a file's bytes in memory.

h5py runs every HDF5 call under one process-wide lock, so HDF5's own deflate filter decodes one
chunk at a time whatever the number of threads. For the two storage layouts our sources use, the
values are taken from the bytes the reader already holds instead:

- contiguous and unfiltered: a read-only NumPy view at the dataset's offset (no copy);
- chunked with only deflate (optionally after shuffle): each chunk inflated with :mod:`zlib`,
  which releases the GIL, on a few threads.

Anything else (other filters, a chunk stored with a filter skipped, compact storage, ...) returns
``None`` and the caller reads through h5py. Call these only after
:func:`~scibench_data.formats.hdf5_safety.refuse_indirection` accepted the file.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

#: Threads that inflate the chunks of one dataset (zlib releases the GIL: both cores of a worker).
INFLATE_THREADS = 2
_DEFLATE, _SHUFFLE = h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE


def contiguous_view(d: h5py.Dataset, data: bytes) -> np.ndarray | None:
    """A contiguous, unfiltered dataset as a read-only view of ``data`` (the whole file); else None."""
    plist = d.id.get_create_plist()
    if plist.get_layout() != h5py.h5d.CONTIGUOUS or plist.get_nfilters() or plist.get_external_count():
        return None
    offset, nbytes = d.id.get_offset(), d.size * d.dtype.itemsize
    if offset is None or d.id.get_storage_size() != nbytes or offset + nbytes > len(data):
        return None
    return np.frombuffer(data, d.dtype, d.size, offset).reshape(d.shape)


def _chunk_table(d: h5py.Dataset) -> list[tuple[tuple[int, ...], int, int, int]]:
    """(chunk offset, filter mask, byte offset, size) of every stored chunk, in one pass."""
    table: list[tuple[tuple[int, ...], int, int, int]] = []
    # the callback keeps only integers: no h5py object is caught in it (see hdf5_safety)
    d.id.chunk_iter(lambda c: table.append((tuple(c.chunk_offset), c.filter_mask, c.byte_offset, c.size)))
    return table


def deflated_values(d: h5py.Dataset, data: bytes, threads: int = INFLATE_THREADS) -> np.ndarray | None:
    """A chunked dataset stored with deflate (and optionally shuffle before it), decoded from
    ``data`` (the whole file) on ``threads`` threads; None when stored any other way."""
    if d.chunks is None or d.dtype.kind not in "iuf" or d.ndim == 0:
        return None
    plist = d.id.get_create_plist()
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if filters not in ([_DEFLATE], [_SHUFFLE, _DEFLATE]):
        return None
    shuffle, dtype, chunks = filters[0] == _SHUFFLE, d.dtype, tuple(d.chunks)
    table = _chunk_table(d)
    if any(mask != 0 or off + size > len(data) for _, mask, off, size in table):
        return None
    fill = d.fillvalue if d.fillvalue is not None else 0
    out = np.full(d.shape, fill, dtype)
    expected = int(np.prod(chunks)) * dtype.itemsize
    view = memoryview(data)

    def decode(rows: list[tuple[tuple[int, ...], int, int, int]]) -> bool:
        for start, _, off, size in rows:
            raw = zlib.decompress(view[off:off + size])
            if len(raw) != expected:
                return False
            arr = np.frombuffer(raw, np.uint8)
            if shuffle and dtype.itemsize > 1:
                arr = arr.reshape(dtype.itemsize, -1).T.copy()
            block = arr.view(dtype).reshape(chunks)
            target = tuple(slice(s, min(s + c, n)) for s, c, n in zip(start, chunks, d.shape))
            out[target] = block[tuple(slice(0, t.stop - t.start) for t in target)]
        return True

    parts = [table[i::threads] for i in range(max(1, threads))]
    with ThreadPoolExecutor(len(parts), thread_name_prefix="inflate") as pool:
        if not all(pool.map(decode, parts)):
            return None
    return out


def values_in_memory(d: h5py.Dataset, data: bytes | None, threads: int = INFLATE_THREADS) -> np.ndarray | None:
    """The dataset's values from the file's bytes (see the module; a chunked one inflated on ``threads``
    threads), or None: read through h5py."""
    if data is None:
        return None
    view = contiguous_view(d, data)
    return view if view is not None else deflated_values(d, data, threads=threads)
