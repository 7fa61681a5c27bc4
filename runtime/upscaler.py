"""``Upscaler``: the array-in, array-out Python API of the runtime (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .engines import make_engine
from .images import quantize


class Upscaler:
    """Upscale images with an exported model directory (ONNX Runtime) or a checkpoint (torch).

    >>> up = Upscaler("model_dir")                       # doctest: +SKIP
    >>> hr = up.upscale(img_uint8, scale=3.7)            # doctest: +SKIP

    With neither ``model_dir`` nor ``checkpoint`` the bundled default model is used (see
    README, "The bundled model").  ``precision='auto'`` uses FP16 on GPU providers and FP32
    on the CPU.
    """

    def __init__(self, model_dir=None, backend: str = "auto", precision: str = "auto", *,
                 checkpoint=None, chunk: int | None = None, tile: int | None = None, device: str = "cpu"):
        self.engine = make_engine(backend, model_dir=None if model_dir is None else Path(model_dir),
                                  checkpoint=None if checkpoint is None else Path(checkpoint),
                                  precision=precision, chunk=chunk, device=device, tile=tile)

    @classmethod
    def from_engine(cls, engine) -> Upscaler:
        """An Upscaler around an engine made by :func:`~clit.runtime.engines.make_engine`."""
        up = cls.__new__(cls)
        up.engine = engine
        return up

    @property
    def backend(self) -> str:
        return self.engine.name

    def upscale(self, image: np.ndarray, scale=None, size=None, dtype=None) -> np.ndarray:
        """image (H, W) or (H, W, C) with C in 1-4, uint8, uint16 or float in [0, 1] -> the
        upscaled image with the same channels, as ``dtype`` (uint8, uint16 or float32; default:
        the input's, floats as float32 clamped to [0, 1]).  Gray is upscaled as RGB and averaged
        back; alpha is upscaled bicubically."""
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or 0 in arr.shape:
            raise ValueError(f"image must be (H, W) or (H, W, 1-4) and non-empty, got {np.shape(image)}")
        if arr.dtype == np.uint8:
            x = arr.astype(np.float32) / 255
        elif arr.dtype == np.uint16:
            x = arr.astype(np.float32) / 65535
        elif np.issubdtype(arr.dtype, np.floating):
            x = arr.astype(np.float32)
            if not np.isfinite(x).all():
                raise ValueError("image has NaN or infinite values")
        else:
            raise TypeError(f"unsupported image dtype {arr.dtype} (uint8, uint16 or float)")
        colour = x[..., :3] if x.shape[2] >= 3 else np.repeat(x[..., :1], 3, axis=2)
        out = np.asarray(self.engine.upscale(np.ascontiguousarray(colour), scale=scale, size=size), dtype=np.float32)
        if not out.flags.writeable:
            out = out.copy()
        np.clip(out, 0, 1, out=out)  # in place: a large output is not copied
        if x.shape[2] < 3:
            out = out.mean(axis=2, keepdims=True)
        if x.shape[2] in (2, 4):
            out = np.concatenate([out, _bicubic(x[..., -1], out.shape[:2])[..., None]], axis=2)
        if np.asarray(image).ndim == 2:
            out = out[..., 0]
        want = np.dtype(dtype if dtype is not None else (arr.dtype if arr.dtype in (np.uint8, np.uint16) else np.float32))
        if want == np.uint8:
            return quantize(out, 8)
        if want == np.uint16:
            return quantize(out, 16)
        if want != np.float32:
            raise TypeError(f"output dtype must be uint8, uint16 or float32, got {want}")
        return out


def _bicubic(channel: np.ndarray, size) -> np.ndarray:
    """Bicubic resize of one float channel to size (H, W), clamped to [0, 1]."""
    h, w = size
    return np.clip(np.asarray(Image.fromarray(channel, mode="F").resize((w, h), Image.BICUBIC)), 0, 1)
