"""What resume and append of a DS2-sized CloudMask store cost in requests and seconds on S3.

Not a test. Builds, on a ``moto_server`` started here, a CloudMask store with the DS2 number of
scenes (9800) planned and one marker per scene, each of the size a full ``sen3`` product's marker
has (17 file digests); the scenes' data is NOT written (every request measured here is
bookkeeping: plan, markers, inventory, root), and the store is finalized (inventory, manifest of
its metadata objects, root). Then it times and counts, on the server's request log:

* ``markers one by one``: what resume and append did before the inventory: one listing of
  ``_scibench/done/`` and one GET per marker (the previous ``RecordStore.done``, copied below),
  timed on ``--before-sample`` markers and scaled linearly to all (one sequential GET each);
* ``done(), finished store``: ``RecordStore.done`` as an append onto a finished store calls it
  (plan + inventory); ``done(), listing + inventory``: as a resume calls it, with every marker
  in the inventory (one listing of the markers + the inventory);
* ``append of nothing``: ``append_cloudmask`` from an empty source folder onto the finished store
  (the source listing is local and not counted);
* ``resume after a kill``: the inventory as a checkpoint leaves it after a kill (the last
  ``CHECKPOINT_EVERY`` markers missing from it): ``RecordStore.done`` lists the markers and reads
  only those.

    python benchmarks/ds2_resume.py [--scenes 9800]

Prints a table and writes benchmarks/results/ds2_resume.json.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scibench_data.convert import plan_layout
from scibench_data.convert.cloudmask import (
    RECORD_DIM,
    CloudMaskConversion,
    append_cloudmask,
    encodings,
    scene_times,
    template,
)
from scibench_data.formats.cloudmask import product_name
from scibench_data.storage.distribution.local_s3 import moto_server, storage_options
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import (
    CHECKPOINT_EVERY,
    DONE_DIR,
    RecordStore,
    marker_key,
)

REQUEST = re.compile(r'"([A-Z]+) (\S+) HTTP/')
SEN3_FILES = ("xfdumanifest.xml", *(f"S{i}_radiance_an.nc" for i in range(1, 7)), "S7_BT_in.nc", "S8_BT_in.nc",
              "S9_BT_in.nc", "flags_in.nc", "geodetic_in.nc", "geometry_tn.nc", "indices_an.nc", "time_in.nc",
              "viscal.nc", "met_tx.nc")


def requests(log: Path) -> list[str]:
    return [f"{m.group(1)} {m.group(2)}" for line in log.read_text(errors="replace").splitlines()
            if (m := REQUEST.search(line)) and not m.group(2).startswith("/moto-api")]


def marker(index: int, name: str) -> dict:
    """A marker the size of a full ``sen3`` product's (``ConvertProduct``'s info)."""
    digest = f"{index:064x}"
    return {"index": index, "key": name, "source": f"s3://raw/ds2/{name}.SEN3", "sha256": digest,
            "files": {f: digest for f in SEN3_FILES}, "bytes": 223_000_000}


def markers_one_by_one(store: RecordStore, limit: int) -> dict[int, dict]:
    """``RecordStore.done`` before this change (commit c596523): one listing, then one GET per marker
    (here stopped after ``limit`` markers)."""
    fs = store.location.fs
    prefix = store.location.path(*DONE_DIR)
    fs.invalidate_cache(prefix)
    out = {}
    for name in fs.ls(prefix, detail=False)[:limit]:
        base = posixpath.basename(name)
        if base.endswith(".json"):
            m = store.location.read_json(*DONE_DIR, base)
            if m is not None and "index" in m:
                out[int(m["index"])] = m
    return out


def measure(log: Path, label: str, fn) -> dict:
    before = len(requests(log))
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    seen = requests(log)[before:]
    row = {"what": label, "seconds": round(seconds, 3), "requests": len(seen),
           "marker_gets": sum(1 for r in seen if r.startswith("GET ") and "/_scibench/done/" in r
                              and "list-type=2" not in r),
           "listings": sum(1 for r in seen if r.startswith("GET ") and "list-type=2" in r)}
    print(f"{label:28s} {row['seconds']:8.2f} s {row['requests']:7d} requests "
          f"({row['marker_gets']} marker GETs, {row['listings']} listing pages)", flush=True)
    return {**row, "result": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=9800)
    ap.add_argument("--before-sample", type=int, default=1000,
                    help="markers the one-by-one read times (it is linear: one GET each); scaled to --scenes")
    args = ap.parse_args()
    n = args.scenes
    work = Path(tempfile.mkdtemp(prefix="ds2_resume_"))
    log = work / "moto.log"
    with moto_server(log=str(log)) as endpoint:
        so = storage_options(endpoint)
        location = StoreLocation("s3://ds2/cloudmask_ds2.zarr", so)
        location.fs.mkdir("ds2")
        starts = [datetime(2019, 10, 1) + timedelta(seconds=180 * i) for i in range(n)]
        names = [product_name(t, orbit=i % 1000).rsplit(".", 1)[0] for i, t in enumerate(starts)]
        ds = template(names, scene_times(starts), [""] * n, (16, 16), 16)
        opts = CloudMaskConversion(layout="sen3", tile=16, progress=False)
        enc = encodings(ds, 16, opts.codec)
        store = RecordStore(location, RECORD_DIM)
        t0 = time.perf_counter()
        store.prepare(ds, enc, names, {"format": "cloudmask", "grid": [16, 16], "tile": 16, "layout": "sen3",
                                       "splits": [""] * n, **plan_layout(opts.codec, enc)})
        all_markers = {i: marker(i, k) for i, k in enumerate(names)}
        location.fs.pipe({location.path(*marker_key(i)): json.dumps(m).encode() for i, m in all_markers.items()})
        built = time.perf_counter() - t0
        print(f"built: {n} planned scenes and {n} markers ({len(json.dumps(all_markers[0]))} bytes each) "
              f"in {built:.0f} s", flush=True)

        sample = min(n, args.before_sample)
        before = measure(log, f"markers one by one ({sample})", lambda: len(markers_one_by_one(store, sample)))
        # an upper bound: the sample's time includes the whole listing, which is scaled too
        scaled = {"what": f"markers one by one ({n}, scaled from {sample}, upper bound)", "result": n,
                  "seconds": round(before["seconds"] * n / sample, 1), "marker_gets": n,
                  "requests": before["requests"] - before["marker_gets"] + n}
        print(f"{scaled['what']:28s} {scaled['seconds']:8.2f} s (scaled)", flush=True)
        rows = [before, scaled]
        t0 = time.perf_counter()
        store.finalize({}, {"scibench_layout": "sen3", "scibench_n_scenes": n},
                       markers=all_markers)
        print(f"finalized (inventory, manifest, root) in {time.perf_counter() - t0:.1f} s", flush=True)
        inventory_bytes = location.fs.size(location.path("_scibench", "inventory.json"))
        rows.append(measure(log, "done(), finished store", lambda: len(store.done(complete=True))))
        rows.append(measure(log, "done(), listing + inventory", lambda: len(store.done())))
        empty = work / "empty"
        empty.mkdir()
        rows.append(measure(log, "append of nothing", lambda: append_cloudmask(str(empty), location, opts).complete))
        store.begin_update()
        store.write_inventory({i: m for i, m in all_markers.items() if i < n - CHECKPOINT_EVERY})
        rows.append(measure(log, "resume after a kill", lambda: len(store.done())))
    for r in rows:
        if r["what"] != "append of nothing" and r["result"] not in (n, sample):
            raise SystemExit(f"{r['what']}: found {r['result']} finished scenes, expected {n}")
    out = {"scenes": n, "inventory_bytes": inventory_bytes, "built_s": round(built, 1),
           "load_average": os.getloadavg(), "rows": rows,
           "covers": "bookkeeping requests of resume/append on a 9800-scene store on a local moto S3 server; "
                     "no scene data written or read; source discovery not included"}
    dest = ROOT / "benchmarks" / "results" / "ds2_resume.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"inventory: {inventory_bytes / 1e6:.1f} MB; load average {os.getloadavg()}; wrote {dest}")


if __name__ == "__main__":
    main()
