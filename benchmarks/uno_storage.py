"""Store size of the normalised CANDLE-UNO layout vs the denormalised export.

Writes a synthetic export (pandas HDFStore, blosc lz4 level 9) at full feature
dimensions (942 genes, 5270 descriptors) with ``--responses`` rows, converts it
to the normalised Zarr store, and prints both sizes, per response row and
extrapolated to the real 423,952 / 52,994 / 52,994 rows. The extrapolation
scales the export and the response table per row; the feature tables are
counted at ``--real-cells`` x ``--real-drugs`` (assumed, not measured) with the
compression ratio measured here. Synthetic features are low-rank Gaussian noise,
so compression ratios on real data will differ.

    python benchmarks/uno_storage.py            # ~2-4 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import zarr

from scibench_data.convert.uno import UnoConversion, convert_uno
from scibench_data.formats.uno import EXPORT_ROWS
from scibench_data.scoring.report import format_table
from scibench_data.synthetic.uno import SyntheticUno, generate


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--responses", type=int, default=8000, help="raw response rows before filtering")
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--drugs", type=int, default=150)
    ap.add_argument("--real-cells", type=int, default=1000, help="assumed cells in the real set (extrapolation)")
    ap.add_argument("--real-drugs", type=int, default=1800, help="assumed drugs in the real set (extrapolation)")
    ap.add_argument("--out", default="benchmarks/results/uno_storage.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        cfg = SyntheticUno(n_cells=args.cells, n_drugs=args.drugs, n_responses=args.responses, seed=1)
        export = generate(tmp / "exp", "export", cfg)[0]
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = convert_uno(export, tmp / "candle_uno.zarr", UnoConversion(progress=False))
        t_conv = time.perf_counter() - t0
        if not report.ok:
            raise SystemExit("\n".join(report.lines()))
        g = zarr.open_group(str(tmp / "candle_uno.zarr"), mode="r")
        n = report.extra["n_responses"]
        feat = {k: du(tmp / "candle_uno.zarr" / k) for k in ("rnaseq", "descriptors", "fingerprints")}
        feat_raw = {k: g[k].nbytes for k in feat}
        resp_vars = ("auc", "cell_index", "drug_index", "split", "source_row")
        resp = sum(du(tmp / "candle_uno.zarr" / k) for k in resp_vars)
        resp_raw = sum(g[k].nbytes for k in resp_vars)
        export_bytes, store_bytes = du(export), du(tmp / "candle_uno.zarr")
    real_n = sum(EXPORT_ROWS.values())
    ratio = (feat["rnaseq"] + feat["descriptors"]) / (feat_raw["rnaseq"] + feat_raw["descriptors"])
    real_feat_raw = 4 * (args.real_cells * 942 + args.real_drugs * 5270)
    result = {
        "measured": {"responses": n, "cells": args.cells, "drugs": args.drugs,
                     "export_bytes": export_bytes, "store_bytes": store_bytes,
                     "store_feature_bytes": feat, "store_feature_uncompressed_bytes": feat_raw,
                     "store_response_bytes": resp, "store_response_uncompressed_bytes": resp_raw,
                     "export_bytes_per_row": export_bytes / n, "store_response_bytes_per_row": resp / n,
                     "size_ratio_export_over_store": export_bytes / store_bytes,
                     "generate_s": t_gen, "convert_s": t_conv},
        "extrapolated_to_real_rows": {
            "rows": real_n, "assumed_cells": args.real_cells, "assumed_drugs": args.real_drugs,
            "export_bytes": export_bytes / n * real_n,
            "denormalised_uncompressed_bytes": real_n * (942 + 5270) * 4,
            "store_bytes": resp / n * real_n + real_feat_raw * ratio,
            "store_uncompressed_bytes": resp_raw / n * real_n + real_feat_raw,
        },
    }
    e = result["extrapolated_to_real_rows"]
    print(format_table({
        "responses (measured)": n, "export MB": export_bytes / 1e6, "normalised store MB": store_bytes / 1e6,
        "export / store": export_bytes / store_bytes, "export bytes/row": export_bytes / n,
        "store response bytes/row": resp / n,
        "real export GB (extrap.)": e["export_bytes"] / 1e9,
        "real store MB (extrap.)": e["store_bytes"] / 1e6,
        "real store MB uncompr.": e["store_uncompressed_bytes"] / 1e6,
    }, f"CANDLE-UNO storage: export (denormalised HDFStore) vs normalised Zarr, "
       f"extrapolated to {real_n:,} rows"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
