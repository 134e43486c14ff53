"""Patch-window arithmetic for training and inference tiling: pure functions, no I/O.

- Training, fixed: the reference crops the largest multiple-of-``patch`` block
  from the centre (1200x1500 -> 1024x1280 at offsets 88, 110) and cuts it into
  non-overlapping patches (20 per scene at 256).
- Training, random: seeded uniform offsets anywhere in the scene.
- Inference: ``patch`` windows with stride ``stride``; of each prediction only
  the central ``stride x stride`` is kept (``(patch - stride) / 2`` = 40 pixels
  discarded on every side, 80 per axis); the image is mirror-padded so edge
  pixels are predicted from a centred window too; the kept pieces tile the
  scene exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scibench_data.datasets.cloudmask import PATCH


@dataclass(frozen=True)
class Window:
    """A ``size x size`` window at ``(y0, x0)``."""

    y0: int
    x0: int
    size: int

    def __post_init__(self) -> None:
        if self.size <= 0 or self.y0 < 0 or self.x0 < 0:
            raise ValueError(f"bad window {self}")

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.size), slice(self.x0, self.x0 + self.size)


def _check_fits(h: int, w: int, patch: int) -> None:
    if patch <= 0:
        raise ValueError(f"patch size must be positive, got {patch}")
    if h < patch or w < patch:
        raise ValueError(f"scene {h}x{w} is smaller than the patch size {patch}")


def fixed_windows(h: int, w: int, patch: int = PATCH) -> list[Window]:
    """The reference's non-overlapping patches of the centred crop (row-major)."""
    _check_fits(h, w, patch)
    ny, nx = h // patch, w // patch
    oy, ox = (h - ny * patch) // 2, (w - nx * patch) // 2
    return [Window(oy + i * patch, ox + j * patch, patch) for i in range(ny) for j in range(nx)]


def random_windows(rng: np.random.Generator, n: int, h: int, w: int, patch: int = PATCH) -> list[Window]:
    """``n`` windows at uniform random offsets."""
    _check_fits(h, w, patch)
    ys = rng.integers(0, h - patch + 1, size=n)
    xs = rng.integers(0, w - patch + 1, size=n)
    return [Window(int(y), int(x), patch) for y, x in zip(ys, xs)]


@dataclass(frozen=True)
class AxisTile:
    """One window position along an axis: window start in padded coordinates and the
    part of the prediction kept, in image coordinates ``[keep_start, keep_stop)``."""

    start: int
    keep_start: int
    keep_stop: int
    offset: int  # where keep_start sits inside the window


def axis_tiles(n: int, patch: int = PATCH, stride: int = 176) -> tuple[list[AxisTile], tuple[int, int]]:
    """Tiles along one axis of length ``n`` and the (before, after) padding they need."""
    if not 0 < stride <= patch or (patch - stride) % 2:
        raise ValueError(f"stride must be in (0, patch] with patch - stride even; got patch={patch}, stride={stride}")
    if n <= 0:
        raise ValueError(f"axis length must be positive, got {n}")
    border = (patch - stride) // 2
    tiles = [AxisTile(start=s, keep_start=s, keep_stop=min(s + stride, n), offset=border) for s in range(0, n, stride)]
    after = max(0, tiles[-1].start + patch - (n + border))
    return tiles, (border, after)


def inference_tiles(h: int, w: int, patch: int = PATCH, stride: int = 176):
    """All 2-D tiles of a scene and the padding ``((top, bottom), (left, right))`` they need."""
    ty, pad_y = axis_tiles(h, patch, stride)
    tx, pad_x = axis_tiles(w, patch, stride)
    return [(a, b) for a in ty for b in tx], (pad_y, pad_x)


def mosaic(predictions: list[np.ndarray], tiles, shape: tuple[int, int]) -> np.ndarray:
    """Assemble per-window predictions (each ``(patch, patch)``) into a ``shape`` array."""
    out = np.full(shape, np.nan, dtype=np.float32)
    for pred, (ty, tx) in zip(predictions, tiles):
        hy, hx = ty.keep_stop - ty.keep_start, tx.keep_stop - tx.keep_start
        out[ty.keep_start:ty.keep_stop, tx.keep_start:tx.keep_stop] = pred[ty.offset:ty.offset + hy,
                                                                          tx.offset:tx.offset + hx]
    return out


def pad_for_tiles(image: np.ndarray, padding) -> np.ndarray:
    """Mirror-pad the last two axes of ``image`` as :func:`inference_tiles` asks."""
    (top, bottom), (left, right) = padding
    pad = [(0, 0)] * (image.ndim - 2) + [(top, bottom), (left, right)]
    return np.pad(image, pad, mode="symmetric")
