"""Inference engines behind one interface (no torch import unless the torch engine is used).

An engine maps an RGB float32 image (h, w, 3) in [0, 1] to the model's output (H, W, 3),
float32, NOT clamped, for a scale or an exact size:

* ``onnxruntime``: an exported model directory through :class:`~clit.runtime.pipeline.Pipeline`
  (CPU provider; the CUDA provider is used when the installed onnxruntime has it).
* ``tensorrt``: the same pipeline with TensorRT engines built from the model directory and
  cached (:mod:`clit.runtime.tensorrt.backend`, imported only when asked for; needs TensorRT and
  cuda-python or pycuda).  Images are always tiled so that every input stays inside the
  engines' optimisation profiles.
* ``torch``: the PyTorch reference model from a checkpoint (``clit.train.engine``, imported
  only when asked for; needs ``clit[train]``).

``auto`` picks tensorrt when it is importable and a GPU is visible, else ONNX Runtime with
its CUDA provider when installed, else ONNX Runtime on the CPU (and torch for a checkpoint).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

import numpy as np

from .bundled import CHECKPOINT_NAME, bundled_checkpoint, bundled_model_dir
from .manifest import MANIFEST, load_manifest
from .memory_plan import choose, memory_budget, resident_memory
from .onnx_backend import OnnxRuntimeRunner, default_providers
from .pipeline import DEFAULT_CHUNK, Pipeline

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
PRECISIONS = ("auto", "fp32", "fp16", "int8")  # int8: a clit-calibrate model directory


class Engine(Protocol):
    name: str
    source: Path | None  # the file that identifies the model: manifest or checkpoint

    def upscale(self, img: np.ndarray, scale=None, size=None, sink=None, out_itemsize: int = 4) -> np.ndarray | None:
        """The output (H, W, 3) float32, not clamped; with ``sink``, given tile by tile to
        ``sink(rows, cols, values)`` instead (see Pipeline.upscale), and None returned.
        ``out_itemsize``: bytes per sample the caller keeps of the output (the memory plan)."""


class OnnxEngine:
    """ONNX Runtime over a model directory.

    ``chunk=None`` and ``tile=None`` are chosen per image from the memory available
    (:mod:`clit.runtime.memory_plan`: the process at most 4 GiB, or ``memory_limit`` bytes,
    counting what it held when the engine was made); ``tile=0`` never tiles.  Neither
    changes the result."""

    def __init__(self, model_dir: Path, precision: str = "auto", chunk: int | None = None, threads: int = 0,
                 tile: int | None = None, memory_limit: int | None = None):
        import onnxruntime as ort

        manifest = load_manifest(model_dir)
        available = ort.get_available_providers()
        gpu = "CUDAExecutionProvider" in available
        exported = manifest.data.get("precisions", ["fp32"])
        if precision == "auto":  # FP16 pays off on GPUs; on CPUs it is slower and less exact
            precision = "fp16" if gpu and "fp16" in exported else "fp32"
        elif precision == "fp16" and "fp16" not in exported:
            print(f"notice: {manifest.root} has no fp16 variants (re-export with clit-export --precision fp32,fp16): "
                  "running fp32", file=sys.stderr)
            precision = "fp32"
        providers = default_providers(available, precision)
        self.pipeline = Pipeline(manifest, OnnxRuntimeRunner(manifest, providers=providers, threads=threads),
                                 precision=precision)
        self.chunk, self.tile, self.memory_limit = chunk, tile, memory_limit
        self.budget = None  # bytes the plan had for the last image (set by settings)
        self.resident = resident_memory()  # the plan's baseline (later, it would count our own arenas)
        self.name = f"onnxruntime-{'cuda' if gpu else 'cpu'} {precision}"
        self.source = manifest.root / MANIFEST

    def settings(self, lr_size, scale=None, size=None, out_itemsize: int = 4) -> tuple[int | None, int]:
        """(tile, chunk) used for an image of ``lr_size`` whose output is kept as ``out_itemsize``
        bytes per sample: the given ones or the memory plan's (its budget: :attr:`budget`)."""
        self.budget = memory_budget(self.memory_limit, self.resident)
        if self.tile is not None and self.chunk is not None:
            return (self.tile or None), self.chunk
        plan = self.pipeline.plan(lr_size, scale=scale, size=size)
        tile, chunk = choose(self.pipeline.manifest, plan, self.budget, self.chunk, out_itemsize)
        return (tile if self.tile is None else (self.tile or None)), chunk

    def upscale(self, img, scale=None, size=None, sink=None, out_itemsize: int = 4):
        tile, chunk = self.settings(img.shape[:2], scale=scale, size=size, out_itemsize=out_itemsize)
        return self.pipeline.upscale(img, scale=scale, size=size, chunk=chunk, tile=tile, sink=sink)


