"""TensorRT backend: engines built from a model directory, cached, run on one CUDA stream.

Written against the TensorRT Python API documented for 8.5 (JetPack 5), 8.6, 10.x and 11.x,
using only calls all of them have on the run path (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``).  Building differs by version:

* FP16 on 8.5-10.x: the FP32 graph with ``BuilderFlag.FP16`` and
  ``OBEY_PRECISION_CONSTRAINTS``, the manifest's ``fp32_layers`` (coordinate math,
  positional encoding, softmax) pinned to FP32;
* FP16 on 11.x (weak typing removed): the explicitly mixed-precision ``*.fp16.onnx`` variant
  as a strongly typed network;
* FP32: the FP32 graph, no precision flags.

Not run on this project's machines (no GPU, TensorRT not installable): the profile
computation (:mod:`clit.runtime.trt_profiles`) and the cache
(:mod:`clit.runtime.engine_cache`) are tested here, this module only on a GPU machine
(``pytest -m trt``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..manifest import MANIFEST, GraphEntry, Manifest, ModelDirError, sha256_file
from .cuda_api import open_cuda
from .engine_cache import EngineCache
from .profiles import BuildLimits, input_profiles

DEFAULT_WORKSPACE = 1 << 30


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeError("the tensorrt backend needs TensorRT's Python package (JetPack ships it; on a "
                           "desktop: NVIDIA's tensorrt wheels)") from None
    return trt


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def strongly_typed(trt, precision: str) -> bool:
    """FP16 engines are strongly typed (the mixed-precision graph) from TensorRT 11 on."""
    return precision == "fp16" and trt_major(trt) >= 11


def graph_file(graph: GraphEntry, precision: str, strong: bool) -> str:
    """The ONNX file a build reads: the FP16 variant only for strongly typed FP16 builds."""
    return graph.file_for("fp16") if strong else graph.file


def build_serialized(trt, onnx_path: Path, profiles: dict, precision: str, fp32_layers: list[str], strong: bool,
                     workspace: int, timing_cache: Path | None, log=print) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine with one optimisation profile."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if trt_major(trt) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strong:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path.name}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if precision == "fp16" and not strong:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _pin_fp32(trt, network, set(fp32_layers))
        log(f"{onnx_path.name}: {pinned} layers pinned to FP32")
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profiles.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, False)
    data = builder.build_serialized_network(network, config)
    if data is None:
        raise RuntimeError(f"{onnx_path.name}: TensorRT failed to build an engine (see its log above)")
    if cache is not None:
        blob = bytes(config.get_timing_cache().serialize())
        atomic_write(timing_cache, lambda f: f.write(blob))
    return bytes(data)


def _pin_fp32(trt, network, names: set[str]) -> int:
    """Set FP32 precision and FP32 float outputs on the layers made from ``names`` nodes."""
    count = 0
    floats = (trt.float32, trt.float16)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name not in names:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in floats:
                layer.set_output_type(j, trt.float32)
        count += 1
    return count


class TensorRTRunner:
    """Runs a model directory's graphs as TensorRT engines (built or taken from the cache)."""

    def __init__(self, manifest: Manifest, precision: str = "fp16", limits: BuildLimits | None = None,
                 cache_dir: Path | None = None, workspace: int = DEFAULT_WORKSPACE, log=None):
        self.trt = _trt()
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.manifest, self.precision = manifest, precision
        self.cache = EngineCache(cache_dir, log=self.log)
        self.limits = limits or saved_limits(self.cache, manifest) or BuildLimits()
        self.cuda = open_cuda()
        self.gpu, self.capability = self.cuda.device_info()
        self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self.workspace = workspace
        self.strong = strongly_typed(self.trt, precision)
        self._engines: dict[str, tuple] = {}
        # any file the pipeline may name (the graph or a variant) -> its graph, resolved once
        self._graph_of = {f: g for g in manifest.graphs for f in (g.file, *(v["file"] for v in g.variants.values()))}
        self._device: dict[str, tuple[int, int]] = {}  # tensor -> (pointer, bytes)
        self._host: dict[str, np.ndarray] = {}

    # ---------------------------------------------------------------- building
    def key_fields(self, graph: GraphEntry) -> dict:
        """Everything that changes the engine built for ``graph``."""
        file = graph_file(graph, self.precision, self.strong)
        sha = graph.sha256 if file == graph.file else graph.variants["fp16"]["sha256"]
        return {"graph_sha256": sha, "tensorrt": str(self.trt.__version__), "gpu": self.gpu,
                "compute_capability": self.capability, "precision": self.precision,
                "profiles": {k: [list(s) for s in v] for k, v in input_profiles(self.manifest, graph, self.limits).items()},
                "flags": {"strongly_typed": self.strong, "workspace": self.workspace,
                          "fp32_layers": len(graph.fp32_layers) if not self.strong else 0}}

    def engine_for(self, graph: GraphEntry):
        """(engine, context) for ``graph``; builds it into the cache on first use."""
        if graph.file in self._engines:
            return self._engines[graph.file]
        fields = self.key_fields(graph)
        path = self.manifest.root / graph_file(graph, self.precision, self.strong)

        def build() -> bytes:
            self.log(f"building TensorRT engine for {path.name} ({self.precision}, TensorRT "
                     f"{self.trt.__version__}, {self.gpu}); this takes a while once")
            return build_serialized(self.trt, path, input_profiles(self.manifest, graph, self.limits),
                                    self.precision, graph.fp32_layers, self.strong,
                                    self.workspace, self.cache.root / f"timing-{self.trt.__version__}.cache",
                                    log=self.log)

        engine, how = self.cache.get_or_build(Path(graph.file).stem, fields, build,
                                              self.runtime.deserialize_cuda_engine)
        self._engines[graph.file] = (engine, engine.create_execution_context())
        return self._engines[graph.file]

    def build_all(self) -> list[str]:
        """Build (or find) every engine of the model; returns one status line per graph."""
        lines = []
        for g in self.manifest.graphs:
            before = g.file in self._engines
            self.engine_for(g)
            lines.append(f"{g.file}: {'ready' if before else 'ok'}")
        return lines

    # ---------------------------------------------------------------- running
    def _buffer(self, key: str, nbytes: int) -> int:
        ptr, size = self._device.get(key, (0, 0))
        if size < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr, size = self.cuda.malloc(nbytes), nbytes
            self._device[key] = (ptr, size)
        return ptr

    def _pinned(self, key: str, shape, dtype) -> np.ndarray:
        arr = self._host.get(key)
        need = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if arr is None or arr.nbytes < need:
            if arr is not None:
                self.cuda.free_pinned(arr)
            arr = self.cuda.pinned((max(need, 1),), np.uint8)
            self._host[key] = arr
        return arr[:need].view(dtype).reshape(shape)

    def run(self, file: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        graph = self._graph_of.get(file)
        if graph is None:
            raise ModelDirError(f"{file} is not a graph of {self.manifest.root}")
        engine, ctx = self.engine_for(graph)
        trt = self.trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        outputs = []
        for name in names:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                arr = np.ascontiguousarray(feeds[name], dtype=dtype)
                if not ctx.set_input_shape(name, arr.shape):
                    raise ValueError(f"{file}: input {name} shape {arr.shape} is outside the engine's profile "
                                     f"(rebuild with larger --max-lr/--max-queries)")
                ptr = self._buffer(f"{file}:{name}", arr.nbytes)
                self.cuda.htod(ptr, arr)
                ctx.set_tensor_address(name, ptr)
        for name in [o["name"] for o in graph.outputs]:  # the ONNX output order the pipeline expects
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            shape = tuple(ctx.get_tensor_shape(name))
            host = self._pinned(f"{file}:{name}", shape, dtype)
            ptr = self._buffer(f"{file}:{name}", host.nbytes)
            ctx.set_tensor_address(name, ptr)
            outputs.append((host, ptr))
        if not ctx.execute_async_v3(self.cuda.stream_handle):
            raise RuntimeError(f"{file}: TensorRT execution failed")
        for host, ptr in outputs:
            self.cuda.dtoh(host, ptr)
        self.cuda.synchronize()
        return [host.astype(np.float32, copy=True) for host, _ in outputs]


def _limits_path(cache: EngineCache, manifest: Manifest) -> Path:
    digest = sha256_file(manifest.root / MANIFEST)[:20]
    return cache.root / f"limits-{digest}.json"


def save_limits(cache: EngineCache, manifest: Manifest, limits: BuildLimits) -> None:
    """Remember the limits ``clit-build`` used, so later runs find the same engines."""
    atomic_write(_limits_path(cache, manifest), lambda f: f.write(json.dumps(asdict(limits)).encode()))


def saved_limits(cache: EngineCache, manifest: Manifest) -> BuildLimits | None:
    """The limits of the last ``clit-build`` of this model into ``cache``, if any."""
    path = _limits_path(cache, manifest)
    try:
        return BuildLimits(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
