"""Synthetic CANDLE-UNO data in both layouts (raw Pilot1 TSVs and the exported HDFStore).

Cells and drugs each get a few latent factors. RNA-seq, drug descriptors and
fingerprints are noisy functions of those factors, and the dose-response AUC
is a noisy function of both cell and drug factors (additive terms plus a
cell x drug interaction), so the features predict the response and a model
can reach R2 well above 0 (about 0.85 at best with the default noise).

The raw layout writes every file under the Pilot1 name with the real columns;
about 8% of response rows fail the R2fit/EC50se filter and some descriptors
are ``na``. The export layout is what ``uno_baseline_keras2.py
--export_data`` writes from the kept rows: the denormalised join, split
80/10/10, descriptors mean-imputed, appended batch by batch to a pandas
HDFStore, with the ``model`` node attributes.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scibench_data.datasets.uno import split_codes
from scibench_data.formats.synthetic_marker import write_marker
from scibench_data.formats.uno import (
    DESCRIPTOR_SUFFIX,
    EXPORT_NAME,
    FINGERPRINT_SUFFIX,
    INPUT_FEATURES,
    LAYOUTS,
    N_DESCRIPTORS,
    N_FINGERPRINT_BITS,
    N_GENES,
    RESPONSE_COLUMNS,
    RESPONSE_FILE,
    RNASEQ_FILE,
    SPLITS,
)

SOURCES = ("CCLE", "CTRP", "GDSC", "gCSI", "NCI60")
N_LATENT = 6
NOISE_STD = 0.05


@dataclass(frozen=True)
class SyntheticUno:
    """What to draw. Full feature dimensions by default; pass small ones for tests."""

    n_cells: int = 200
    n_drugs: int = 150
    n_responses: int = 20_000  # rows of the raw response table, before filtering
    n_genes: int = N_GENES
    n_descriptors: int = N_DESCRIPTORS
    n_fingerprint_bits: int = N_FINGERPRINT_BITS
    seed: int = 0
    bad_fraction: float = 0.08  # rows that fail R2fit >= 0.3 / EC50se <= 3
    na_fraction: float = 0.002  # descriptor values written as 'na'
    export_batch: int = 4096  # rows appended to the HDFStore at a time
    complib: str | None = "blosc:lz4"
    complevel: int = 9
    #: Splits the export writes: all three (MLCommons), or ("train", "val") as the classic CANDLE
    #: export does (its test rows then go to val).
    export_splits: tuple[str, ...] = SPLITS

    def __post_init__(self) -> None:
        for name in ("n_cells", "n_drugs", "n_genes", "n_descriptors", "n_fingerprint_bits", "export_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 10 <= self.n_responses <= self.n_cells * self.n_drugs * len(SOURCES):
            raise ValueError(f"n_responses must be in [10, n_cells * n_drugs * {len(SOURCES)}], got {self.n_responses}")
        if tuple(self.export_splits) not in (SPLITS, SPLITS[:2]):
            raise ValueError(f"export_splits must be {SPLITS} or {SPLITS[:2]}, got {self.export_splits}")
        if not 0 <= self.bad_fraction < 0.5 or not 0 <= self.na_fraction < 0.5:
            raise ValueError("bad_fraction and na_fraction must be in [0, 0.5)")


@dataclass(frozen=True)
class UnoTruth:
    """Everything drawn: feature tables and every raw response row."""

    cells: np.ndarray
    genes: np.ndarray
    rnaseq: np.ndarray  # (cells, genes) float32
    drugs: np.ndarray
    descriptor_names: np.ndarray
    descriptors: np.ndarray  # (drugs, descriptors) float32, NaN = 'na'
    fingerprints: dict[str, np.ndarray]  # kind -> (drugs, bits) uint8
    response: pd.DataFrame  # the raw response table, RESPONSE_COLUMNS

    def kept(self) -> pd.DataFrame:
        r = self.response
        return r[(r["R2fit"] >= 0.3) & (r["EC50se"] <= 3) & r["AUC"].notna()]


def draw_truth(cfg: SyntheticUno) -> UnoTruth:
    rng = np.random.default_rng([cfg.seed, 5])
    k = N_LATENT
    u = rng.standard_normal((cfg.n_cells, k))
    v = rng.standard_normal((cfg.n_drugs, k))

    def features(latent: np.ndarray, n: int, noise: float) -> np.ndarray:
        load = rng.standard_normal((k, n)) / np.sqrt(k)
        x = latent @ load + noise * rng.standard_normal((len(latent), n))
        return x.astype(np.float32)

    rnaseq = features(u, cfg.n_genes, 0.5)
    scales = np.exp(rng.uniform(-1, 2, cfg.n_descriptors)).astype(np.float32)  # dragon descriptors differ in scale
    descriptors = features(v, cfg.n_descriptors, 0.5) * scales
    descriptors[rng.random(descriptors.shape) < cfg.na_fraction] = np.nan
    fps = {kind: ((v @ rng.standard_normal((k, cfg.n_fingerprint_bits)) + rng.standard_normal(
        (cfg.n_drugs, cfg.n_fingerprint_bits))) > 1.0).astype(np.uint8) for kind in FINGERPRINT_SUFFIX}

    cell_src = rng.choice(SOURCES, cfg.n_cells)
    cells = np.array([f"{s}.C{i:04d}" for i, s in enumerate(cell_src)])
    drugs = np.array([f"{'NSC' if i % 3 == 0 else 'CTRP'}.{1000 + i}" for i in range(cfg.n_drugs)])

    pairs = rng.choice(cfg.n_cells * cfg.n_drugs * len(SOURCES), cfg.n_responses, replace=False)
    ci, di, si = pairs % cfg.n_cells, (pairs // cfg.n_cells) % cfg.n_drugs, pairs // (cfg.n_cells * cfg.n_drugs)
    a, b = rng.standard_normal(k), rng.standard_normal(k)
    signal = u[ci] @ a + 0.7 * (v[di] @ b) + 1.5 * (u[ci, :3] * v[di, :3]).sum(1)
    signal = signal / signal.std()
    auc = np.clip(0.75 + 0.13 * np.tanh(signal) + NOISE_STD * rng.standard_normal(len(ci)), 0.0, 1.2)
    n = len(ci)
    bad = rng.random(n) < cfg.bad_fraction
    r2fit = np.where(bad & (rng.random(n) < 0.5), rng.uniform(0.0, 0.29, n), rng.uniform(0.31, 1.0, n))
    ec50se = np.where(bad & (r2fit >= 0.3), rng.uniform(3.1, 9.0, n), rng.uniform(0.0, 2.9, n))
    ec50se[bad & (rng.random(n) < 0.1)] = np.nan
    ec50 = 10 ** rng.uniform(-9, -4, n)
    response = pd.DataFrame({
        "SOURCE": np.asarray(SOURCES)[si], "CELL": cells[ci], "DRUG": drugs[di],
        "STUDY": [f"{s}_study" for s in np.asarray(SOURCES)[si]], "AUC": auc.round(4),
        "IC50": (ec50 * 1.3).round(12), "EC50": ec50.round(12), "EC50se": np.round(ec50se, 4),
        "R2fit": r2fit.round(4), "Einf": rng.uniform(0, 0.6, n).round(4), "HS": rng.uniform(0.5, 4, n).round(4),
        "AAC1": (1 - auc).round(4), "AUC1": auc.round(4), "DSS1": rng.uniform(0, 0.5, n).round(4),
    })[list(RESPONSE_COLUMNS)]
    return UnoTruth(cells, np.array([f"GENE{i:04d}" for i in range(cfg.n_genes)]), rnaseq, drugs,
                    np.array([f"DD{i:04d}" for i in range(cfg.n_descriptors)]), descriptors, fps, response)


def _atomic_csv(df: pd.DataFrame, path: Path, header: bool, float_format: str | None = None) -> Path:
    tmp = path.with_name(path.name + ".partial")
    df.to_csv(tmp, sep="\t", index=False, header=header, float_format=float_format, na_rep="na")
    tmp.rename(path)
    return path


def write_raw(dest: Path, truth: UnoTruth) -> list[Path]:
    """The Pilot1 TSVs (response file and RNA-seq without extension, as on the FTP site)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = [_atomic_csv(truth.response, dest / RESPONSE_FILE, True)]
    rna = pd.DataFrame(truth.rnaseq, columns=truth.genes)
    rna.insert(0, "Sample", truth.cells)
    out.append(_atomic_csv(rna, dest / RNASEQ_FILE, True, "%.6g"))
    half = len(truth.drugs) // 2 or len(truth.drugs)
    for prefix, sl in (("pan_drugs", slice(0, half)), ("NCI60_drugs", slice(half, None))):
        if not len(truth.drugs[sl]):
            continue
        desc = pd.DataFrame(truth.descriptors[sl], columns=truth.descriptor_names)
        desc.insert(0, "NAME", truth.drugs[sl])
        out.append(_atomic_csv(desc, dest / f"{prefix}{DESCRIPTOR_SUFFIX}", True, "%.6g"))
        for kind, suffix in FINGERPRINT_SUFFIX.items():
            fp = pd.DataFrame(truth.fingerprints[kind][sl])
            fp.insert(0, "drug", truth.drugs[sl])
            out.append(_atomic_csv(fp, dest / f"{prefix}{suffix}", False))
    return out


