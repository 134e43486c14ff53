"""CANDLE-UNO (exported HDFStore or raw Pilot1 TSVs) -> one normalised Zarr store.

Store layout (zarr format 3), the same for both input layouts::

    rnaseq        (cell, gene)                     float32  RNA-seq (lincs1000, source-scaled)
    descriptors   (drug, descriptor)               float32  dragon7 descriptors (NaN = missing in source)
    fingerprints  (drug, fingerprint_kind, bit)    uint8    PFP / ECFP bits, 255 = not in the source
    auc           (response)                       float32  the target
    cell_index    (response)                       int32    row of ``rnaseq`` (-1 = not written)
    drug_index    (response)                       int32    row of ``descriptors``/``fingerprints``
    split         (response)                       int8     0 train, 1 val, 2 test (-1 = not written)
    source_row    (response)                       int64    data row in the source table (per split for export)
    cell_name, gene_name, drug_name, descriptor_name  (<dim>, <name>_nchar)  uint8 UTF-8 names
    fingerprint_kind              (fingerprint_kind)          int8     flag codes PFP, ECFP

Every array is a Zarr v3 core data type; the catalog decodes the name tables into the ``cell``,
``gene``, ``drug`` and ``descriptor`` coordinates (:func:`scibench_data.strings.decode_strings`).

Feature tables are stored once; a response is a row of integers into them,
never the denormalised join that the export holds (each response row there
repeats 6,212 floats). The export has no feature names (it blanks them) and no
fingerprints: its names are ``feature_N`` and its fingerprints stay 255.

Tasks: task 0 writes the feature tables whole (for the export: each cell's and
drug's first row); tasks 1.. write blocks of response rows (multiples of the
response chunk), and for the export check every x row of their block against
the stored feature row it now points to, so a store that claims to reproduce
the export has been compared with all of it. Markers, the lock and finalize
come from :class:`~scibench_data.storage.store.records.RecordStore`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import fsspec
import numpy as np
import xarray as xr

from scibench_data.convert import ConversionReport, ConversionRun, plan_layout
from scibench_data.datasets.uno import split_codes
from scibench_data.formats import SourceFormatError
from scibench_data.formats.synthetic_marker import find_marker
from scibench_data.formats.uno import (
    EXPORT_NAME,
    FINGERPRINT_KINDS,
    LAYOUTS,
    SPLITS,
    ExportReader,
    FeatureTable,
    concat_tables,
    export_responses,
    export_splits,
    find_raw_files,
    read_feature_tsv,
    read_fingerprint_tsv,
    read_response_tsv,
)
from scibench_data.parallel import run_tasks
from scibench_data.storage.store.encoding import CodecChoice, encoding_for
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.lock import WriterLock
from scibench_data.storage.store.records import RecordStore, array_in
from scibench_data.strings import flag_codes, nchar_dim, utf8_attrs, utf8_chars

FORMAT_VERSION = 1
RECORD_DIM = "task"
RESPONSE_CHUNK = 65_536
FEATURE_CHUNK_BYTES = 2**21
FINGERPRINT_FILL = 255
SPLIT_MEANINGS = " ".join(SPLITS)


@dataclass(frozen=True)
class UnoConversion(ConversionRun):
    """Options of one conversion."""

    response_chunk: int = RESPONSE_CHUNK
    chunks_per_task: int = 2
    split_seed: int = 42  # raw layout only: the seeded 80/10/10 split of the kept rows
    verify_export: bool = True

    def __post_init__(self) -> None:
        if self.response_chunk < 1 or self.chunks_per_task < 1:
            raise ValueError(f"response_chunk and chunks_per_task must be >= 1, got "
                             f"{self.response_chunk}, {self.chunks_per_task}")


def detect_layout(src: str | Path) -> tuple[str, Path]:
    """``export`` for an HDF5 file (or a folder holding ``top_21_auc_1fold.uno.h5``), else ``raw``."""
    p = Path(src)
    if p.is_file():
        return "export", p
    if (p / EXPORT_NAME).is_file() and not any(p.glob("combined_single_response_agg*")):
        return "export", p / EXPORT_NAME
    if p.is_dir():
        return "raw", p
    raise FileNotFoundError(f"UNO source {src} is neither an HDFStore file nor a folder")


@dataclass(frozen=True)
class UnoPlan:
    """Everything known before any feature value is read: names and the response rows."""

    layout: str
    source: str
    cells: tuple[str, ...]
    genes: tuple[str, ...]
    drugs: tuple[str, ...]
    descriptors: tuple[str, ...]
    n_bits: int
    cell_index: np.ndarray
    drug_index: np.ndarray
    auc: np.ndarray
    split: np.ndarray
    source_row: np.ndarray
    stats: dict
    source_files: tuple[str, ...]

    @property
    def n(self) -> int:
        return len(self.auc)


def _index(names: np.ndarray, table: dict[str, int]) -> np.ndarray:
    return np.fromiter((table.get(n, -1) for n in names), dtype=np.int32, count=len(names))


def plan_export(path: Path) -> UnoPlan:
    resp, info = export_responses(path)
    cells, cell_first = np.unique(resp.cell, return_index=True)
    drugs, drug_first = np.unique(resp.drug, return_index=True)
    cells, drugs = resp.cell[np.sort(cell_first)], resp.drug[np.sort(drug_first)]  # first-appearance order
    with ExportReader(path) as r:
        n_genes, n_desc = r.n_columns(0), r.n_columns(1)
    shapes = list(info.feature_shapes.values())
    if [s[0] for s in shapes[:2]] != [n_genes, n_desc]:
        raise SourceFormatError(str(path), f"model feature_shapes {info.feature_shapes} != x tables' columns "
                                           f"({n_genes}, {n_desc})")
    return UnoPlan(
        layout="export", source=str(path), cells=tuple(cells), genes=tuple(f"feature_{i}" for i in range(n_genes)),
        drugs=tuple(drugs), descriptors=tuple(f"feature_{i}" for i in range(n_desc)), n_bits=2048,
        cell_index=_index(resp.cell, {c: i for i, c in enumerate(cells)}),
        drug_index=_index(resp.drug, {d: i for i, d in enumerate(drugs)}),
        auc=resp.auc, split=resp.split, source_row=resp.source_row,
        stats={"input_features": info.input_features, "export_splits": list(export_splits(path)),
               "rows_per_split": {s: int((resp.split == i).sum()) for i, s in enumerate(SPLITS)}},
        source_files=(str(path),),
    )


def _raw_features(src: Path) -> tuple[FeatureTable, FeatureTable, dict[str, FeatureTable]]:
    files = find_raw_files(src)
    rna = read_feature_tsv(files.rnaseq, "Sample")
    desc = concat_tables([read_feature_tsv(p, "NAME") for p in files.descriptors], "descriptor",
                         list(files.descriptors))
    fps = {k: concat_tables([read_fingerprint_tsv(p) for p in v], f"{k} fingerprint", list(v))
           for k, v in files.fingerprints.items()}
    return rna, desc, fps


def plan_raw(src: Path, seed: int) -> UnoPlan:
    files = find_raw_files(src)
    resp = read_response_tsv(files.response)
    cells = _header_names(files.rnaseq)
    drugs = tuple(n for p in files.descriptors for n in _first_column(p))
    ci = _index(resp.cell, {c: i for i, c in enumerate(cells)})
    di = _index(resp.drug, {d: i for i, d in enumerate(drugs)})
    ok = (ci >= 0) & (di >= 0)
    descriptors = _header(files.descriptors[0])[1:]
    genes = _header(files.rnaseq)[1:]
    bits = {len(_header(v[0])) - 1 for v in files.fingerprints.values()} or {2048}
    if len(bits) != 1:
        raise SourceFormatError(str(src), f"fingerprint files disagree on the number of bits: {sorted(bits)}")
    return UnoPlan(
        layout="raw", source=str(src), cells=cells, genes=genes, drugs=drugs, descriptors=descriptors,
        n_bits=bits.pop(), cell_index=ci[ok], drug_index=di[ok], auc=resp.auc[ok],
        split=split_codes(int(ok.sum()), seed), source_row=resp.source_row[ok],
        stats={"response_rows": resp.n_rows, "filtered_r2fit_ec50se": resp.n_filtered,
               "dropped_no_features": int((~ok).sum()), "split_seed": seed},
        source_files=tuple(str(p) for p in files.all()),
    )


def _header(path: Path) -> tuple[str, ...]:
    """The fields of the first line."""
    with open(path, encoding="utf-8") as f:
        line = f.readline().rstrip("\n")
    if not line:
        raise SourceFormatError(str(path), "empty file")
    return tuple(line.split("\t"))


def _header_names(path: Path) -> tuple[str, ...]:
    return tuple(_first_column(path))


def _first_column(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        next(f, None)
        return [line.split("\t", 1)[0] for line in f if line.strip()]


def template(plan: UnoPlan, response_chunk: int) -> xr.Dataset:
    nc, nd, ng, nk = len(plan.cells), len(plan.drugs), len(plan.genes), len(plan.descriptors)
    n = max(plan.n, 1)
    rc = min(response_chunk, n)
    cell_rows = max(1, min(nc, FEATURE_CHUNK_BYTES // (4 * ng)))
    drug_rows = max(1, min(nd, FEATURE_CHUNK_BYTES // (4 * nk)))
    ph = {
        "rnaseq": da.full((nc, ng), np.nan, dtype=np.float32, chunks=(cell_rows, ng)),
        "descriptors": da.full((nd, nk), np.nan, dtype=np.float32, chunks=(drug_rows, nk)),
        "fingerprints": da.full((nd, len(FINGERPRINT_KINDS), plan.n_bits), FINGERPRINT_FILL, dtype=np.uint8,
                                chunks=(min(nd, 256), len(FINGERPRINT_KINDS), plan.n_bits)),
        "auc": da.full((plan.n,), np.nan, dtype=np.float32, chunks=(rc,)),
        "cell_index": da.full((plan.n,), -1, dtype=np.int32, chunks=(rc,)),
        "drug_index": da.full((plan.n,), -1, dtype=np.int32, chunks=(rc,)),
        "split": da.full((plan.n,), -1, dtype=np.int8, chunks=(rc,)),
        "source_row": da.full((plan.n,), -1, dtype=np.int64, chunks=(rc,)),
    }
    ds = xr.Dataset(
        {
            "rnaseq": (("cell", "gene"), ph["rnaseq"], {"long_name": "RNA-seq expression (lincs1000 genes, "
                                                                    "source-scaled)", "_FillValue": np.float32(np.nan)}),
            "descriptors": (("drug", "descriptor"), ph["descriptors"], {
                "long_name": "dragon7 drug descriptors (NaN: missing in the source)", "_FillValue": np.float32(np.nan)}),
            "fingerprints": (("drug", "fingerprint_kind", "bit"), ph["fingerprints"], {
                "long_name": "dragon7 fingerprint bits", "_FillValue": np.uint8(FINGERPRINT_FILL),
                "comment": "255: no fingerprint of this kind in the source (the export has none)"}),
            "auc": (("response",), ph["auc"], {"long_name": "dose-response AUC (target)",
                                               "_FillValue": np.float32(np.nan)}),
            "cell_index": (("response",), ph["cell_index"], {"long_name": "row of rnaseq", "_FillValue": np.int32(-1)}),
            "drug_index": (("response",), ph["drug_index"], {"long_name": "row of descriptors and fingerprints",
                                                             "_FillValue": np.int32(-1)}),
            "split": (("response",), ph["split"], {"flag_values": np.array([0, 1, 2], np.int8),
                                                   "flag_meanings": SPLIT_MEANINGS, "_FillValue": np.int8(-1)}),
            "source_row": (("response",), ph["source_row"], {
                "long_name": "data row in the source (raw: response table; export: y_<split>)",
                "_FillValue": np.int64(-1)}),
        },
        coords={
            **{f"{dim}_name": _names(dim, names) for dim, names in (
                ("cell", plan.cells), ("gene", plan.genes), ("drug", plan.drugs), ("descriptor", plan.descriptors))},
            "fingerprint_kind": ("fingerprint_kind", *flag_codes(FINGERPRINT_KINDS, FINGERPRINT_KINDS, "fingerprint_kind")),
        },
        attrs={
            "title": "CANDLE-UNO drug response: normalised feature tables and responses",
            "institution": "scibench-data", "benchmark": "MLCommons Science CANDLE-UNO",
            "source": "CANDLE Pilot1 (combined_single_response_agg, lincs1000 RNA-seq, dragon7) or the "
                      "top_21_auc_1fold.uno.h5 export",
            "scibench_format": "candle_uno", "scibench_format_version": FORMAT_VERSION,
            "scibench_layout": plan.layout,
            "scibench_splits": splits_statement(plan),
            "scibench_strings": "names: uint8 UTF-8 characters (decode: scibench_data.strings.decode_strings)",
        },
    )
    for v in ds.data_vars:
        ds[v].encoding = {}
    return ds


def _names(dim: str, names: tuple[str, ...]) -> tuple:
    """A name table as uint8 UTF-8 characters ``(dim, <dim>_name_nchar)`` (a Zarr v3 core type)."""
    var = f"{dim}_name"
    width = max([len(n.encode("utf-8")) for n in names] + [1])
    return ((dim, nchar_dim(var)), utf8_chars(names, width, var),
            {"long_name": f"{dim} names", **utf8_attrs(decodes_to=dim)})


def splits_statement(plan: UnoPlan) -> str:
    """What the split codes mean for this source, stated in the store and the report."""
    if plan.layout == "raw":
        return f"seeded 80/10/10 of the kept rows (seed {plan.stats.get('split_seed')}): 0 train, 1 val, 2 test"
    rows = plan.stats.get("rows_per_split", {})
    if rows.get("test", 0) == 0:
        return ("as exported: 0 train, 1 val; no test split (the classic CANDLE export holds train and val "
                "only): code 2 (test) is empty")
    return "as exported: 0 train, 1 val, 2 test"


def first_chunks(var: xr.DataArray) -> tuple[int, ...]:
    """The first chunk's size along each dimension of a template variable (Dask-backed by construction)."""
    if var.chunks is None:
        raise ValueError(f"{var.name}: the template variable is not chunked")
    return tuple(c[0] for c in var.chunks)


