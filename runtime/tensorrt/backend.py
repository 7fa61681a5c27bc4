"""TensorRT backend: engines built from a model directory, cached, run on one CUDA stream.

Written against the TensorRT Python API of 8.5 (JetPack 5), 8.6 (JetPack 6.0), 10.x (JetPack
6.1/6.2) and 11.x, read in NVIDIA/TensorRT's bindings and headers per release.  The run path
is the same on all of them (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``:
added in 8.5; the binding API they replace is gone from 10.0); the contexts run one after
another and share one activation buffer, sized for the largest engine (:func:`scratch_bytes`,
:func:`context_without_memory`, :func:`attach_scratch`: per version).  What a build does
depends on the version (:func:`build_recipe`):

=========  ===========================================  ==========================================
precision  TensorRT 8.5 / 8.6                           TensorRT 10.x / 11.x
=========  ===========================================  ==========================================
fp32       the FP32 graph                               the FP32 graph
fp16       the FP32 graph, ``FP16`` +                   the mixed-precision ``*.fp16.onnx`` as a
           ``OBEY_PRECISION_CONSTRAINTS``, the FP32     strongly typed network (10: the
           region pinned on the network                 ``STRONGLY_TYPED`` flag; 11: always)
           (:mod:`.precision`)
int8       the Q/DQ ``*.int8.onnx``, ``INT8`` flag      the Q/DQ ``*.int8.onnx``, strongly typed
=========  ===========================================  ==========================================

INT8 on 8.5/8.6 sets no FP16 flag: the layers left unquantised (coordinate path, softmax, the
decoders' output layer) run in FP32 there, as trtexec warns; on 10+ they run as the Q/DQ graph
types them (FP32).  TF32 is cleared in every build (TensorRT enables it by default, "Enabled by default",
NvInfer.h ``BuilderFlag::kTF32``): FP32 parity needs real FP32, and so does the FP32 region of
the FP16 engines.  TensorRT 11 removed weak typing (no ``FP16``/``INT8``/precision-constraint
flags, no ``ILayer.precision``): a model directory without an FP16 variant runs FP32 there,
with a one-line notice; on 10.x it falls back to the weakly typed 8.x recipe.

Not run on this project's machines (no GPU, TensorRT not installable): see README, "What is
verified where", and ``pytest -m trt`` for the tests that run on a GPU machine.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..fp32_region import RULE_VERSION
from ..manifest import MANIFEST, GraphEntry, Manifest, ModelDirError, sha256_file
from ..memory_plan import BUDGET_FRACTION, fitting_limits, memory_budget, tensorrt_bytes
from .cuda_api import FALLBACK_REASONS, open_cuda
from .engine_cache import EngineCache, file_lock
from .precision import pin_fp32
from .profiles import BuildLimits, check_limits, default_window, input_profiles, outside_profile

DEFAULT_WORKSPACE = 1 << 30
ENGINE_FORMAT = 2  # bump when what a build does changes (recipes, pinning): older cached engines are rebuilt


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeError("the tensorrt backend needs TensorRT's Python package (JetPack ships it: use a venv "
                           "with --system-site-packages; on a desktop: pip install tensorrt-cu12)") from None
    return trt


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def stderr_logger(trt, log):
    """A TensorRT logger that sends warnings and errors through ``log`` (stderr): ``trt.Logger``
    writes to stdout (pyCore.cpp, DefaultLogger), where clit-build prints its results."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.WARNING):
                log(f"TensorRT: {msg}")

    return _Logger()


