"""CloudMask patch loader: normalisation, windows, NumPy batches, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch.utils.data import DataLoader

from loaders.cloudmask import CloudMaskPatches, PatchSpec, normalise, numpy_batches, read_scene


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


def test_scene_stream_splits_scenes_between_workers(cloudmask_stores):
    from loaders.cloudmask import ScenePatchStream

    data = CloudMaskPatches(str(cloudmask_stores["hdf"]), spec=PatchSpec("fixed", 32))
    stream = ScenePatchStream(data, seed=5)
    one = stream.order()
    assert sorted(one) == list(range(len(data)))
    scenes = [data.items[i][0] for i in one]
    assert sum(1 for k in range(1, len(scenes)) if scenes[k] != scenes[k - 1]) == 2  # each scene contiguous
    w0, w1 = stream.order(0, 2), stream.order(1, 2)
    assert sorted(w0 + w1) == sorted(one)
    assert not {data.items[i][0] for i in w0} & {data.items[i][0] for i in w1}  # no scene read twice
    stream.set_epoch(1)
    assert stream.order() != one
    loader = DataLoader(stream, batch_size=5, num_workers=2, multiprocessing_context="forkserver")
    images = torch.cat([b[0] for b in loader])
    stream.set_epoch(1)
    expected = torch.stack([data[i][0] for i in stream.order(0, 2) + stream.order(1, 2)])
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
    data.handle.group  # opened in the parent: workers must open their own
    ref = [data[i] for i in range(len(data))]
    loader = DataLoader(data, batch_size=6, shuffle=False, num_workers=2, multiprocessing_context="forkserver")
    batches = list(loader)
    assert torch.equal(torch.cat([b[0] for b in batches]), torch.stack([r[0] for r in ref]))
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.stack([r[1] for r in ref]))


def test_read_scene_and_bad_scene_index(cloudmask_stores):
    image, mask = read_scene(str(cloudmask_stores["hdf"]), 1)
    assert image.shape == (9, 64, 96) and mask.shape == (64, 96)
    with pytest.raises(IndexError, match="outside"):
        CloudMaskPatches(str(cloudmask_stores["hdf"]), scenes=[5])
