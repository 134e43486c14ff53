"""How fast DataLoader workers deliver their first batch, per start method (issue 17, item 1).

Writes a small synthetic CloudMask store (2 + 1 products of 256 x 320), reads a few patches in
the parent first (as a training script does), then times ``patch_loader(..., num_workers=2)``
from creating the loader to its first batch, and checks every batch against the parent's read.
Each start method runs in a fresh interpreter (a forkserver is started once per process).

    python benchmarks/worker_start.py [--methods fork forkserver]

``forkserver`` here is :func:`loaders.workers.forkserver_context` (torch, zarr and the script
preloaded in the server), the fallback where ``fork`` is not used.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_store(root: Path) -> str:
    from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    generate(root / "raw" / "training", "hdf", SyntheticCloudMask(n_products=2, grid=(256, 320), seed=1))
    generate(root / "raw" / "inference", "hdf", SyntheticCloudMask(n_products=1, grid=(256, 320), seed=2))
    store = str(root / "cloudmask_ds1.zarr")
    if not convert_cloudmask(str(root / "raw"), store, CloudMaskConversion(layout="hdf", progress=False)).ok:
        raise RuntimeError("conversion failed")
    return store


def measure(store: str, method: str) -> tuple[float, int, bool]:
    """(seconds to the first batch, batches, all equal to the parent's read) with ``method``'s workers."""
    from loaders.cloudmask import CloudMaskPatches, PatchSpec, patch_loader
    from loaders.workers import START_ENV, worker_context

    os.environ[START_ENV] = method
    patches = CloudMaskPatches(store, spec=PatchSpec(mode="random", patch=128, patches_per_scene=8))
    expected = [patches[i][0] for i in range(len(patches))]  # the parent reads first
    t0 = time.perf_counter()
    loader = patch_loader(patches, batch_size=4, num_workers=2, shuffle=False,
                          multiprocessing_context=worker_context())
    batches = iter(loader)
    first = next(batches)
    seconds = time.perf_counter() - t0
    images = [first[0], *(b[0] for b in batches)]
    got = np.concatenate([i.numpy() for i in images])
    return seconds, len(images), bool(np.array_equal(got, np.stack([e.numpy() for e in expected])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["fork", "forkserver"])
    parser.add_argument("--store", help=argparse.SUPPRESS)  # the child's: measure one method
    args = parser.parse_args()
    if args.store:
        seconds, n, equal = measure(args.store, args.methods[0])
        print(f"{args.methods[0]:<10} first batch {seconds:.2f} s; {n} batches; equal to the parent's read: {equal}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp))
        for method in args.methods:
            subprocess.run([sys.executable, __file__, "--store", store, "--methods", method], check=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})


if __name__ == "__main__":
    main()