# One activation buffer for every context (NvInferRuntime.h, setDeviceMemory: the memory is in
# use from enqueueV3 until the execution completes, and from 10.1 the header adds that using it
# in a context running in parallel is undefined; contexts that run one after another on one
# stream, as here, may share it, as NVIDIA's Diffusion demo does).  The Python spellings per
# release, from python/src/infer/pyCore.cpp of release/8.5, 8.6, 10.0, 10.1-10.16, 11.0-11.1;
# feature-detected, so deprecated names (they raise DeprecationWarning, python/src/utils.cpp)
# are never touched where a successor exists:
def scratch_bytes(engine) -> int:
    """Activation memory a context of ``engine`` needs, at its profile's largest shapes ("the
    maximum device memory required by the context over all profiles"): ``device_memory_size_v2``
    from 10.1 (the only one in 11), ``device_memory_size`` on 8.5-10.0."""
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def context_without_memory(trt, engine):
    """A context that allocates no activation memory (None if TensorRT cannot make one):
    ``create_execution_context(ExecutionContextAllocationStrategy.USER_MANAGED)`` from 10.0 (the
    only way in 11), ``create_execution_context_without_device_memory()`` on 8.5/8.6."""
    strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
    if strategy is not None:
        return engine.create_execution_context(strategy.USER_MANAGED)
    return engine.create_execution_context_without_device_memory()


def attach_scratch(context, ptr: int, nbytes: int) -> None:
    """Give ``context`` the activation buffer at device address ``ptr`` (an int; cudaMalloc's
    256-byte alignment is what TensorRT asks): ``set_device_memory(ptr, size)`` from 10.1,
    the write-only ``device_memory`` property before (no getter: hasattr cannot detect it)."""
    if hasattr(context, "set_device_memory"):
        context.set_device_memory(ptr, nbytes)
    else:
        context.device_memory = ptr


@dataclass(frozen=True)
class BuildRecipe:
    """How one graph is built: the ONNX file parsed, the network's typing, the builder flags."""

    precision: str  # what the engine computes: fp32, fp16 or int8
    file: str
    sha256: str
    strongly_typed: bool
    builder_flags: tuple  # BuilderFlag names to set (TF32 is always cleared)
    pin_fp32: bool  # weakly typed FP16: pin the FP32 region on the network
    notice: str | None = None  # why the recipe differs from what was asked


def build_recipe(major: int, graph: GraphEntry, precision: str) -> BuildRecipe:
    """The recipe for ``graph`` at ``precision`` on TensorRT ``major`` (see module docstring)."""
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"unknown precision {precision!r} for TensorRT (fp32, fp16 or int8)")
    variants = graph.variants
    if precision == "int8":
        if "int8" not in variants:
            raise ModelDirError(f"{graph.file} has no int8 variant: make an INT8 model directory with "
                                "clit-calibrate MODEL_DIR -o MODEL_INT8 --data IMAGES")
        v = variants["int8"]
        return BuildRecipe("int8", v["file"], v["sha256"], major >= 10, () if major >= 10 else ("INT8",), False)
    if precision == "fp16":
        if "fp16" in variants and major >= 10:
            v = variants["fp16"]
            return BuildRecipe("fp16", v["file"], v["sha256"], True, (), False)
        if major < 11:
            return BuildRecipe("fp16", graph.file, graph.sha256, False, ("FP16", "OBEY_PRECISION_CONSTRAINTS"), True)
        return BuildRecipe("fp32", graph.file, graph.sha256, False, (), False,
                           notice=f"{graph.file}: no fp16 variant (TensorRT 11 builds FP16 only from the mixed-precision "
                                  "graph; re-export with clit-export --precision fp32,fp16): running it in FP32")
    return BuildRecipe("fp32", graph.file, graph.sha256, False, (), False)


def network_flags(trt, major: int, strongly_typed: bool) -> int:
    """``create_network`` flags: EXPLICIT_BATCH on 8.x (required by the ONNX parser, ignored in 10,
    removed in 11); STRONGLY_TYPED on 10.x (11: always strongly typed, the flag is ignored)."""
    if major < 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if major < 11 and strongly_typed:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def _timing_cache(trt, config, path: Path | None, log):
    """Attach the timing cache at ``path`` (a new one when absent, unreadable or made on another
    device: ``set_timing_cache`` returns False on a device mismatch); None if none works."""
    if path is None:
        return None
    blob = path.read_bytes() if path.is_file() else b""
    for data in ((blob, b"") if blob else (b"",)):
        try:
            cache = config.create_timing_cache(data)
        except Exception as exc:  # corrupt data: TensorRT logs it and may raise
            log(f"timing cache {path.name}: unreadable ({exc}); starting a new one")
            continue
        if cache is not None and config.set_timing_cache(cache, False):
            return cache
        if data:
            log(f"timing cache {path.name}: unusable here (corrupt or from another device); starting a new one")
    log(f"timing cache {path.name}: could not be created; building without one")
    return None


