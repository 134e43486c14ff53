"""Batched chunk reads: the piece arithmetic, and equality with plain zarr indexing on both paths."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from loaders.chunk_reader import ChunkReader, read_regions, region_shape, window_pieces
from scibench_data.storage.store.encoding import DEFAULT_CODEC


@st.composite
def regions_and_chunks(draw):
    ndim = draw(st.integers(1, 3))
    chunks = tuple(draw(st.integers(1, 7)) for _ in range(ndim))
    region = []
    for _ in range(ndim):
        start = draw(st.integers(0, 20))
        region.append(slice(start, start + draw(st.integers(1, 15))))
    return tuple(region), chunks


@settings(max_examples=200, deadline=None)
@given(regions_and_chunks())
def test_pieces_tile_the_region_exactly_once(case):
    region, chunks = case
    covered = np.zeros(region_shape(region), np.int32)
    for piece in window_pieces(region, chunks):
        covered[piece.dst] += 1
        for c, src, dst, size, sl in zip(piece.chunk, piece.src, piece.dst, chunks, region):
            assert 0 <= src.start < src.stop <= size  # inside the chunk
            assert src.stop - src.start == dst.stop - dst.start
            assert c * size + src.start == sl.start + dst.start  # the same array element
    assert (covered == 1).all()


def test_bad_regions_are_refused():
    with pytest.raises(ValueError, match="step-1"):
        window_pieces((slice(None, 4),), (2,))
    with pytest.raises(ValueError, match="dimensions"):
        window_pieces((slice(0, 4),), (2, 2))


def _arrays(root, codecs=None, shards=None):
    """A float32 4-D and a uint8 3-D array with small uneven chunks and some chunks never written
    (our stores' codec, blosc lz4 + shuffle, unless ``codecs`` says otherwise)."""
    rng = np.random.default_rng(0)
    kw = {"compressors": codecs or [DEFAULT_CODEC.compressor(4)]}
    group = zarr.open_group(root, mode="a")
    img = group.create_array("image", shape=(3, 4, 23, 31), chunks=(1, 4, 8, 7), dtype="float32",
                             fill_value=np.nan, shards=shards, **kw)
    values = rng.normal(size=img.shape).astype(np.float32)
    values[1, :, 8:16, 7:14] = np.nan  # a whole chunk of fill: zarr does not write it
    img[...] = values
    kw = {"compressors": codecs or [DEFAULT_CODEC.compressor(1)]}
    mask = group.create_array("mask", shape=(3, 23, 31), chunks=(1, 8, 7), dtype="uint8", fill_value=255, **kw)
    labels = rng.integers(0, 2, size=mask.shape).astype(np.uint8)
    labels[2, :8, :7] = 255
    mask[...] = labels
    return img, mask


REGIONS = [(0, slice(0, 23), slice(0, 31)), (1, slice(5, 20), slice(3, 17)), (2, slice(0, 8), slice(0, 7)),
           (1, slice(9, 10), slice(30, 31)), (0, slice(5, 20), slice(3, 17))]


def _check(img, mask, expect_fast):
    readers = ChunkReader(img), ChunkReader(mask)
    assert [r.fast for r in readers] == [expect_fast] * 2
    requests, expected = [], []
    for scene, ys, xs in REGIONS:
        out_i = np.full((1, 4, ys.stop - ys.start, xs.stop - xs.start), -7, np.float32)
        out_m = np.full((1, ys.stop - ys.start, xs.stop - xs.start), -7, np.float32)  # cast on copy
        requests += [(readers[0], (slice(scene, scene + 1), slice(0, 4), ys, xs), out_i),
                     (readers[1], (slice(scene, scene + 1), ys, xs), out_m)]
        expected += [img[scene:scene + 1, :, ys, xs], mask[scene:scene + 1, ys, xs].astype(np.float32)]
    read_regions(requests)
    for (_, _, out), want in zip(requests, expected):
        np.testing.assert_array_equal(out, want)


def test_fast_path_equals_zarr_indexing_with_missing_chunks(tmp_path):
    img, mask = _arrays(tmp_path)
    assert not (tmp_path / "image/c/1/0/1/1").exists()  # the all-fill chunk really is absent
    assert ChunkReader(img)._local_root == str(tmp_path / "image")  # chunk files memory-mapped
    _check(img, mask, expect_fast=True)


def test_fast_path_through_the_store_api(tmp_path):
    """Any other store (object storage, the chunk cache, memory) is read with its own ``get``."""
    img, mask = _arrays(zarr.storage.MemoryStore())
    assert ChunkReader(img)._local_root is None
    _check(img, mask, expect_fast=True)


def test_other_codecs_and_sharding_fall_back_to_zarr_with_the_same_values(tmp_path):
    from zarr.codecs import ZstdCodec

    _check(*_arrays(tmp_path / "zstd", codecs=[ZstdCodec(level=1)]), expect_fast=False)
    img, _ = _arrays(tmp_path / "sharded", shards=(1, 4, 16, 14))
    out = np.empty((1, 4, 15, 14), np.float32)
    reader = ChunkReader(img)
    assert not reader.fast
    read_regions([(reader, (slice(1, 2), slice(0, 4), slice(5, 20), slice(3, 17)), out)])
    np.testing.assert_array_equal(out, img[1:2, :, 5:20, 3:17])


def test_shape_and_bounds_are_checked(tmp_path):
    img, _ = _arrays(tmp_path)
    reader = ChunkReader(img)
    with pytest.raises(IndexError, match="outside"):
        read_regions([(reader, (slice(0, 1), slice(0, 4), slice(0, 24), slice(0, 5)), np.empty((1, 4, 24, 5)))])
    with pytest.raises(ValueError, match="does not match"):
        read_regions([(reader, (slice(0, 1), slice(0, 4), slice(0, 3), slice(0, 5)), np.empty((4, 3, 5)))])


def test_a_corrupt_chunk_raises(tmp_path):
    img, _ = _arrays(tmp_path)
    region, out = (slice(0, 1), slice(0, 4), slice(0, 3), slice(0, 5)), np.empty((1, 4, 3, 5), np.float32)
    (tmp_path / "image/c/0/0/0/0").write_bytes(b"not a blosc frame at all, just junk bytes")
    with pytest.raises(ValueError, match="chunk holds"):
        read_regions([(ChunkReader(img), region, out)])
    smooth = zarr.create_array(tmp_path / "smooth", shape=(64, 64), chunks=(64, 64), dtype="float32",
                               compressors=[DEFAULT_CODEC.compressor(4)])
    smooth[...] = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)  # compresses: a real blosc frame
    chunk = tmp_path / "smooth/c/0/0"
    chunk.write_bytes(chunk.read_bytes()[:-40])  # cut short
    with pytest.raises(RuntimeError, match="blosc"):
        read_regions([(ChunkReader(smooth), (slice(0, 4), slice(0, 4)), np.empty((4, 4), np.float32))])


