"""CloudMask data-path performance, measured side by side in one run (issue 8).

On full-size synthetic scenes (1200 x 1500, 9 channels) it measures:

1. time to first batch and epoch time including staging: ours streaming from the
   catalog on loopback S3 (moto) versus the reference way (copy every per-product
   HDF5 file down, then read them);
2. training-patch throughput (9 x 256 x 256 + mask, samples/s, 1 and 2 loader
   workers) in the reference's fixed regime (20 patches per scene) and in a random
   regime (random patches across scenes): our loader on local Zarr and on S3 (with
   and without the chunk cache), the reference approach (h5py reads each
   product's whole arrays, normalises, cuts patches) and xbatcher over the same Zarr;
3. ceilings: decoding exactly the chunks the patch stream touches in a tight loop
   (local), and fetching exactly those objects with concurrent raw GETs (S3);
4. conversion MB/s of this run (the 1-vs-2-process study is ``benchmarks/ds2_scale.py``);
5. storage: bytes of our store versus the original files.

    python benchmarks/performance.py [--scenes 6] [--out benchmarks/results/performance.json]

Prints a table, writes JSON and a plot (``--plot docs/performance.png``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
from _link import read_counters  # benchmarks/_link.py (the script's folder)
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from loaders import decode_pool
from loaders.cloudmask import (
    CloudMaskPatches,
    PatchSpec,
    ScenePatchStream,
    normalise,
    patch_loader,
    plan_patches,
    start_worker_server,
)
from loaders.patches import fixed_windows
from loaders.prefetch import PrefetchLimits
from scibench_data.catalog import entry_location
from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
from scibench_data.parallel import environment
from scibench_data.storage.distribution.local_s3 import moto_server, storage_options
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.regions import chunks_touched
from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

BATCH = 16


# --------------------------------------------------------------------------- the reference approach


def reference_read(path: str) -> tuple[np.ndarray, np.ndarray]:
    """What the reference loader does per product: read whole arrays, normalise, channel-first."""
    with h5py.File(path, "r") as f:
        image = np.concatenate([f["refs"][()], f["bts"][()]], axis=2)
        mask = (f["bayes"][()][..., 0] > 0).astype(np.float32)
    return normalise(np.moveaxis(image, 2, 0)), mask


class ReferenceFixed(IterableDataset):
    """Each worker reads its share of the files once and yields their 20 fixed patches."""

    def __init__(self, files: list[str]) -> None:
        self.files = files

    def __iter__(self):
        info = get_worker_info()
        files = self.files if info is None else self.files[info.id::info.num_workers]
        for path in files:
            image, mask = reference_read(path)
            for win in fixed_windows(*mask.shape):
                ys, xs = win.slices
                yield torch.from_numpy(image[:, ys, xs].copy()), torch.from_numpy(mask[None, ys, xs].copy())


class ReferenceRandom(Dataset):
    """A random patch of a random product per sample: the whole product must be read each time."""

    def __init__(self, files: list[str], items: list) -> None:
        self.files, self.items = files, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        scene, win = self.items[i]
        image, mask = reference_read(self.files[scene])
        ys, xs = win.slices
        return torch.from_numpy(image[:, ys, xs].copy()), torch.from_numpy(mask[None, ys, xs].copy())


class XbatcherPatches(Dataset):
    """xbatcher over the same Zarr: non-overlapping 256 x 256 windows from (0, 0), one scene each."""

    def __init__(self, store: str) -> None:
        self.store = store
        self._gen = None

    def _generator(self):
        if self._gen is None:
            import xarray as xr
            import xbatcher

            ds = xr.open_zarr(self.store)[["image", "cloud_mask"]]
            self._gen = xbatcher.BatchGenerator(ds, input_dims={"scene": 1, "y": 256, "x": 256})
        return self._gen

    def __len__(self) -> int:
        return len(self._generator())

    def __getitem__(self, i: int):
        b = self._generator()[i]
        image = normalise(b["image"].values[0])
        mask = b["cloud_mask"].values[0].astype(np.float32)
        return torch.from_numpy(image), torch.from_numpy(mask[None])

    def __getstate__(self):
        return {"store": self.store, "_gen": None}


# --------------------------------------------------------------------------- measuring


def plain_loader(dataset, workers: int, shuffle: bool) -> DataLoader:
    """How the reference and xbatcher are fed: per-sample items, collated into batches."""
    kwargs = {"multiprocessing_context": "forkserver"} if workers else {}
    return DataLoader(dataset, batch_size=BATCH, num_workers=workers,
                      shuffle=shuffle if not isinstance(dataset, IterableDataset) else None, **kwargs)


def our_loader(dataset, workers: int, shuffle: bool) -> DataLoader:
    """Ours as the docs and the training pipeline use it: whole batches per worker (:func:`patch_loader`)."""
    return patch_loader(dataset, BATCH, num_workers=workers, shuffle=shuffle)


def epoch(loader) -> tuple[float, float, int]:
    """(seconds to first batch, seconds for the epoch, samples) through a DataLoader.

    Worker start-up (forkserver) lands in the first batch; throughput is reported
    for the batches after it (see :func:`steady_rate`)."""
    t0 = time.perf_counter()
    first, n = None, 0
    for image, mask in loader:
        if first is None:
            first = time.perf_counter() - t0
            epoch.first_size = len(image)  # type: ignore[attr-defined]
        n += len(image)
    return first or 0.0, time.perf_counter() - t0, n


class Preloaded(Dataset):
    """No reading at all: copies of one patch, to measure what moving samples through a DataLoader costs."""

    def __init__(self, n: int, batched: bool) -> None:
        self.n, self.batched = n, batched
        self.image = np.random.default_rng(0).random((9, 256, 256), dtype=np.float32)
        self.mask = np.ones((1, 256, 256), np.float32)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if not self.batched:
            return torch.from_numpy(self.image.copy()), torch.from_numpy(self.mask.copy())
        image, mask = torch.empty((len(i), 9, 256, 256)), torch.empty((len(i), 1, 256, 256))
        if get_worker_info() is not None:
            image.share_memory_(), mask.share_memory_()
        image.numpy()[:] = self.image
        mask.numpy()[:] = self.mask
        return image, mask


def steady_rate(first: float, total: float, n: int, first_size: int) -> float:
    """Samples per second after the first batch."""
    return (n - first_size) / (total - first) if total > first and n > first_size else float("nan")


def touched_objects(items: list, store: Path) -> list[list[str]]:
    """The chunk objects (keys under the store) each patch of a stream touches: image tiles and
    mask chunks, by the store's own chunk grids."""
    import zarr

    group = zarr.open_group(store, mode="r")
    _, _, ty, tx = group["image"].chunks
    _, my, mx = group["cloud_mask"].chunks
    out = []
    for scene, win in items:
        (y0, y1), (x0, x1) = (win.y0, win.y0 + win.size), (win.x0, win.x0 + win.size)
        keys = [f"image/c/{scene}/0/{cy}/{cx}" for cy in chunks_touched(y0, y1, ty) for cx in chunks_touched(x0, x1, tx)]
        keys += [f"cloud_mask/c/{scene}/{cy}/{cx}" for cy in chunks_touched(y0, y1, my) for cx in chunks_touched(x0, x1, mx)]
        out.append(keys)
    return out


