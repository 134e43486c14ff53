"""CANDLE-UNO source formats: the exported HDFStore and the raw Pilot1 tables.

Layout ``export``: the pandas HDFStore ``top_21_auc_1fold.uno.h5`` written by
``uno_baseline_keras2.py --export_data``: appendable tables ``x_{split}_0``
(cell RNA-seq, 942 float32 columns, names blanked), ``x_{split}_1`` (drug
descriptors, 5270 float32 columns), ``y_{split}`` (``AUC``, ``Sample``,
``Drug1``) for split train/val/test, one row per response (the denormalised
join), and an empty ``model`` frame whose attributes hold ``input_features``
and ``feature_shapes``.

PyTables unpickles attributes as soon as a node is opened, so this reader
never uses PyTables or ``pandas.read_hdf``: it reads the HDF5 objects with
h5py, decodes Blosc chunks (filter 32001, which h5py lacks) with numcodecs,
evaluates pickled attributes statically (:mod:`.pickle_literal`) and refuses
nodes that hold pickled Python objects.

Layout ``raw``: a folder of Pilot1 TSVs: ``combined_single_response_agg``
(one row per cell/drug experiment; rows with ``R2fit >= 0.3`` and
``EC50se <= 3`` are kept), ``combined_rnaseq_data_lincs1000_source_scale``
(``Sample`` then genes), ``*_dragon7_descriptors.tsv`` (``NAME`` then
descriptors, ``na`` for missing) and headerless ``*_dragon7_PFP.tsv`` /
``*_dragon7_ECFP.tsv`` fingerprints (drug then 2048 bits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import h5py
import numcodecs
import numpy as np
import pandas as pd

from scibench_data.datasets.uno import SPLITS
from scibench_data.formats import SourceFormatError
from scibench_data.formats.hdf5_safety import refuse_indirection
from scibench_data.formats.pickle_literal import UnsafePickleError, literal_from_pickle

Layout = Literal["export", "raw"]
LAYOUTS: tuple[str, ...] = ("export", "raw")
EXPORT_NAME = "top_21_auc_1fold.uno.h5"
N_GENES = 942
N_DESCRIPTORS = 5270
N_FINGERPRINT_BITS = 2048
FINGERPRINT_KINDS: tuple[str, ...] = ("PFP", "ECFP")
#: Rows of the MLCommons export (train, val, test).
EXPORT_ROWS: dict[str, int] = {"train": 423_952, "val": 52_994, "test": 52_994}
INPUT_FEATURES = {"cell.rnaseq": "cell.rnaseq", "drug1.descriptors": "drug.descriptors"}

RESPONSE_FILE = "combined_single_response_agg"
RNASEQ_FILE = "combined_rnaseq_data_lincs1000_source_scale"
DESCRIPTOR_SUFFIX = "_dragon7_descriptors.tsv"
FINGERPRINT_SUFFIX = {"PFP": "_dragon7_PFP.tsv", "ECFP": "_dragon7_ECFP.tsv"}
RESPONSE_COLUMNS: tuple[str, ...] = (
    "SOURCE", "CELL", "DRUG", "STUDY", "AUC", "IC50", "EC50", "EC50se", "R2fit", "Einf", "HS", "AAC1", "AUC1", "DSS1",
)
RESPONSE_TEXT = ("SOURCE", "CELL", "DRUG", "STUDY")
MIN_R2FIT = 0.3
MAX_EC50SE = 3.0
NA_VALUES = ("", "NA", "na", "NaN", "nan", "-")
_BLOSC = 32001


# --------------------------------------------------------------------------- common result


@dataclass(frozen=True)
class FeatureTable:
    """One feature table: a row per entity (cell or drug), named columns."""

    names: tuple[str, ...]
    columns: tuple[str, ...]
    values: np.ndarray  # (len(names), len(columns))

    def __post_init__(self) -> None:
        if self.values.shape != (len(self.names), len(self.columns)):
            raise ValueError(f"values {self.values.shape} != ({len(self.names)}, {len(self.columns)})")
        if len(set(self.names)) != len(self.names):
            raise ValueError("feature table row names are not unique")


@dataclass(frozen=True)
class Responses:
    """The response rows, with the cell and drug each one joins to."""

    cell: np.ndarray  # (n,) str
    drug: np.ndarray  # (n,) str
    auc: np.ndarray  # (n,) float32
    split: np.ndarray  # (n,) int8: index into SPLITS
    source_row: np.ndarray  # (n,) int64: data row in the source table (per split for the export)

    def __post_init__(self) -> None:
        n = len(self.auc)
        for name in ("cell", "drug", "split", "source_row"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"responses: {name} has {len(getattr(self, name))} rows, auc has {n}")


# --------------------------------------------------------------------------- layout export


def _attr_text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _pickled_attr(path: str, node: h5py.HLObject, name: str) -> object:
    """An attribute PyTables wrote as a pickle, evaluated statically."""
    if name not in node.attrs:
        raise SourceFormatError(path, f"node {node.name!r} lacks attribute {name!r}")
    raw = node.attrs[name]
    data = bytes(raw) if isinstance(raw, (bytes, np.bytes_)) else None
    if data is None:
        return raw.tolist() if isinstance(raw, np.ndarray) else raw
    try:
        return literal_from_pickle(data)
    except UnsafePickleError as err:
        raise SourceFormatError(path, f"attribute {name!r} of node {node.name!r} is a pickle that is not a plain "
                                      f"literal ({err}); refusing to unpickle it") from err


def _refuse_object_nodes(path: str, group: h5py.Group) -> None:
    """Raise if any dataset under ``group`` holds pickled Python objects (PyTables ObjectAtom)."""
    bad: list[str] = []

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset):
            pseudo = _attr_text(obj.attrs.get("PSEUDOATOM", b""))
            if pseudo == "object" or obj.dtype.kind in "OV" and obj.dtype.names is None:
                bad.append(obj.name)

    group.visititems(visit)
    if bad:
        raise SourceFormatError(path, f"node {bad[0]!r} holds pickled Python objects; refusing to unpickle it "
                                      "(write the table with format='table' and string columns)")


class _TableReader:
    """Row access to one PyTables table dataset, chunk by chunk, without PyTables."""

    def __init__(self, path: str, ds: h5py.Dataset) -> None:
        self.path, self.ds = path, ds
        self.nrows = ds.shape[0]
        plist = ds.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        if all(h5py.h5z.filter_avail(f) for f in filters):
            self.blosc = False
        elif filters == [_BLOSC]:
            self.blosc = True
        else:
            raise SourceFormatError(path, f"node {ds.name!r} uses HDF5 filters {filters} that cannot be decoded here")
        self.chunk = ds.chunks[0] if ds.chunks else max(self.nrows, 1)

    def _chunk(self, c: int) -> np.ndarray:
        start, stop = c * self.chunk, min((c + 1) * self.chunk, self.nrows)
        if not self.blosc:
            return self.ds[start:stop]
        try:
            mask, raw = self.ds.id.read_direct_chunk((start,))
            buf = raw if mask & 1 else numcodecs.blosc.decompress(raw)
        except Exception as err:
            raise SourceFormatError(self.path, f"node {self.ds.name!r} rows {start}-{stop}: cannot decode ({err})") from err
        return np.frombuffer(buf, dtype=self.ds.dtype)[: stop - start]

    def rows(self, start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= self.nrows:
            raise IndexError(f"rows [{start}, {stop}) outside table of {self.nrows}")
        if start == stop:
            return self.ds[0:0]
        first, last = start // self.chunk, (stop - 1) // self.chunk
        parts = [self._chunk(c) for c in range(first, last + 1)]
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return out[start - first * self.chunk: stop - first * self.chunk]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at arbitrary positions (decodes each touched chunk once)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.nrows):
            raise IndexError(f"row index outside table of {self.nrows}")
        chunk_of = rows // self.chunk
        out = np.empty(rows.shape, dtype=self.ds.dtype)
        for c in np.unique(chunk_of):
            sel = chunk_of == c
            out[sel] = self._chunk(int(c))[rows[sel] - c * self.chunk]
        return out


@dataclass(frozen=True)
class ExportModelInfo:
    """The ``model`` node: which features, of which shapes."""

    input_features: dict[str, str]
    feature_shapes: dict[str, tuple[int, ...]]


class ExportReader:
    """Read an exported UNO HDFStore safely (h5py, no unpickling). Use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._file: h5py.File | None = None

    def __enter__(self) -> ExportReader:
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise SourceFormatError(self.path, f"cannot be opened as HDF5 ({err})") from err
        try:
            refuse_indirection(self._file, self.path)  # external storage, virtual datasets, external links
        except BaseException:
            self._file.close()
            self._file = None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            raise RuntimeError("ExportReader used outside 'with'")
        return self._file

    def _group(self, key: str, pandas_type: str = "frame_table") -> h5py.Group:
        if key not in self.file:
            raise SourceFormatError(self.path, f"missing node {key!r} (found {sorted(self.file.keys())})")
        g = self.file[key]
        _refuse_object_nodes(self.path, g)
        found = _attr_text(g.attrs.get("pandas_type", b""))
        if found != pandas_type:
            raise SourceFormatError(self.path, f"node {key!r} is pandas_type {found!r}, expected {pandas_type!r}")
        return g

    def model_info(self) -> ExportModelInfo:
        g = self._group("model", "frame")
        features = _pickled_attr(self.path, g, "input_features")
        shapes = _pickled_attr(self.path, g, "feature_shapes")
        if not isinstance(features, dict) or not isinstance(shapes, dict):
            raise SourceFormatError(self.path, "model attributes input_features/feature_shapes are not dicts")
        try:
            shapes_t = {str(k): tuple(int(x) for x in v) for k, v in shapes.items()}
        except (TypeError, ValueError) as err:
            raise SourceFormatError(self.path, f"model attribute feature_shapes is malformed ({err})") from err
        return ExportModelInfo({str(k): str(v) for k, v in features.items()}, shapes_t)

    def table(self, key: str) -> _TableReader:
        g = self._group(key)
        if "table" not in g or not isinstance(g["table"], h5py.Dataset) or g["table"].dtype.names is None:
            raise SourceFormatError(self.path, f"node {key!r} has no PyTables table")
        return _TableReader(self.path, g["table"])

    def x_table(self, split: str, j: int) -> _TableReader:
        """``x_{split}_{j}``; rows come back as float32 (n, columns) via :meth:`features`."""
        t = self.table(f"x_{split}_{j}")
        names = t.ds.dtype.names
        if names != ("index", "values_block_0") or t.ds.dtype["values_block_0"].base != np.float32:
            raise SourceFormatError(self.path, f"node 'x_{split}_{j}' has fields {names}, expected one float32 "
                                               "values_block_0 (blank column names, as the export writes)")
        return t

    @staticmethod
    def features(rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows["values_block_0"], dtype=np.float32)

    def n_columns(self, j: int) -> int:
        return int(self.x_table("train", j).ds.dtype["values_block_0"].shape[0])

    def responses(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(AUC, Sample, Drug1)`` of ``y_{split}``."""
        key = f"y_{split}"
        t = self.table(key)
        table = t.rows(0, t.nrows)
        cols: dict[str, np.ndarray] = {}
        if table.dtype.names is None:
            raise SourceFormatError(self.path, f"node {key!r} is not a table (its rows have no named columns)")
        for block in table.dtype.names:
            if block == "index":
                continue
            kind = _pickled_attr(self.path, t.ds, f"{block}_kind")
            if not isinstance(kind, list):
                raise SourceFormatError(self.path, f"attribute {block}_kind of node {key!r} is not a list")
            values = table[block]
            values = values.reshape(len(table), -1) if values.ndim > 1 or len(kind) > 1 else values[:, None]
            for i, name in enumerate(kind):
                cols[str(name)] = values[:, i]
        missing = {"AUC", "Sample", "Drug1"} - set(cols)
        if missing:
            raise SourceFormatError(self.path, f"node {key!r} lacks columns {sorted(missing)} (found {sorted(cols)})")
        if cols["Sample"].dtype.kind != "S" or cols["Drug1"].dtype.kind != "S":
            raise SourceFormatError(self.path, f"node {key!r}: Sample/Drug1 are not string columns")
        auc = cols["AUC"].astype(np.float32)
        return auc, np.char.decode(cols["Sample"], "utf-8"), np.char.decode(cols["Drug1"], "utf-8")


#: Splits an export may lack: the classic CANDLE export writes train and val only.
OPTIONAL_EXPORT_SPLITS: tuple[str, ...] = ("test",)


def export_splits(path: str | Path) -> tuple[str, ...]:
    """The splits an export holds: train and val always, test unless it has none of ``y_test``,
    ``x_test_0``, ``x_test_1`` (the classic train/val-only export). Half a split raises."""
    with ExportReader(path) as r:
        keys = set(r.file.keys())
    out = []
    for split in SPLITS:
        nodes = [f"y_{split}", f"x_{split}_0", f"x_{split}_1"]
        present = [n for n in nodes if n in keys]
        if not present and split in OPTIONAL_EXPORT_SPLITS:
            continue
        if len(present) != len(nodes):
            missing = min(set(nodes) - set(present))
            raise SourceFormatError(str(path), f"missing node {missing!r} (found {sorted(keys)})")
        out.append(split)
    return tuple(out)


def export_responses(path: str | Path) -> tuple[Responses, ExportModelInfo]:
    """All response rows of an export, in split order train, val, test (when present), and its model info."""
    parts = []
    present = export_splits(path)
    with ExportReader(path) as r:
        info = r.model_info()
        for s, split in enumerate(SPLITS):
            if split not in present:
                continue
            auc, sample, drug = r.responses(split)
            for j in (0, 1):
                n = r.x_table(split, j).nrows
                if n != len(auc):
                    raise SourceFormatError(str(path), f"x_{split}_{j} has {n} rows but y_{split} has {len(auc)}")
            parts.append((sample, drug, auc, np.full(len(auc), s, np.int8), np.arange(len(auc), dtype=np.int64)))
    cat = [np.concatenate([p[i] for p in parts]) for i in range(5)]
    return Responses(cell=cat[0], drug=cat[1], auc=cat[2], split=cat[3], source_row=cat[4]), info


# --------------------------------------------------------------------------- layout raw


@dataclass(frozen=True)
class RawFiles:
    """The Pilot1 files of one raw folder."""

    response: Path
    rnaseq: Path
    descriptors: tuple[Path, ...]
    fingerprints: dict[str, tuple[Path, ...]] = field(default_factory=dict, hash=False)

    def all(self) -> list[Path]:
        return [self.response, self.rnaseq, *self.descriptors, *[p for v in self.fingerprints.values() for p in v]]


def find_raw_files(folder: str | Path) -> RawFiles:
    """Locate the raw tables in ``folder`` (names as on the Pilot1 FTP site, with or without ``.tsv``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"source folder {folder} does not exist")
    names = sorted(p for p in folder.iterdir() if p.is_file())

    def one(stem: str) -> Path:
        found = [p for p in names if p.name in (stem, f"{stem}.tsv", f"{stem}.txt")]
        if len(found) != 1:
            raise FileNotFoundError(f"{folder}: expected one {stem}[.tsv], found {[p.name for p in found]}")
        return found[0]

    desc = tuple(p for p in names if p.name.endswith(DESCRIPTOR_SUFFIX))
    if not desc:
        raise FileNotFoundError(f"{folder}: no *{DESCRIPTOR_SUFFIX} drug descriptor file")
    fps = {k: tuple(p for p in names if p.name.endswith(s)) for k, s in FINGERPRINT_SUFFIX.items()}
    return RawFiles(one(RESPONSE_FILE), one(RNASEQ_FILE), desc, {k: v for k, v in fps.items() if v})


_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _read_tsv(path: Path, header: bool) -> pd.DataFrame:
    """A TSV as strings; a row with the wrong number of fields raises naming the line."""
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, header=0 if header else None,
                           engine="c")
    except pd.errors.ParserError as err:
        m = _FIELDS.search(str(err))
        where = f"line {m.group(2)}: expected {m.group(1)} fields, saw {m.group(3)}" if m else str(err)
        raise SourceFormatError(str(path), f"malformed TSV ({where})") from err
    except pd.errors.EmptyDataError as err:
        raise SourceFormatError(str(path), "empty file") from err
    except UnicodeDecodeError as err:
        raise SourceFormatError(str(path), f"not UTF-8 text ({err})") from err


