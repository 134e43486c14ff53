"""CloudMask patch loader: normalisation, windows, NumPy batches, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch.utils.data import DataLoader

from loaders.cloudmask import (
    CloudMaskPatches,
    PatchSpec,
    normalise,
    numpy_batches,
    read_scene,
)


def test_normalisation_is_the_references():
    img = np.zeros((9, 2, 2), np.float32)
    img[:6] = 0.7
    img[6:] = 292.0
    img[0, 0, 0] = np.nan
    out = normalise(img)
    np.testing.assert_allclose(out[1:6], 0.2, rtol=1e-6)
    np.testing.assert_allclose(out[6:], 1.0, rtol=1e-6)
    assert out[0, 0, 0] == 0.0 and out.dtype == np.float32


def test_patches_equal_the_store_values(cloudmask_stores):
    ds = xr.open_zarr(cloudmask_stores["hdf"])
    data = CloudMaskPatches(str(cloudmask_stores["hdf"]), scenes=[2, 0], spec=PatchSpec("random", 32, 5, seed=4),
                            as_torch=False)
    assert len(data) == 10
    for i in (0, 7):
        scene, win = data.items[i]
        image, mask = data[i]
        ys, xs = win.slices
        np.testing.assert_array_equal(image, normalise(ds["image"][scene, :, ys, xs].values))
        np.testing.assert_array_equal(mask[0], ds["cloud_mask"][scene, ys, xs].values.astype(np.float32))
    first = list(data.items)
    data.set_epoch(1)
    assert data.items != first  # new random windows each epoch
    data.set_epoch(0)
    assert data.items == first  # ... reproducibly


def test_a_datasets_patches_can_still_be_set_for_its_epoch(cloudmask_stores):
    """benchmarks/performance.py sets ``data.items`` (the reference's patch list); once ``items`` became
    a property (constructors read nothing) that raised "property 'items' ... has no setter"."""
    data = CloudMaskPatches(str(cloudmask_stores["hdf"]), scenes=[2, 0], spec=PatchSpec("random", 32, 5, seed=4),
                            as_torch=False)
    chosen = list(reversed(data.items))[:3]
    data.items = chosen
    assert data.items == chosen and len(data) == 3
    scene, win = chosen[1]
    image, _ = data[1]
    ys, xs = win.slices
    want = xr.open_zarr(cloudmask_stores["hdf"])["image"][scene, :, ys, xs].values
    np.testing.assert_array_equal(image, normalise(want))


def test_fixed_mode_uses_the_reference_crop(cloudmask_stores):
    data = CloudMaskPatches(str(cloudmask_stores["hdf"]), spec=PatchSpec("fixed", 32))
    # 64x96 scene, 32 patches: 2 x 3 per scene, 3 scenes
    assert len(data) == 18
    image, mask = data[0]
    assert image.shape == (9, 32, 32) and mask.shape == (1, 32, 32) and image.dtype == torch.float32
    # patches cut from the once-per-scene crop equal direct reads, in any order across scenes
    ds = xr.open_zarr(cloudmask_stores["hdf"])
    for i in (17, 0, 9, 8, 3):
        scene, win = data.items[i]
        ys, xs = win.slices
        image, mask = data[i]
        np.testing.assert_array_equal(image.numpy(), normalise(ds["image"][scene, :, ys, xs].values))
        np.testing.assert_array_equal(mask[0].numpy(), ds["cloud_mask"][scene, ys, xs].values.astype(np.float32))


def test_scene_stream_keeps_scenes_together_and_ranks_split_its_order(cloudmask_stores):
    from loaders.cloudmask import ScenePatchStream

    data = CloudMaskPatches(str(cloudmask_stores["hdf"]), spec=PatchSpec("fixed", 32))
    stream = ScenePatchStream(data, seed=5, rank=0, world_size=1)
    one = stream.order()
    assert sorted(one) == list(range(len(data)))
    scenes = [data.items[i][0] for i in one]
    assert sum(1 for k in range(1, len(scenes)) if scenes[k] != scenes[k - 1]) == 2  # each scene contiguous
    halves = [ScenePatchStream(data, seed=5, rank=r, world_size=2).order() for r in range(2)]
    assert halves[0] + halves[1] == one  # two ranks: contiguous halves of the same order
    stream.set_epoch(1)
    assert stream.order() != one
    loader = DataLoader(stream, batch_size=5, num_workers=2, multiprocessing_context="forkserver")
    images = torch.cat([b[0] for b in loader])
    expected = torch.stack([data[i][0] for i in stream.order()])
    assert images.shape == expected.shape
    assert sorted(x.sum().item() for x in images) == pytest.approx(sorted(x.sum().item() for x in expected))


def test_numpy_batches_cover_the_epoch(cloudmask_stores):
    data = CloudMaskPatches(str(cloudmask_stores["hdf"]), spec=PatchSpec("fixed", 32))
    batches = list(numpy_batches(data, batch_size=7, shuffle=True, seed=1))
    assert [len(b[0]) for b in batches] == [7, 7, 4]
    assert all(isinstance(b[0], np.ndarray) and b[0].shape[1:] == (9, 32, 32) for b in batches)


@pytest.mark.slow
def test_dataloader_with_two_workers_matches_in_process(cloudmask_stores):
    data = CloudMaskPatches(str(cloudmask_stores["sen3"]), spec=PatchSpec("random", 32, 8, seed=2))
    data.handle.get()  # opened in the parent: workers must open their own
    ref = [data[i] for i in range(len(data))]
    loader = DataLoader(data, batch_size=6, shuffle=False, num_workers=2, multiprocessing_context="forkserver")
    batches = list(loader)
    assert torch.equal(torch.cat([b[0] for b in batches]), torch.stack([r[0] for r in ref]))
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.stack([r[1] for r in ref]))


def test_read_scene_and_bad_scene_index(cloudmask_stores):
    image, mask = read_scene(str(cloudmask_stores["hdf"]), 1)
    assert image.shape == (9, 64, 96) and mask.shape == (64, 96)
    data = CloudMaskPatches(str(cloudmask_stores["hdf"]), scenes=[5])  # checked on first use: no I/O here
    with pytest.raises(IndexError, match="outside"):
        len(data)


@pytest.mark.parametrize("mode", ["fixed", "random"])
def test_a_batch_equals_its_patches_read_one_by_one(cloudmask_stores, mode):
    data = CloudMaskPatches(str(cloudmask_stores["hdf"]), spec=PatchSpec(mode, 32, 4, seed=1))
    picks = [5, 0, 17, 3, 3, 11] if mode == "fixed" else [1, 9, 4, 4, 0]
    image, mask = data[picks]
    assert image.shape == (len(picks), 9, 32, 32) and mask.shape == (len(picks), 1, 32, 32)
    ones = [data[i] for i in picks]
    assert torch.equal(image, torch.stack([a for a, _ in ones]))
    assert torch.equal(torch.nan_to_num(mask, 7.0), torch.nan_to_num(torch.stack([b for _, b in ones]), 7.0))
    # what DataLoader(data, batch_size=B) asks for: the same patches, one per item
    assert all(torch.equal(a, b) for (a, _), b in zip(data.__getitems__(picks), image))


def test_masks_keep_unlabelled_pixels_as_nan(cloudmask_stores, tmp_path):
    import shutil

    import zarr

    store = tmp_path / "unlabelled.zarr"
    shutil.copytree(cloudmask_stores["sen3"], store)
    zarr.open_array(store / "cloud_mask", mode="r+")[1, 10:40, 20:50] = 255
    labels = zarr.open_array(store / "cloud_mask", mode="r")[...]
    data = CloudMaskPatches(str(store), spec=PatchSpec("fixed", 32), as_torch=False)
    _, mask = data[list(range(len(data)))]
    for k, (scene, win) in enumerate(data.items):
        want = labels[(scene, *win.slices)].astype(np.float32)
        want[want > 1] = np.nan
        np.testing.assert_array_equal(mask[k, 0], want)
    assert np.isnan(mask).sum() == 30 * 30  # 2 x 3 patches of 32 tile the 64 x 96 scenes exactly


def test_a_damaged_chunk_names_the_store_and_the_scene(cloudmask_stores, tmp_path):
    import shutil

    from scibench_data.storage.store.integrity import ChunkChecksumError

    store = tmp_path / "damaged.zarr"
    shutil.copytree(cloudmask_stores["hdf"], store)
    (store / "image/c/1/0/0/0").write_bytes(b"junk")
    data = CloudMaskPatches(str(store), scenes=[1], spec=PatchSpec("random", 32, 3, seed=0))
    with pytest.raises(ChunkChecksumError, match=r"damaged\.zarr: array 'image', chunk image/c/1/0/0/0: crc32c.*"
                                                 r"reading scene 1, rows"):
        data[[0, 1, 2]]
    with pytest.raises(ChunkChecksumError, match=r"damaged\.zarr.*reading scene 1, rows"):
        data[0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fixed", "random"])
def test_patch_loader_with_two_workers_yields_the_epoch(cloudmask_stores, mode):
    from loaders.cloudmask import ScenePatchStream, patch_loader
    from loaders.workers import start_worker_server

    assert not start_worker_server(wait=True).is_alive()  # the server (forkserver fallback only), started early
    data = CloudMaskPatches(str(cloudmask_stores["hdf"]), spec=PatchSpec(mode, 32, 5, seed=2))
    source = ScenePatchStream(data, seed=4) if mode == "fixed" else data
    loader = patch_loader(source, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == len(loader)  # the stream's length counts each worker's last short batch
    images = torch.cat([b[0] for b in batches])
    expected = torch.stack([data[i][0] for i in range(len(data))])
    if mode == "random":  # shuffle=False: the sampler's order
        assert torch.equal(images, expected)
    else:  # workers interleave scenes: the same patches in another order
        key = lambda t: sorted(round(x.sum().item(), 3) for x in t)
        assert images.shape == expected.shape and key(images) == key(expected)


@pytest.mark.slow
def test_workers_fork_from_a_server_that_imported_the_script_once(cloudmask_stores, tmp_path):
    """The forkserver fallback: the training script is imported once in the worker server, not again
    in every worker."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "train_script.py"
    script.write_text(f"""
import os
print("imported", os.getpid(), __name__, flush=True)
from loaders.cloudmask import CloudMaskPatches, PatchSpec, patch_loader

if __name__ == "__main__":
    data = CloudMaskPatches({str(cloudmask_stores["hdf"])!r}, spec=PatchSpec("random", 32, 4, seed=1))
    for epoch in range(2):
        n = sum(len(image) for image, _ in patch_loader(data, batch_size=4, num_workers=2))
        print("epoch", epoch, n, flush=True)
""")
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=repo,
                         env={**__import__("os").environ, "PYTHONPATH": str(repo),
                                  "SCIBENCH_WORKER_START": "forkserver"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert [line for line in lines if line.startswith("epoch")] == ["epoch 0 12", "epoch 1 12"]
    # once as __main__, once in the server as __mp_main__; not in the 4 workers of the 2 epochs
    assert sorted(line.split()[-1] for line in lines if line.startswith("imported")) == ["__main__", "__mp_main__"]