def encodings(ds: xr.Dataset, codec: CodecChoice) -> dict[str, dict]:
    enc = {}
    for name, var in ds.data_vars.items():
        enc[str(name)] = encoding_for(var.dtype.itemsize, first_chunks(var), codec)
        enc[str(name)]["fill_value"] = var.attrs["_FillValue"]
    return enc


def blocks(n: int, chunk: int, per_task: int) -> list[tuple[int, int]]:
    """Response row blocks ``[a, b)``, each a whole number of chunks (the last may end at ``n``)."""
    size = chunk * per_task
    return [(a, min(a + size, n)) for a in range(0, n, size)]


@dataclass(frozen=True)
class WriteFeatures:
    """Task 0: read the feature tables and write them whole."""

    dest: StoreLocation
    plan: UnoPlan

    def __call__(self, _: object) -> dict:
        p = self.plan
        store = RecordStore(self.dest, RECORD_DIM)
        if p.layout == "raw":
            rna, desc, fps = _raw_features(Path(p.source))
            for table, names, what in ((rna, p.cells, "RNA-seq samples"), (desc, p.drugs, "descriptor drugs")):
                if table.names != names or len(table.columns) != (len(p.genes) if table is rna else len(p.descriptors)):
                    raise SourceFormatError(p.source, f"{what} changed since the conversion was planned")
            fp = np.full((len(p.drugs), len(FINGERPRINT_KINDS), p.n_bits), FINGERPRINT_FILL, np.uint8)
            pos = {d: i for i, d in enumerate(p.drugs)}
            for k, table in fps.items():
                rows = np.array([pos.get(n, -1) for n in table.names])
                if (rows < 0).any():  # fingerprints of drugs without descriptors are not stored
                    table = FeatureTable(tuple(np.array(table.names)[rows >= 0]), table.columns, table.values[rows >= 0])
                    rows = rows[rows >= 0]
                fp[rows, FINGERPRINT_KINDS.index(k)] = table.values
            arrays = {"rnaseq": rna.values, "descriptors": desc.values, "fingerprints": fp}
        else:
            arrays = _export_features(p)
        store.mark_done(0, {"key": "features", "shapes": {k: list(v.shape) for k, v in arrays.items()}},
                        store.write_block(0, arrays))
        return {"key": "features", "rows": 0}


