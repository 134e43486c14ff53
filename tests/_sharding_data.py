"""Tiny stores of the three benchmarks and their sharded loaders, for tests/loaders/test_sharding.py and the
processes it starts (imported, not collected)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from _stemdl_data import write_tiny

from loaders.cloudmask import (
    CloudMaskPatches,
    PatchSpec,
    ScenePatchStream,
    patch_loader,
)
from loaders.stemdl import STEMDLClassification, split_indices, stemdl_loader
from loaders.uno import UnoDataset, UnoSource, uno_loader
from scibench_data.synthetic.stemdl import SyntheticSTEMDL

BENCHMARKS = ("cloudmask_fixed", "cloudmask_random", "stemdl", "uno")
BATCH = 4
#: 3 classes x 6 materials x 2 samples of 32x32 (stored at 16x16, 2 samples per chunk).
STEMDL = SyntheticSTEMDL(n_classes=3, materials_per_class=6, samples_per_material=2, pattern=32, samples_per_file=4)


def build_stores(base: Path, cloudmask_store: Path) -> dict[str, str]:
    """STEMDL (2 samples per chunk) and UNO stores under ``base``; the CloudMask store is the session's."""
    from scibench_data.convert.stemdl import STEMDLConversion, convert_stemdl
    from scibench_data.convert.uno import UnoConversion, convert_uno
    from scibench_data.synthetic.uno import SyntheticUno, generate

    raw = write_tiny(base, "raw", STEMDL)
    stemdl = base / "stemdl.zarr"
    assert convert_stemdl(str(raw), str(stemdl), STEMDLConversion(preprocess=True, size=16, sample_chunk=2,
                                                                  files_per_task=4, progress=False)).ok
    cfg = SyntheticUno(n_cells=12, n_drugs=10, n_responses=120, n_genes=8, n_descriptors=6, n_fingerprint_bits=8,
                       seed=3)
    generate(base / "uno_raw", "raw", cfg)
    assert convert_uno(base / "uno_raw", base / "candle_uno.zarr", UnoConversion(progress=False)).ok
    return {"cloudmask": str(cloudmask_store), "stemdl": str(stemdl), "uno_root": str(base)}


def dataset(benchmark: str, stores: dict[str, str]):
    if benchmark.startswith("cloudmask"):
        mode = benchmark.split("_")[1]
        return CloudMaskPatches(stores["cloudmask"], spec=PatchSpec(mode, 32, 5, seed=2))
    if benchmark == "stemdl":
        import zarr

        from scibench_data.strings import decode_flags

        group = zarr.open_group(stores["stemdl"], mode="r")
        idx = split_indices(decode_flags(group["split"][...], group["split"].attrs["flag_meanings"]), "train")
        return STEMDLClassification(stores["stemdl"], idx, group["label"][...][idx], preprocessed=True)
    return UnoDataset(UnoSource(root=stores["uno_root"]), "train")


def loader(benchmark: str, stores: dict[str, str], *, num_workers: int = 0, seed: int = 9, **shard):
    """The benchmark's resumable loader (rank and world size from ``shard`` or the environment)."""
    data = dataset(benchmark, stores)
    if benchmark.startswith("cloudmask"):
        source = ScenePatchStream(data, seed, **shard) if benchmark == "cloudmask_fixed" else data
        extra = {} if benchmark == "cloudmask_fixed" else {"seed": seed, **shard}
        return patch_loader(source, BATCH, num_workers=num_workers, **extra)
    make = stemdl_loader if benchmark == "stemdl" else uno_loader
    return make(data, BATCH, num_workers=num_workers, seed=seed, **shard)


def first_tensor(batch) -> torch.Tensor:
    """The batch's inputs: the tensor that identifies its items."""
    if isinstance(batch, dict):  # UNO: a row is its cell, its drug and its response
        return torch.cat([batch["cell"], batch["drug"], batch["auc"].reshape(-1, 1)], dim=1)
    return batch[0]


def item_ids(benchmark: str, stores: dict[str, str], batches, epoch: int = 0) -> list[int]:
    """Which items of ``epoch`` ``batches`` hold, found by their values among all items read in this process."""
    data = dataset(benchmark, stores)
    data.set_epoch(epoch)
    everything = first_tensor(data.batch(np.arange(len(data))))
    lookup = {hash(row.numpy().tobytes()): i for i, row in enumerate(everything)}
    if len(lookup) != len(data):
        raise AssertionError("test data has duplicate items: cannot tell them apart")
    ids = [lookup.get(hash(row.numpy().tobytes()), -1) for b in batches for row in first_tensor(b)]
    if -1 in ids:
        raise AssertionError(f"{ids.count(-1)} items yielded are none of the {len(data)} items of epoch {epoch}")
    return ids
