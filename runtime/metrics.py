"""Image quality figures shared by export parity, calibration and evaluation (numpy)."""

from __future__ import annotations

import math

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """PSNR in dB of two arrays of the same shape (inf when identical)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def _gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter2(img: np.ndarray, taps: np.ndarray, pad: int) -> np.ndarray:
    """Separable correlation of (H, W, ...) with ``taps`` on both axes, zero padding ``pad``
    ('valid' output: H + 2 pad - len(taps) + 1 rows): a sum of shifted slices per axis."""
    if pad:
        img = np.pad(img, [(pad, pad), (pad, pad)] + [(0, 0)] * (img.ndim - 2))
    for axis in (0, 1):
        n = img.shape[axis] - len(taps) + 1
        shifted = [img[(slice(None),) * axis + (slice(k, k + n),)] for k in range(len(taps))]
        out, term = shifted[0] * taps[0], np.empty_like(shifted[0])
        for t, part in zip(taps[1:], shifted[1:]):
            out += np.multiply(part, t, out=term)
        img = out
    return img


def _ssim_map(a: np.ndarray, b: np.ndarray, peak: float, pad: int) -> np.ndarray:
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    stats = _filter2(np.stack([a, b, a * a, b * b, a * b], axis=-1), _gaussian(), pad)
    mu_a, mu_b, aa, bb, ab = np.moveaxis(stats, -1, 0)
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim_rgb(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM as the official CLIT/LIIF code computes it: (H, W, 3) in [0, 1], per-channel
    11x11 Gaussian (sigma 1.5) with zero padding, mean over every pixel and channel, no shave."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean(_ssim_map(a.astype(np.float64), b.astype(np.float64), 1.0, pad=5)))


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of (H, W, 3) RGB in [0, 1], in [16, 235] units (MATLAB rgb2ycbcr)."""
    return 16.0 + img.astype(np.float64) @ np.array([65.481, 128.553, 24.966])


def ssim_y(a: np.ndarray, b: np.ndarray, shave: int) -> float:
    """The common Y-channel SSIM (as in SwinIR/BasicSR): luma in 0-255 units, ``shave`` pixels
    cut from each border, 11x11 Gaussian (sigma 1.5), 'valid' filtering."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    if shave:
        ya, yb = ya[shave:-shave, shave:-shave], yb[shave:-shave, shave:-shave]
    if min(ya.shape) < 11:
        raise ValueError(f"image too small for SSIM after shaving {shave} pixels: {ya.shape}")
    return float(np.mean(_ssim_map(ya, yb, 255.0, pad=0)))