def _segments(split: np.ndarray, a: int, b: int) -> list[tuple[int, int, int]]:
    """(split code, first global row, stop) for runs of one split inside ``[a, b)``."""
    s = split[a:b]
    cuts = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [len(s)]])
    return [(int(s[i]), a + int(i), a + int(j)) for i, j in zip(starts, stops)]


def _export_features(p: UnoPlan) -> dict[str, np.ndarray]:
    """Each cell's and drug's features from its first row in the export."""
    out = {}
    with ExportReader(p.source) as r:
        for j, (idx, n, name) in enumerate(((p.cell_index, len(p.cells), "rnaseq"),
                                            (p.drug_index, len(p.drugs), "descriptors"))):
            _, first = np.unique(idx, return_index=True)
            values = np.empty((n, r.n_columns(j)), np.float32)
            for s, split in enumerate(SPLITS):
                sel = first[p.split[first] == s]
                if sel.size:
                    rows = r.x_table(split, j).take(p.source_row[sel])
                    values[idx[sel]] = r.features(rows)
            out[name] = values
    out["fingerprints"] = np.full((len(p.drugs), len(FINGERPRINT_KINDS), p.n_bits), FINGERPRINT_FILL, np.uint8)
    return out


@dataclass(frozen=True)
class WriteResponses:
    """Tasks 1..: write one block of response rows (checking the export's x rows against the features)."""

    dest: StoreLocation
    plan: UnoPlan
    verify: bool

    def __call__(self, job: tuple[int, int, int]) -> dict:
        task, a, b = job
        p = self.plan
        store = RecordStore(self.dest, RECORD_DIM)
        read = 0
        if p.layout == "export" and self.verify:
            read = self._verify(store, a, b)
        written = store.write_block(a, {"auc": p.auc[a:b], "cell_index": p.cell_index[a:b],
                                        "drug_index": p.drug_index[a:b], "split": p.split[a:b],
                                        "source_row": p.source_row[a:b]})
        store.mark_done(task, {"key": f"responses[{a}:{b}]", "rows": b - a}, written)
        return {"key": f"responses[{a}:{b}]", "rows": b - a, "bytes": read}

    def _verify(self, store: RecordStore, a: int, b: int) -> int:
        p, g = self.plan, store.group()
        tables = (np.asarray(array_in(g, "rnaseq")[...]), np.asarray(array_in(g, "descriptors")[...]))
        read = 0
        with ExportReader(p.source) as r:
            for s, lo, hi in _segments(p.split, a, b):
                split = SPLITS[s]
                la, lb = int(p.source_row[lo]), int(p.source_row[hi - 1]) + 1
                for j, idx in enumerate((p.cell_index[lo:hi], p.drug_index[lo:hi])):
                    x = r.features(r.x_table(split, j).rows(la, lb))
                    read += x.nbytes
                    same = (x == tables[j][idx]) | (np.isnan(x) & np.isnan(tables[j][idx]))
                    bad = np.flatnonzero(~same.all(axis=1))
                    if bad.size:
                        who = (p.cells if j == 0 else p.drugs)[idx[bad[0]]]
                        raise SourceFormatError(p.source, f"x_{split}_{j} row {la + int(bad[0])}: features of "
                                                          f"{who!r} differ from its first row in the export")
        return read


