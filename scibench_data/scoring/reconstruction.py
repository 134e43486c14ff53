"""Reconstruction metrics: MSE, PSNR and SSIM (pure; NumPy or Dask arrays alike).

SSIM follows Wang et al. (2004) with an 11-tap Gaussian window (sigma 1.5),
K1 = 0.01, K2 = 0.03, population covariances, averaged over the window
positions fully inside each image ("valid"), as
``skimage.metrics.structural_similarity(gaussian_weights=True,
use_sample_covariance=False)`` defines it; tested against a brute-force
window-by-window implementation. torchmetrics' SSIM agrees to ~3e-3 (it
filters a reflect-padded image before cropping). On Dask the per-image maths
runs block by block (``map_blocks`` over samples).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Array = Any  # numpy.ndarray or dask.array.Array
SSIM_SIGMA, SSIM_TAPS, K1, K2 = 1.5, 11, 0.01, 0.03


def _check(pred: Array, target: Array) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} != target shape {target.shape}")


def mse(pred: Array, target: Array) -> float:
    """Mean squared error over every element."""
    _check(pred, target)
    return float(((pred.astype(np.float64) - target.astype(np.float64)) ** 2).mean())


def data_range_of(target: Array) -> float:
    """``max - min`` of the target (the default PSNR/SSIM data range)."""
    return float(target.max() - target.min())


def psnr(pred: Array, target: Array, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(range^2 / MSE)`` over the whole set."""
    rng = data_range_of(target) if data_range is None else float(data_range)
    if rng <= 0:
        raise ValueError(f"data_range must be positive, got {rng}")
    err = mse(pred, target)
    return math.inf if err == 0 else 10.0 * math.log10(rng**2 / err)


def gaussian_window(taps: int = SSIM_TAPS, sigma: float = SSIM_SIGMA) -> np.ndarray:
    x = np.arange(taps) - (taps - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of the last two axes."""
    x = sliding_window_view(x, len(w), axis=-1) @ w
    return np.moveaxis(sliding_window_view(np.moveaxis(x, -1, -2), len(w), axis=-1) @ w, -1, -2)


def ssim_per_image(pred: np.ndarray, target: np.ndarray, data_range: float) -> np.ndarray:
    """Mean SSIM of each image over the leading axes: ``(..., H, W) -> (...)`` (NumPy)."""
    if min(pred.shape[-2:]) < SSIM_TAPS:
        raise ValueError(f"SSIM needs images of at least {SSIM_TAPS}x{SSIM_TAPS}, got {pred.shape[-2:]}")
    x, y = pred.astype(np.float64), target.astype(np.float64)
    w = gaussian_window()
    mx, my = _filter_valid(x, w), _filter_valid(y, w)
    vx = _filter_valid(x * x, w) - mx * mx
    vy = _filter_valid(y * y, w) - my * my
    cxy = _filter_valid(x * y, w) - mx * my
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(axis=(-2, -1))


def ssim(pred: Array, target: Array, data_range: float | None = None) -> float:
    """Mean SSIM over the images of ``(N, H, W)`` or ``(N, 1, H, W)`` arrays."""
    _check(pred, target)
    rng = data_range_of(target) if data_range is None else float(data_range)
    if rng <= 0:
        raise ValueError(f"data_range must be positive, got {rng}")
    if isinstance(pred, np.ndarray) and isinstance(target, np.ndarray):
        return float(ssim_per_image(pred, target, rng).mean())
    import dask.array as da  # only for lazy images: this module stays free of Dask at import

    t = da.asarray(target).rechunk({i: -1 for i in range(1, target.ndim)})
    p = da.asarray(pred).rechunk(t.chunks)
    per = da.map_blocks(_ssim_block, p, t, rng, dtype=np.float64, drop_axis=list(range(1, p.ndim)))
    return float(per.mean().compute())


def _ssim_block(pred: np.ndarray, target: np.ndarray, data_range: float) -> np.ndarray:
    """Per-sample SSIM of one block of whole images (the mean over any channel axis)."""
    return ssim_per_image(pred, target, data_range).reshape(pred.shape[0], -1).mean(axis=1)


def reconstruction_scores(pred: Array, target: Array, data_range: float | None = None) -> dict[str, float]:
    """MSE, PSNR (dB) and SSIM with one data range (the target's unless given)."""
    rng = data_range_of(target) if data_range is None else float(data_range)
    return {"mse": mse(pred, target), "psnr": psnr(pred, target, rng), "ssim": ssim(pred, target, rng)}