def decode_ceiling(store: Path, objects: list[list[str]], threads: int = 0) -> dict:
    """Decode exactly the objects the stream touches, as often as it touches them, bytes in memory.

    ``threads`` 0: numcodecs' ``Blosc().decode`` in a loop on this thread (Blosc's own threads as
    it sets them: the issue's "bare blosc decode ceiling"); ``threads`` N: the objects shared out
    over N threads, each decoding with Blosc's threads off (what N cores can decode)."""
    import numcodecs
    import numcodecs.blosc

    blobs = [(store / key).read_bytes() for keys in objects for key in keys]
    codec = numcodecs.Blosc()
    if threads < 1:
        t0 = time.perf_counter()
        out = sum(len(codec.decode(b)) for b in blobs)
        dt = time.perf_counter() - t0
    else:
        from concurrent.futures import ThreadPoolExecutor

        def part(k: int) -> int:  # a pool thread: numcodecs decodes without Blosc's threads there
            return sum(len(codec.decode(b)) for b in blobs[k::threads])

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(part, range(threads)))  # threads started before timing
            t0 = time.perf_counter()
            out = sum(pool.map(part, range(threads)))
            dt = time.perf_counter() - t0
    return {"patches_per_s": len(objects) / dt, "decoded_MB": out / 1e6, "MBps": out / dt / 1e6, "threads": threads}


def get_ceiling(fs, base: str, objects: list[list[str]], concurrency: int = 128) -> dict:
    """Fetch exactly those objects, as often as the stream touches them, with concurrent raw GETs
    (up to ``concurrency`` in flight, s3fs's own batch size) from the same S3 server.

    Not ``fs.cat(paths)``: it fetches each distinct path once, which would count a random
    stream's repeated chunks as free."""
    import asyncio

    from fsspec.asyn import sync

    paths = [f"{base}/{key}" for keys in objects for key in keys]

    async def fetch_all(todo):
        gate = asyncio.Semaphore(concurrency)

        async def one(path):
            async with gate:
                return await fs._cat_file(path)

        return await asyncio.gather(*(one(p) for p in todo))

    sync(fs.loop, fetch_all, paths[:2 * concurrency:16])  # open the connection pool first
    t0 = time.perf_counter()
    got = sync(fs.loop, fetch_all, paths)
    dt = time.perf_counter() - t0
    size = sum(len(v) for v in got)
    return {"patches_per_s": len(objects) / dt, "requests": len(paths), "distinct_objects": len(set(paths)),
            "requests_per_s": len(paths) / dt, "MBps": size / dt / 1e6}


def our_requests_per_patch(regime: str, objects: list[list[str]], seed: int = 0) -> float:
    """S3 requests our loader issues per patch over an epoch.

    Random: each batch fetches the distinct objects of its patches once (``patch_loader``'s
    sampler order, reproduced); fixed: each scene's chunk-aligned crop once (every object of
    the scene's patches, once)."""
    from torch.utils.data import BatchSampler, RandomSampler

    if regime == "fixed":
        return len({key for keys in objects for key in keys}) / len(objects)
    order = BatchSampler(RandomSampler(range(len(objects)), generator=torch.Generator().manual_seed(seed)), BATCH, False)
    return sum(len({key for i in batch for key in objects[i]}) for batch in order) / len(objects)