def convert_uno(src: str | Path, dest: str | StoreLocation, options: UnoConversion = UnoConversion()) -> ConversionReport:
    """Convert the export file or raw folder ``src`` into the store ``dest``. Resumable and idempotent."""
    t0 = time.perf_counter()
    location = dest if isinstance(dest, StoreLocation) else StoreLocation(str(dest))
    layout, path = detect_layout(src)
    if layout not in LAYOUTS:
        raise ValueError(layout)
    options = options.with_synthetic(find_marker(fsspec.filesystem("file"), [str(path if layout == "raw" else
                                                                              path.parent)]))
    plan = plan_export(path) if layout == "export" else plan_raw(path, options.split_seed)
    if plan.n == 0:
        raise SourceFormatError(str(src), "no response rows to convert (all filtered out or without features)")
    ds = template(plan, options.response_chunk)
    rc = first_chunks(ds["auc"])[0]
    row_blocks = blocks(plan.n, rc, options.chunks_per_task)
    keys = ["features"] + [f"responses[{a}:{b}]" for a, b in row_blocks]
    enc = encodings(ds, options.codec)
    store = RecordStore(location, RECORD_DIM)
    with WriterLock(location, operation="convert uno"):
        state = store.prepare(ds, enc, keys, {"format": "candle_uno", "layout": layout, "response_chunk": rc,
                                               "split_seed": options.split_seed if layout == "raw" else None,
                                               "n_responses": plan.n, **plan_layout(options.codec, enc)})
        done = store.done() if state != "created" else {}
        extra = {"layout": layout, "n_cells": len(plan.cells), "n_drugs": len(plan.drugs),
                 "n_responses": plan.n, **plan.stats}
        notes = (f"splits: {splits_statement(plan)}",)
        if state == "complete":
            return ConversionReport(dest=location.url, total=len(keys), already_done=len(keys), complete=True,
                                    elapsed_s=time.perf_counter() - t0, extra=extra, notes=notes)
        results = []
        if 0 not in done:
            results += run_tasks(WriteFeatures(location, plan), [None], ["features"], scheduler=options.scheduler,
                                 n_workers=options.n_workers, retries=options.retries, desc="uno features",
                                 unit="table set", progress=options.progress)
        if all(r.ok for r in results):
            todo = [(i + 1, a, b) for i, (a, b) in enumerate(row_blocks) if i + 1 not in done]
            results += run_tasks(WriteResponses(location, plan, options.verify_export), todo,
                                 [f"responses[{a}:{b}]" for _, a, b in todo], scheduler=options.scheduler,
                                 n_workers=options.n_workers, retries=options.retries, desc="uno responses",
                                 unit="block", progress=options.progress)
        failed = tuple((r.key, r.error) for r in results if not r.ok)
        complete = False
        if not failed:
            store.finalize({}, {"scibench_n_responses": plan.n, "scibench_n_cells": len(plan.cells),
                                "scibench_n_drugs": len(plan.drugs),
                                "scibench_source_files": [Path(f).name for f in plan.source_files],
                                **options.store_attrs()})
            complete = True
    return ConversionReport(
        dest=location.url, total=len(keys), converted=tuple(r.key for r in results if r.ok),
        already_done=len(done), failed=failed, complete=complete, elapsed_s=time.perf_counter() - t0,
        bytes_read=sum(Path(f).stat().st_size for f in plan.source_files) if results else 0, extra=extra,
        notes=notes,
    )
