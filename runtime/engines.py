"""Inference engines behind one interface (no torch import unless the torch engine is used).

An engine maps an RGB float32 image (h, w, 3) in [0, 1] to the model's output (H, W, 3),
float32, NOT clamped, for a scale or an exact size:

* ``onnxruntime``: an exported model directory through :class:`~clit.runtime.pipeline.Pipeline`
  (CPU provider; the CUDA provider is used when the installed onnxruntime has it).
* ``torch``: the PyTorch reference model from a checkpoint (``clit.train.engine``, imported
  only when asked for; needs ``clit[train]``).

TensorRT is not available as an engine yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from .manifest import load_manifest
from .onnx_backend import OnnxRuntimeRunner
from .pipeline import DEFAULT_CHUNK, Pipeline

BACKENDS = ("auto", "onnxruntime", "torch")
PRECISIONS = ("auto", "fp32", "fp16")


class Engine(Protocol):
    name: str

    def upscale(self, img: np.ndarray, scale=None, size=None) -> np.ndarray: ...


class OnnxEngine:
    """ONNX Runtime over a model directory."""

    def __init__(self, model_dir: Path, precision: str = "auto", chunk: int = DEFAULT_CHUNK, threads: int = 0,
                 tile: int | None = None):
        import onnxruntime as ort

        manifest = load_manifest(model_dir)
        gpu = "CUDAExecutionProvider" in ort.get_available_providers()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        if precision == "auto":  # FP16 pays off on GPUs; on CPUs it is slower and less exact
            precision = "fp16" if gpu and "fp16" in manifest.data.get("precisions", []) else "fp32"
        self.pipeline = Pipeline(manifest, OnnxRuntimeRunner(manifest, providers=providers, threads=threads),
                                 precision=precision)
        self.chunk, self.tile = chunk, tile
        self.name = f"onnxruntime-{'cuda' if gpu else 'cpu'} {precision}"

    def upscale(self, img, scale=None, size=None):
        return self.pipeline.upscale(img, scale=scale, size=size, chunk=self.chunk, tile=self.tile)


def make_engine(backend: str = "auto", model_dir: Path | None = None, checkpoint: Path | None = None,
                precision: str = "auto", chunk: int = DEFAULT_CHUNK, device: str = "cpu",
                tile: int | None = None) -> Engine:
    """The engine for ``backend``: ``auto`` picks onnxruntime for a model directory and
    torch for a checkpoint.  ``tile`` (LR pixels, onnxruntime only) evaluates the output in
    tiles with bounded memory.  Raises ``ValueError`` for impossible combinations."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
    if (model_dir is None) == (checkpoint is None):
        raise ValueError("give exactly one of a model directory or a checkpoint")
    if backend == "auto":
        backend = "onnxruntime" if model_dir is not None else "torch"
    if backend == "onnxruntime":
        if model_dir is None:
            raise ValueError("the onnxruntime backend needs a model directory (clit-export makes one)")
        return OnnxEngine(Path(model_dir), precision=precision, chunk=chunk, tile=tile)
    if checkpoint is None:
        raise ValueError("the torch backend needs a checkpoint (.pth)")
    if precision == "fp16":
        raise ValueError("the torch backend runs in fp32 only")
    if tile is not None:
        raise ValueError("tiling (--tile) is done by the onnxruntime backend; the torch reference runs whole")
    try:
        from clit.train.engine import TorchEngine
    except ImportError:
        raise RuntimeError("the torch backend needs PyTorch: pip install 'clit[train]'") from None
    return TorchEngine(Path(checkpoint), device=device, chunk=chunk)
