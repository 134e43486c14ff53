"""Rank-sharded CloudMask streaming (issue 16): read locality, patches/s with 1 vs 2 ranks, and
S3 requests per patch per rank.

1. Locality (no I/O): chunks each batch of 32 touches at full size (1200 x 1500 scenes, 256 x 256
   chunks), for the epoch order before this change (random patches shuffled over all scenes; fixed
   patches as whole scenes per worker, each worker reading each of its scenes' chunk-aligned crop)
   and after it (scenes shuffled, then patches inside them; ``mix`` scenes at a time).
2. Throughput: one epoch of this rank's share with ``patch_loader`` in 1 process vs 2 processes
   (``world_size=2``, started together), from a local store and from the loopback S3 server
   (moto); total patches/s = all patches / the slowest rank's wall time.
3. S3 requests: every chunk GET a rank issues is counted (``ChunkReader.fetch``), per patch, and
   checked against the chunks that rank's own patches touch (a rank must fetch no other chunk).

    PYTHONPATH=. python benchmarks/sharding.py --scenes 8 --out benchmarks/results/sharding.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from loaders.chunk_reader import ChunkReader, window_pieces
from loaders.cloudmask import CloudMaskPatches, PatchSpec, patch_loader
from loaders.sharding import ShardSpec
from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
from scibench_data.storage.distribution.local_s3 import moto_server, storage_options
from scibench_data.storage.store.location import StoreLocation
from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

BATCH = 32


def chunk_keys(data: CloudMaskPatches, indices) -> set[tuple]:
    """The (array, chunk) pairs the patches ``indices`` touch."""
    image, mask = data.handle["image"].chunks, data.handle["cloud_mask"].chunks
    keys: set[tuple] = set()
    for i in indices:
        scene, win = data.items[int(i)]
        ys, xs = win.slices
        keys |= {("image", p.chunk) for p in window_pieces((slice(scene, scene + 1), slice(0, 9), ys, xs), image)}
        keys |= {("cloud_mask", p.chunk) for p in window_pieces((slice(scene, scene + 1), ys, xs), mask)}
    return keys


def locality(data: CloudMaskPatches, mode: str) -> dict:
    """Image chunks per batch and chunk reads per patch, one epoch, before and after."""
    n = len(data)
    out = {}

    def per_batch(batches) -> tuple[float, float]:
        counts = [len({k for k in chunk_keys(data, b) if k[0] == "image"}) for b in batches]
        return float(np.mean(counts)), float(np.sum(counts) / n)

    if mode == "random":  # before: RandomSampler over every patch of every scene
        order = np.random.default_rng(0).permutation(n)
        out["before: all patches shuffled"] = per_batch([order[a:a + BATCH] for a in range(0, n, BATCH)])
    else:  # before: each worker read each of its scenes' whole chunk-aligned crop once
        ys, xs = data.crop_bounds
        cy, cx = data.handle["image"].chunks[2:]
        crop_chunks = -(-(ys.stop - ys.start) // cy) * -(-(xs.stop - xs.start) // cx)
        per_scene = len(data.items) / len(data.scenes)
        out["before: whole scene crop per worker"] = (float(crop_chunks * BATCH / per_scene), crop_chunks / per_scene)
    for mix in (1, 4):
        spec = ShardSpec(BATCH, seed=0, mix=mix)
        out[f"after: scene blocks, mix={mix}"] = per_batch(spec.batches(data.blocks(), 0))
    return {k: {"image_chunks_per_batch": v[0], "image_chunk_reads_per_patch": v[1]} for k, v in out.items()}


def _rank(rank: int, world: int, location: StoreLocation, mode: str, results) -> None:
    """One rank's epoch: wall time, patches, chunk GETs and whether they are all its own."""
    torch.set_num_threads(1)
    fetched: list[tuple] = []
    original = ChunkReader.fetch

    async def counting(self, coords):
        fetched.append((self.array.path.rsplit("/", 1)[-1], tuple(coords)))  # (array name, chunk)
        return await original(self, coords)

    ChunkReader.fetch = counting
    calls: list[str] = []  # every S3 API call (GET, and the HEAD s3fs sends before a GET)
    import s3fs

    call_s3 = s3fs.S3FileSystem._call_s3

    async def counting_s3(self, method, *a, **k):
        calls.append(getattr(method, "__name__", str(method)))
        return await call_s3(self, method, *a, **k)

    s3fs.S3FileSystem._call_s3 = counting_s3
    data = CloudMaskPatches(location, spec=PatchSpec(mode, 256, 20, seed=1))
    loader = patch_loader(data, BATCH, seed=3, rank=rank, world_size=world)
    loader.set_epoch(0)
    data.handle["image"], data.handle["cloud_mask"]  # opened before the clock starts
    calls.clear()
    t0 = time.perf_counter()
    patches = sum(len(image) for image, _ in loader)
    seconds = time.perf_counter() - t0
    needed = chunk_keys(data, np.concatenate(loader.dataset.batches()))
    got = {(name, c) for name, c in fetched}
    results[rank] = {"seconds": seconds, "patches": patches, "gets": len(fetched), "s3_calls": len(calls),
                     "s3_calls_by_method": {m: calls.count(m) for m in sorted(set(calls))},
                     "distinct_chunks": len(got), "chunks_needed": len(needed), "foreign_chunks": len(got - needed)}