def write_export(path: Path, truth: UnoTruth, cfg: SyntheticUno) -> Path:
    """The exported HDFStore, written batch by batch as the CANDLE export does."""
    kept = truth.kept()
    cell_of = {c: i for i, c in enumerate(truth.cells)}
    drug_of = {d: i for i, d in enumerate(truth.drugs)}
    ci = kept["CELL"].map(cell_of).to_numpy()
    di = kept["DRUG"].map(drug_of).to_numpy()
    auc = kept["AUC"].to_numpy(np.float32)
    desc = np.where(np.isnan(truth.descriptors), np.nanmean(truth.descriptors, axis=0), truth.descriptors)
    desc = desc.astype(np.float32)
    split = split_codes(len(kept), cfg.seed)
    if "test" not in cfg.export_splits:
        split[split == SPLITS.index("test")] = SPLITS.index("val")
    tmp = path.with_name(path.name + ".partial")
    tmp.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PerformanceWarning / track_times FutureWarning from pandas
        store = pd.HDFStore(tmp, mode="w", complevel=cfg.complevel if cfg.complib else 0, complib=cfg.complib)
        try:
            for s, name in enumerate(SPLITS):
                if name not in cfg.export_splits:
                    continue
                rows = np.flatnonzero(split == s)
                for a in range(0, len(rows), cfg.export_batch):
                    r = rows[a: a + cfg.export_batch]
                    for j, x in enumerate((truth.rnaseq[ci[r]], desc[di[r]])):
                        frame = pd.DataFrame(x)
                        frame.columns = [""] * frame.shape[1]
                        store.append(f"x_{name}_{j}", frame, format="table")
                    y = pd.DataFrame({"AUC": auc[r], "Sample": truth.cells[ci[r]], "Drug1": truth.drugs[di[r]]})
                    store.append(f"y_{name}", y, format="table", min_itemsize={"Sample": 30, "Drug1": 10})
            store.put("model", pd.DataFrame())
            attrs = store.get_storer("model").attrs
            attrs.input_features = OrderedDict(INPUT_FEATURES)
            attrs.feature_shapes = {"cell.rnaseq": (truth.rnaseq.shape[1],), "drug.descriptors": (desc.shape[1],)}
        finally:
            store.close()
    tmp.rename(path)
    return path


def generate(dest: str | Path, layout: str, cfg: SyntheticUno = SyntheticUno()) -> list[Path]:
    """Write ``layout`` (``raw``: a folder of TSVs; ``export``: ``dest/top_21_auc_1fold.uno.h5``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown UNO layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    write_marker(dest, __name__)
    truth = draw_truth(cfg)
    if layout == "raw":
        return write_raw(dest, truth)
    return [write_export(dest / EXPORT_NAME, truth, cfg)]
