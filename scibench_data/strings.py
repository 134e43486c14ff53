"""Text in our stores as Zarr v3 core data types, so that any Zarr implementation reads it.

Zarr v3's ``string`` data type is an unstable extension that other implementations refuse
(tensorstore: "string data type is not one of the supported data types"). Every text
variable we write is therefore one of two portable encodings, named by the variable's
attribute ``scibench_string_encoding``:

``"flag_meanings"`` (few distinct values: splits, channel names)
    Integer codes ``0 .. k-1`` with CF ``flag_values`` and ``flag_meanings`` (the words, space
    separated). xarray users decode in one line::

        split = np.array(ds.split.attrs["flag_meanings"].split())[ds.split.values]

``"utf-8"`` (one value per record: product names, checksums, file names)
    ``uint8`` characters with a trailing ``<name>_nchar`` dimension, UTF-8, NUL padded (netCDF's
    classic character-array layout, as ``uint8``). xarray users decode in one line::

        names = np.char.decode(ds.source_name.values.view(f"S{ds.source_name.shape[-1]}")[..., 0], "utf-8")

    A variable whose decoded values name a dimension (CANDLE-UNO's ``cell_name``...) says so in
    ``scibench_decodes_to``; it becomes that dimension's coordinate.

:func:`decode_strings` does both for every marked variable; our catalog entries
(:mod:`scibench_data.intake_source`) apply it in ``to_dask()`` and ``read()``. Stores written
before this encoding hold ``string`` arrays without the attribute: they are returned unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

ENCODING_ATTR = "scibench_string_encoding"
DECODES_TO_ATTR = "scibench_decodes_to"
FLAGS = "flag_meanings"
UTF8 = "utf-8"


def flag_codes(values: Sequence[str] | np.ndarray, meanings: Sequence[str], name: str) -> tuple[np.ndarray, dict]:
    """``values`` as int8 codes into ``meanings`` and the attributes that decode them.

    Every value must be one of ``meanings``; a meaning must be a non-empty word without
    whitespace (CF ``flag_meanings``)."""
    meanings = list(meanings)
    if len(meanings) > 127:
        raise ValueError(f"{name}: {len(meanings)} meanings do not fit int8 codes")
    bad = [m for m in meanings if not m or any(c.isspace() for c in m)]
    if bad:
        raise ValueError(f"{name}: flag meaning {bad[0]!r} is empty or holds whitespace")
    index = {m: i for i, m in enumerate(meanings)}
    unknown = sorted({str(v) for v in values} - set(index))
    if unknown:
        raise ValueError(f"{name}: value {unknown[0]!r} is not one of {meanings}")
    codes = np.fromiter((index[str(v)] for v in values), dtype=np.int8, count=len(values))
    return codes, flag_attrs(meanings)


def flag_attrs(meanings: Sequence[str]) -> dict:
    """CF flag attributes (and our decoding marker) for int8 codes ``0 .. len(meanings) - 1``."""
    return {"flag_values": np.arange(len(meanings), dtype=np.int8), FLAGS: " ".join(meanings),
            ENCODING_ATTR: FLAGS}


def utf8_chars(values: Sequence[str] | np.ndarray, width: int, name: str) -> np.ndarray:
    """``values`` as ``(n, width)`` uint8 UTF-8 characters, NUL padded; too long a value raises."""
    raw = [str(v).encode("utf-8") for v in values]
    long = [v for v in raw if len(v) > width]
    if long:
        raise ValueError(f"{name}: {long[0].decode('utf-8', 'replace')!r} is longer than {width} bytes")
    out = np.zeros((len(raw), width), dtype=np.uint8)
    for i, v in enumerate(raw):
        out[i, :len(v)] = np.frombuffer(v, dtype=np.uint8)
    return out


def utf8_attrs(decodes_to: str | None = None) -> dict:
    attrs = {ENCODING_ATTR: UTF8}
    if decodes_to:
        attrs[DECODES_TO_ATTR] = decodes_to
    return attrs


def nchar_dim(name: str) -> str:
    """The character dimension of the utf-8 variable ``name``."""
    return f"{name}_nchar"


def decode_utf8(chars: np.ndarray) -> np.ndarray:
    """``(..., width)`` uint8 characters -> ``(...)`` str (NUL padding removed)."""
    chars = np.ascontiguousarray(chars, dtype=np.uint8)
    width = max(chars.shape[-1], 1)
    if chars.shape[-1] == 0:
        return np.full(chars.shape[:-1], "", dtype=str)
    return np.char.decode(chars.view(f"S{width}")[..., 0], "utf-8")


def decode_flags(codes: np.ndarray, meanings: str, fill: str = "") -> np.ndarray:
    """Integer codes -> their words; a code outside ``0 .. k-1`` (a fill value) -> ``fill``."""
    words = np.array(str(meanings).split() + [fill])
    codes = np.asarray(codes).astype(np.int64)
    codes = np.where((codes >= 0) & (codes < len(words) - 1), codes, len(words) - 1)
    return words[codes]


def decode_strings(ds: xr.Dataset) -> xr.Dataset:
    """Every variable marked with ``scibench_string_encoding`` as strings (reads those small
    arrays); everything else, and stores without the marker, unchanged."""
    marked = [n for n in ds.variables if ds[n].attrs.get(ENCODING_ATTR) in (FLAGS, UTF8)]
    for name in marked:
        var = ds[name]
        attrs = {k: v for k, v in var.attrs.items()
                 if k not in (ENCODING_ATTR, DECODES_TO_ATTR, "flag_values", FLAGS, "_FillValue")}
        if var.attrs[ENCODING_ATTR] == FLAGS:
            values, dims, target = decode_flags(var.values, var.attrs[FLAGS]), var.dims, name
        else:
            values, dims = decode_utf8(var.values), var.dims[:-1]
            target = var.attrs.get(DECODES_TO_ATTR) or name
        is_coord = name in ds.coords
        ds = ds.drop_vars([name]) if target != name or var.ndim != len(dims) else ds
        new = xr.Variable(dims, values, attrs)
        if is_coord or target in ds.dims:
            ds = ds.assign_coords({target: new})
        else:
            ds = ds.assign({target: new})
    return ds