def throughput(location: StoreLocation, mode: str, world: int) -> dict:
    with mp.Manager() as manager:
        results = manager.dict()
        if world == 1:
            _rank(0, 1, location, mode, results)
        else:
            mp.spawn(_rank, args=(world, location, mode, results), nprocs=world)
        ranks = [dict(results[r]) for r in range(world)]
    total = sum(r["patches"] for r in ranks)
    return {"ranks": ranks, "patches": total, "patches_per_s": total / max(r["seconds"] for r in ranks),
            "gets_per_patch_per_rank": [r["gets"] / r["patches"] for r in ranks],
            "s3_calls_per_patch_per_rank": [r["s3_calls"] / r["patches"] for r in ranks]}


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/sharding.json")
    ap.add_argument("--stores", default="local,s3", help="which stores to time (default local,s3)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scibench-shard-"))
    generate(tmp / "raw", "hdf", SyntheticCloudMask(n_products=args.scenes, seed=21))
    store = tmp / "cloudmask_ds1.zarr"
    convert_cloudmask(str(tmp / "raw"), str(store), CloudMaskConversion(layout="hdf", progress=False))
    results: dict = {"cpus": os.cpu_count(), "scenes": args.scenes, "batch": BATCH, "locality": {}, "runs": []}
    local = StoreLocation(str(store))
    for mode in ("fixed", "random"):
        results["locality"][mode] = locality(CloudMaskPatches(local, spec=PatchSpec(mode, 256, 20, seed=1)), mode)
    with moto_server() as endpoint:
        so = storage_options(endpoint)
        import s3fs

        fs = s3fs.S3FileSystem(**so)
        fs.mkdir("bench")
        fs.put(str(store) + "/", "bench/cloudmask_ds1.zarr/", recursive=True)
        remote = StoreLocation("s3://bench/cloudmask_ds1.zarr", so)
        for where, location in (("local", local), ("s3", remote)):
            if where not in args.stores.split(","):
                continue
            for mode in ("fixed", "random"):
                for world in (1, 2):
                    run = throughput(location, mode, world)
                    results["runs"].append({"store": where, "mode": mode, "ranks": world, **run})
                    print(f"{where:>5} {mode:>6} {world} rank(s): {run['patches_per_s']:6.1f} patches/s, "
                          f"chunk GETs/patch per rank {[round(g, 2) for g in run['gets_per_patch_per_rank']]}, "
                          f"S3 calls/patch per rank {[round(g, 2) for g in run['s3_calls_per_patch_per_rank']]}, "
                          f"foreign chunks {[r['foreign_chunks'] for r in run['ranks']]}", flush=True)
    for mode, rows in results["locality"].items():
        for name, r in rows.items():
            print(f"locality {mode:>6} {name:<38} {r['image_chunks_per_batch']:6.1f} image chunks/batch, "
                  f"{r['image_chunk_reads_per_patch']:.2f} image chunk reads/patch")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