def _numeric(path: Path, df: pd.DataFrame, columns: list, header: bool) -> np.ndarray:
    """Columns as float64; NA tokens become NaN, anything else non-numeric raises naming line and column."""
    raw = df[columns].to_numpy(dtype=object)
    na = np.isin(raw, NA_VALUES)
    cleaned = np.where(na, "nan", raw)
    try:
        return cleaned.astype(np.float64)
    except ValueError:
        pass
    out = np.empty(raw.shape, dtype=np.float64)
    for j, col in enumerate(columns):
        values = pd.to_numeric(pd.Series(cleaned[:, j]), errors="coerce").to_numpy()
        bad = np.flatnonzero(np.isnan(values) & ~na[:, j] & (cleaned[:, j] != "nan"))
        if bad.size:
            line = int(bad[0]) + (2 if header else 1)
            name = col if header else f"#{int(col) + 1}"
            raise SourceFormatError(str(path), f"line {line}, column {name}: {raw[bad[0], j]!r} is not a number")
        out[:, j] = values
    return out


@dataclass(frozen=True)
class ResponseTable:
    """Kept response rows of ``combined_single_response_agg`` and how many were filtered out."""

    cell: np.ndarray
    drug: np.ndarray
    auc: np.ndarray  # float32
    source_row: np.ndarray  # int64, 0-based data row in the file
    n_rows: int
    n_filtered: int


