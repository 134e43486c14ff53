"""Region/chunk arithmetic and patch windows, including property-based tests."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loaders.patches import (
    axis_tiles,
    fixed_windows,
    inference_tiles,
    mosaic,
    pad_for_tiles,
    random_windows,
)
from scibench_data.storage.store.regions import (
    MisalignedRegionError,
    Region,
    check_region_aligned,
    chunk_slices,
    chunks_touched,
    n_chunks_touched,
)


def test_aligned_region_passes_and_misaligned_raises():
    check_region_aligned(Region((2, 0, 0), (3, 9, 100)), chunks=(1, 9, 32), shape=(5, 9, 100))
    with pytest.raises(MisalignedRegionError, match="start 16 on axis 2"):
        check_region_aligned(Region((0, 0, 16), (1, 9, 48)), chunks=(1, 9, 32), shape=(5, 9, 100))
    with pytest.raises(MisalignedRegionError, match="stop 40"):
        check_region_aligned(Region((0, 0, 0), (1, 9, 40)), chunks=(1, 9, 32), shape=(5, 9, 100))
    with pytest.raises(MisalignedRegionError, match="exceeds"):
        check_region_aligned(Region((0, 0, 0), (6, 9, 100)), chunks=(1, 9, 32), shape=(5, 9, 100))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 2000), c=st.integers(1, 300), data=st.data())
def test_region_alignment_matches_chunk_boundaries(n, c, data):
    """A region passes the check exactly when no chunk is shared with a neighbouring region."""
    a = data.draw(st.integers(0, n - 1))
    b = data.draw(st.integers(a + 1, n))
    aligned = (a % c == 0) and (b % c == 0 or b == n)
    try:
        check_region_aligned(Region((a,), (b,)), (c,), (n,))
        passed = True
    except MisalignedRegionError:
        passed = False
    assert passed == aligned
    touched = chunks_touched(a, b, c)
    assert touched.start == a // c and touched.stop == (b - 1) // c + 1
    if passed:  # aligned regions cover their chunks completely
        covered = sum(min(n, (k + 1) * c) - k * c for k in touched)
        assert covered == b - a


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 3000), c=st.integers(1, 500))
def test_chunk_slices_partition_the_axis(n, c):
    s = chunk_slices(n, c)
    assert s[0].start == 0 and s[-1].stop == n
    assert all(x.stop == y.start for x, y in pairwise(s))
    assert all(0 < x.stop - x.start <= c for x in s)


def test_n_chunks_touched_counts_a_patch():
    assert n_chunks_touched(Region((0, 0, 0, 0), (1, 9, 256, 256)), (1, 9, 256, 256)) == 1
    assert n_chunks_touched(Region((0, 0, 10, 10), (1, 9, 266, 266)), (1, 9, 256, 256)) == 4


def test_reference_fixed_patches_of_a_full_scene():
    wins = fixed_windows(1200, 1500, 256)
    assert len(wins) == 20
    assert (wins[0].y0, wins[0].x0) == (88, 110)
    assert (wins[-1].y0 + 256, wins[-1].x0 + 256) == (88 + 1024, 110 + 1280)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 700), w=st.integers(1, 700), stride=st.sampled_from([176, 128, 256, 96]))
def test_inference_tiles_cover_every_pixel_once(h, w, stride):
    tiles, padding = inference_tiles(h, w, 256, stride)
    seen = np.zeros((h, w), dtype=np.int32)
    for ty, tx in tiles:
        seen[ty.keep_start:ty.keep_stop, tx.keep_start:tx.keep_stop] += 1
        # every window fits in the padded image and keeps only its central part
        assert ty.start + 256 <= h + sum(padding[0]) and tx.start + 256 <= w + sum(padding[1])
        assert ty.offset == (256 - stride) // 2
    assert (seen == 1).all()


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 400), w=st.integers(1, 400))
def test_mosaic_of_identity_predictions_is_the_image(h, w):
    image = np.random.default_rng(h * 1000 + w).random((h, w)).astype(np.float32)
    tiles, padding = inference_tiles(h, w)
    padded = pad_for_tiles(image, padding)
    preds = [padded[ty.start:ty.start + 256, tx.start:tx.start + 256] for ty, tx in tiles]
    np.testing.assert_array_equal(mosaic(preds, tiles, (h, w)), image)


def test_random_windows_stay_inside_and_are_seeded():
    a = random_windows(np.random.default_rng(3), 50, 300, 400, 128)
    b = random_windows(np.random.default_rng(3), 50, 300, 400, 128)
    assert a == b
    assert all(0 <= win.y0 <= 300 - 128 and 0 <= win.x0 <= 400 - 128 for win in a)


def test_bad_tiling_arguments_are_refused():
    with pytest.raises(ValueError, match="stride"):
        axis_tiles(100, 256, 300)
    with pytest.raises(ValueError, match="smaller than the patch"):
        fixed_windows(100, 100, 256)
