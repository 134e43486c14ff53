"""Issue 15: the stores as users of tools we do not ship read them.

An independent Zarr v3 implementation (tensorstore), a CF checker (compliance-checker), xarray
idioms, intake's public API, the declared dtypes, the plan's codec and chunking, the classic
train/val-only CANDLE export and the reference normalisation arithmetic.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr

from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
from scibench_data.convert.stemdl import STEMDLConversion, convert_stemdl
from scibench_data.convert.uno import UnoConversion, convert_uno
from scibench_data.formats.uno import EXPORT_NAME
from scibench_data.storage.store.encoding import CodecChoice
from scibench_data.storage.store.records import StoreStateError
from scibench_data.strings import decode_strings
from scibench_data.subset.cloudmask import Selection, write_subset
from scibench_data.synthetic.uno import SyntheticUno
from scibench_data.synthetic.uno import generate as generate_uno
from tests._stemdl_data import write_tiny

UNO_TINY = SyntheticUno(n_cells=12, n_drugs=9, n_responses=300, n_genes=7, n_descriptors=5, n_fingerprint_bits=16,
                        na_fraction=0.05, export_batch=50, seed=3)
UNO_OPTS = UnoConversion(progress=False, scheduler="sync")  # default chunks: the catalog declares them
STEMDL_OPTS = STEMDLConversion(progress=False, scheduler="sync")

#: The dtype of every array each converter declares (module docstrings, docs/*.md).
DECLARED = {
    "cloudmask": {"image": "float32", "cloud_mask": "uint8", "summary_cloud": "uint8", "time": "int64",
                  "y": "int32", "x": "int32", "channel": "int8", "wavelength": "float32",
                  "channel_units": "int8", "channel_standard_name": "int8", "split": "int8",
                  "source_name": "uint8", "source_sha256": "uint8"},
    "stemdl": {"cbed": "float32", "potential": "float32", "projection": "int8", "label": "int16", "split": "int8",
               "material": "uint8", "source_file": "uint8", "source_key": "uint8"},
    "candle_uno": {"rnaseq": "float32", "descriptors": "float32", "fingerprints": "uint8", "auc": "float32",
                   "cell_index": "int32", "drug_index": "int32", "split": "int8", "source_row": "int64",
                   "cell_name": "uint8", "gene_name": "uint8", "drug_name": "uint8", "descriptor_name": "uint8",
                   "fingerprint_kind": "int8"},
}


@pytest.fixture(scope="module")
def every_store(cloudmask_stores, cloudmask_training_root, tmp_path_factory) -> dict[str, Path]:
    """One store of every kind we distribute: CloudMask (hdf, sen3, training+inference), STEMDL
    (npz classification, raw with potential) and CANDLE-UNO (raw, export)."""
    base = tmp_path_factory.mktemp("every_store")
    out = {"cloudmask_hdf": cloudmask_stores["hdf"], "cloudmask_sen3": cloudmask_stores["sen3"],
           "cloudmask_ds1": cloudmask_training_root / "cloudmask_ds1.zarr"}
    for layout in ("npz", "raw"):
        report = convert_stemdl(str(write_tiny(base / "src", layout)), str(base / f"stemdl_{layout}.zarr"), STEMDL_OPTS)
        assert report.ok, report.lines()
        out[f"stemdl_{layout}"] = base / f"stemdl_{layout}.zarr"
    generate_uno(base / "uno_raw", "raw", UNO_TINY)
    generate_uno(base / "uno_exp", "export", UNO_TINY)
    for layout, src in (("raw", base / "uno_raw"), ("export", base / "uno_exp" / EXPORT_NAME)):
        report = convert_uno(src, base / f"uno_{layout}.zarr", UNO_OPTS)
        assert report.ok, report.lines()
        out[f"uno_{layout}"] = base / f"uno_{layout}.zarr"
    return out


def _arrays(path: Path) -> dict[str, zarr.Array]:
    return dict(zarr.open_group(str(path), mode="r").arrays())


# --------------------------------------------------------------------------- item 1: any Zarr v3 reader


def _assert_tensorstore_reads_as_zarr(label: str, path: Path) -> None:
    """tensorstore (an independent Zarr v3 implementation) reads every array of the store at ``path``
    and gets what zarr-python reads."""
    ts = pytest.importorskip("tensorstore")
    for name, arr in _arrays(path).items():
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{path}/{name}/"}}
        try:
            theirs = ts.open(spec, open=True, read=True).result().read().result()
        except Exception as err:  # noqa: BLE001 - name the array that failed
            pytest.fail(f"{label}/{name} ({arr.dtype}): tensorstore cannot read it: {err}")
        np.testing.assert_array_equal(np.asarray(theirs), arr[...], err_msg=f"{label}/{name}")


def test_independent_zarr_reader_reads_ids_splits_and_channels_of_every_store(every_store):
    """tensorstore refused source_name, split and channel ("string data type is not one of the
    supported data types"); now it reads every array of every store as zarr-python does."""
    for store, path in every_store.items():
        _assert_tensorstore_reads_as_zarr(store, path)


def test_a_subset_store_is_readable_by_an_independent_zarr_reader(cloudmask_stores, tmp_path):
    """`scibench-data subset` copied decoded text back as Zarr `string` / fixed-length UTF-32 arrays,
    which tensorstore refuses; a subset keeps the source's portable encoding and decodes the same."""
    dest = tmp_path / "subset.zarr"
    report = write_subset(str(cloudmask_stores["sen3"]), str(dest),
                          Selection(channels=("S1", "S8"), window=(0, 32, 16, 48)), progress=False)
    assert report.status == "complete", report
    _assert_tensorstore_reads_as_zarr("subset", dest)
    sub = decode_strings(xr.open_zarr(dest))
    src = decode_strings(xr.open_zarr(cloudmask_stores["sen3"]))
    assert list(sub["channel"].values) == ["S1", "S8"]
    assert list(sub["source_name"].values) == list(src["source_name"].values)
    assert list(sub["split"].values) == list(src["split"].values)


def test_string_ids_decode_through_the_catalog_and_one_xarray_line(every_store, cloudmask_training_root):
    """Ids are integer codes or uint8 characters; our open path and one documented line give strings."""
    from scibench_data.catalog import open_catalog

    ds = open_catalog(root=str(cloudmask_training_root)).cloudmask_ds1.to_dask()
    raw = xr.open_zarr(str(cloudmask_training_root / "cloudmask_ds1.zarr"))
    names = np.char.decode(raw.source_name.values.view(f"S{raw.source_name.shape[-1]}")[..., 0], "utf-8")
    split = np.array(raw.split.attrs["flag_meanings"].split())[raw.split.values]
    assert names.tolist() == ds["source_name"].values.tolist()
    assert all(n.startswith("S3") for n in names)
    assert split.tolist() == ds["split"].values.tolist()
    assert sorted(set(split)) == ["inference", "training"]
    assert ds["channel"].values.tolist() == [f"S{i}" for i in range(1, 10)]
    for store in ("stemdl_raw", "uno_raw"):
        dec = decode_strings(xr.open_zarr(str(every_store[store])))
        for v in dec.variables:
            assert dec[v].dtype.kind != "u" or v in ("fingerprints", "cloud_mask", "summary_cloud"), (store, v)
    uno = decode_strings(xr.open_zarr(str(every_store["uno_raw"])))
    src = Path(str(every_store["uno_raw"]).removesuffix(".zarr"))
    with open(src / "combined_rnaseq_data_lincs1000_source_scale", encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    assert uno["cell"].values.tolist() == [r.split("\t", 1)[0] for r in rows]
    assert uno["gene"].values.tolist() == header.split("\t")[1:]
    assert uno["fingerprint_kind"].values.tolist() == ["PFP", "ECFP"]


def test_store_written_with_string_arrays_still_opens_with_strings(tmp_path):
    """A store written before the portable encoding (zarr ``string`` arrays) opens unchanged."""
    old = xr.Dataset({"v": ("scene", np.zeros(2, np.float32))},
                     coords={"source_name": ("scene", np.array(["a", "b"], dtype=object))})
    old.to_zarr(str(tmp_path / "old.zarr"), zarr_format=3)
    ds = decode_strings(xr.open_zarr(str(tmp_path / "old.zarr")))
    assert ds["source_name"].values.tolist() == ["a", "b"]


# --------------------------------------------------------------------------- item 4: declared dtypes


def test_every_array_of_every_store_has_its_declared_dtype_uno_not_float64_int64(every_store):
    """dask's ``full`` took the dtype positionally as nothing and inferred float64/int64 from the fill."""
    for store, path in every_store.items():
        fmt = zarr.open_group(str(path), mode="r").attrs["scibench_format"]
        for name, arr in _arrays(path).items():
            want = DECLARED[fmt].get(name)
            assert want is not None, f"{store}/{name} ({arr.dtype}) is not declared"
            assert str(arr.dtype) == want, f"{store}/{name}: {arr.dtype}, declared {want}"


# --------------------------------------------------------------------------- item 2: CF


def _as_netcdf(path: Path, dest: Path) -> Path:
    """The store's variables and attributes as stored (no decoding) in a netCDF4 file."""
    ds = xr.open_zarr(str(path), decode_cf=False, consolidated=True).load()
    for v in ds.variables.values():
        # Zarr attributes are JSON (untyped); netCDF attributes are typed: CF wants flag_values and
        # valid_range in the variable's type, as any Zarr-to-netCDF writer must give them.
        for key in ("flag_values", "flag_masks", "valid_range"):
            if key in v.attrs:
                v.attrs[key] = np.asarray(v.attrs[key], dtype=v.dtype)
        v.attrs.pop("_FillValue", None)
        fill = v.encoding.get("_FillValue", None)
        v.encoding = {"_FillValue": fill} if fill is not None else {"_FillValue": None}
    ds.to_netcdf(dest, engine="h5netcdf")
    return dest


def _cf_failures(nc: Path) -> list[str]:
    from compliance_checker.runner import CheckSuite, ComplianceChecker  # noqa: F401

    suite = CheckSuite()
    suite.load_all_available_checkers()
    ds = suite.load_dataset(str(nc))
    groups = suite.run_all(ds, ["cf:1.10"], skip_checks=[])
    results = groups["cf:1.10"][0]
    out = []
    for r in results:
        if r.weight >= 2 and r.value and r.value[0] < r.value[1]:  # high and medium priority
            out.append(f"{r.name}: {r.msgs}")
    return out


def test_every_store_passes_the_cf_checker(every_store, tmp_path):
    """Stores claimed CF-1.10 with ``units: "see channel_units"``, no standard_name, no y/x."""
    pytest.importorskip("compliance_checker")
    for store, path in every_store.items():
        attrs = zarr.open_group(str(path), mode="r").attrs
        if "Conventions" not in attrs:
            continue
        failures = _cf_failures(_as_netcdf(path, tmp_path / f"{store}.nc"))
        assert not failures, (store, failures)


def test_cloudmask_variables_carry_cf_units_standard_names_and_y_x(every_store):
    ds = xr.open_zarr(str(every_store["cloudmask_ds1"]))
    assert ds.attrs["Conventions"] == "CF-1.10"
    assert "units" not in ds["image"].attrs or ds["image"].attrs["units"] != "see channel_units"
    assert ds["cloud_mask"].attrs["standard_name"] == "cloud_binary_mask"
    assert "y" in ds.coords and "x" in ds.coords
    assert ds["channel_standard_name"].attrs["flag_meanings"].split()[0] == "toa_bidirectional_reflectance"


def test_time_selection_by_slice_works_although_training_and_inference_times_repeat(every_store):
    """Times repeated (training and inference products share start times) and were not monotonic."""
    ds = decode_strings(xr.open_zarr(str(every_store["cloudmask_ds1"])))
    t = ds["time"].values
    assert (np.diff(t) > np.timedelta64(0, "s")).all()
    ds = ds.set_xindex("time")
    sub = ds.sel(time=slice(t[1], t[3]))
    assert sub.sizes["scene"] == 3


# --------------------------------------------------------------------------- item 3: catalog metadata


def test_catalog_metadata_is_public_through_intake_describe_and_metadata():
    """``describe()`` raised AttributeError and there was no ``.metadata`` on an entry."""
    from scibench_data.catalog import open_catalog

    cat = open_catalog(root="/nowhere")
    for name in cat:
        entry = getattr(cat, name)
        md = entry.metadata
        desc = entry.describe()
        for key in ("license", "citation", "doi"):
            assert md.get(key), (name, key)
        assert desc["description"] and desc["metadata"]["license"] == md["license"]
        assert "licence" not in md, name
        sizes = [k for k in md if k.endswith("size_bytes") or "size_bytes_" in k]
        assert sizes and all(k.endswith(("_estimate", "_measured", "uncompressed_size_bytes")) or
                             k == "raw_size_bytes" for k in sizes), (name, sizes)


def _catalog_entry(name: str) -> dict:
    from scibench_data import catalog_path

    return yaml.safe_load(Path(catalog_path()).read_text())["sources"][name]["metadata"]


def _codec_text(arr: zarr.Array) -> str:
    """The array's codec chain in the catalog's words: blosc settings, then any further codec
    (e.g. ``, crc32c``); the ``bytes`` serializer is implied."""
    parts = []
    for c in arr.metadata.codecs:
        kind = type(c).__name__
        if kind == "BloscCodec":
            shuffle = {"shuffle": "byte shuffle", "bitshuffle": "bit shuffle", "noshuffle": "no shuffle"}[c.shuffle.name]
            parts.append(f"blosc {c.cname.name} level {c.clevel}, {shuffle}")
        elif kind != "BytesCodec":
            parts.append(kind.removesuffix("Codec").lower())
    return ", ".join(parts)


@pytest.mark.parametrize("entry,store", [("cloudmask_ds1", "cloudmask_ds1"), ("cloudmask_ds2", "cloudmask_sen3"),
                                         ("stemdl", "stemdl_npz"), ("stemdl_reconstruction", "stemdl_raw"),
                                         ("candle_uno", "uno_raw")])
def test_catalog_dims_chunks_and_codec_match_a_converted_store_field_by_field(every_store, entry, store):
    """The catalog said cloud_mask chunks were [1, 256, 256]; the converter writes one per scene."""
    md = _catalog_entry(entry)
    g = zarr.open_group(str(every_store[store]), mode="r")
    arrays = dict(g.arrays())
    data_dims = {}
    for name, arr in arrays.items():
        for d, n in zip(arr.metadata.dimension_names, arr.shape):
            data_dims[d] = n
    assert set(md["dims"]) <= set(data_dims), (entry, md["dims"], data_dims)
    for d, n in md["dims"].items():  # fixed by the format: equal; sized by the data: present
        assert data_dims[d] == n or d in ("scene", "sample", "y", "x", "gene", "descriptor", "bit"), (entry, d)
    for name, chunks in md["chunks"].items():
        arr = arrays[name]
        shape_of = dict(zip(arr.metadata.dimension_names, arr.shape))
        want = [shape_of[d] if c == "all" else c for d, c in zip(arr.metadata.dimension_names, chunks)]
        got = list(arr.chunks)
        # a tiny store clips chunks to its shape: compare where the store is big enough
        for d, w, c, n in zip(arr.metadata.dimension_names, want, got, arr.shape):
            if md["dims"].get(d) == w:  # declared as the whole dimension: the store's whole dimension
                assert c == n, (entry, name, d, want, got)
            else:
                assert c == min(w, n) or n < w, (entry, name, d, want, got)
        assert md["codec"] == _codec_text(arr), (entry, name)


# --------------------------------------------------------------------------- item 5: classic export


def test_classic_train_val_only_export_converts_with_an_empty_test_split(tmp_path):
    """The classic CANDLE export (x/y train and val only) was refused: "missing node 'y_test'"."""
    generate_uno(tmp_path / "src", "export", dataclasses.replace(UNO_TINY, export_splits=("train", "val")))
    report = convert_uno(tmp_path / "src" / EXPORT_NAME, tmp_path / "uno.zarr", UNO_OPTS)
    assert report.ok, report.lines()
    assert report.extra["rows_per_split"]["test"] == 0
    assert any("no test split" in line for line in report.lines())
    ds = xr.open_zarr(str(tmp_path / "uno.zarr"))
    assert "no test split" in ds.attrs["scibench_splits"]
    assert set(np.unique(ds["split"].values).tolist()) == {0, 1}


# --------------------------------------------------------------------------- item 6: normalisation


def _reference_normalise(image: np.ndarray) -> np.ndarray:
    """A plain NumPy port of the reference (sciml-bench slstr_cloud): refs - 0.5, (bts - 270) / 22."""
    refs, bts = image[:6].astype(np.float32), image[6:].astype(np.float32)
    refs = refs - 0.5
    bts = (bts - 270) / 22
    out = np.concatenate([refs, bts])
    return np.nan_to_num(out, nan=0.0)


def test_normalised_brightness_temperature_equals_reference_bit_for_bit_not_one_ulp_off():
    """Ours multiplied by 1/22; the reference divides by 22 (1 ulp apart on many values)."""
    from loaders.cloudmask import normalise

    rng = np.random.default_rng(0)
    image = np.concatenate([rng.uniform(0, 1.2, (6, 64, 64)), rng.uniform(190, 330, (3, 64, 64))]).astype(np.float32)
    image[7, 3, 3] = np.nan
    got, want = normalise(image), _reference_normalise(image)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


# --------------------------------------------------------------------------- item 8: plan


def test_resuming_with_another_codec_is_refused_clearly(tmp_path, every_store):
    """The codec was not in the plan: a rerun with another codec was silently ignored."""
    dest = tmp_path / "uno.zarr"
    shutil.copytree(every_store["uno_raw"], dest)
    src = Path(str(every_store["uno_raw"]).replace("uno_raw.zarr", "uno_raw"))
    other = dataclasses.replace(UNO_OPTS, codec=CodecChoice(cname="zstd", clevel=3))
    with pytest.raises(StoreStateError, match="codec"):
        convert_uno(src, dest, other)
    assert convert_uno(src, dest, UNO_OPTS).already_done  # the same options still resume


def test_resuming_with_other_chunking_is_refused_clearly(tmp_path, cloudmask_raw):
    dest = tmp_path / "cm.zarr"
    assert convert_cloudmask(str(cloudmask_raw["hdf"]), str(dest), CloudMaskConversion(layout="hdf", progress=False)).ok
    with pytest.raises(StoreStateError, match="tile|chunks"):
        convert_cloudmask(str(cloudmask_raw["hdf"]), str(dest), CloudMaskConversion(layout="hdf", tile=32, progress=False))
    with pytest.raises(StoreStateError, match="codec"):
        convert_cloudmask(str(cloudmask_raw["hdf"]), str(dest),
                          CloudMaskConversion(layout="hdf", codec=CodecChoice(shuffle="bitshuffle"), progress=False))


def test_scene_times_break_ties_in_a_start_second_by_milliseconds():
    from datetime import datetime

    from scibench_data.convert.cloudmask import scene_times

    t = [datetime(2019, 10, 1, 10, 0, 0)] * 3 + [datetime(2019, 10, 1, 10, 0, 1)]
    got = scene_times(t).astype("datetime64[ms]").astype(np.int64)
    assert np.diff(got).tolist() == [1, 1, 998]
    with pytest.raises(ValueError, match="non-decreasing"):
        scene_times(t[::-1])


def test_append_to_a_store_of_the_older_string_layout_is_refused(tmp_path, cloudmask_raw):
    """An append would write codes and characters into a version-1 store's string arrays."""
    import json

    dest = tmp_path / "cm.zarr"
    opts = CloudMaskConversion(layout="hdf", progress=False)
    assert convert_cloudmask(str(cloudmask_raw["hdf"]), str(dest), opts).ok
    root = json.loads((dest / "zarr.json").read_text())
    root["attributes"]["scibench_format_version"] = 1
    (dest / "zarr.json").write_text(json.dumps(root))
    from scibench_data.convert.cloudmask import append_cloudmask

    with pytest.raises(StoreStateError, match="layout version 1"):
        append_cloudmask(str(cloudmask_raw["hdf"]), str(dest), opts)