def read_response_tsv(path: str | Path) -> ResponseTable:
    """Parse the response table and keep rows with ``R2fit >= 0.3`` and ``EC50se <= 3``."""
    path = Path(path)
    df = _read_tsv(path, header=True)
    missing = [c for c in RESPONSE_COLUMNS if c not in df.columns]
    if missing:
        raise SourceFormatError(str(path), f"missing columns {missing} (header has {list(df.columns)})")
    num_cols = [c for c in RESPONSE_COLUMNS if c not in RESPONSE_TEXT]
    num = _numeric(path, df, num_cols, header=True)
    col = {c: num[:, i] for i, c in enumerate(num_cols)}
    for c in ("CELL", "DRUG"):
        empty = np.flatnonzero(df[c].to_numpy(dtype=object) == "")
        if empty.size:
            raise SourceFormatError(str(path), f"line {int(empty[0]) + 2}, column {c}: empty")
    with np.errstate(invalid="ignore"):
        keep = (col["R2fit"] >= MIN_R2FIT) & (col["EC50se"] <= MAX_EC50SE) & np.isfinite(col["AUC"])
    rows = np.flatnonzero(keep)
    return ResponseTable(
        cell=df["CELL"].to_numpy(dtype=str)[rows], drug=df["DRUG"].to_numpy(dtype=str)[rows],
        auc=col["AUC"][rows].astype(np.float32), source_row=rows.astype(np.int64), n_rows=len(df),
        n_filtered=len(df) - len(rows),
    )


