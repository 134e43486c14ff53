"""CloudMask DS2 at scale (issue 6) and conversion speed (issue 8, item 4), side by side in one run.

    python benchmarks/ds2_scale.py [--work DIR] [--products 16] [--out benchmarks/results/ds2_scale.json]

On full-size synthetic products (1200 x 1500 scenes; layout sen3 has 2400 x 3000 radiances):

1. conversion products/s and MB/s (input bytes) for both layouts: one process (``sync``),
   then 1 and 2 worker processes of a ``LocalCluster`` (started once per size, warmed up,
   reached by its address: the same path as an existing cluster), the 2-vs-1 scaling ratio,
   and CPU seconds per product in the workers;
2. the ceiling: decoding the inputs plus encoding the outputs of one product on one core;
3. peak RSS per worker converting 4, 8 and 16 full-size sen3 products with 2 workers;
4. time to open the full-shape ``cloudmask_ds2`` (9800 scenes, 4 written) through the catalog
   versus a 4-scene store, and to load its ``time`` coordinate;
5. bytes read (stored, compressed) and decoded versus bytes selected for a few subsets.

The machine is shared: compare the ratios, which are measured side by side.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

GRID = (1200, 1500)


def _generate(work: Path, layout: str, n: int) -> Path:
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    folder = work / f"raw-{layout}-{n}"
    if not folder.exists() or len([p for p in folder.iterdir() if not p.name.endswith(".partial")]) < n:
        shutil.rmtree(folder, ignore_errors=True)
        generate(folder, layout, SyntheticCloudMask(n_products=n, grid=GRID, seed=21))
    return folder


def _subfolder(src: Path, n: int, dest: Path) -> Path:
    """The first ``n`` products of ``src`` as hard links (no copy)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for p in sorted(src.iterdir())[:n]:
        if p.is_dir():
            shutil.copytree(p, dest / p.name, copy_function=os.link)
        else:
            os.link(p, dest / p.name)
    return dest


def _input_bytes(src: Path) -> int:
    return sum(f.stat().st_size for f in src.rglob("*") if f.is_file())


