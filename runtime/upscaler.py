"""``Upscaler``: the array-in, array-out Python API of the runtime (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .engines import make_engine
from .geometry import plan_cascade
from .images import quantize

OUTPUT_DTYPES = (np.uint8, np.uint16, np.float32)


class Upscaler:
    """Upscale images with an exported model directory (ONNX Runtime, TensorRT) or a
    checkpoint (torch).

    >>> up = Upscaler("model_dir")                       # doctest: +SKIP
    >>> hr = up.upscale(img_uint8, scale=3.7)            # doctest: +SKIP

    With neither ``model_dir`` nor ``checkpoint`` the bundled default model is used (see
    README, "The bundled model").  ``precision='auto'`` uses FP16 on GPU providers and FP32
    on the CPU.  ``max_memory`` (bytes) is the process size the memory plan aims at
    (default 4 GiB; tile and chunk follow from it).
    """

    def __init__(self, model_dir=None, backend: str = "auto", precision: str = "auto", *,
                 checkpoint=None, chunk: int | None = None, tile: int | None = None, device: str = "cpu",
                 max_memory: int | None = None):
        self.engine = make_engine(backend, model_dir=None if model_dir is None else Path(model_dir),
                                  checkpoint=None if checkpoint is None else Path(checkpoint),
                                  precision=precision, chunk=chunk, device=device, tile=tile, memory_limit=max_memory)

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
        back; alpha is upscaled bicubically.

        Each finished tile is clamped and quantised into the output as it comes, so an integer
        output never exists as an output-sized float buffer (1920x1080 -> x8 in float32 would
        be 1.6 GB)."""
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
        want = np.dtype(dtype if dtype is not None else (arr.dtype if arr.dtype in (np.uint8, np.uint16)
                                                         else np.float32))
        if want not in [np.dtype(d) for d in OUTPUT_DTYPES]:
            raise TypeError(f"output dtype must be uint8, uint16 or float32, got {want}")
        channels = x.shape[2]
        out_h, out_w = plan_cascade(x.shape[:2], scale=scale, size=size).out_size
        out = np.empty((out_h, out_w, channels), dtype=want)
        colour = 1 if channels < 3 else 3

        def sink(ys, xs, values: np.ndarray) -> None:
            np.clip(values, 0, 1, out=values)
            if colour == 1:
                values = values.mean(axis=2, keepdims=True)
            target = out[ys[0]:ys[1], xs[0]:xs[1], :colour]
            target[...] = values if want == np.float32 else quantize(values, 8 if want == np.uint8 else 16)

        rgb = x[..., :3] if channels >= 3 else np.repeat(x[..., :1], 3, axis=2)
        self.engine.upscale(np.ascontiguousarray(rgb), scale=scale, size=size, sink=sink, out_itemsize=want.itemsize)
        if channels in (2, 4):
            alpha = _bicubic(x[..., -1], (out_h, out_w))
            out[..., -1] = alpha if want == np.float32 else quantize(alpha, 8 if want == np.uint8 else 16)
        return out[..., 0] if np.asarray(image).ndim == 2 else out


def _bicubic(channel: np.ndarray, size) -> np.ndarray:
    """Bicubic resize of one float channel to size (H, W), clamped to [0, 1]."""
    h, w = size
    return np.clip(np.asarray(Image.fromarray(channel, mode="F").resize((w, h), Image.BICUBIC)), 0, 1)
