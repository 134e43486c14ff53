"""netCDF4 variables seen through h5py alone: names, dimension names and attributes as
xarray's h5netcdf backend presents them, without building an ``xarray.Dataset``.

A SEN3 product has 17 netCDF4 files to read; opening each with xarray cost ~10 ms of CPU
(h5netcdf's dimension bookkeeping, xarray's variable wrappers) for a few attributes and one
array. Callers must have accepted the open file with
:func:`~scibench_data.formats.hdf5_safety.refuse_indirection` first.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

#: Attributes netCDF4 uses for its own bookkeeping (h5netcdf hides them too).
HIDDEN_ATTRS = frozenset(["REFERENCE_LIST", "CLASS", "DIMENSION_LIST", "NAME", "_Netcdf4Dimid",
                          "_Netcdf4Coordinates", "_nc3_strict", "_NCProperties"])
#: How netCDF4 marks a dimension scale that is a dimension only, not a variable.
_DIMENSION_ONLY = "This is a netCDF dimension but not a netCDF variable"


def attributes(obj: h5py.Dataset | h5py.Group) -> dict[str, Any]:
    """The visible attributes of a variable or of the file: fixed-length strings decoded (UTF-8),
    single-element arrays as their element, as h5netcdf returns them."""
    out: dict[str, Any] = {}
    for key in obj.attrs:
        if key in HIDDEN_ATTRS:
            continue
        value = obj.attrs[key]
        if isinstance(value, h5py.Empty):
            value = b"" if h5py.check_string_dtype(value.dtype) else np.array([], dtype=value.dtype)
        elif isinstance(value, bytes):
            value = value.decode("utf-8", "surrogateescape")
        elif isinstance(value, np.ndarray) and value.dtype.kind == "S":
            value = [v.decode("utf-8", "surrogateescape") for v in value.flat]
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(()).item() if value.dtype.kind == "O" else value.reshape(())[()]
        elif isinstance(value, list) and len(value) == 1:
            value = value[0]
        out[key] = value
    return out


def is_variable(obj: object) -> bool:
    """A dataset that is a netCDF variable (not a bare dimension scale)."""
    if not isinstance(obj, h5py.Dataset):
        return False
    if _text(obj.attrs.get("CLASS")) != "DIMENSION_SCALE":
        return True
    return not _text(obj.attrs.get("NAME")).startswith(_DIMENSION_ONLY)


def _text(value: object) -> str:
    """An attribute as text, whether stored as a fixed-length (bytes) or variable-length string."""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")


def variable_names(group: h5py.Group) -> list[str]:
    """Names of the netCDF variables of ``group`` (its datasets, less bare dimension scales)."""
    return [key for key in group if is_variable(group.get(key))]


def dimension_names(d: h5py.Dataset) -> tuple[str | None, ...]:
    """Each axis's dimension name: the name of the dimension scale attached to it, as h5netcdf
    reads it; None for an axis without one."""
    names: list[str | None] = []
    for axis in d.dims:
        try:
            names.append(axis[0].name.rsplit("/", 1)[-1] if len(axis) else None)
        except (OSError, ValueError, KeyError, RuntimeError):  # a broken DIMENSION_LIST: no usable name
            names.append(None)
    return tuple(names)