def read_feature_tsv(path: str | Path, key: str | None, dtype: type = np.float32) -> FeatureTable:
    """A feature TSV: first column names the row (``key`` header, or no header when ``key`` is None)."""
    path = Path(path)
    df = _read_tsv(path, header=key is not None)
    if df.shape[1] < 2:
        raise SourceFormatError(str(path), f"expected a name column and feature columns, found {df.shape[1]} column(s)")
    first = df.columns[0]
    if key is not None and first != key:
        raise SourceFormatError(str(path), f"first column is {first!r}, expected {key!r}")
    names = tuple(df[first].tolist())
    if len(set(names)) != len(names):
        dup = pd.Series(names)[pd.Series(names).duplicated()].iloc[0]
        raise SourceFormatError(str(path), f"row name {dup!r} occurs more than once")
    columns = list(df.columns[1:])
    values = _numeric(path, df, columns, header=key is not None)
    col_names = tuple(str(c) for c in columns) if key is not None else tuple(f"bit{i}" for i in range(len(columns)))
    return FeatureTable(names=names, columns=col_names, values=values.astype(dtype))


def read_fingerprint_tsv(path: str | Path) -> FeatureTable:
    """A headerless fingerprint TSV: drug, then 0/1 bits."""
    t = read_feature_tsv(path, None, np.float64)
    ok = np.isin(t.values, (0.0, 1.0))
    if not ok.all():
        r, c = np.argwhere(~ok)[0]
        raise SourceFormatError(str(path), f"line {r + 1}, column #{c + 2}: {t.values[r, c]!r} is not a 0/1 bit")
    return FeatureTable(t.names, t.columns, t.values.astype(np.uint8))


def concat_tables(tables: list[FeatureTable], what: str, paths: list[Path]) -> FeatureTable:
    """Rows of several files with the same columns (e.g. ``pan_drugs`` and ``NCI60_drugs``)."""
    first = tables[0]
    for t, p in zip(tables[1:], paths[1:]):
        if t.columns != first.columns:
            raise SourceFormatError(str(p), f"{what} columns differ from those of {paths[0]}")
    names = [n for t in tables for n in t.names]
    seen: set[str] = set()
    for t, p in zip(tables, paths):
        clash = seen.intersection(t.names)
        if clash:
            raise SourceFormatError(str(p), f"{what} row {min(clash)!r} also appears in another file")
        seen.update(t.names)
    return FeatureTable(tuple(names), first.columns, np.concatenate([t.values for t in tables]))
