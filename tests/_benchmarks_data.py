"""Tiny catalog roots for the tests/test_benchmarks_*.py modules (imported, not collected).

Each root is built once per test session under pytest's base temporary folder, so the
modules share it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _once(tmp_path_factory: pytest.TempPathFactory, name: str) -> tuple[Path, bool]:
    base = tmp_path_factory.getbasetemp() / name
    done = base / ".done"
    return base, done.exists()


def cloudmask_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/cloudmask_ds1.zarr``: 2 training + 2 inference products of 64 x 96 (the test split is 2 scenes)."""
    from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    base, ready = _once(tmp_path_factory, "bench_cloudmask")
    if not ready:
        generate(base / "raw" / "training", "hdf", SyntheticCloudMask(n_products=2, grid=(64, 96), seed=21))
        generate(base / "raw" / "inference", "hdf", SyntheticCloudMask(n_products=2, grid=(64, 96), seed=22))
        report = convert_cloudmask(str(base / "raw"), str(base / "root" / "cloudmask_ds1.zarr"),
                                   CloudMaskConversion(layout="hdf", progress=False))
        if not report.ok:
            raise RuntimeError(report.lines())
        (base / ".done").touch()
    return base / "root"


def stemdl_uno_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/{stemdl,stemdl_reconstruction,candle_uno}.zarr`` from the other modules' tiny generators."""
    from _stemdl_data import TINY, write_tiny

    from scibench_data.convert.stemdl import STEMDLConversion, convert_stemdl
    from scibench_data.convert.uno import UnoConversion, convert_uno
    from scibench_data.synthetic.uno import SyntheticUno, generate

    base, ready = _once(tmp_path_factory, "bench_stemdl_uno")
    if not ready:
        src = write_tiny(base, "raw", TINY)
        for entry, pre in (("stemdl", True), ("stemdl_reconstruction", False)):
            report = convert_stemdl(str(src), str(base / "root" / f"{entry}.zarr"),
                                    STEMDLConversion(preprocess=pre, size=32, progress=False))
            if not report.ok:
                raise RuntimeError(report.lines())
        generate(base / "uno_raw", "raw", SyntheticUno(n_cells=12, n_drugs=10, n_responses=300, n_genes=8,
                                                       n_descriptors=6, n_fingerprint_bits=16))
        report = convert_uno(str(base / "uno_raw"), str(base / "root" / "candle_uno.zarr"), UnoConversion(progress=False))
        if not report.ok:
            raise RuntimeError(report.lines())
        (base / ".done").touch()
    return base / "root"


def image_stats(path: Path) -> tuple[tuple[int, ...], float]:
    """(shape, pixel variance) of a PNG, read back as an image."""
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))
    return img.shape, float(np.var(img[..., :3]))