def _worker_cpu() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def _worker_peak_rss() -> int:
    """Peak RSS of this process (VmHWM: reset at exec, unlike ru_maxrss, which a spawned
    worker inherits from the parent that forked it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _warm() -> int:
    import scibench_data.convert.cloudmask  # noqa: F401 - imports paid before timing

    return os.getpid()


def convert_on(scheduler: str, src: Path, dest: Path, layout: str) -> dict:
    from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask

    shutil.rmtree(dest, ignore_errors=True)
    t0 = time.perf_counter()
    report = convert_cloudmask(str(src), str(dest), CloudMaskConversion(layout=layout, scheduler=scheduler,
                                                                        progress=False))
    wall = time.perf_counter() - t0
    if not report.ok:
        raise RuntimeError("\n".join(report.lines()))
    shutil.rmtree(dest, ignore_errors=True)
    return {"seconds": wall, "products": report.total, "bytes": report.bytes_read}


def untuned_worker(src: Path, layout: str, work: Path) -> dict:
    """The same per-product task on a default ``LocalCluster`` worker (statistical profiler on, zarr's
    codec thread pool, worker-saturation 1.1, dask's malloc settings), submitted directly: what our
    worker tuning saves."""
    import fsspec
    from distributed import Client, LocalCluster

    from scibench_data.convert.cloudmask import (
        RECORD_DIM,
        CloudMaskConversion,
        ConvertProduct,
        common_grid,
        encodings,
        template,
    )
    from scibench_data.formats.cloudmask import discover_products
    from scibench_data.storage.store.location import StoreLocation
    from scibench_data.storage.store.records import RecordStore

    fs = fsspec.filesystem("file")
    products = discover_products(fs, str(src), layout)[0]
    grid = common_grid(fs, products)
    dest = work / "untuned.zarr"
    shutil.rmtree(dest, ignore_errors=True)
    names = [p.name.stem for p in products]
    ds = template(names, np.array([np.datetime64(p.name.start, "ns") for p in products]), [""] * len(names), grid, 256)
    RecordStore(StoreLocation(str(dest)), RECORD_DIM).prepare(ds, encodings(ds, 256, CloudMaskConversion(layout).codec),
                                                               names, {})
    task = ConvertProduct(StoreLocation(str(dest)), str(src), {}, grid)
    import dask

    from scibench_data.parallel import WORKER_ENV, environment

    defaults = {k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()}
    default_env = {**{k: None for k in WORKER_ENV}, **defaults}  # exactly dask's, whatever ran before
    with environment(default_env), LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                                dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(_warm)
        cpu0 = client.run(_worker_cpu)
        t0 = time.perf_counter()
        client.gather(client.map(task, list(enumerate(products)), pure=False))
        seconds = time.perf_counter() - t0
        cpu1 = client.run(_worker_cpu)
    shutil.rmtree(dest, ignore_errors=True)
    return {"products": len(products), "seconds": seconds,
            "cpu_s_per_product": sum(cpu1[w] - cpu0[w] for w in cpu1) / len(products)}


def throughput(src: Path, layout: str, work: Path) -> dict:
    """sync in this process, then LocalClusters of 1 and 2 workers (startup and imports excluded)."""
    import psutil

    from scibench_data.parallel import distributed_client

    out = {}
    c0 = psutil.Process().cpu_times()
    r = convert_on("sync", src, work / "t.zarr", layout)
    c1 = psutil.Process().cpu_times()
    r["cpu_s_per_product"] = (c1.user + c1.system - c0.user - c0.system) / r["products"]
    out["1 process (sync)"] = r
    for n in (1, 2):
        with distributed_client("local-cluster", n) as client:  # the cluster --scheduler local-cluster starts
            client.run(_warm)
            cpu0 = client.run(_worker_cpu)
            r = convert_on(client.scheduler.address, src, work / "t.zarr", layout)
            cpu1 = client.run(_worker_cpu)
            r["cpu_s_per_product"] = sum(cpu1[w] - cpu0[w] for w in cpu1) / r["products"]
            out[f"{n} worker process{'es' if n > 1 else ''}"] = r
    for r in out.values():
        r["products_per_s"] = r["products"] / r["seconds"]
        r["MBps"] = r["bytes"] / r["seconds"] / 1e6
        r["cores_obtained"] = r["cpu_s_per_product"] * r["products"] / r["seconds"]
    out["untuned 1 worker (task only)"] = untuned_worker(src, layout, work)
    out["scaling_2_vs_1"] = out["2 worker processes"]["MBps"] / out["1 worker process"]["MBps"]
    return out


def ceiling(src: Path, layout: str) -> dict:
    """One product on one core, best of three: decode every input the reader uses (with the reader's
    decoders), encode every output chunk. Not counted: what the conversion does besides (reflectance, tie-point
    interpolation, block mean, hashing the inputs for provenance, zarr's write path)."""
    import fsspec
    import h5py
    from numcodecs import Blosc

    from scibench_data.formats.cloudmask import (
        BT_CHANNELS,
        REFLECTANCE_CHANNELS,
        discover_products,
    )
    from scibench_data.storage.store.encoding import DEFAULT_CODEC

    fs = fsspec.filesystem("file")
    product = discover_products(fs, str(src), layout)[0][0]
    from scibench_data.formats.cloudmask import _open_nc, _read_packed, read_product

    def decode() -> int:
        if layout == "hdf":
            with h5py.File(product.path, "r") as h:
                [h[k][()] for k in ("refs", "bts", "bayes", "summary")]
            return Path(product.path).stat().st_size
        # the reader's own decoders: packed images unpacked (cf_unpack), small files through xarray
        [_read_packed(fs, product.path, f"{c}_radiance_an.nc", f"{c}_radiance_an", None) for c in REFLECTANCE_CHANNELS]
        [_read_packed(fs, product.path, f"{c}_BT_in.nc", f"{c}_BT_in", None) for c in BT_CHANNELS]
        for name in [f"{c}_quality_an.nc" for c in REFLECTANCE_CHANNELS] + ["geometry_tn.nc"]:
            [v.values for v in _open_nc(fs, product.path, name).data_vars.values()]
        [v.values for v in _open_nc(fs, product.path, "flags_in.nc", mask_and_scale=False).data_vars.values()]
        return _input_bytes(Path(product.path))

    scene = read_product(fs, product)  # not timed: the outputs to encode
    image, mask = scene.image, scene.cloud_mask
    h, w = mask.shape
    blosc4 = Blosc(cname=DEFAULT_CODEC.cname, clevel=DEFAULT_CODEC.clevel, shuffle=Blosc.SHUFFLE, blocksize=0)
    blosc1 = Blosc(cname=DEFAULT_CODEC.cname, clevel=DEFAULT_CODEC.clevel, shuffle=Blosc.SHUFFLE)

    def encode() -> None:  # the store's chunks: 256 x 256 image tiles, each mask whole
        for y in range(0, h, 256):
            for x in range(0, w, 256):
                tile = np.zeros((9, 256, 256), np.float32)
                part = image[:, y:y + 256, x:x + 256]
                tile[:, :part.shape[1], :part.shape[2]] = part
                blosc4.encode(tile)
        for _ in range(2):  # cloud_mask, summary_cloud
            blosc1.encode(np.ascontiguousarray(mask))

    t_decode = t_encode = float("inf")
    for _ in range(3):  # best of three: one product is a short measurement on a shared machine
        t0 = time.perf_counter()
        in_bytes = decode()
        t_decode = min(t_decode, time.perf_counter() - t0)
        t0 = time.perf_counter()
        encode()
        t_encode = min(t_encode, time.perf_counter() - t0)
    return {"decode_s": t_decode, "encode_s": t_encode, "input_bytes": in_bytes,
            "MBps": in_bytes / (t_decode + t_encode) / 1e6}


def peak_rss(src: Path, work: Path, sizes=(4, 8, 16)) -> dict:
    """Peak RSS of each of 2 fresh workers converting 4, 8 and 16 sen3 products."""
    from scibench_data.parallel import distributed_client

    out = {}
    for n in sizes:
        sub = _subfolder(src, n, work / f"rss-src-{n}")
        with distributed_client("local-cluster", 2) as client:
            client.run(_warm)
            base = client.run(_worker_peak_rss)
            r = convert_on(client.scheduler.address, sub, work / "rss.zarr", "sen3")
            peak = client.run(_worker_peak_rss)
        out[str(n)] = {"peak_rss_MB_per_worker": sorted(round(v / 1e6) for v in peak.values()),
                       "after_imports_MB": sorted(round(v / 1e6) for v in base.values()), "seconds": r["seconds"]}
    return out


class _CountingStore:
    """A zarr store wrapper counting data-chunk requests and the stored bytes they return."""

    def __new__(cls, path: str):
        from zarr.storage import LocalStore, WrapperStore

        class Counting(WrapperStore):
            def __init__(self, store) -> None:
                super().__init__(store)
                self.reads: collections.Counter = collections.Counter()
                self.bytes = 0

            async def get(self, key, prototype, byte_range=None):
                buf = await self._store.get(key, prototype, byte_range)
                if "/c/" in key and key.split("/")[0] in ("image", "cloud_mask", "summary_cloud"):
                    self.reads[key] += 1
                    self.bytes += len(buf) if buf is not None else 0
                return buf

            def _with_store(self, store):
                return Counting(store)

        return Counting(LocalStore(path, read_only=True))


def open_and_subset(src: Path, work: Path) -> dict:
    """Open the full-shape entry vs a 4-scene entry through the catalog; subsets of the full shape."""
    import xarray as xr

    from scibench_data.catalog import open_catalog
    from scibench_data.convert.cloudmask import (
        CloudMaskConversion,
        convert_cloudmask,
        scaffold_cloudmask,
    )
    from scibench_data.subset.cloudmask import Selection, write_subset

    opts = CloudMaskConversion(layout="sen3", progress=False)
    sub = _subfolder(src, 4, work / "open-src")
    full_root, small_root = work / "full-root", work / "small-root"
    for root in (full_root, small_root):
        shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    scaffold_cloudmask(str(sub), str(full_root / "cloudmask_ds2.zarr"), opts)
    scaffold_s = time.perf_counter() - t0
    convert_cloudmask(str(sub), str(small_root / "cloudmask_ds2.zarr"), opts)

    def timed_open(root: Path) -> dict:
        opens, times = [], []
        for _ in range(7):
            t0 = time.perf_counter()
            ds = open_catalog(root=str(root)).cloudmask_ds2.to_dask()
            opens.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _ = ds["time"].values
            times.append(time.perf_counter() - t0)
        return {"scenes": int(ds.sizes["scene"]), "open_s": statistics.median(opens),
                "time_coord_s": statistics.median(times)}

    result = {"scaffold_create_s": scaffold_s, "full_shape": timed_open(full_root), "four_scenes": timed_open(small_root)}
    result["open_ratio"] = result["full_shape"]["open_s"] / result["four_scenes"]["open_s"]

    t = xr.open_zarr(full_root / "cloudmask_ds2.zarr", consolidated=True)["time"].values
    filled = 3266  # scaffold_slots(9800, 4) = [0, 3266, 6533, 9799]
    h, w = GRID
    subsets = {
        "1 scene, 9 ch, 256x256 aligned": dict(scenes="3266", window=f"{min(256, h - 256)}:{min(512, h)},256:512"),
        "1 scene, 9 ch, 256x256 unaligned": dict(scenes="3266", window="30:286,30:286"),
        "1 scene, 2 ch, whole scene": dict(scenes="3266", channels="S1,S7", variables="image"),
        "time range (3 scenes, 1 with data), 3 ch, 512x512": dict(
            time=f"{t[filled - 1]}/{t[filled + 2]}", channels="S1,S2,S3", window=f"0:{min(512, h)},0:{min(512, w)}"),
    }
    rows = {}
    for label, spec in subsets.items():
        store = _CountingStore(str(full_root / "cloudmask_ds2.zarr"))
        sel = Selection.parse(**spec)
        dest = work / "subset.zarr"
        shutil.rmtree(dest, ignore_errors=True)
        report = write_subset(store, dest, sel, progress=False)
        plan = report.plan
        rows[label] = {"scenes": len(plan.scenes), "with_data": len(plan.filled or ()), "chunks_planned": plan.chunks,
                       "chunks_read": sum(store.reads.values()), "bytes_selected": plan.bytes_selected,
                       "bytes_decoded": plan.bytes_decoded, "bytes_read_stored": store.bytes}
    result["subsets"] = rows
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=None, help="working folder (kept; products are reused); default a temp dir")
    ap.add_argument("--products", type=int, default=16, help="products per layout for the throughput runs")
    ap.add_argument("--out", default="benchmarks/results/ds2_scale.json")
    ap.add_argument("--only", default="throughput,ceiling,rss,open",
                    help="sections to run (default all): throughput,ceiling,rss,open")
    ap.add_argument("--grid", default="1200,1500", help=argparse.SUPPRESS)  # smaller only to smoke-test this script
    args = ap.parse_args()
    global GRID
    GRID = tuple(int(v) for v in args.grid.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="ds2_scale-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "loadavg_start": os.getloadavg()}, "grid": list(GRID)}
    hdf = _generate(work, "hdf", args.products)
    sen3 = _generate(work, "sen3", 16)
    sen3_n = _subfolder(sen3, args.products, work / "sen3-n")
    only = set(args.only.split(","))
    out = Path(args.out)
    if out.exists():  # sections not run now keep their last results
        results = {**json.loads(out.read_text()), **results}
    if "throughput" in only:
        results["throughput"] = {"hdf": throughput(hdf, "hdf", work), "sen3": throughput(sen3_n, "sen3", work)}
    if "ceiling" in only:
        results["ceiling"] = {"hdf": ceiling(hdf, "hdf"), "sen3": ceiling(sen3, "sen3")}
    if "rss" in only:
        results["peak_rss"] = peak_rss(sen3, work)
    if "open" in only:
        results["open_subset"] = open_and_subset(sen3, work)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = time.perf_counter() - t_start

    print(f"\nCloudMask DS2 scale benchmark ({os.cpu_count()} cores, load {results['machine']['loadavg_start'][0]:.1f}"
          f" -> {results['machine']['loadavg_end'][0]:.1f})")
    print(f"{'layout':6} {'run':28} {'s':>6} {'products/s':>10} {'MB/s':>7} {'CPU s/product':>13} "
          f"{'cores got':>9} {'% ceiling/core':>14} {'% per core got':>14}")
    for layout, runs in results.get("throughput", {}).items():
        ceil = results["ceiling"][layout]["MBps"]
        for name, r in runs.items():
            if isinstance(r, dict) and "MBps" in r:
                cores = 2 if name.startswith("2") else 1
                print(f"{layout:6} {name:28} {r['seconds']:6.1f} {r['products_per_s']:10.2f} {r['MBps']:7.1f} "
                      f"{r['cpu_s_per_product']:13.2f} {r['cores_obtained']:9.2f} {100 * r['MBps'] / cores / ceil:13.0f}%"
                      f" {100 * r['MBps'] / max(r['cores_obtained'], 1e-9) / ceil:13.0f}%")
            elif isinstance(r, dict):
                print(f"{layout:6} {name:28} {r['seconds']:6.1f} {r['products'] / r['seconds']:10.2f} {'':7} "
                      f"{r['cpu_s_per_product']:13.2f}")
        print(f"{layout:6} {'2 vs 1 worker':28} {runs['scaling_2_vs_1']:6.2f}x   "
              f"ceiling (decode+encode, 1 core): {ceil:.0f} MB/s")
    if "peak_rss" in results:
        print("peak RSS per worker (2 workers, full-size sen3):")
        for n, r in results["peak_rss"].items():
            print(f"  {n:>2} products: {r['peak_rss_MB_per_worker']} MB (after imports {r['after_imports_MB']} MB)")
    if "open_subset" in results:
        report_open_subset(results["open_subset"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {out} in {results['elapsed_s']:.0f} s (work: {work})")


def report_open_subset(o: dict) -> None:
    print(f"open via catalog: full shape ({o['full_shape']['scenes']} scenes) {1e3 * o['full_shape']['open_s']:.1f} ms, "
          f"4 scenes {1e3 * o['four_scenes']['open_s']:.1f} ms (ratio {o['open_ratio']:.2f}); time coordinate "
          f"{1e3 * o['full_shape']['time_coord_s']:.1f} vs {1e3 * o['four_scenes']['time_coord_s']:.1f} ms")
    print(f"{'subset':52} {'chunks plan/read':>16} {'MB selected':>11} {'MB decoded':>10} {'MB read':>8}")
    for label, r in o["subsets"].items():
        print(f"{label:52} {r['chunks_planned']:>7}/{r['chunks_read']:<8} {r['bytes_selected'] / 1e6:11.1f} "
              f"{r['bytes_decoded'] / 1e6:10.1f} {r['bytes_read_stored'] / 1e6:8.1f}")


if __name__ == "__main__":
    main()
