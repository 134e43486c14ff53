"""The direct chunk writer stores exactly what zarr's own write stores: the same objects, byte for byte,
under the same keys (edge tiles padded with the fill value, all-fill chunks not written, and a chunk
that a rewrite makes all fill deleted), on a local folder and on S3 (the moto server)."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import pytest
import xarray as xr
import zarr
from _s3_helpers import bucket_client

from scibench_data.storage.store.chunk_writer import direct_chain, write_region
from scibench_data.storage.store.encoding import encoding_for
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import RecordStore, array_in
from scibench_data.storage.store.regions import MisalignedRegionError, Region

N, C, H, W, T = 4, 3, 40, 50, 16  # records, channels, rows, columns, tile (edge tiles 8 rows, 2 columns)


@pytest.fixture(params=["local", "s3"])
def locations(request, tmp_path) -> tuple[StoreLocation, StoreLocation]:
    """Two fresh store locations of one kind: one written through zarr, one through the direct writer."""
    if request.param == "local":
        return StoreLocation(str(tmp_path / "zarr.zarr")), StoreLocation(str(tmp_path / "direct.zarr"))
    options = request.getfixturevalue("s3_storage_options")
    bucket_client(options, "chunkwriter")
    run = uuid.uuid4().hex
    return (StoreLocation(f"s3://chunkwriter/{run}/zarr.zarr", options),
            StoreLocation(f"s3://chunkwriter/{run}/direct.zarr", options))


def _template() -> xr.Dataset:
    def var(dims, shape, dtype, fill):
        return xr.DataArray(np.full(shape, fill, dtype), dims=dims).chunk(-1)
    return xr.Dataset({
        "image": var(("r", "c", "y", "x"), (N, C, H, W), np.float32, np.nan),
        "mask": var(("r", "y", "x"), (N, H, W), np.uint8, 255),
        "zero": var(("r", "y", "x"), (N, H, W), np.float32, 0.0),
        "plain": var(("r", "y", "x"), (N, H, W), np.float32, np.nan),  # zarr's default chain: not ours
    })


def _encoding() -> dict:
    return {
        "image": {**encoding_for(4, (1, C, T, T)), "fill_value": np.float32(np.nan)},
        "mask": {**encoding_for(1, (1, H, W)), "fill_value": np.uint8(255)},
        "zero": {**encoding_for(4, (1, T, T)), "fill_value": np.float32(0.0)},
        "plain": {"chunks": (1, T, T), "fill_value": np.float32(np.nan)},
    }


def _store(location: StoreLocation) -> RecordStore:
    store = RecordStore(location, "r")
    assert store.prepare(_template(), _encoding(), [f"k{i}" for i in range(N)], {"format": "test"}) == "created"
    return store


def _records() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    image = rng.normal(280, 20, (N, C, H, W)).astype(np.float32)
    image[0, :, :T, T:2 * T] = np.nan  # an all-fill interior tile
    image[0, :, 2 * T:, 3 * T:] = np.nan  # an all-fill edge tile (8 x 2 values, the rest padding)
    image[0, 1, T, T] = np.nan  # a tile holding one fill value among data
    image[1] = np.nan  # a record of fill only: no image object at all
    mask = (rng.random((N, H, W)) > 0.5).astype(np.uint8)
    mask[1] = 255
    zero = rng.normal(0, 1, (N, H, W)).astype(np.float32)
    zero[0, :T, :T] = 0.0  # the fill: not written
    zero[0, T:2 * T, :T] = -0.0  # equal to 0.0 but not the fill's bits: zarr writes it
    plain = rng.normal(0, 1, (N, H, W)).astype(np.float32)
    return [{name: arr[i] for name, arr in (("image", image), ("mask", mask), ("zero", zero), ("plain", plain))}
            for i in range(N)]


def _objects(location: StoreLocation) -> dict[str, bytes]:
    """Every chunk object of the four arrays: key relative to the store -> bytes."""
    fs, root = location.fs, location.root.rstrip("/")
    fs.invalidate_cache()
    return {p[len(root) + 1:]: fs.cat_file(p) for p in fs.find(root)
            if p[len(root) + 1:].split("/")[0] in _template().data_vars and "/c/" in p}


def _write_through_zarr(store: RecordStore, index: int, arrays: dict[str, np.ndarray]) -> None:
    """What ``write_record`` did before the direct writer: zarr's region write of each array."""
    g = store.group()
    for name, data in arrays.items():
        array_in(g, name)[index:index + 1] = data[None]


def test_the_direct_writer_stores_the_same_objects_as_zarr_byte_for_byte(locations):
    by_zarr, direct = (_store(loc) for loc in locations)
    for i, rec in enumerate(_records()):
        _write_through_zarr(by_zarr, i, rec)
        direct.write_record(i, rec)
    want, got = _objects(by_zarr.location), _objects(direct.location)
    assert sorted(got) == sorted(want)
    assert [k for k in got if got[k] != want[k]] == []
    # what zarr leaves out, both leave out: the all-fill tiles, the fill-only record, the 0.0 tile
    assert "image/c/0/0/0/1" not in got and "image/c/0/0/2/3" not in got and "zero/c/0/0/0" not in got
    assert not any(k.startswith(("image/c/1/", "mask/c/1/")) for k in got)
    assert "zero/c/0/1/0" in got and "image/c/0/0/1/1" in got  # -0.0 bits, and a tile with one NaN
    assert len([k for k in got if k.startswith("image/c/0/")]) == 3 * 4 - 2  # 3 x 4 tiles, two all fill
    ds = xr.open_zarr(direct.location.zarr_store(), consolidated=False)
    for i, rec in enumerate(_records()):
        for name, data in rec.items():
            np.testing.assert_array_equal(ds[name][i].values, data)