def build_serialized(trt, onnx_path: Path, profiles: dict, recipe: BuildRecipe, workspace: int,
                     timing_cache: Path | None, log=print, logger=None) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine with one optimisation profile."""
    major = trt_major(trt)
    logger = logger or stderr_logger(trt, log)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, major, recipe.strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path.name}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    for name in recipe.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if recipe.pin_fp32:
        pinning = pin_fp32(trt, network)
        log(f"{onnx_path.name}: {len(pinning.layers)} of {network.num_layers} layers pinned to FP32 "
            "(coordinate path, by dataflow)")
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profiles.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache = _timing_cache(trt, config, timing_cache, log)
    data = builder.build_serialized_network(network, config)
    if data is None:
        raise RuntimeError(f"{onnx_path.name}: TensorRT failed to build an engine (see its log above)")
    if cache is not None:
        blob = bytes(config.get_timing_cache().serialize())
        atomic_write(timing_cache, lambda f: f.write(blob))
    return bytes(data)


def timing_cache_name(trt_version: str, gpu: str, capability: str) -> str:
    """One timing cache per TensorRT version and device (TensorRT rejects another device's)."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{trt_version}-{gpu}-sm{capability}").strip("-")
    return f"timing-{slug}.cache"


def device_label(name: str, sms: int, total: int) -> str:
    """The device as engines are keyed: its name, multiprocessors and memory (Jetson AGX Orin,
    Orin NX and Orin Nano all report "Orin" and compute capability 8.7)."""
    return f"{name} ({sms} SMs, {total / (1 << 30):.0f} GiB)"


def engine_key_fields(manifest: Manifest, graph: GraphEntry, recipe: BuildRecipe, trt_version: str, gpu: str,
                      capability: str, limits: BuildLimits, workspace: int) -> dict:
    """Everything that changes the engine built for ``graph`` (the engine cache's key): the
    file parsed and its sha256, TensorRT version, device, precision, profiles, typing and
    flags, the pinning rule, and this code's ENGINE_FORMAT."""
    return {"engine_format": ENGINE_FORMAT, "graph_file": recipe.file, "graph_sha256": recipe.sha256,
            "tensorrt": trt_version, "gpu": gpu, "compute_capability": capability, "precision": recipe.precision,
            "profiles": {k: [list(s) for s in v] for k, v in input_profiles(manifest, graph, limits).items()},
            "flags": {"strongly_typed": recipe.strongly_typed, "builder": sorted(recipe.builder_flags), "tf32": False,
                      "workspace": workspace, "fp32_region_rule": RULE_VERSION if recipe.pin_fp32 else None}}


class TensorRTRunner:
    """Runs a model directory's graphs as TensorRT engines (built or taken from the cache)."""

    def __init__(self, manifest: Manifest, precision: str = "fp16", limits: BuildLimits | None = None,
                 cache_dir: Path | None = None, workspace: int = DEFAULT_WORKSPACE, log=None,
                 memory_limit: int | None = None, given: dict | None = None, use_saved: bool = True):
        if limits is not None and given:
            raise ValueError("give complete limits or the limits to keep while fitting, not both")
        self.trt = _trt()
        self.major = trt_major(self.trt)
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.manifest, self.precision = manifest, precision
        self.recipes = {g.file: build_recipe(self.major, g, precision) for g in manifest.graphs}
        for notice in dict.fromkeys(r.notice for r in self.recipes.values() if r.notice):
            self.log(f"notice: {notice}")
        self.cuda = open_cuda()
        for reason in FALLBACK_REASONS:
            self.log(f"notice: using {self.cuda.name}; {reason}")
        name, self.capability, self.integrated, sms = self.cuda.device_info()
        free, total = self.cuda.mem_info()
        self.gpu = device_label(name, sms, total)
        self.cache = EngineCache(cache_dir, log=self.log)
        # what the engines may use: on a Jetson (the GPU shares the RAM) the process's memory
        # budget, on a discrete GPU its free memory, with the memory plan's margin
        self.budget = memory_budget(memory_limit) if self.integrated else int(free * BUDGET_FRACTION)
        # given, else those of the last clit-build (use_saved), else the largest that fit the
        # budget, keeping those of them the user gave (``given``: clit-build's options)
        self.limits = limits or (saved_limits(self.cache, manifest) if use_saved and not given else None) or \
            fitting_limits(manifest, self.budget, given)
        check_limits(manifest, self.limits)
        need = tensorrt_bytes(manifest, self.limits)
        if need > self.budget:  # an estimate: warn, and let TensorRT have the last word
            hint = "--max-image" if manifest.encoder_halo == 0 else "--max-lr / --max-window / --max-queries"
            self.log(f"notice: engines for LR tile {self.limits.tile}, branch windows {self.limits.max_window}, "
                     f"{self.limits.max_queries} queries and LR side {self.limits.max_image} need about "
                     f"{need / (1 << 30):.1f} GiB, more than the {self.budget / (1 << 30):.1f} GiB available "
                     f"(estimate); if they fail, build smaller ones (clit-build {hint})")
        self.trt_logger = stderr_logger(self.trt, self.log)
        self.runtime = self.trt.Runtime(self.trt_logger)
        self.workspace = workspace
        self._engines: dict = {}
        # any file the pipeline may name (the graph or a variant) -> its graph, resolved once
        self._graph_of = {f: g for g in manifest.graphs for f in (g.file, *(v["file"] for v in g.variants.values()))}
        self._device: dict = {}  # tensor -> (pointer, bytes)
        self._scratch = (0, 0)  # (pointer, bytes): the activation buffer all contexts share
        self._host: dict = {}

    @property
    def precisions(self) -> set:
        """What the engines compute (a missing variant can make it differ from what was asked)."""
        return {r.precision for r in self.recipes.values()}

    # ---------------------------------------------------------------- building
    def key_fields(self, graph: GraphEntry) -> dict:
        return engine_key_fields(self.manifest, graph, self.recipes[graph.file], str(self.trt.__version__), self.gpu,
                                 self.capability, self.limits, self.workspace)

    def engine_for(self, graph: GraphEntry):
        """(engine, context) for ``graph``; builds it into the cache on first use."""
        if graph.file in self._engines:
            return self._engines[graph.file]
        recipe = self.recipes[graph.file]
        fields = self.key_fields(graph)
        path = self.manifest.root / recipe.file
        timing = self.cache.root / timing_cache_name(str(self.trt.__version__), self.gpu, self.capability)

        def build() -> bytes:
            self.log(f"building TensorRT engine for {path.name} ({recipe.precision}, TensorRT "
                     f"{self.trt.__version__}, {self.gpu}); this takes a while once")
            with file_lock(timing.with_suffix(".lock")):  # builds of other graphs share the timing cache
                return build_serialized(self.trt, path, input_profiles(self.manifest, graph, self.limits), recipe,
                                        self.workspace, timing, log=self.log, logger=self.trt_logger)

        engine, _ = self.cache.get_or_build(Path(graph.file).stem, fields, build, self.runtime.deserialize_cuda_engine)
        context = context_without_memory(self.trt, engine)
        if context is None:  # the bindings return None where the C++ API returns nullptr
            raise RuntimeError(f"{graph.file}: TensorRT could not create an execution context; {self._smaller(graph)}")
        self._share_scratch(graph, context, scratch_bytes(engine))
        self._engines[graph.file] = (engine, context)
        return self._engines[graph.file]

    def _smaller(self, graph: GraphEntry) -> str:
        hint = "--max-image" if self.manifest.encoder_halo == 0 and graph.kind == "encoder" else \
            "--max-lr / --max-window / --max-queries"
        return f"rebuild with smaller clit-build {hint}"

    def _share_scratch(self, graph: GraphEntry, context, need: int) -> None:
        """Attach the activation buffer every context shares to ``context``, first growing it to
        ``need`` bytes if this engine needs more than the earlier ones (between runs, which end
        synchronised: the old buffer is freed, the new one attached to every context made so far).
        The headers of 8.5-11.1 place no restriction on calling setDeviceMemory again (nor state
        that it is allowed). NVIDIA's own code does it from the 9.3/10.0 tags on: Polygraphy's
        TrtRunner re-sets ``device_memory`` on a context that has run, before every inference,
        after growing its buffer (tools/Polygraphy/.../trt/runner.py; ``set_device_memory`` from
        10.2), and demo/Diffusion's ``reactivate`` from 10.3; none of it for 8.x. Calling it again
        per batch size is a reported 7.2 usage (NVIDIA/TensorRT#2290, where it leaked a cuDNN
        descriptor per call); here it happens at most once per graph."""
        ptr, size = self._scratch
        if need > size:
            if ptr:  # freed first (the stream is idle between runs): never both buffers at once
                self.cuda.free(ptr)
                self._scratch = (0, 0)
            try:
                ptr = self.cuda.malloc(need)
            except Exception as exc:  # the shim's CudaError, pycuda's MemoryError
                self._engines.clear()  # their contexts held the freed buffer: made afresh on next use
                raise RuntimeError(f"{graph.file}: no GPU memory for TensorRT's {need / (1 << 20):.0f} MiB of "
                                   f"activations ({exc}); {self._smaller(graph)}") from exc
            size = need
            self._scratch = (ptr, size)
            for _, other in self._engines.values():
                attach_scratch(other, ptr, size)
        if size:
            attach_scratch(context, ptr, size)

    def build_all(self) -> list:
        """Build (or find) every engine of the model; returns one status line per graph."""
        lines = []
        for g in self.manifest.graphs:
            before = g.file in self._engines
            self.engine_for(g)
            r = self.recipes[g.file]
            lines.append(f"{g.file}: {'ready' if before else 'ok'} ({r.precision}, {r.file})")
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

    @staticmethod
    def _address(ctx, file: str, name: str, ptr: int) -> None:
        if not ctx.set_tensor_address(name, ptr):  # returns False on a bad name or address
            raise RuntimeError(f"{file}: TensorRT refused the address of {name}")

    def run(self, file: str, feeds: dict) -> list:
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
                arr = np.asarray(feeds[name])
                if not ctx.set_input_shape(name, arr.shape):
                    raise ValueError(outside_profile(self.manifest, graph, self.limits, name, arr.shape)
                                     or f"{file}: input {name} shape {arr.shape} is outside the engine's profile")
                host = self._pinned(f"{file}:{name}:in", arr.shape, dtype)  # async copies need page-locked memory
                np.copyto(host, arr, casting="same_kind")
                ptr = self._buffer(f"{file}:{name}", host.nbytes)
                self.cuda.htod(ptr, host)
                self._address(ctx, file, name, ptr)
        for name in [o["name"] for o in graph.outputs]:  # the ONNX output order the pipeline expects
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            shape = tuple(ctx.get_tensor_shape(name))
            host = self._pinned(f"{file}:{name}", shape, dtype)
            ptr = self._buffer(f"{file}:{name}", host.nbytes)
            self._address(ctx, file, name, ptr)
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
        saved = json.loads(path.read_text())
        saved.setdefault("max_window", default_window(int(saved["tile"])))  # saved before the window limit: what it built
        return BuildLimits(**saved)
    except (OSError, ValueError, TypeError, KeyError):
        return None
