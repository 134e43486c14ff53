"""Decoding HDF5 datasets from a file's bytes in memory equals h5py's own read, or declines."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest

from scibench_data.formats.hdf5_memory import (
    contiguous_view,
    deflated_values,
    values_in_memory,
)


def _file(tmp_path, **create) -> bytes:
    path = tmp_path / "f.h5"
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as h:
        for name, (dtype, kwargs) in create.items():
            data = (rng.random((70, 45)) * 1000).astype(dtype)
            h.create_dataset(name, data=data, **kwargs)
        h.create_dataset("sparse", shape=(70, 45), dtype="<i2", chunks=(16, 16), compression="gzip", fillvalue=-7)
        h["sparse"][0:10, 0:10] = 5  # only some chunks are allocated
    return path.read_bytes()


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<f4", ">f8", "u1"])
def test_values_decoded_from_memory_equal_h5py(tmp_path, dtype):
    data = _file(tmp_path, contiguous=(dtype, {}), deflate=(dtype, {"chunks": (16, 13), "compression": "gzip"}),
                 shuffled=(dtype, {"chunks": (32, 45), "compression": "gzip", "shuffle": True}))
    with h5py.File(io.BytesIO(data), "r") as h:
        assert contiguous_view(h["contiguous"], data) is not None
        for name in ("contiguous", "deflate", "shuffled", "sparse"):
            got = values_in_memory(h[name], data)
            assert got is not None, name
            assert got.dtype == h[name].dtype and np.array_equal(got, h[name][()]), name


def test_other_storage_is_left_to_h5py(tmp_path):
    """Filters we do not decode (fletcher32 checksums, lzf), and compact storage, return None."""
    data = _file(tmp_path, checked=("<u2", {"chunks": (16, 16), "compression": "gzip", "fletcher32": True}),
                 lzf=("<u2", {"chunks": (16, 16), "compression": "lzf"}))
    with h5py.File(io.BytesIO(data), "r") as h:
        assert deflated_values(h["checked"], data) is None
        assert values_in_memory(h["lzf"], data) is None
        assert contiguous_view(h["checked"], data) is None


def test_truncated_bytes_are_not_viewed(tmp_path):
    data = _file(tmp_path, contiguous=("<f4", {}))
    with h5py.File(io.BytesIO(data), "r") as h:
        offset = h["contiguous"].id.get_offset()
        assert contiguous_view(h["contiguous"], data[:offset + 10]) is None