def _checksummed(root, shape=(2, 3, 16, 12), chunks=(1, 3, 8, 6)):
    """A float32 array with our stores' full chain (blosc + crc32c), values written."""
    from zarr.codecs import Crc32cCodec

    arr = zarr.create_array(root, shape=shape, chunks=chunks, dtype="float32", fill_value=np.nan,
                            compressors=[DEFAULT_CODEC.compressor(4), Crc32cCodec()])
    arr[...] = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    return arr


def _flip(path, at=-9):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


WHOLE = (slice(1, 2), slice(0, 3), slice(8, 16), slice(6, 12))  # exactly chunk (1, 0, 1, 1)
PART = (slice(1, 2), slice(0, 3), slice(5, 11), slice(4, 9))  # four chunks, (1, 0, 1, 1) among them


def test_whole_chunks_decode_straight_into_the_output_with_zarrs_values(tmp_path):
    arr = _checksummed(tmp_path / "a")
    reader = ChunkReader(arr)
    assert reader.fast and reader.checksum and reader._local_root is not None
    whole, part, cast = np.empty((1, 3, 8, 6), np.float32), np.empty((1, 3, 6, 5), np.float32), np.empty((1, 3, 8, 6))
    # the same chunk in a whole window (decoded into it), in a partial one, and cast to float64
    read_regions([(reader, WHOLE, whole), (reader, PART, part), (reader, WHOLE, cast)])
    np.testing.assert_array_equal(whole, arr[WHOLE])
    np.testing.assert_array_equal(part, arr[PART])
    np.testing.assert_array_equal(cast, arr[WHOLE].astype(np.float64))
    alone = np.empty((1, 3, 8, 6), np.float32)
    read_regions([(reader, WHOLE, alone)])  # its only user: decoded straight into the output
    np.testing.assert_array_equal(alone, arr[WHOLE])


