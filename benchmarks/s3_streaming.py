"""Patches/s streamed from local Zarr vs loopback S3 (moto_server), with and without the chunk cache.

Not a test. Generates full-size synthetic CloudMask scenes (1200 x 1500), converts them,
publishes them to a moto server started here, then times one epoch of the reference's
fixed 256x256 patches (20 per scene) through a DataLoader for 0 and 2 workers:

    python benchmarks/s3_streaming.py [--scenes 3] [--epochs 2]

Prints a table and writes benchmarks/results/s3_streaming.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([shutil.which("moto_server") or "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def epoch(location, workers: int) -> tuple[int, float]:
    from loaders.cloudmask import (
        CloudMaskPatches,
        PatchSpec,
        ScenePatchStream,
        patch_loader,
    )

    data = CloudMaskPatches(location, spec=PatchSpec(mode="fixed", patch=256))
    # as training uses it: each worker streams its scenes (forkserver workers; fork is unsafe with zarr 3)
    loader = patch_loader(ScenePatchStream(data), batch_size=8, num_workers=workers)
    t0 = time.perf_counter()
    n = sum(img.shape[0] for img, _ in loader)
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per configuration (the cache is warm after the first)")
    args = ap.parse_args()

    import torch

    from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
    from scibench_data.storage.distribution.publish import PublishOptions, publish
    from scibench_data.storage.store.location import StoreLocation
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="s3bench-"))
    proc, endpoint = start_moto()
    rows = []
    try:
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_ENDPOINT_URL=endpoint)
        generate(work / "raw", "hdf", SyntheticCloudMask(n_products=args.scenes, grid=(1200, 1500), seed=0))
        store = work / "cloudmask_ds1.zarr"
        assert convert_cloudmask(str(work / "raw"), str(store), CloudMaskConversion(layout="hdf", progress=False)).ok
        so = {"client_kwargs": {"endpoint_url": endpoint}}
        import s3fs

        s3fs.S3FileSystem(**so).mkdir("bench-bucket")
        t0 = time.perf_counter()
        res = publish("cloudmask_ds1", str(store), "s3://bench-bucket/pub", storage_options=so,
                      options=PublishOptions(progress=False))
        publish_s = time.perf_counter() - t0
        configs = [("local zarr", StoreLocation(str(store))),
                   ("s3 (moto loopback)", StoreLocation(res.url, so)),
                   ("s3 + chunk cache", None)]
        for workers in (0, 2):
            for name, loc in configs:
                if loc is None:
                    loc = StoreLocation(res.url, so, cache_dir=str(work / f"cache-{workers}"))
                for e in range(args.epochs):
                    n, secs = epoch(loc, workers)
                    rows.append({"source": name, "workers": workers, "epoch": e + 1, "patches": n,
                                 "seconds": round(secs, 3), "patches_per_s": round(n / secs, 1)})
                    print(f"{name:20s} workers={workers} epoch {e + 1}: {n / secs:7.1f} patches/s", flush=True)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'source':20s} {'workers':>7s} {'epoch':>5s} {'patches/s':>10s}")
    for r in rows:
        print(f"{r['source']:20s} {r['workers']:7d} {r['epoch']:5d} {r['patches_per_s']:10.1f}")
    out = ROOT / "benchmarks" / "results" / "s3_streaming.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python benchmarks/s3_streaming.py " + " ".join(sys.argv[1:]),
                               "scenes": args.scenes, "grid": [1200, 1500], "patch": 256, "batch_size": 8,
                               "publish": {"objects": res.n_objects, "bytes": res.size_bytes,
                                           "seconds": round(publish_s, 2)},
                               "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                               "rows": rows}, indent=1) + "\n")
    print(f"published {res.n_objects} objects ({res.size_bytes / 1e6:.1f} MB) in {publish_s:.1f} s; wrote {out}")


if __name__ == "__main__":
    main()
