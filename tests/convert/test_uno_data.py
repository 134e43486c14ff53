"""CANDLE-UNO: readers, both-layout round trips through the store and the catalog, resume, bad inputs."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from loaders.uno import (
    UnoDataset,
    UnoSource,
    batch_order,
    gather,
    load_arrays,
    numpy_batches,
)
from scibench_data.convert.uno import UnoConversion, convert_uno
from scibench_data.formats import SourceFormatError
from scibench_data.formats.pickle_literal import UnsafePickleError, literal_from_pickle
from scibench_data.formats.uno import EXPORT_NAME, FINGERPRINT_KINDS, SPLITS
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import store_state
from scibench_data.synthetic.uno import SyntheticUno, generate

TINY = SyntheticUno(n_cells=12, n_drugs=9, n_responses=300, n_genes=7, n_descriptors=5, n_fingerprint_bits=16, na_fraction=0.05,
                    export_batch=50, seed=3)
OPTS = UnoConversion(response_chunk=32, chunks_per_task=2, progress=False, scheduler="sync")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("uno_src")
    generate(d / "raw", "raw", TINY)
    generate(d / "exp", "export", TINY)
    return {"raw": d / "raw", "export": d / "exp" / EXPORT_NAME}


def _convert(src: Path, root: Path) -> object:
    report = convert_uno(src, root / "candle_uno.zarr", OPTS)
    assert report.ok, report.lines()
    return load_arrays(UnoSource(root=str(root)).open(), standardise=False), UnoSource(root=str(root)).open()


def test_pickle_literal_matches_pickle_for_plain_values_and_refuses_calls() -> None:
    from collections import OrderedDict

    value = OrderedDict([("cell.rnaseq", "cell.rnaseq"), ("drug1.descriptors", "drug.descriptors")])
    for proto in (0, 2, 4, 5):
        assert literal_from_pickle(pickle.dumps(value, proto)) == dict(value)
        assert literal_from_pickle(pickle.dumps({"a": (942,), "b": [1.5, None, True]}, proto)) == \
            {"a": (942,), "b": [1.5, None, True]}
    with pytest.raises(UnsafePickleError, match="builtins.open|__builtin__.open"):
        literal_from_pickle(b"c__builtin__\nopen\n(S'/tmp/x'\nS'w'\ntR.")


def test_raw_round_trip_joined_rows_equal_source_tables(sources: dict[str, Path], tmp_path: Path) -> None:
    arrays, ds = _convert(sources["raw"], tmp_path)
    raw = sources["raw"]
    resp = pd.read_csv(raw / "combined_single_response_agg", sep="\t", na_values=["na"])
    kept = resp[(resp.R2fit >= 0.3) & (resp.EC50se <= 3)]
    rna = pd.read_csv(raw / "combined_rnaseq_data_lincs1000_source_scale", sep="\t", index_col=0)
    desc = pd.concat([pd.read_csv(p, sep="\t", index_col=0, na_values=["na"])
                      for p in sorted(raw.glob("*_dragon7_descriptors.tsv"))])
    pfp = pd.concat([pd.read_csv(p, sep="\t", header=None, index_col=0) for p in sorted(raw.glob("*_PFP.tsv"))])
    assert len(kept) < len(resp) and len(arrays.auc) == len(kept)
    rows = np.arange(len(arrays.auc))
    joined = gather(arrays, rows)
    src_rows = ds["source_row"].values
    np.testing.assert_array_equal(src_rows, kept.index.to_numpy())
    np.testing.assert_allclose(joined["auc"], kept.AUC.to_numpy(np.float32))
    np.testing.assert_array_equal(joined["cell"], rna.loc[kept.CELL].to_numpy(np.float32))
    stored_desc = ds["descriptors"].values.astype(np.float32)  # as stored: 'na' is NaN (the loader imputes)
    np.testing.assert_array_equal(stored_desc[arrays.drug_index], desc.loc[kept.DRUG].to_numpy(np.float32))
    assert not np.isnan(joined["drug"]).any()
    assert np.isnan(ds["descriptors"].values).sum() == desc.isna().sum().sum() > 0  # 'na' kept as NaN
    fp = ds["fingerprints"].values[:, FINGERPRINT_KINDS.index("PFP")]
    np.testing.assert_array_equal(fp[arrays.drug_index], pfp.loc[kept.DRUG].to_numpy(np.uint8))
    counts = np.bincount(arrays.split, minlength=3)
    assert counts[0] > counts[1] > 0 and counts[2] > 0
    # features stored once: one row per cell and drug, not per response
    assert ds.sizes["cell"] == len(rna) and ds.sizes["drug"] == len(desc)


def test_export_round_trip_joined_rows_equal_hdfstore_rows(sources: dict[str, Path], tmp_path: Path) -> None:
    arrays, _ = _convert(sources["export"], tmp_path)
    for s, split in enumerate(SPLITS):
        x0 = pd.read_hdf(sources["export"], f"x_{split}_0").to_numpy()  # trusted test data: pandas may unpickle
        x1 = pd.read_hdf(sources["export"], f"x_{split}_1").to_numpy()
        y = pd.read_hdf(sources["export"], f"y_{split}")
        rows = arrays.rows(split)
        joined = gather(arrays, rows)
        np.testing.assert_array_equal(joined["cell"], x0)
        np.testing.assert_array_equal(joined["drug"], x1)
        np.testing.assert_array_equal(joined["auc"], y.AUC.to_numpy())
        assert len(rows) == len(y) > 0


def test_resume_after_interruption_and_idempotent(sources: dict[str, Path], tmp_path: Path) -> None:
    dest = tmp_path / "candle_uno.zarr"
    assert convert_uno(sources["raw"], dest, OPTS).ok
    markers = sorted((dest / "_scibench" / "done").glob("*.json"))
    assert len(markers) >= 3
    # simulate a kill after some blocks: drop two markers and the completion
    for m in markers[-2:]:
        m.unlink()
    root = dest / "zarr.json"
    import json

    meta = json.loads(root.read_text())
    meta.pop("consolidated_metadata", None)
    meta["attributes"]["scibench_status"] = "incomplete"
    root.write_text(json.dumps(meta))
    assert not store_state(StoreLocation(str(dest))).complete
    report = convert_uno(sources["raw"], dest, OPTS)
    assert report.ok and len(report.converted) == 2 and report.already_done == len(markers) - 2
    again = convert_uno(sources["raw"], dest, OPTS)
    assert again.ok and again.converted == () and again.already_done == len(markers)


def test_numpy_batches_seeded_and_cover_split(sources: dict[str, Path], tmp_path: Path) -> None:
    arrays, _ = _convert(sources["export"], tmp_path)
    a = [b["auc"] for b in numpy_batches(UnoDataset(arrays, "train"), 16, seed=1, shuffle=True)]
    b = [b["auc"] for b in numpy_batches(UnoDataset(arrays, "train"), 16, seed=1, shuffle=True)]
    c = batch_order(100, 16, seed=1, epoch=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(np.concatenate(batch_order(100, 16, seed=1, epoch=0)), np.concatenate(c))
    np.testing.assert_array_equal(np.sort(np.concatenate(a)), np.sort(arrays.auc[arrays.rows("train")]))


def test_malformed_tsv_names_file_and_line(sources: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "raw"
    shutil.copytree(sources["raw"], bad)
    resp = bad / "combined_single_response_agg"
    lines = resp.read_text().splitlines()
    fields = lines[5].split("\t")
    fields[4] = "not-a-number"
    lines[5] = "\t".join(fields)
    resp.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceFormatError, match=r"combined_single_response_agg: line 6, column AUC"):
        convert_uno(bad, tmp_path / "s.zarr", OPTS)
    lines[5] = lines[5] + "\textra"
    resp.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceFormatError, match=r"combined_single_response_agg: malformed TSV \(line 6"):
        convert_uno(bad, tmp_path / "s.zarr", OPTS)


def test_pickled_attribute_is_not_executed_and_object_node_refused(sources: dict[str, Path], tmp_path: Path) -> None:
    trapped = tmp_path / EXPORT_NAME
    shutil.copy(sources["export"], trapped)
    marker = tmp_path / "PWNED"
    with h5py.File(trapped, "a") as f:
        f["model"].attrs["input_features"] = np.bytes_(f"c__builtin__\nopen\n(S'{marker}'\nS'w'\ntR.".encode())
    with pytest.raises(SourceFormatError, match=r"uno.h5: attribute 'input_features' of node '/model'"):
        convert_uno(trapped, tmp_path / "s.zarr", OPTS)
    assert not marker.exists()

    objects = tmp_path / "objects" / EXPORT_NAME
    objects.parent.mkdir()
    shutil.copy(sources["export"], objects)
    with pd.HDFStore(objects, "a") as store:
        del store["y_val"]
        with pytest.warns(pd.errors.PerformanceWarning, match="pickle"):
            store.put("y_val", pd.DataFrame({"AUC": [0.5], "Sample": [["not", "a", "string"]]}), format="fixed",
                      track_times=False)
    with pytest.raises(SourceFormatError, match=r"uno.h5: node '/y_val/.*' holds pickled Python objects"):
        convert_uno(objects, tmp_path / "t.zarr", OPTS)