@pytest.mark.parametrize("region", [WHOLE, PART], ids=["decoded-into-the-output", "decoded-into-scratch"])
@pytest.mark.parametrize("where", ["local", "store-api"])
def test_a_flipped_byte_raises_on_every_fast_path(tmp_path, region, where):
    from scibench_data.storage.store.integrity import ChunkChecksumError

    arr = _checksummed(tmp_path / "a")
    _flip(tmp_path / "a/c/1/0/1/1")
    if where == "store-api":  # the same files through the store's own get (as object storage is read)
        arr = zarr.open_array(zarr.storage.MemoryStore({k: zarr.core.buffer.cpu.Buffer.from_bytes(p.read_bytes())
                                                       for k, p in _files(tmp_path / "a")}), mode="r")
    reader = ChunkReader(arr)
    assert reader.fast and reader.checksum and (reader._local_root is None) == (where == "store-api")
    out = np.zeros(region_shape(region), np.float32)
    with pytest.raises(ChunkChecksumError, match=r"chunk c/1/0/1/1: crc32c checksum mismatch"):
        read_regions([(reader, region, out)])


def _files(root):
    return [(str(p.relative_to(root)), p) for p in sorted(root.rglob("*")) if p.is_file()]


def test_batch_buffers_are_reused_only_once_nothing_holds_them():
    import torch

    from loaders import chunk_reader
    from loaders.chunk_reader import batch_buffer

    shape = (4, 9, 64, 128)  # over the pooling size
    first = torch.from_numpy(batch_buffer(shape, np.float32))
    first.fill_(1.0)
    second = batch_buffer(shape, np.float32)
    assert not np.shares_memory(second, first.numpy())  # the first batch's tensor is alive
    view = first[2]
    del first
    assert not np.shares_memory(batch_buffer(shape, np.float32), view.numpy())  # a view keeps its storage
    del view, second
    again = batch_buffer(shape, np.float32)
    assert again.shape == shape and again.dtype == np.float32
    assert any(again is kept for kept in chunk_reader._BUFFERS[(shape, "<f4")])  # handed out again


def test_a_chunk_kept_from_the_previous_read_gives_zarrs_values_and_a_flipped_one_still_raises(tmp_path):
    """Consecutive reads (batches of one scene) reuse chunks decoded by the read before; only chunks
    whose checksum was checked are kept, and a damaged chunk among them still raises."""
    from scibench_data.storage.store.integrity import ChunkChecksumError

    arr = _checksummed(tmp_path / "a")
    reader = ChunkReader(arr)
    first = np.empty(region_shape(PART), np.float32)
    read_regions([(reader, PART, first)])
    assert (1, 0, 1, 1) in reader._kept  # decoded once, kept for the next read
    later = (slice(1, 2), slice(0, 3), slice(9, 16), slice(2, 12))  # shares chunks with PART, and new ones
    out = np.empty(region_shape(later), np.float32)
    read_regions([(reader, later, out)])
    np.testing.assert_array_equal(first, arr[PART])
    np.testing.assert_array_equal(out, arr[later])
    _flip(tmp_path / "a/c/0/0/0/0")  # never read yet
    with pytest.raises(ChunkChecksumError, match=r"chunk c/0/0/0/0: crc32c checksum mismatch"):
        read_regions([(reader, (slice(0, 1), slice(0, 3), slice(0, 12), slice(0, 8)), np.empty((1, 3, 12, 8), np.float32))])
    assert (0, 0, 0, 0) not in reader._kept