def test_a_rewrite_that_makes_a_chunk_all_fill_deletes_its_object_as_zarr_does(locations):
    by_zarr, direct = (_store(loc) for loc in locations)
    first = _records()[2]
    second = {name: data.copy() for name, data in first.items()}
    second["image"][:, :T, :T] = np.nan
    second["mask"][:] = 255
    for store, write in ((by_zarr, lambda i, r: _write_through_zarr(by_zarr, i, r)), (direct, direct.write_record)):
        write(2, first)
        assert "image/c/2/0/0/0" in _objects(store.location) and "mask/c/2/0/0" in _objects(store.location)
        write(2, second)
    want, got = _objects(by_zarr.location), _objects(direct.location)
    assert "image/c/2/0/0/0" not in got and "mask/c/2/0/0" not in got
    assert got == want


def test_one_encoding_thread_or_several_give_the_same_objects(tmp_path):
    stores = [_store(StoreLocation(str(tmp_path / f"t{n}.zarr"))) for n in (1, 2, 5)]
    for store, threads in zip(stores, (1, 2, 5)):
        g = store.group()
        for i, rec in enumerate(_records()):
            arr = array_in(g, "image")
            written = write_region(arr, Region((i, 0, 0, 0), (i + 1, C, H, W)), rec["image"][None], threads=threads)
            assert written is not None
            for key, (size, digest) in written.items():  # what it says it wrote is what the store holds
                data = (tmp_path / f"t{threads}.zarr" / key).read_bytes()
                assert (len(data), hashlib.sha256(data).hexdigest()) == (size, digest), key
    one, *others = (_objects(s.location) for s in stores)
    assert one and all(o == one for o in others)


def test_other_codec_chains_and_dtypes_are_left_to_zarr(tmp_path):
    g = _store(StoreLocation(str(tmp_path / "s.zarr"))).group()
    plain, image = array_in(g, "plain"), array_in(g, "image")
    assert direct_chain(plain) is None and direct_chain(image) is not None
    region = Region((0, 0, 0), (1, H, W))
    assert write_region(plain, region, np.zeros((1, H, W), np.float32)) is None
    assert write_region(image, Region((0, 0, 0, 0), (1, C, H, W)), np.zeros((1, C, H, W), np.float64)) is None
    assert not list(_objects(StoreLocation(str(tmp_path / "s.zarr"))))  # nothing written by a refusal


def test_a_misaligned_region_is_refused_before_any_byte_is_written(tmp_path):
    location = StoreLocation(str(tmp_path / "s.zarr"))
    image = array_in(_store(location).group(), "image")
    with pytest.raises(MisalignedRegionError):
        write_region(image, Region((0, 0, 8, 0), (1, C, H, W)), np.zeros((1, C, H - 8, W), np.float32))
    assert _objects(location) == {}


def test_records_in_a_store_opened_by_zarr_read_back_equal(tmp_path):
    location = StoreLocation(str(tmp_path / "s.zarr"))
    store = _store(location)
    recs = _records()
    for i, rec in enumerate(recs):
        store.write_record(i, rec)
    g = zarr.open_group(location.zarr_store(), mode="r")
    np.testing.assert_array_equal(g["image"][:], np.stack([r["image"] for r in recs]))
    np.testing.assert_array_equal(g["mask"][:], np.stack([r["mask"] for r in recs]))


def test_a_malformed_chunk_digest_in_a_marker_is_not_trusted():
    """A marker (or an inventory) is read back from the store: an entry that is not (size >= 0, 64 hex
    digits) is left out, so that object is hashed from storage instead."""
    from scibench_data.storage.store.records import written_chunks

    good = "ab" * 32
    markers = {0: {"chunks": {"image/c/0/0/0/0": [10, good], "image/c/0/0/0/1": [10, "zz" * 32],
                              "image/c/0/0/1/0": [-1, good], "image/c/0/0/1/1": [True, good],
                              "image/c/0/0/2/0": [10, good[:-1]], "image/c/0/0/2/1": "x"}},
               1: {"chunks": ["not", "a", "mapping"]}, 2: "not a marker"}
    assert written_chunks(markers) == {"image/c/0/0/0/0": (10, good)}


def test_finalize_takes_the_digests_the_markers_carry_for_every_record_store(tmp_path):
    """The mechanism every converter and subset shares (``RecordStore.mark_done(..., chunks)``, then a
    ``finalize`` that reads the markers itself): the manifest holds the digest of what each task wrote,
    not one of the object read back. So a chunk changed in place after its task wrote it (same size)
    is named by ``verify``, and a chunk zarr wrote (another codec chain) is hashed from storage."""
    from scibench_data.storage.store.manifest import read_manifest, verify_store

    location = StoreLocation(str(tmp_path / "s.zarr"))
    store = _store(location)
    for i, rec in enumerate(_records()):
        store.mark_done(i, {"key": f"k{i}"}, store.write_record(i, rec))
    victim = tmp_path / "s.zarr" / "image" / "c" / "2" / "0" / "0" / "0"
    data = bytearray(victim.read_bytes())
    data[20] ^= 0xFF  # after its task wrote it, before finalize: the size stays
    victim.write_bytes(bytes(data))
    store.finalize({}, {})
    manifest = read_manifest(location)
    assert manifest.by_key["image/c/2/0/0/0"].sha256 != hashlib.sha256(bytes(data)).hexdigest()
    report = verify_store(location, manifest)
    assert [k for k, _ in report.corrupted] == ["image/c/2/0/0/0"], report
    plain = "plain/c/2/0/0"
    assert manifest.by_key[plain].sha256 == hashlib.sha256((tmp_path / "s.zarr" / plain).read_bytes()).hexdigest()
