"""Client CPU per GB and requests per patch for each way of reading chunks from S3 (issue 20, items 1-2).

Not a test. Generates full-size synthetic CloudMask scenes (1200 x 1500, 256 x 256 image chunks),
converts and publishes them to a moto server started here (its request log is kept), then reads the
same random 256 x 256 patches (batches of 8) through each path, each run in a fresh process:

* ``zarr+s3fs``: ``zarr.Array`` indexing, one window at a time, over ``FsspecStore`` (s3fs defaults);
* ``ChunkReader+s3fs``: ``loaders/chunk_reader.py`` (a batch's chunks in one round) over s3fs defaults;
* ``ChunkReader+s3fs mc=1``: the same with ``max_concurrency=1`` (our s3fs setting: no HEAD);
* ``zarr+ObjectStore``: ``zarr.Array`` indexing over zarr's ``ObjectStore`` (obstore ``S3Store``);
* ``ChunkReader+obstore``: the chunk reader over our read store (``StoreLocation.zarr_store``: the loaders' path);
* ``bare GET obstore`` / ``bare GET s3fs mc=1``: the same distinct chunks per batch, fetched and not decoded.

CPU is the reading process's own (``time.process_time``: user + system of all its threads), from
after the store is opened to the end, divided by the bytes the server sent (sizes of the objects it
logged GETs for); requests are counted in the server's log. Every path must return the same arrays
(a digest of all patches is compared). Median of ``--repeats`` runs per path.

    python benchmarks/s3_clients.py [--scenes 2] [--patches 20] [--repeats 3]

Prints a table and writes benchmarks/results/s3_clients.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PATHS = ("zarr+s3fs", "ChunkReader+s3fs", "ChunkReader+s3fs mc=1", "zarr+ObjectStore", "ChunkReader+obstore",
         "bare GET obstore", "bare GET s3fs mc=1")
PATCH, BATCH = 256, 8


# --------------------------------------------------------------------------- one run (a child process)


def _windows(shape: tuple[int, int], scenes: int, per_scene: int) -> list[tuple[int, slice, slice]]:
    from loaders.cloudmask import PatchSpec, plan_patches

    spec = PatchSpec(mode="random", patch=PATCH, patches_per_scene=per_scene, seed=3)
    return [(s, *win.slices) for s, win in plan_patches(list(range(scenes)), shape, spec)]


def _store(path: str, url: str, so: dict):
    from zarr.storage import FsspecStore, ObjectStore

    from scibench_data.storage.store.s3_client import (
        obstore_s3,
        obstore_settings,
        read_store,
    )

    if path.endswith("mc=1"):
        return FsspecStore.from_url(url, storage_options={**so, "max_concurrency": 1}, read_only=True)
    if path.endswith("s3fs"):
        return FsspecStore.from_url(url, storage_options=so, read_only=True)  # s3fs defaults (max_concurrency 10)
    if path == "zarr+ObjectStore":
        return ObjectStore(obstore_s3(obstore_settings(url, so)[0]), read_only=True)
    return read_store(url, so, env={"SCIBENCH_S3_CLIENT": "obstore"})


def run_one(path: str, url: str, so: dict, scenes: int, per_scene: int) -> dict:
    import numpy as np
    import zarr

    from loaders.chunk_reader import (
        ChunkReader,
        batch_buffer,
        read_regions,
        window_pieces,
    )

    group = zarr.open_group(_store(path, url, so), mode="r")
    image, mask = group["image"], group["cloud_mask"]
    wins = _windows(tuple(image.shape[2:]), scenes, per_scene)
    keys = _batch_keys(wins, image, mask, window_pieces)
    digest = _Timed(hashlib.sha256())
    parts = _time_parts() if path.startswith("ChunkReader") else {}
    t0, c0 = time.perf_counter(), time.process_time()
    if path.startswith("bare GET"):
        if path.endswith("obstore"):
            import obstore as obs

            store = group.store.store

            async def fetch(batch: list[str]) -> list:
                return await asyncio.gather(*(_obstore_get(obs, store, k) for k in batch))
        else:
            fs, root = group.store.fs, group.store.path

            async def fetch(batch: list[str]) -> list:
                return await asyncio.gather(*(fs._cat_file(f"{root}/{k}") for k in batch))

        from zarr.core.sync import sync

        for batch in keys:
            for data in sync(fetch(batch)):
                digest.update(memoryview(data)[:64])
    else:
        readers = (ChunkReader(image), ChunkReader(mask)) if path.startswith("ChunkReader") else None
        for b in range(0, len(wins), BATCH):
            chunk = wins[b:b + BATCH]
            img = batch_buffer((len(chunk), image.shape[1], PATCH, PATCH), np.float32)  # the loaders' pool
            msk = batch_buffer((len(chunk), PATCH, PATCH), np.float32)
            requests: list = []
            if readers:
                for k, (s, ys, xs) in enumerate(chunk):
                    requests += [(readers[0], (slice(s, s + 1), slice(0, image.shape[1]), ys, xs), img[k:k + 1]),
                                 (readers[1], (slice(s, s + 1), ys, xs), msk[k:k + 1])]
                read_regions(requests)
            else:
                for k, (s, ys, xs) in enumerate(chunk):
                    img[k] = image[s, :, ys, xs]
                    msk[k] = mask[s, ys, xs]
            digest.update(img)  # the benchmark's check: its CPU is counted and taken out
            digest.update(msk)
            del img, msk, requests  # the batch is let go of, as a training step would: its buffers are reused
    cpu = time.process_time() - c0 - digest.cpu_s  # the benchmark's own check of the arrays is not the client's
    return {"cpu_s": cpu, "wall_s": time.perf_counter() - t0, "digest": digest.hexdigest(), "patches": len(wins),
            "used_keys": [k for batch in keys for k in batch], "payload_bytes": digest.nbytes,
            **{f"{name}_cpu_s": seconds for name, seconds in parts.items()}}


class _Timed:
    """A hash whose ``update`` CPU time (and bytes) is counted, to take it out of the client's CPU."""

    def __init__(self, h) -> None:
        self.h, self.cpu_s, self.nbytes = h, 0.0, 0

    def update(self, data) -> None:
        c = time.process_time()
        self.h.update(data)
        self.cpu_s += time.process_time() - c
        self.nbytes += memoryview(data).nbytes

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def _time_parts() -> dict[str, float]:
    """CPU of the chunk reader's decode (checksum + blosc) and of its copies into the batch, counted
    as they run (the batch's chunks are all fetched before the first is decoded, so no request runs
    meanwhile). Returns the dict the totals accumulate in."""
    from loaders import chunk_reader

    totals = {"decode": 0.0, "copy": 0.0}

    def timed(fn, name):
        def wrapper(*args, **kwargs):
            c = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[name] += time.process_time() - c
        return wrapper

    chunk_reader.ChunkReader.decode = timed(chunk_reader.ChunkReader.decode, "decode")
    chunk_reader._put = timed(chunk_reader._put, "copy")
    return totals