class TensorRTEngine:
    """TensorRT over a model directory (engines cached under ``cache_dir``).

    The engines' profiles bound the tile and the chunk: the limits given, else those of the
    last ``clit-build``, else the largest whose estimated working memory fits the GPU's free
    memory (on a Jetson, whose GPU shares the system RAM: the process's memory budget,
    ``memory_limit``)."""

    def __init__(self, model_dir: Path, precision: str = "auto", chunk: int = DEFAULT_CHUNK,
                 tile: int | None = None, cache_dir: Path | None = None, limits=None,
                 memory_limit: int | None = None, log=None):
        from .tensorrt.backend import TensorRTRunner

        manifest = load_manifest(model_dir)
        precision = "fp16" if precision == "auto" else precision
        self.runner = TensorRTRunner(manifest, precision=precision, limits=limits, cache_dir=cache_dir, log=log,
                                     memory_limit=memory_limit)
        limits = self.runner.limits
        self.budget = self.runner.budget
        self.pipeline = Pipeline(manifest, self.runner)
        self.chunk = min(chunk, limits.max_queries)
        self.tile = min(tile or limits.tile, limits.tile)
        done = "/".join(sorted(self.runner.precisions))
        self.name = f"tensorrt-{self.runner.trt.__version__} {done} ({self.runner.gpu})"
        self.source = manifest.root / MANIFEST

    def upscale(self, img, scale=None, size=None, sink=None, out_itemsize: int = 4):
        from .tensorrt.profiles import plan_tile

        # scales that need more branches take smaller LR tiles: every branch window within the profiles
        tile = self.tile
        if np.ndim(img) == 3:  # else the pipeline names what is wrong with the image
            tile = plan_tile(self.runner.limits, self.pipeline.plan(np.shape(img)[:2], scale=scale, size=size).n_branches,
                             tile)
        return self.pipeline.upscale(img, scale=scale, size=size, chunk=self.chunk, tile=tile, sink=sink)


def tensorrt_usable() -> bool:
    """TensorRT importable and a CUDA device reachable through cuda-python or pycuda."""
    try:
        import tensorrt  # noqa: F401

        from .tensorrt.cuda_api import open_cuda

        open_cuda()  # the process's one handle: the runner reuses it (no second context)
    except Exception:  # ImportError, no driver, no device: all mean "not here"
        return False
    return True


def make_engine(backend: str = "auto", model_dir: Path | None = None, checkpoint: Path | None = None,
                precision: str = "auto", chunk: int | None = None, device: str = "cpu",
                tile: int | None = None, cache_dir: Path | None = None, memory_limit: int | None = None,
                threads: int = 0) -> Engine:
    """The engine for ``backend``: ``auto`` picks tensorrt (when usable) or onnxruntime for a
    model directory and torch for a checkpoint.  With neither, the bundled default model is
    used (its checkpoint for ``backend='torch'``).  ``tile`` (LR pixels, graph backends)
    evaluates the output in tiles with bounded memory; ``memory_limit`` (bytes) is the
    process size the memory plan aims at (default 4 GiB); ``threads``: CPU intra-op threads of
    ONNX Runtime or torch (0: their default, every core).  Raises ``ValueError`` for
    impossible combinations."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
    if model_dir is not None and checkpoint is not None:
        raise ValueError("give at most one of a model directory or a checkpoint")
    if model_dir is None and checkpoint is None:
        if backend == "torch":
            checkpoint = bundled_checkpoint()
        else:
            model_dir = bundled_model_dir()
        if model_dir is None and checkpoint is None:
            if backend == "torch" and bundled_model_dir() is not None:
                raise ValueError(f"the bundled model's PyTorch checkpoint ({CHECKPOINT_NAME}) is not installed with the "
                                 "package (its graphs are; the checkpoint stays in the source repository, "
                                 "runtime/models/default): install from a clone with pip install -e, or give a checkpoint")
            raise ValueError("no model given and this installation has no bundled default model "
                             "(clit/runtime/models/default): give a model directory or a checkpoint")
    if backend == "auto":
        if model_dir is None:
            backend = "torch"
        else:
            backend = "tensorrt" if tensorrt_usable() else "onnxruntime"
    if backend == "tensorrt":
        if model_dir is None:
            raise ValueError("the tensorrt backend needs a model directory (clit-export makes one)")
        return TensorRTEngine(Path(model_dir), precision=precision, chunk=chunk or DEFAULT_CHUNK, tile=tile,
                              cache_dir=cache_dir, memory_limit=memory_limit)
    if backend == "onnxruntime":
        if model_dir is None:
            raise ValueError("the onnxruntime backend needs a model directory (clit-export makes one)")
        return OnnxEngine(Path(model_dir), precision=precision, chunk=chunk, tile=tile, memory_limit=memory_limit,
                          threads=threads)
    if checkpoint is None:
        raise ValueError("the torch backend needs a checkpoint (.pth)")
    if precision == "fp16":
        raise ValueError("the torch backend runs in fp32 only")
    if tile:
        raise ValueError("tiling (--tile) is done by the graph backends; the torch reference runs whole")
    try:
        from clit.train.engine import TorchEngine
    except ImportError:
        raise RuntimeError("the torch backend needs PyTorch: pip install 'clit[train]'") from None
    return TorchEngine(Path(checkpoint), device=device, chunk=chunk or DEFAULT_CHUNK, threads=threads)
