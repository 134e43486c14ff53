"""Write whole chunks of an aligned region straight to the store, encoded on several threads.

``zarr.Array.__setitem__`` on a chunk-aligned region spends ~1.6x the CPU of this module for the same
bytes (a full-size CloudMask scene's image: 0.150 vs 0.091 CPU-s, docs/ds2.md "third round"): per
chunk an indexer projection, buffer wrappers, thread hops, an ``np.append`` copy for the checksum,
and a full NaN-aware fill comparison. For
the codec chain every store of ours is written with (``bytes`` in native byte order, ``blosc``,
optionally ``crc32c``; regular grid, C order, no sharding) this module does the same work directly:
each chunk's values (the region's part, padded with the fill value where the chunk crosses the
array's edge, as zarr pads it), encoded by the Blosc of the codec object the array's metadata holds
and checksummed as zarr's ``crc32c`` codec does, and all of a region's encoded chunks put under their
keys through the array's own store in one round trip (local or object storage alike).
A chunk whose values all equal the fill value is not written but deleted, exactly as zarr does when
``write_empty_chunks`` is False (our default), so a rewrite that makes a chunk all fill removes the
previous object. The stored objects are byte-identical to zarr's (``tests/storage/test_chunk_writer.py``).

Blosc releases the GIL and, off the main thread, runs without its own threads, so chunks are
encoded on ``threads`` pool threads in parallel. Any other chain, dtype or order falls back to zarr.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync
from zarr.storage import StorePath

from scibench_data.storage.store.regions import Region, check_region_aligned

#: Encoding threads per region write: the machines we measure on have two cores.
ENCODE_THREADS = 2


def direct_chain(arr: zarr.Array) -> tuple[BloscCodec, bool] | None:
    """(the blosc codec, whether a crc32c follows) when ``arr``'s chunks can be written directly:
    zarr v3, regular grid, C order, ``bytes`` in native byte order + ``blosc`` (+ ``crc32c``). Else None."""
    meta = arr.metadata
    if not isinstance(meta, ArrayV3Metadata) or not isinstance(meta.chunk_grid, RegularChunkGrid):
        return None
    if arr.async_array.config.order != "C":
        return None
    codecs = tuple(meta.codecs)
    checksum = len(codecs) == 3 and isinstance(codecs[2], Crc32cCodec)
    if checksum:
        codecs = codecs[:2]
    if len(codecs) != 2 or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[1], BloscCodec):
        return None
    if not hasattr(codecs[1], "_blosc_codec"):  # zarr's private numcodecs encoder (see write_region): gone, so zarr writes
        return None
    endian = getattr(codecs[0].endian, "value", codecs[0].endian)
    if endian not in (None, sys.byteorder):
        return None
    return codecs[1], checksum


def region_chunks(region: Region, chunks: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Grid coordinates of every chunk an aligned ``region`` covers, in C order."""
    return itertools.product(*(range(a // c, math.ceil(b / c)) for a, b, c in zip(region.starts, region.stops, chunks)))


def _all_fill(values: np.ndarray, fill: object) -> bool:
    """zarr's test for a chunk not to be written (``NDBuffer.all_equal``: NaN equals NaN, a float 0.0
    fill compared bit for bit); its first element is tested alone first, which decides most chunks."""
    nd = default_buffer_prototype().nd_buffer
    if not nd.from_numpy_array(values.reshape(-1)[:1]).all_equal(fill):
        return False
    return bool(nd.from_numpy_array(values).all_equal(fill))


#: What :func:`write_region` wrote: store key -> (size, sha256 hex) of every chunk object it put.
Written = dict[str, tuple[int, str]]


def write_region(arr: zarr.Array, region: Region, data: np.ndarray, threads: int = ENCODE_THREADS) -> Written | None:
    """Write ``data`` into the chunk-aligned ``region`` of ``arr`` chunk by chunk (see the module's
    docstring) and return the size and sha256 of every object put (keys relative to the store root, as
    manifests list them; all-fill chunks, deleted, are not in it); None, with nothing written, when
    ``arr``'s chain, the data's dtype or type is not one this writer handles (the caller then writes
    through zarr). The alignment is checked first."""
    check_region_aligned(region, arr.chunks, arr.shape, arr.path or "array")
    chain = direct_chain(arr)
    if chain is None or type(data) is not np.ndarray or data.dtype != arr.dtype or data.shape != region.shape:
        return None
    blosc, checksum = chain
    encoder = blosc._blosc_codec  # the numcodecs Blosc zarr itself encodes with (same typesize and blocksize)
    meta = arr.metadata
    chunks, shape = tuple(arr.chunks), tuple(arr.shape)
    fill = meta.fill_value
    write_empty = arr.async_array.config.write_empty_chunks
    store_path = arr.async_array.store_path
    buffer = default_buffer_prototype().buffer

    def values_of(coords: tuple[int, ...]) -> np.ndarray:
        """The chunk's values: its part of ``data``, padded with the fill value past the array's edge."""
        lo = [i * c for i, c in zip(coords, chunks)]
        hi = [min((i + 1) * c, n) for i, c, n in zip(coords, chunks, shape)]
        part = data[tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, region.starts))]
        if part.shape == chunks:
            return np.ascontiguousarray(part)
        out = np.full(chunks, fill, dtype=data.dtype)
        out[tuple(slice(0, b - a) for a, b in zip(lo, hi))] = part
        return out

    def encode(coords: tuple[int, ...]) -> tuple[str, Buffer | None, str]:
        """The chunk's key, encoded bytes (None: all fill, not to be stored) and their sha256 (for the manifest)."""
        values = values_of(coords)
        key = meta.encode_chunk_key(coords)
        if not write_empty and _all_fill(values, fill):
            return key, None, ""
        encoded = encoder.encode(values.reshape(-1).view(np.uint8))  # releases the GIL
        if checksum:
            encoded = encoded + google_crc32c.value(encoded).to_bytes(4, "little")
        return key, buffer.from_bytes(encoded), hashlib.sha256(encoded).hexdigest()  # hashlib releases the GIL too

    coords = list(region_chunks(region, chunks))
    if threads <= 1 or len(coords) <= 1:
        encoded = [encode(c) for c in coords]
    else:
        with ThreadPoolExecutor(min(threads, len(coords)), thread_name_prefix="chunk-encode") as pool:
            encoded = list(pool.map(encode, coords))  # the first error raises here (the rest are finished first)
    sync(_put_all(store_path, [(key, value) for key, value, _ in encoded]))
    prefix = f"{arr.path}/" if arr.path else ""
    return {f"{prefix}{key}": (len(value), digest) for key, value, digest in encoded if value is not None}


async def _put_all(store_path: StorePath, encoded: list[tuple[str, Buffer | None]]) -> None:
    """Put every encoded chunk under its key and delete the keys of all-fill chunks, all requests in flight
    at once (zarr bounds them by ``async.concurrency``, as its own write does)."""
    sem = asyncio.Semaphore(zarr.config.get("async.concurrency"))

    async def put(key: str, value: Buffer | None) -> None:
        async with sem:
            if value is None:
                await (store_path / key).delete()
            else:
                await (store_path / key).set(value)

    await asyncio.gather(*(put(k, v) for k, v in encoded))
