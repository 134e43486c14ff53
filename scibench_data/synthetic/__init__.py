"""Synthetic generators that write each benchmark's real on-disk format.

The real data cannot be downloaded everywhere (CI, these machines), so every
data set has a deterministic generator with a learnable signal. Converters are
exercised on these files exactly as on the real ones.
"""

from __future__ import annotations

import numpy as np


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], length: float) -> np.ndarray:
    """Gaussian-filtered white noise with correlation length ``length`` pixels, zero mean, unit std."""
    noise = rng.standard_normal(shape)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    kernel = np.exp(-2.0 * (np.pi * length) ** 2 * (kx**2 + ky**2))
    field = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=shape)
    return (field - field.mean()) / (field.std() + 1e-12)
