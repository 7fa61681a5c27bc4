"""The arbitrary-scale SR evaluation protocol of LIIF, LTE and CLIT (numpy, no torch).

For an HR image and a scale s:

* LR size ``floor(h / s + 1e-9)``; the HR is cropped top-left to ``round(lr * s)``;
* the LR is a MATLAB-compatible bicubic ``imresize`` of that crop for integer s <= 4 (what
  the standard ``LR_bicubic`` files hold), else Pillow bicubic as the official wrapper;
* ``benchmark``: PSNR on luma from ``diff @ [65.738, 129.057, 25.064] / 256``, shave
  ``ceil(s)``; ``div2k``: RGB PSNR, shave ``ceil(s) + 6``.  Predictions are clamped to
  [0, 1] and not quantised unless asked.
* SSIM two ways: the official RGB Gaussian SSIM (no shave) and the common Y SSIM (shaved).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .metrics import ssim_rgb, ssim_y
from .resize import imresize, pil_bicubic

PROTOCOLS = ("benchmark", "div2k")
Y_DIFF_WEIGHTS = np.array([65.738, 129.057, 25.064]) / 256


def lr_size(hr_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """LR size for an HR of ``hr_size`` at ``scale``: ``floor(n / s + 1e-9)`` per axis."""
    h, w = hr_size
    return math.floor(h / scale + 1e-9), math.floor(w / scale + 1e-9)


def uses_matlab_bicubic(scale: float) -> bool:
    """Integer scales up to 4 use MATLAB bicubic LRs; all others Pillow bicubic."""
    return float(scale).is_integer() and 1 <= scale <= 4


def make_pair(hr: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(HR crop, LR), both (h, w, 3) uint8, for an HR uint8 image at ``scale``."""
    if hr.dtype != np.uint8 or hr.ndim != 3 or hr.shape[2] != 3:
        raise ValueError(f"HR must be (H, W, 3) uint8, got {hr.shape} {hr.dtype}")
    lh, lw = lr_size(hr.shape[:2], scale)
    if lh < 1 or lw < 1:
        raise ValueError(f"a {hr.shape[1]}x{hr.shape[0]} image is too small for scale {scale:g}")
    crop = np.ascontiguousarray(hr[: round(lh * scale), : round(lw * scale)])
    if uses_matlab_bicubic(scale):
        lr = imresize(crop, scale=1 / scale)
    else:
        lr = pil_bicubic(crop, (lh, lw))
    if lr.shape[:2] != (lh, lw):
        raise AssertionError(f"LR came out {lr.shape[:2]}, expected {(lh, lw)}")
    return crop, lr


def shave(scale: float, protocol: str) -> int:
    """Border pixels excluded from PSNR (and Y SSIM)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return math.ceil(scale) + (6 if protocol == "div2k" else 0)


def sr_psnr(pred: np.ndarray, hr: np.ndarray, scale: float, protocol: str) -> float:
    """PSNR (dB) of a prediction (H, W, 3) in [0, 1] against the HR crop, per the protocol."""
    if pred.shape != hr.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {hr.shape}")
    diff = pred.astype(np.float64) - hr.astype(np.float64)
    if protocol == "benchmark":
        diff = diff @ Y_DIFF_WEIGHTS
    b = shave(scale, protocol)
    valid = diff[b:-b, b:-b] if b else diff
    if valid.size == 0:
        raise ValueError(f"image {hr.shape[1]}x{hr.shape[0]} is empty after shaving {b} pixels")
    mse = float(np.mean(valid**2))
    return math.inf if mse == 0 else -10 * math.log10(mse)


@dataclass(frozen=True)
class Scores:
    psnr: float
    ssim: float  # official RGB Gaussian SSIM, no shave
    ssim_y: float  # Y-channel SSIM with the protocol's shave


def score(pred: np.ndarray, hr: np.ndarray, scale: float, protocol: str) -> Scores:
    """PSNR and both SSIMs of ``pred`` (clamped to [0, 1] here) against ``hr`` (float [0, 1])."""
    pred = np.clip(pred, 0.0, 1.0)
    return Scores(
        psnr=sr_psnr(pred, hr, scale, protocol),
        ssim=ssim_rgb(pred, hr),
        ssim_y=ssim_y(pred, hr, shave(scale, protocol)),
    )