@contextlib.contextmanager
def link_process(endpoint: str, link: tuple[float, float]):
    """``(url, process)`` of an emulated link (``benchmarks/_link.py``: Mbit/s, RTT ms) in front of
    the S3 endpoint; :func:`_link.read_counters` of the process says what it carried so far."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_link.py")), "--target",
                             endpoint.removeprefix("http://"), "--rate-mbit", str(link[0]), "--rtt-ms", str(link[1])],
                            stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().strip(), proc
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def emulated_link(endpoint: str, link: tuple[float, float] | None):
    """The S3 endpoint behind an emulated link (Mbit/s, RTT ms; :func:`link_process`), or as is."""
    if link is None:
        yield endpoint
        return
    with link_process(endpoint, link) as (url, _):
        yield url


def catalog_location(so: dict):
    """The published S3 catalog and ``cloudmask_ds1``'s location in it, with ``so`` under the catalog's options."""
    import intake

    cat = intake.open_catalog("s3://bench/pub/catalog.yaml", storage_options=so)
    loc = entry_location(cat, "cloudmask_ds1")
    return cat, StoreLocation(loc.url, {**so, **loc.storage_options})


def staging(endpoint: str, local_raw: Path, workers: int) -> dict:
    """Time to first batch and epoch time including staging, ours against the reference's, through ``endpoint``.

    Ours: one stopwatch from opening the S3 catalog to the first batch out of a DataLoader with
    workers (fixed regime, streamed), then on to the end of the epoch. The reference: copy every
    HDF5 product down (``aws s3 sync``'s job), then read them with its loader."""
    import s3fs

    so = storage_options(endpoint)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    t0 = time.perf_counter()
    cat, loc = catalog_location(so)
    cat.cloudmask_ds1.to_dask()
    data = CloudMaskPatches(loc, spec=PatchSpec("fixed"))
    open_s = time.perf_counter() - t0
    first, ep, _ = epoch(our_loader(ScenePatchStream(data, seed=3), workers, shuffle=False))
    out = {"ours_open_s": open_s, "ours_first_batch_s": open_s + first, "ours_epoch_s": open_s + ep}
    fs = s3fs.S3FileSystem(**so, skip_instance_cache=True)
    t0 = time.perf_counter()
    fs.get("bench/raw/", str(local_raw) + "/", recursive=True)
    stage = time.perf_counter() - t0
    staged = sorted(str(p) for p in local_raw.rglob("*.hdf"))
    first_r, ep_r, _ = epoch(plain_loader(ReferenceFixed(staged), workers, shuffle=False))
    out.update({"reference_staging_s": stage, "reference_first_batch_s": stage + first_r,
                "reference_epoch_s": stage + ep_r, "staged_MB": dir_bytes(local_raw) / 1e6})
    return out


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=6)
    ap.add_argument("--workers", default="0,1,2",
                    help="loader worker counts to compare (default 0,1,2; 0 = in the main process)")
    ap.add_argument("--repeats", type=int, default=3, help="epochs per throughput cell; the median is reported")
    ap.add_argument("--link-mbit", type=float, default=1000.0,
                    help="bandwidth of the emulated link for the staging comparison (default 1000 Mbit/s)")
    ap.add_argument("--link-rtt-ms", type=float, default=10.0, help="its round-trip time (default 10 ms)")
    ap.add_argument("--local-only", action="store_true",
                    help="only the local patch throughput: ours on local Zarr, the reference and the decode "
                         "ceiling, side by side (no S3, staging, xbatcher or transport rows; minutes, not tens)")
    ap.add_argument("--link-throughput", action="store_true",
                    help="only the random regime from S3 through the emulated link (--link-mbit, --link-rtt-ms) with "
                         "the largest --workers: the bytes on the wire (counted by the link) and the payload used, as "
                         "fractions of the link's capacity, prefetch off and on side by side in each repeat")
    ap.add_argument("--out", default="benchmarks/results/performance.json")
    ap.add_argument("--plot", default=None, help="also write a bar chart PNG here")
    args = ap.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="scibench-perf-"))
    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version()}, "scenes": args.scenes, "rows": []}
    rows = results["rows"]
    try:
        raw = tmp / "raw"
        generate(raw, "hdf", SyntheticCloudMask(n_products=args.scenes, seed=21))
        files = sorted(str(p) for p in raw.glob("*.hdf"))
        store = tmp / "cloudmask_ds1.zarr"
        t0 = time.perf_counter()
        convert_cloudmask(str(raw), str(store), CloudMaskConversion(layout="hdf", progress=False))
        conv_s = time.perf_counter() - t0
        raw_bytes, store_bytes = dir_bytes(raw), dir_bytes(store)
        results["conversion"] = {"layout": "hdf", "seconds": conv_s, "MBps": raw_bytes / conv_s / 1e6}
        sen3 = tmp / "sen3"
        generate(sen3, "sen3", SyntheticCloudMask(n_products=2, seed=22))
        sen3_store = tmp / "sen3.zarr"
        convert_cloudmask(str(sen3), str(sen3_store), CloudMaskConversion(layout="sen3", progress=False))
        results["storage"] = [
            {"data set": "cloudmask (hdf layout)", "original_bytes": raw_bytes, "store_bytes": store_bytes},
            {"data set": "cloudmask (sen3 layout)", "original_bytes": dir_bytes(sen3), "store_bytes": dir_bytes(sen3_store)},
        ]

        if args.local_only:
            local_only(args, results, store, files, worker_counts)
            return finish(results, args)
        if args.link_throughput:
            results["link"] = link_throughput(args, store, max(worker_counts))
            return finish(results, args)
        with moto_server() as endpoint:
            so = storage_options(endpoint)
            import s3fs

            fs = s3fs.S3FileSystem(**so)
            fs.mkdir("bench")
            fs.put(str(raw) + "/", "bench/raw/", recursive=True)
            from scibench_data.storage.distribution.publish import (
                PublishOptions,
                publish,
            )

            publish("cloudmask_ds1", StoreLocation(str(store)), "s3://bench/pub", storage_options=so,
                    options=PublishOptions(progress=False))
            os.environ.update({"AWS_ACCESS_KEY_ID": so["key"], "AWS_SECRET_ACCESS_KEY": so["secret"],
                               "AWS_ENDPOINT_URL": endpoint})
            # 1. time to first batch and epoch including staging: one stopwatch from opening the
            # catalog to the first batch out of a DataLoader with workers, then on to the epoch's end
            workers = max(worker_counts)
            # the forkserver both loaders' workers fork from: started once per process (torch and
            # zarr preloaded), timed apart so neither loader's first batch carries it alone
            t0 = time.perf_counter()
            start_worker_server(wait=True)
            worker_server_s = time.perf_counter() - t0
            results["staging"] = {"workers": workers, "worker_server_start_s": worker_server_s, "links": {}}
            for label, link in (("loopback", None), (f"{args.link_mbit:g} Mbit/s, {args.link_rtt_ms:g} ms RTT",
                                                      (args.link_mbit, args.link_rtt_ms))):
                with emulated_link(endpoint, link) as link_endpoint:
                    results["staging"]["links"][label] = staging(link_endpoint, tmp / f"staged-{len(results['staging']['links'])}",
                                                                 workers)
                print(f"staging | {label:<28} | {results['staging']['links'][label]}", flush=True)
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            # in-process (what an interactive user waits for): catalog -> lazy dataset -> a batch of 16
            t0 = time.perf_counter()
            _, loc = catalog_location(so)
            data = CloudMaskPatches(loc, spec=PatchSpec("fixed"))
            data[0]
            results["staging"]["ours_first_patch_s"] = time.perf_counter() - t0
            data[list(range(1, BATCH + 1))]
            results["staging"]["ours_first_batch_in_process_s"] = time.perf_counter() - t0

            # 2. throughput
            h, w = 1200, 1500
            spec_random = PatchSpec("random", 256, 20, seed=3)
            rand_items = plan_patches(range(args.scenes), (h, w), spec_random)
            rng = np.random.default_rng(0)
            rand_items = [rand_items[i] for i in rng.permutation(len(rand_items))]  # across scenes
            cache = tmp / "cache"
            loaders = {
                "ours, local Zarr": lambda spec: CloudMaskPatches(str(store), spec=spec),
                "ours, S3": lambda spec: CloudMaskPatches(loc, spec=spec),
                "ours, S3 + cache (warm)": lambda spec: CloudMaskPatches(
                    StoreLocation(loc.url, loc.storage_options, cache_dir=str(cache)), spec=spec),
                "reference (h5py whole product)": None,
                "xbatcher, local Zarr": None,
            }
            for regime in ("fixed", "random"):
                spec = PatchSpec("fixed") if regime == "fixed" else spec_random
                for name, make in loaders.items():
                    for workers in worker_counts:
                        if name.startswith("reference"):
                            ds = ReferenceFixed(files) if regime == "fixed" else ReferenceRandom(files, rand_items)
                        elif name.startswith("xbatcher"):
                            ds = XbatcherPatches(str(store))
                        else:
                            ds = make(spec)
                            if regime == "random":
                                ds.items = rand_items
                            else:  # each worker streams its share of scenes, one crop read per scene
                                ds = ScenePatchStream(ds, seed=3)
                            if "cache" in name:
                                epoch(our_loader(ds, workers, shuffle=False))  # warm the cache
                        make_loader = plain_loader if make is None else our_loader
                        runs = []  # the median of --repeats epochs: the machine is shared and noisy
                        for _ in range(args.repeats):
                            first, secs, n = epoch(make_loader(ds, workers, shuffle=regime == "random"))
                            runs.append((steady_rate(first, secs, n, epoch.first_size), first, secs))  # type: ignore[attr-defined]
                        rate, first, secs = sorted(runs)[len(runs) // 2]
                        rows.append({"regime": regime, "loader": name, "workers": workers, "samples_per_s": rate,
                                     "first_batch_s": first, "epoch_s": secs, "samples": n,
                                     "all_samples_per_s": [r[0] for r in runs]})
                        print(f"{regime:>6} | {name:<32} | {workers} workers | {rate:8.1f} samples/s "
                              f"(first batch {first:.1f} s)", flush=True)

            # what moving samples from workers to the main process costs, with no reading at all
            results["transport"] = []
            for workers in worker_counts:
                for how, ds, make_loader in (("per-sample items, collated", Preloaded(len(rand_items), False), plain_loader),
                                             ("whole batches in shared memory", Preloaded(len(rand_items), True), our_loader)):
                    first, secs, n = epoch(make_loader(ds, workers, shuffle=False))
                    rate = steady_rate(first, secs, n, epoch.first_size)  # type: ignore[attr-defined]
                    results["transport"].append({"how": how, "workers": workers, "samples_per_s": rate})
                    print(f"transport | {how:<32} | {workers} workers | {rate:8.1f} samples/s", flush=True)

            # 3. ceilings, for the same two patch streams
            results["ceilings"] = {}
            for regime, items in (("fixed", plan_patches(range(args.scenes), (h, w), PatchSpec("fixed"))),
                                  ("random", rand_items)):
                objects = touched_objects(items, store)
                results.setdefault("requests_per_patch", {})[regime] = {
                    "per_patch_objects": sum(map(len, objects)) / len(items), "ours": our_requests_per_patch(regime, objects)}
                results["ceilings"][regime] = {
                    "decode_local": decode_ceiling(store, objects),
                    "get_s3": get_ceiling(fs, loc.url.removeprefix("s3://"), objects),
                }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish(results, args)


def random_items(scenes: int) -> list:
    """The random regime's patches: 20 random windows per scene, shuffled across scenes."""
    items = plan_patches(range(scenes), (1200, 1500), PatchSpec("random", 256, 20, seed=3))
    return [items[i] for i in np.random.default_rng(0).permutation(len(items))]


def local_only(args, results: dict, store: Path, files: list[str], worker_counts: list[int]) -> None:
    """Ours on local Zarr, the reference and the decode ceiling, interleaved per repeat (``--local-only``).

    Each repeat measures the ceiling, ours and the reference back to back, so each ratio is
    taken under the same machine load; the median ratio over repeats is reported."""
    rand_items = random_items(args.scenes)
    fixed_items = plan_patches(range(args.scenes), (1200, 1500), PatchSpec("fixed"))
    rows, results["ceilings"], results["local_repeats"] = results["rows"], {}, []
    decode_threads = decode_pool.threads()  # what ours decodes on with workers=0 (loaders/decode_pool.py)
    results["decode_threads"] = decode_threads
    results["load_average_before"] = os.getloadavg()
    for regime, items in (("fixed", fixed_items), ("random", rand_items)):
        objects = touched_objects(items, store)
        for workers in worker_counts:
            cells: dict[str, list[float]] = {"ceiling": [], "ceiling_threads": [], "ours": [], "ours_1_thread": [],
                                             "reference": []}
            for _ in range(args.repeats):
                cells["ceiling"].append(decode_ceiling(store, objects)["patches_per_s"])
                # the same decodes shared over as many threads as our loader decodes on in this process
                # (workers=0) or as there are worker processes: what the cores it uses could decode
                cells["ceiling_threads"].append(decode_ceiling(store, objects, (workers or decode_threads))["patches_per_s"])
                for cell, threads in (("ours", None), ("ours_1_thread", "1")):  # in-process: the decode pool, then without
                    if cell == "ours_1_thread" and workers:
                        cells[cell].append(float("nan"))  # a DataLoader worker decodes on its own thread anyway
                        continue
                    ds = CloudMaskPatches(str(store), spec=PatchSpec("fixed") if regime == "fixed" else PatchSpec("random", 256, 20, seed=3))
                    if regime == "random":
                        ds.items = rand_items
                    else:
                        ds = ScenePatchStream(ds, seed=3)
                    with environment({decode_pool.THREADS_ENV: threads}) if threads else contextlib.nullcontext():
                        first, secs, n = epoch(our_loader(ds, workers, shuffle=regime == "random"))
                    cells[cell].append(steady_rate(first, secs, n, epoch.first_size))  # type: ignore[attr-defined]
                ref = ReferenceFixed(files) if regime == "fixed" else ReferenceRandom(files, rand_items)
                first, secs, n = epoch(plain_loader(ref, workers, shuffle=regime == "random"))
                cells["reference"].append(steady_rate(first, secs, n, epoch.first_size))  # type: ignore[attr-defined]
                rep = {k: v[-1] for k, v in cells.items()}
                results["local_repeats"].append({"regime": regime, "workers": workers, **rep, "load": os.getloadavg()[0]})
                print(f"{regime:>6} {workers}w | ceiling {rep['ceiling']:7.1f} | ours {rep['ours']:7.1f} "
                      f"({100 * rep['ours'] / rep['ceiling']:5.1f}% of the ceiling, "
                      f"{100 * rep['ours'] / rep['ceiling_threads']:5.1f}% of {(workers or decode_threads)} threads' "
                      f"{rep['ceiling_threads']:6.1f}) | ours on 1 decode thread {rep['ours_1_thread']:7.1f} "
                      f"({100 * rep['ours_1_thread'] / rep['ceiling']:5.1f}%) | reference {rep['reference']:6.1f} "
                      f"(ours {rep['ours'] / rep['reference']:5.1f}x) | load {os.getloadavg()[0]:.1f}", flush=True)
            for name, key in (("ours, local Zarr", "ours"), ("ours, local Zarr, 1 decode thread", "ours_1_thread"),
                              ("reference (h5py whole product)", "reference")):
                rows.append({"regime": regime, "loader": name, "workers": workers,
                             "samples_per_s": float(np.median(cells[key])), "all_samples_per_s": cells[key]})
            results["ceilings"].setdefault(regime, {})["decode_local"] = {"patches_per_s": float(np.median(cells["ceiling"]))}
            results["ceilings"][regime][f"decode_local_{workers}w_threads"] = {
                "patches_per_s": float(np.median(cells["ceiling_threads"])), "threads": (workers or decode_threads)}
    results["load_average_after"] = os.getloadavg()


def batch_payload(store: Path, data: CloudMaskPatches, stream: ScenePatchStream) -> list[int]:
    """Bytes each batch of ``stream`` fetches: its distinct chunk objects (one GET each), by their sizes."""
    objects = touched_objects(data.items, store)
    return [sum((store / key).stat().st_size for key in {key for i in batch for key in objects[int(i)]})
            for batch in stream.batches()]


def link_throughput(args, store: Path, workers: int) -> dict:
    """The random regime from S3 through the emulated link, ``workers`` DataLoader workers.

    Wire: the bytes the link carried towards the client (``benchmarks/_link.py`` counts them:
    responses with their HTTP headers, a chunk fetched twice counted twice), from the first
    batch to the last, over that time. Payload: the bytes of the chunk objects each batch uses
    (its distinct chunks), over the same time (the first batch's bytes left out, as its time
    is); a worker does not fetch again a chunk it kept decoded from its previous batch, so
    payload can exceed the link. Beside them, through the same link and server, concurrent
    raw GETs of the same objects (what the link and the server deliver with nothing else to do)."""
    import s3fs

    from scibench_data.storage.distribution.publish import PublishOptions, publish

    rate = args.link_mbit * 1e6 / 8
    out: dict = {"link_mbit": args.link_mbit, "rtt_ms": args.link_rtt_ms, "workers": workers, "epochs": [],
                 "load_average_before": os.getloadavg()}
    with moto_server() as endpoint:
        so = storage_options(endpoint)
        s3fs.S3FileSystem(**so).mkdir("bench")
        publish("cloudmask_ds1", StoreLocation(str(store)), "s3://bench/pub", storage_options=so,
                options=PublishOptions(progress=False))
        with link_process(endpoint, (args.link_mbit, args.link_rtt_ms)) as (link, proc):
            lso = storage_options(link)
            os.environ.update({"AWS_ACCESS_KEY_ID": so["key"], "AWS_SECRET_ACCESS_KEY": so["secret"], "AWS_ENDPOINT_URL": link})
            start_worker_server(wait=True)
            _, loc = catalog_location(lso)
            data = CloudMaskPatches(loc, spec=PatchSpec("random", 256, 20, seed=3))
            data.items = random_items(args.scenes)
            stream = ScenePatchStream(data, seed=0)
            sizes = batch_payload(store, data, stream)
            for repeat, prefetch in itertools.product(range(args.repeats), ("off", "on")):  # side by side
                data.ahead = PrefetchLimits() if prefetch == "on" else None  # reaches the workers with the dataset
                loader = patch_loader(stream, BATCH, num_workers=workers, shuffle=True)
                start = read_counters(proc)
                t0, first, n = time.perf_counter(), None, 0
                for _batch in loader:
                    n += 1
                    if first is None:
                        first, at_first = time.perf_counter(), read_counters(proc)
                t_end = time.perf_counter()
                dt, end = t_end - first, read_counters(proc)
                payload = sum(sizes) - sizes[0]  # batches come in order; the first one's time is left out
                wire = end.down_bytes - at_first.down_bytes
                out["epochs"].append({"prefetch": prefetch, "repeat": repeat, "seconds_after_first_batch": dt, "first_batch_s": first - t0, "batches": n,
                                      "payload_MB": payload / 1e6, "payload_MBps": payload / dt / 1e6,
                                      "fraction_of_link": payload / dt / rate,
                                      "wire_MB": wire / 1e6, "wire_MBps": wire / dt / 1e6, "wire_fraction_of_link": wire / dt / rate,
                                      "epoch_s": t_end - t0, "epoch_wire_MB": (end.down_bytes - start.down_bytes) / 1e6,
                                      "epoch_wire_fraction_of_link": (end.down_bytes - start.down_bytes) / (t_end - t0) / rate,
                                      "epoch_payload_MB": sum(sizes) / 1e6,
                                      "epoch_connections": end.connections - start.connections,
                                      "load": os.getloadavg()[0]})
                print(f"link | {workers} workers | prefetch {prefetch:>3} | wire {wire / dt / 1e6:6.1f} MB/s = {100 * wire / dt / rate:5.1f}% "
                      f"of {args.link_mbit:g} Mbit/s | payload {payload / dt / 1e6:6.1f} MB/s = {100 * payload / dt / rate:5.1f}% "
                      f"| epoch: {(end.down_bytes - start.down_bytes) / 1e6:.0f} MB on the wire for {sum(sizes) / 1e6:.0f} MB "
                      f"of chunks used in {t_end - t0:.2f} s (first batch {first - t0:.2f} s) = "
                      f"{100 * (end.down_bytes - start.down_bytes) / (t_end - t0) / rate:.1f}% | load {os.getloadavg()[0]:.1f}",
                      flush=True)
            fs = s3fs.S3FileSystem(**lso, skip_instance_cache=True)
            objects = touched_objects(data.items, store)
            per_batch = [sorted({key for i in batch for key in objects[int(i)]}) for batch in stream.batches()]
            before = read_counters(proc)
            raw = get_ceiling(fs, loc.url.removeprefix("s3://"), per_batch)
            raw["wire_MB_with_warmup"] = (read_counters(proc).down_bytes - before.down_bytes) / 1e6
            out["raw_get_through_link"] = raw
            print(f"link | raw concurrent GETs of the same objects through the link: {raw['MBps']:.1f} MB/s = "
                  f"{100 * raw['MBps'] * 1e6 / rate:.1f}% of the link", flush=True)
        fs = s3fs.S3FileSystem(**so, skip_instance_cache=True)
        out["raw_get_loopback"] = get_ceiling(fs, loc.url.removeprefix("s3://"), per_batch)
        print(f"link | the same GETs on loopback (no link): {out['raw_get_loopback']['MBps']:.1f} MB/s", flush=True)
    out["load_average_after"] = os.getloadavg()
    return out


def finish(results: dict, args) -> None:
    if "link" in results:
        lk = results["link"]
        print(f"\nrandom regime over {lk['link_mbit']:g} Mbit/s, {lk['rtt_ms']:g} ms with {lk['workers']} workers "
              "(% of the link's capacity, from the first batch to the last; per epoch, then the median):")
        for prefetch in ("off", "on"):
            eps = [e for e in lk["epochs"] if e["prefetch"] == prefetch]
            for key, label in (("wire_fraction_of_link", "wire"), ("fraction_of_link", "payload"),
                               ("epoch_wire_fraction_of_link", "wire over the whole epoch (start-up included)")):
                fr = [e[key] for e in eps]
                print(f"  prefetch {prefetch:>3}: {label}: {', '.join(f'{100 * f:.1f}%' for f in fr)} "
                      f"(median {100 * np.median(fr):.1f}%)")
        on = {e["repeat"]: e for e in lk["epochs"] if e["prefetch"] == "on"}
        ratios = [on[e["repeat"]]["wire_MBps"] / e["wire_MBps"] for e in lk["epochs"] if e["prefetch"] == "off"]
        print(f"  wire MB/s with prefetch / without, per repeat (back to back): {', '.join(f'{r:.2f}' for r in ratios)}")
        ratios = [e["epoch_s"] / on[e["repeat"]]["epoch_s"] for e in lk["epochs"] if e["prefetch"] == "off"]
        print(f"  epoch time without prefetch / with, per repeat: {', '.join(f'{r:.2f}' for r in ratios)}")
        print(f"  raw concurrent GETs through the link {100 * lk['raw_get_through_link']['MBps'] * 1e6 / (lk['link_mbit'] * 1e6 / 8):.1f}%, "
              f"on loopback {lk['raw_get_loopback']['MBps']:.1f} MB/s; load average before {lk['load_average_before']}, "
              f"after {lk['load_average_after']}")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        return
    report(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")


def _rate(rows, regime, loader, workers):
    for r in rows:
        if (r["regime"], r["loader"], r["workers"]) == (regime, loader, workers):
            return r["samples_per_s"]
    return float("nan")


def report(results: dict) -> None:
    rows = results["rows"]
    workers = sorted({r["workers"] for r in rows})
    print(f"\nCloudMask patch throughput, samples/s ({results['scenes']} full-size scenes, batch {BATCH})")
    loaders = list(dict.fromkeys(r["loader"] for r in rows))
    print(f"{'loader':<34}" + "".join(f"{f'{reg} {w}w':>14}" for reg in ("fixed", "random") for w in workers))
    for name in loaders:
        print(f"{name:<34}" + "".join(f"{_rate(rows, reg, name, w):>14.1f}" for reg in ("fixed", "random") for w in workers))
    print("\nratios (same run)")
    for reg in ("fixed", "random"):
        for w in workers:
            ours = _rate(rows, reg, "ours, local Zarr", w)
            ref = _rate(rows, reg, "reference (h5py whole product)", w)
            s3 = _rate(rows, reg, "ours, S3", w)
            print(f"  {reg:>6} {w}w: ours local / reference = {ours / ref:6.1f}x, ours S3 / reference = {s3 / ref:6.1f}x")
    for reg, c in results["ceilings"].items():
        dec = c["decode_local"]["patches_per_s"]
        line = (f"  {reg:>6}: decode ceiling {dec:7.1f} patches/s; ours local "
                + ", ".join(f"{w}w {100 * _rate(rows, reg, 'ours, local Zarr', w) / dec:5.1f}%" for w in workers))
        if "get_s3" in c:
            get = c["get_s3"]["patches_per_s"]
            line += (f" | raw-GET ceiling {get:7.1f} patches/s; ours S3 "
                     + ", ".join(f"{w}w {100 * _rate(rows, reg, 'ours, S3', w) / get:5.1f}%" for w in workers))
        print(line)
    if "local_repeats" in results:
        print("  (medians of the repeats; per repeat, measured back to back:)")
        for regime in ("fixed", "random"):
            for w in workers:
                reps = [r for r in results["local_repeats"] if (r["regime"], r["workers"]) == (regime, w)]
                print(f"  {regime:>6} {w}w: % of ceiling per repeat "
                      + " ".join(f"{100 * r['ours'] / r['ceiling']:.0f}" for r in reps)
                      + f" (median {np.median([100 * r['ours'] / r['ceiling'] for r in reps]):.0f}%); % of the threads' ceiling "
                      + " ".join(f"{100 * r['ours'] / r['ceiling_threads']:.0f}" for r in reps)
                      + f" (median {np.median([100 * r['ours'] / r['ceiling_threads'] for r in reps]):.0f}%); x reference per repeat "
                      + " ".join(f"{r['ours'] / r['reference']:.1f}" for r in reps)
                      + f" (median {np.median([r['ours'] / r['reference'] for r in reps]):.1f}x)")
                if reps and not w:
                    print(f"  {regime:>6} {w}w, 1 decode thread: % of ceiling per repeat "
                          + " ".join(f"{100 * r['ours_1_thread'] / r['ceiling']:.0f}" for r in reps)
                          + f" (median {np.median([100 * r['ours_1_thread'] / r['ceiling'] for r in reps]):.0f}%)")
        print(f"  load average before {results['load_average_before']}, after {results['load_average_after']}")
        return
    for reg, r in results.get("requests_per_patch", {}).items():
        get = results["ceilings"][reg]["get_s3"]["requests_per_s"]
        print(f"  {reg:>6}: S3 requests per patch: {r['per_patch_objects']:.1f} touched, ours {r['ours']:.2f} "
              f"(one fetch per distinct chunk per batch/scene); server raw GET rate {get:.0f}/s, ours "
              + ", ".join(f"{w}w {r['ours'] * _rate(rows, reg, 'ours, S3', w):.0f}/s" for w in workers))
    print("\nDataLoader transport alone (no reading), samples/s")
    for t in results.get("transport", []):
        print(f"  {t['how']:<34} {t['workers']} workers {t['samples_per_s']:8.1f}")
    st = results["staging"]
    print(f"\nS3 catalog -> lazy dataset {st['links']['loopback']['ours_open_s']:.2f} s; in-process: first patch {st['ours_first_patch_s']:.2f} s, "
          f"first batch of {BATCH} {st['ours_first_batch_in_process_s']:.2f} s")
    print(f"worker server (forkserver, torch + zarr preloaded) started once in {st['worker_server_start_s']:.2f} s, "
          "before both loaders")
    for label, r in st["links"].items():
        print(f"staging over {label} ({st['workers']} workers): ours from the S3 catalog: first batch "
              f"{r['ours_first_batch_s']:.2f} s, epoch {r['ours_epoch_s']:.1f} s; reference: copy {r['staged_MB']:.0f} MB "
              f"{r['reference_staging_s']:.1f} s, first batch {r['reference_first_batch_s']:.2f} s, "
              f"epoch {r['reference_epoch_s']:.1f} s ({r['reference_epoch_s'] / r['ours_epoch_s']:.1f}x ours)")
    for s in results["storage"]:
        print(f"storage {s['data set']}: original {s['original_bytes'] / 1e6:.0f} MB, store {s['store_bytes'] / 1e6:.0f} MB "
              f"({s['store_bytes'] / s['original_bytes']:.2f}x)")
    c = results["conversion"]
    print(f"conversion (threads, this run): {c['MBps']:.0f} MB/s of HDF5 input")


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    loaders = list(dict.fromkeys(r["loader"] for r in rows))
    workers = sorted({r["workers"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, reg in zip(axes, ("fixed", "random")):
        x = np.arange(len(loaders))
        for k, w in enumerate(workers):
            ax.bar(x + k * 0.8 / len(workers), [_rate(rows, reg, n, w) for n in loaders], 0.8 / len(workers),
                   label=f"{w} worker(s)")
        ax.axhline(results["ceilings"][reg]["decode_local"]["patches_per_s"], ls="--", c="k", lw=1, label="decode ceiling")
        ax.axhline(results["ceilings"][reg]["get_s3"]["patches_per_s"], ls=":", c="r", lw=1, label="S3 raw-GET ceiling")
        ax.set_xticks(x + 0.4 - 0.4 / len(workers), [n.replace(", ", "\n").replace(" (", "\n(") for n in loaders], fontsize=7)
        ax.set_yscale("log")
        ax.set_title(f"{reg} patches (256x256x9)")
        ax.set_ylabel("samples/s")
        ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