async def _obstore_get(obs, store, key: str):
    resp = await obs.get_async(store, key)
    return await resp.bytes_async()


def _batch_keys(wins, image, mask, window_pieces) -> list[list[str]]:
    """The distinct chunk keys (relative to the store) of each batch, as the chunk reader fetches them."""
    out = []
    for b in range(0, len(wins), BATCH):
        keys: dict[str, None] = {}
        for s, ys, xs in wins[b:b + BATCH]:
            for name, arr, region in (("image", image, (slice(s, s + 1), slice(0, image.shape[1]), ys, xs)),
                                      ("cloud_mask", mask, (slice(s, s + 1), ys, xs))):
                for p in window_pieces(region, arr.chunks):
                    keys[f"{name}/{arr.metadata.encode_chunk_key(p.chunk)}"] = None
        out.append(list(keys))
    return out


# --------------------------------------------------------------------------- the driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=2)
    ap.add_argument("--patches", type=int, default=20, help="random patches per scene")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of: " + ", ".join(PATHS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run_one(spec["path"], spec["url"], spec["so"], args.scenes, args.patches)))
        return

    import s3fs
    from _s3_helpers import LoggedS3Server

    from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
    from scibench_data.storage.distribution.local_s3 import storage_options
    from scibench_data.storage.distribution.publish import PublishOptions, publish
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise SystemExit(f"unknown paths {unknown}; choose from {list(PATHS)}")
    work = Path(tempfile.mkdtemp(prefix="s3clients-"))
    server = LoggedS3Server(work)
    try:
        generate(work / "raw", "hdf", SyntheticCloudMask(n_products=args.scenes, grid=(1200, 1500), seed=0))
        store = work / "cloudmask_ds1.zarr"
        assert convert_cloudmask(str(work / "raw"), str(store), CloudMaskConversion(layout="hdf", progress=False)).ok
        so = storage_options(server.endpoint)
        s3fs.S3FileSystem(**so).mkdir("bench")
        url = publish("cloudmask_ds1", str(store), "s3://bench/pub", storage_options=so,
                      options=PublishOptions(progress=False)).url
        prefix = url.removeprefix("s3://") + "/"
        sizes = {p.relative_to(store).as_posix(): p.stat().st_size for p in store.rglob("*") if p.is_file()}
        rows = []
        for rep in range(args.repeats):
            for path in paths:
                before = len(server.requests())
                # decode on the reading thread: the decode/copy shares below are process CPU timed around
                # each call, which a second decode thread would count twice
                env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SCIBENCH_DECODE_THREADS": "1"}
                done = subprocess.run([sys.executable, __file__, "--scenes", str(args.scenes), "--patches",
                                       str(args.patches), "--child", json.dumps({"path": path, "url": url, "so": so})],
                                      env=env, capture_output=True, text=True, check=True)
                got = json.loads(done.stdout.strip().splitlines()[-1])
                seen = Counter()
                nbytes = 0
                for method, p in server.requests()[before:]:
                    key = p.lstrip("/")
                    if key.startswith(prefix) and "/c/" in key:
                        seen[method] += 1
                        if method == "GET":
                            nbytes += sizes[key[len(prefix):]]
                got.update(path=path, repeat=rep, gets=seen["GET"], heads=seen["HEAD"], bytes=nbytes,
                           used_bytes=sum(sizes[k] for k in got.pop("used_keys")))
                rows.append(got)
                print(f"run {rep + 1}: {path:24s} {got['cpu_s']:6.2f} CPU-s {nbytes / 1e6:7.1f} MB "
                      f"{seen['GET']:5d} GET {seen['HEAD']:5d} HEAD", flush=True)
    finally:
        server.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    summary = []
    for path in paths:
        mine = [r for r in rows if r["path"] == path]
        n = mine[0]["patches"]
        summary.append({"path": path, "cpu_s_per_gb": round(statistics.median(r["cpu_s"] / (r["bytes"] / 1e9)
                                                                               for r in mine), 2),
                        "requests_per_patch": round(statistics.median((r["gets"] + r["heads"]) / n for r in mine), 2),
                        "heads_per_patch": round(statistics.median(r["heads"] / n for r in mine), 2),
                        "mb_per_patch": round(statistics.median(r["bytes"] / n / 1e6 for r in mine), 2),
                        "wall_s": round(statistics.median(r["wall_s"] for r in mine), 2), "digest": mine[0]["digest"]})
        summary[-1]["cpu_s_per_gb_used"] = round(statistics.median(r["cpu_s"] / (r["used_bytes"] / 1e9) for r in mine), 2)
        if "decode_cpu_s" in mine[0]:
            io = [(r["cpu_s"] - r["decode_cpu_s"] - r["copy_cpu_s"]) / (r["bytes"] / 1e9) for r in mine]
            summary[-1].update(
                cpu_s_per_gb_payload=round(statistics.median(r["cpu_s"] / (r["payload_bytes"] / 1e9) for r in mine), 2),
                decode_share=round(statistics.median(r["decode_cpu_s"] / r["cpu_s"] for r in mine), 2),
                copy_share=round(statistics.median(r["copy_cpu_s"] / r["cpu_s"] for r in mine), 2),
                fetch_cpu_s_per_gb=round(statistics.median(io), 2))
    decoded = {s["digest"] for s in summary if not s["path"].startswith("bare")}
    load = os.getloadavg()
    print(f"\n{len(rows) // max(1, len(paths))} runs per path, {summary[0]['path'] and rows[0]['patches']} patches "
          f"of {PATCH}x{PATCH} in batches of {BATCH}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("CPU-s per GB fetched; per GB of the chunks the patches use (what a reader without kept chunks fetches);\n"
          "chunk reader only: per GB of decoded patches, the share of its CPU in decode (crc32c + blosc) and in\n"
          "copies into the batch, and what is left (fetching: obstore/s3fs, zarr, event loop, Python) per GB fetched")
    print(f"{'path':24s} {'CPU-s/GB':>9s} {'/GB used':>9s} {'/GB patch':>9s} {'decode':>7s} {'copy':>6s} "
          f"{'fetch/GB':>8s} {'req/patch':>10s} {'HEAD/patch':>10s} {'MB/patch':>9s} {'wall s':>7s}")
    for s in summary:
        extra = (f"{s['cpu_s_per_gb_payload']:9.2f} {s['decode_share']:7.0%} {s['copy_share']:6.0%} "
                 f"{s['fetch_cpu_s_per_gb']:8.2f}" if "decode_share" in s else f"{'':9s} {'':7s} {'':6s} {'':8s}")
        print(f"{s['path']:24s} {s['cpu_s_per_gb']:9.2f} {s['cpu_s_per_gb_used']:9.2f} {extra} "
              f"{s['requests_per_patch']:10.2f} {s['heads_per_patch']:10.2f} {s['mb_per_patch']:9.2f} {s['wall_s']:7.2f}")
    print("identical arrays on every decoding path:", len(decoded) == 1)
    out = ROOT / "benchmarks" / "results" / "s3_clients.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python benchmarks/s3_clients.py " + " ".join(sys.argv[1:]),
                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "scenes": args.scenes, "grid": [1200, 1500], "patch": PATCH, "batch": BATCH,
                               "load_average": load, "identical_arrays": len(decoded) == 1,
                               "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                               "summary": summary, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
