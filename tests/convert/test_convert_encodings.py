"""encodings() of every converter describes how to write a template; it must not change the template."""

from __future__ import annotations

import copy

import numpy as np
import xarray as xr

from scibench_data.convert import cloudmask as cm
from scibench_data.convert import stemdl as sd
from scibench_data.convert import uno
from scibench_data.storage.store.encoding import DEFAULT_CODEC


def _attrs(ds: xr.Dataset) -> dict:
    return {k: copy.deepcopy(dict(v.attrs)) for k, v in ds.variables.items()}


def _uno_template() -> xr.Dataset:
    n = 3
    plan = uno.UnoPlan(layout="export", source="src", cells=("c0", "c1"), genes=("g0",), drugs=("d0",),
                       descriptors=("k0",), n_bits=8, cell_index=np.array([0, 1, 0]), drug_index=np.zeros(n, int),
                       auc=np.ones(n, np.float32), split=np.zeros(n, np.int8), source_row=np.arange(n), stats={},
                       source_files=())
    return uno.template(plan, 2)


def _templates() -> dict[str, tuple[xr.Dataset, object]]:
    cloud = cm.template(["a", "b"], cm.scene_times(["2020-01-01T00:00:00", "2020-01-01T00:01:00"]), ["training", "inference"],
                        (16, 16), 8)
    stem = sd.template(2, (8, 8), 1, True, {}, {"material": 4, "source_key": 4, "source_file": 4})
    return {"cloudmask": (cloud, lambda ds: cm.encodings(ds, 8, DEFAULT_CODEC)),
            "stemdl": (stem, lambda ds: sd.encodings(ds, 1, DEFAULT_CODEC)),
            "uno": (_uno_template(), lambda ds: uno.encodings(ds, DEFAULT_CODEC))}


def test_encodings_leave_the_input_attrs_untouched():
    for name, (ds, encodings) in _templates().items():
        before = _attrs(ds)
        enc = encodings(ds)
        assert any("fill_value" in e for e in enc.values()), name
        after = _attrs(ds)
        assert after.keys() == before.keys(), name
        for var in before:
            assert after[var].keys() == before[var].keys(), f"{name}: encodings() changed the attrs of {var}"
