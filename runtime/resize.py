"""Bicubic resizing as the super-resolution literature does it (numpy + Pillow, no torch).

* :func:`imresize` follows MATLAB's ``imresize(..., 'bicubic')``: cubic kernel with a = -0.5,
  antialiasing (a widened kernel) when shrinking, symmetric edge handling, one axis at a time
  (the one with the smaller scale first, rows on ties), and uint8 inputs rounded back to uint8
  after each axis as MATLAB does.  The standard ``LR_bicubic`` files of Set5/Set14/B100/
  Urban100/DIV2K were made with it.
* :func:`pil_bicubic` is Pillow's bicubic resize of a uint8 image, which the official CLIT
  training and non-integer-scale evaluation use (through torchvision).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


def _contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``contributions``: (weights, 0-based input indices), each (out_len, P)."""
    width = 4.0
    if scale < 1:  # antialiasing: stretch the kernel over 1/scale input pixels

        def kernel(x):
            return scale * _cubic(scale * x)

        width /= scale
    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based
    weights = kernel(u[:, None] - idx)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], idx[:, keep]


def _resize_axis(img: np.ndarray, axis: int, out_len: int, scale: float) -> np.ndarray:
    weights, idx = _contributions(img.shape[axis], out_len, scale)
    x = np.moveaxis(img.astype(np.float64), axis, 0)
    out = np.einsum("op,op...->o...", weights, x[idx])
    return np.moveaxis(out, 0, axis)


def imresize(img: np.ndarray, scale: float | None = None, size: Sequence[int] | None = None) -> np.ndarray:
    """MATLAB-compatible bicubic resize of an (H, W) or (H, W, C) image.

    Give ``scale`` (output size ``ceil(H * scale)``, weights from ``scale``, as MATLAB) or
    ``size = (H', W')`` (per-axis scale ``H' / H``).  uint8 in -> uint8 out (rounded and
    clamped after each axis, as MATLAB); floats come back float64, not clamped.
    """
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    h, w = img.shape[:2]
    if size is None:
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        scales = (scale, scale)
        size = (math.ceil(h * scale), math.ceil(w * scale))
    else:
        size = tuple(int(v) for v in size)
        if min(size) < 1:
            raise ValueError(f"output size must be at least 1x1, got {size}")
        scales = (size[0] / h, size[1] / w)
    is_uint8 = img.dtype == np.uint8
    out = img
    for axis in sorted((0, 1), key=lambda a: scales[a]):  # stable: rows first on ties
        out = _resize_axis(out, axis, size[axis], scales[axis])
        if is_uint8:
            out = np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return out


def pil_bicubic(img: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Pillow bicubic resize of an (H, W, 3) uint8 image to ``size = (H', W')``, uint8."""
    if img.dtype != np.uint8:
        raise TypeError(f"pil_bicubic expects uint8, got {img.dtype}")
    h, w = (int(v) for v in size)
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))
