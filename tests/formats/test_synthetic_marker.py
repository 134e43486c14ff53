"""Synthetic data is labelled synthetic also when converted by hand (`generate` then `convert`),
not only by `run`: the generators leave a marker file beside the products (issue 17, item 4)."""

from __future__ import annotations

import shutil

import fsspec
import xarray as xr

from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
from scibench_data.convert.stemdl import STEMDLConversion, convert_stemdl
from scibench_data.convert.uno import UnoConversion, convert_uno
from scibench_data.formats.synthetic_marker import MARKER_NAME, find_marker
from scibench_data.synthetic.cloudmask import SyntheticCloudMask
from scibench_data.synthetic.cloudmask import generate as generate_cloudmask
from scibench_data.synthetic.stemdl import SyntheticSTEMDL
from scibench_data.synthetic.stemdl import generate as generate_stemdl
from scibench_data.synthetic.uno import SyntheticUno
from scibench_data.synthetic.uno import generate as generate_uno

SMALL_UNO = SyntheticUno(n_cells=12, n_drugs=10, n_responses=300, n_genes=8, n_descriptors=6,
                         n_fingerprint_bits=16)


def _synthetic(store) -> str | None:
    return xr.open_zarr(store).attrs.get("scibench_synthetic")


def test_generated_then_converted_by_hand_stores_of_all_three_are_marked_synthetic(tmp_path):
    """Only `run` marked its stores: `generate` + `convert` gave a store indistinguishable from real data."""
    generate_cloudmask(tmp_path / "cm", "hdf", SyntheticCloudMask(n_products=2, grid=(32, 48), seed=3))
    assert convert_cloudmask(str(tmp_path / "cm"), str(tmp_path / "cm.zarr"),
                             CloudMaskConversion(layout="hdf", progress=False)).ok
    generate_stemdl(tmp_path / "st", "raw", SyntheticSTEMDL(n_classes=2, materials_per_class=3,
                                                            samples_per_material=2, pattern=32))
    assert convert_stemdl(str(tmp_path / "st"), str(tmp_path / "st.zarr"), STEMDLConversion(progress=False)).ok
    generate_uno(tmp_path / "uno", "raw", SMALL_UNO)
    assert convert_uno(tmp_path / "uno", str(tmp_path / "uno.zarr"), UnoConversion(progress=False)).ok
    assert _synthetic(tmp_path / "cm.zarr") == "scibench_data.synthetic.cloudmask"
    assert _synthetic(tmp_path / "st.zarr") == "scibench_data.synthetic.stemdl"
    assert _synthetic(tmp_path / "uno.zarr") == "scibench_data.synthetic.uno"


def test_products_without_a_marker_convert_as_real_data(tmp_path):
    generate_cloudmask(tmp_path / "cm", "hdf", SyntheticCloudMask(n_products=2, grid=(32, 48), seed=3))
    (tmp_path / "real").mkdir()
    for p in (tmp_path / "cm").glob("*.hdf"):
        shutil.copy(p, tmp_path / "real" / p.name)
    assert convert_cloudmask(str(tmp_path / "real"), str(tmp_path / "real.zarr"),
                             CloudMaskConversion(layout="hdf", progress=False)).ok
    assert _synthetic(tmp_path / "real.zarr") is None


def test_a_marker_naming_anything_else_only_labels_the_data_synthetic(tmp_path):
    """A hostile marker (huge, not JSON, odd text) is read at most 4 KB and only says 'synthetic'."""
    fs = fsspec.filesystem("file")
    for i, payload in enumerate([b"x" * 100_000, b"not json", b'{"generator": "\\u001b[31mred"}', b"[1, 2]"]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / MARKER_NAME).write_bytes(payload)
        assert find_marker(fs, [str(tmp_path / str(i))]) == "unknown synthetic generator"
    assert find_marker(fs, [str(tmp_path / "absent")]) is None
