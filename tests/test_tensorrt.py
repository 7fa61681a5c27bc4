"""TensorRT backend: what can be checked without TensorRT (profiles against the real pipeline's
shapes, the engine cache with its lock and corruption handling, the build recipe per TensorRT
version, the timing cache and CUDA shim paths, clit-build's dry run), and the engine tests
themselves, marked ``trt`` (they skip without TensorRT and a GPU).

Where a test stands in for TensorRT, cuda-python or pycuda, the behaviour it models is the one
their sources document (cited per test): such a test proves our control flow under that
behaviour, not the library's behaviour itself.  Runs without torch (the bundled model's
graphs), so it is part of the Python 3.8 suite."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from clit.runtime.engines import make_engine
from clit.runtime.manifest import GraphEntry, ModelDirError, load_manifest
from clit.runtime.onnx_backend import OnnxRuntimeRunner
from clit.runtime.pipeline import GroupingRule, Pipeline
from clit.runtime.tensorrt.backend import (
    ENGINE_FORMAT,
    BuildRecipe,
    _timing_cache,
    build_recipe,
    engine_key_fields,
    network_flags,
    timing_cache_name,
)
from clit.runtime.tensorrt.build_cli import main as build_cli
from clit.runtime.tensorrt.engine_cache import EngineCache, cache_key
from clit.runtime.tensorrt.profiles import (
    BuildLimits,
    check_limits,
    dim_ranges,
    input_profiles,
    outside_profile,
    plan_tile,
)


@pytest.fixture
def model_dir():
    from clit.runtime.bundled import bundled_model_dir

    path = bundled_model_dir()
    if path is None:
        pytest.skip("this installation has no bundled model")
    return path


class RecordingRunner(OnnxRuntimeRunner):
    """The real ONNX Runtime runner, noting the largest and smallest shape of every input."""

    def __init__(self, manifest):
        super().__init__(manifest)
        self.seen: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def run(self, file, feeds):
        for name, arr in feeds.items():
            shape = np.array(np.shape(arr))
            lo, hi = self.seen.get((file, name), (shape, shape))
            self.seen[(file, name)] = (np.minimum(lo, shape), np.maximum(hi, shape))
        return super().run(file, feeds)


def _assert_inside_profiles(manifest, limits, runner) -> int:
    """Every input shape ``runner`` saw lies inside its graph's profile; returns how many were checked."""
    checked = 0
    for g in manifest.graphs:
        profiles = input_profiles(manifest, g, limits)
        for (file, name), (lo, hi) in runner.seen.items():
            if file != g.file or name not in profiles:
                continue
            pmin, _, pmax = (np.array(s) for s in profiles[name])
            assert (pmin <= lo).all() and (hi <= pmax).all(), (file, name, lo, hi, profiles[name])
            checked += 1
    return checked


@pytest.mark.parametrize("n_branches, tile, window, cases", [
    (2, 8, 2048, [((21, 30), 2), ((17, 9), 3.7), ((20, 26), 6), ((12, 11), 12), ((9, 10), (16, 5))]),
    (2, 13, 2048, [((40, 27), 4), ((14, 33), 7.5)]),
    (2, 13, 30, [((40, 27), 4), ((14, 33), 7.5), ((19, 12), 16)]),  # the window limit lowers the tile
    (3, 8, 2048, [((21, 30), 2), ((12, 11), 12), ((7, 9), 18), ((5, 6), (30, 4))]),
    (3, 9, 50, [((20, 26), 6), ((11, 10), 24), ((6, 5), 40)]),
])
def test_profiles_cover_what_the_pipeline_feeds(bundled_with_branches, rng, n_branches, tile, window, cases):
    """Every input shape the real pipeline feeds, at the LR tile the TensorRT engine gives it
    (TensorRTEngine.upscale, its runner's limits), lies inside the profiles: with two and three
    branches, and where the branch window limit, not the tile, bounds the windows."""
    from types import SimpleNamespace as NS

    from clit.runtime.engines import TensorRTEngine

    manifest = bundled_with_branches(n_branches)
    limits = BuildLimits(tile=tile, max_queries=700, max_image=40, opt_tile=4, opt_queries=100, max_window=window)
    check_limits(manifest, limits)
    runner = RecordingRunner(manifest)
    engine = object.__new__(TensorRTEngine)  # its upscale over the real pipeline, ONNX Runtime in TensorRT's place
    engine.runner, engine.pipeline, engine.chunk, engine.tile = NS(limits=limits), Pipeline(manifest, runner), 700, tile
    for (h, w), scale in cases:
        engine.upscale(rng.random((h, w, 3), dtype=np.float32), scale=scale)
        n = engine.pipeline.plan((h, w), scale=scale).n_branches
        assert engine.pipeline.last_tiling[0] == plan_tile(limits, n, tile)
    checked = _assert_inside_profiles(manifest, limits, runner)
    assert checked >= 15 * n_branches // 2  # encoder image; branch feat/rows/cols; q/k/v/rows/cols/coord per decoder
    ran = {file for file, _ in runner.seen}
    assert {g.branch for g in manifest.graphs if g.kind in ("decoder", "grouped") and g.file in ran} == \
        set(range(n_branches))  # every branch decoded


def test_profiles_cover_a_window_padded_encoder(bundled_with_branches, rng):
    """An encoder that runs on the whole image padded to whole windows (SwinIR: halo 0, window 8):
    an image as large as --max-image is padded past it, and the decoders' coordinate tables
    follow (review finding: they were sized for the unpadded side)."""
    from clit.runtime.manifest import Manifest

    base = bundled_with_branches(2)
    manifest = Manifest(base.root, {**base.data, "encoder_halo": 0, "window_size": 8})
    limits = BuildLimits(tile=16, max_queries=700, max_image=40, opt_tile=4, opt_queries=100)
    runner = RecordingRunner(manifest)
    pipe = Pipeline(manifest, runner)
    for scale in (2, 6):
        pipe.upscale(rng.random((40, 33, 3), dtype=np.float32), scale=scale, chunk=700, tile=16)
    assert _assert_inside_profiles(manifest, limits, runner) >= 10


def test_branch_window_limit(bundled_with_branches):
    """The last branch of an n-branch model reads a grid 4^(n-1) x the LR: a window limit below
    that cannot hold one LR pixel, and is refused; above it, the tile shrinks with the branches."""
    three = bundled_with_branches(3)
    with pytest.raises(ValueError, match="at least 16"):
        check_limits(three, BuildLimits(max_window=15))
    check_limits(three, BuildLimits(max_window=16))
    limits = BuildLimits(tile=512, max_window=2048)
    assert [plan_tile(limits, n, 512) for n in (1, 2, 3)] == [512, 512, 128]
    assert plan_tile(limits, 3, 100) == 100 and plan_tile(BuildLimits(max_window=16), 3, 512) == 1
    assert plan_tile(BuildLimits(max_window=16), 1, 512) == 512  # branch 1's window is the encoder's
    dec3 = three.graph("decoder", 2)
    assert dim_ranges(three, dec3, limits)["hq"][2] == 2048 + 2 * three.radius + 6
    assert "--max-window" in outside_profile(three, dec3, limits, "q", (1, 64, 2048 + 13, 5))
    assert "--max-lr" in outside_profile(three, three.graph("decoder", 1), limits, "q", (1, 64, 2048 + 13, 5))


def test_profiles_shapes_and_unknown_dims(model_dir):
    manifest = load_manifest(model_dir)
    limits = BuildLimits(tile=100, max_queries=5000, max_image=300, opt_tile=64, opt_queries=1000)
    enc = input_profiles(manifest, manifest.graph("encoder"), limits)["image"]
    halo = manifest.encoder_halo
    assert enc[0] == (1, 3, 1, 1) and enc[1] == (1, 3, 64, 64) and enc[2][2] == 100 + 2 * (3 + 3 + halo)
    dec1 = input_profiles(manifest, manifest.graph("decoder", 1), limits)
    assert dec1["coord"] == ((1, 1, 2), (1, 1000, 2), (1, 5000, 2))
    assert dec1["rows"][2] == (300 * 4,) and dec1["q"][2][1] == manifest.data["base_dim"]
    assert dec1["q"][2][2] == 100 * 4 + 2 * 3 + 6
    assert "offset" not in dec1  # static inputs need no profile
    for lim in (limits, BuildLimits(tile=100, max_queries=10, max_image=300), BuildLimits()):
        dims = dim_ranges(manifest, manifest.graph("grouped", 0), lim)
        assert all(lo <= opt <= hi for lo, opt, hi in dims.values()), dims
        # a grouped block has R x S queries: N is tuned for the block R and S are tuned for
        assert dims["N"][1] == min(dims["R"][1] * dims["S"][1], dims["N"][2])
    odd = GraphEntry("decoder", 0, "x.onnx", "", [{"name": "q", "shape": [1, 8, "zz", 3]}], [])
    with pytest.raises(ModelDirError, match="zz"):
        input_profiles(manifest, odd, limits)


def test_cache_key_changes_with_every_field():
    base = {"graph_sha256": "a" * 64, "tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7",
            "precision": "fp16", "profiles": {"image": [[1, 3, 1, 1], [1, 3, 64, 64], [1, 3, 512, 512]]},
            "flags": {"strongly_typed": False}}
    key = cache_key(base)
    assert key == cache_key(json.loads(json.dumps(base))) and len(key) == 64
    for field, value in [("graph_sha256", "b" * 64), ("tensorrt", "8.5.2"), ("gpu", "RTX 4090"),
                         ("compute_capability", "8.9"), ("precision", "fp32"),
                         ("profiles", {"image": [[1, 3, 1, 1], [1, 3, 64, 64], [1, 3, 1024, 1024]]}),
                         ("flags", {"strongly_typed": True})]:
        assert cache_key({**base, field: value}) != key, field


def test_cache_builds_once_then_reuses_and_rebuilds_corrupt(tmp_path):
    messages = []
    cache = EngineCache(tmp_path / "c", log=messages.append)
    builds = []

    def build() -> bytes:
        builds.append(1)
        return b"ENGINE" + bytes(range(50))

    def load(data: bytes):
        return data if data.startswith(b"ENGINE") else None

    fields = {"graph_sha256": "x", "precision": "fp16"}
    engine, how = cache.get_or_build("decoder1", fields, build, load)
    assert how == "built" and engine.startswith(b"ENGINE") and len(builds) == 1
    assert cache.get_or_build("decoder1", fields, build, load)[1] == "cached" and len(builds) == 1
    plan, meta, _ = cache.paths("decoder1", cache_key(fields))
    plan.write_bytes(plan.read_bytes()[:-3] + b"xyz")  # bit rot
    assert cache.get_or_build("decoder1", fields, build, load)[1] == "built" and len(builds) == 2
    assert "checksum" in messages[-1]
    plan.write_bytes(b"JUNK")  # a checksum-consistent plan the loader rejects (other TensorRT)
    record = json.loads(meta.read_text())
    import hashlib

    record["sha256"] = hashlib.sha256(b"JUNK").hexdigest()
    meta.write_text(json.dumps(record))
    assert cache.get_or_build("decoder1", fields, build, load)[1] == "built" and "deserialized" in messages[-1]
    meta.unlink()
    assert cache.get_or_build("decoder1", fields, build, load)[1] == "built" and "incomplete" in messages[-1]
    assert cache.get_or_build("decoder1", {**fields, "precision": "fp32"}, build, load)[1] == "built"
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.endswith(".part")]
    with pytest.raises(RuntimeError, match="cannot be loaded"):
        cache.get_or_build("encoder", fields, lambda: b"bad", load)
    assert not cache.paths("encoder", cache_key(fields))[0].exists()


def test_cache_lock_two_processes_build_once(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from clit.runtime.tensorrt.engine_cache import EngineCache
        def build():
            with open({str(tmp_path / 'builds.log')!r}, 'a') as f:
                f.write('build\\n')
            time.sleep(1.5)
            return b'ENGINE-data'
        engine, how = EngineCache({str(tmp_path / 'cache')!r}).get_or_build(
            'decoder0', {{'k': 1}}, build, lambda d: d if d.startswith(b'ENGINE') else None)
        print(how)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert results == ["built", "cached"]
    assert (tmp_path / "builds.log").read_text().count("build") == 1


def test_clit_build_dry_run_and_missing_tensorrt(model_dir):
    res = CliRunner().invoke(build_cli, [str(model_dir), "--print-profiles", "--max-lr", "320x200"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert set(doc) == {g["file"] for g in json.loads((model_dir / "manifest.json").read_text())["graphs"]}
    assert doc["encoder.onnx"]["image"][2][2] > 320
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        res = CliRunner().invoke(build_cli, [str(model_dir)])
        assert res.exit_code == 1 and "needs TensorRT" in res.output
        with pytest.raises(RuntimeError, match="needs TensorRT"):
            make_engine("tensorrt", model_dir=model_dir)
        assert make_engine("auto", model_dir=model_dir).name.startswith("onnxruntime")


def _largest_tensor_at_profile_max(manifest, graph, limits) -> int:
    """Elements of the largest tensor of ``graph`` with every input at its profile maximum
    (onnxruntime's symbolic shape inference propagates the computed shapes)."""
    onnx = pytest.importorskip("onnx")
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(manifest.root / graph.file))
    profiles = input_profiles(manifest, graph, limits)
    for i in model.graph.input:
        for d, v in zip(i.type.tensor_type.shape.dim, profiles.get(i.name, [None, None, ()])[2]):
            d.ClearField("dim_param")
            d.dim_value = int(v)
    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    largest = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        assert None not in dims, (graph.file, vi.name)  # every shape is known at the profile maximum
        largest = max(largest, int(np.prod(dims, dtype=np.int64)) if dims else 1)
    return largest


def test_clit_build_window_limit(bundled_with_branches):
    """--max-window bounds the third branch's windows in the printed profiles, and one too small
    for a three-branch model is refused with the least it takes."""
    three = bundled_with_branches(3)
    res = CliRunner().invoke(build_cli, [str(three.root), "--print-profiles", "--max-lr", "256", "--max-window", "1000"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    margin = 2 * three.radius + 6
    assert doc["decoder3.onnx"]["q"][2][2] == 1000 + margin and doc["decoder2.onnx"]["q"][2][2] == 1000 + margin
    res = CliRunner().invoke(build_cli, [str(three.root), "--print-profiles", "--max-lr", "256"])
    doc = json.loads(res.output)  # default: 4 x the tile, what branch 2 reads at that tile
    assert doc["decoder3.onnx"]["q"][2][2] == 1024 + margin == doc["decoder2.onnx"]["q"][2][2]
    res = CliRunner().invoke(build_cli, [str(three.root), "--print-profiles", "--max-window", "8"])
    assert res.exit_code == 1 and "at least 16" in res.output


def test_saved_limits_from_before_the_window_limit(tmp_path, model_dir):
    """Limits saved by a clit-build without --max-window (tile only) read back as what those
    engines were built for: windows of 4 x the tile, so the same engines are found."""
    from clit.runtime.tensorrt.backend import _limits_path, save_limits, saved_limits

    manifest = load_manifest(model_dir)
    cache = EngineCache(tmp_path)
    built = BuildLimits(tile=1024, max_queries=4096, max_image=4096, opt_tile=256, opt_queries=4096, max_window=4096)
    save_limits(cache, manifest, built)
    assert saved_limits(cache, manifest) == built
    old = json.loads(_limits_path(cache, manifest).read_text())
    del old["max_window"]
    _limits_path(cache, manifest).write_text(json.dumps(old))
    assert saved_limits(cache, manifest) == built
    _limits_path(cache, manifest).write_text("{}")
    assert saved_limits(cache, manifest) is None


@pytest.mark.parametrize("limits", [BuildLimits(), BuildLimits(tile=1024, max_queries=65536, max_image=8192)])
@pytest.mark.parametrize("n_branches", [2, 3])
def test_every_tensor_fits_at_the_profile_maximum(bundled_with_branches, n_branches, limits):
    """TensorRT sizes every tensor at the profile's maxima, each dimension independently, and
    refuses tensors of 2^31 elements or more ("The volume of the tensor must be less than 2^31
    elements", ITensor and addInput docs of NvInfer.h in TensorRT 8.5 and 10.3; NVIDIA/TensorRT
    issues #1948 and #3033 show the build error): the grouped decoders' block caps keep the products of
    their group and run dimensions bounded, the branch window limit the third branch's maps."""
    manifest = bundled_with_branches(n_branches)
    for g in manifest.graphs:
        assert _largest_tensor_at_profile_max(manifest, g, limits) < 2**31, g.file


def test_outside_profile_names_the_option_to_raise(model_dir):
    manifest = load_manifest(model_dir)
    limits = BuildLimits(tile=64, max_queries=1000, max_image=300, opt_tile=32, opt_queries=100)
    dec2 = manifest.graph("decoder", 1)
    assert outside_profile(manifest, dec2, limits, "rows", (300 * 4,)) is None
    assert "--max-image" in outside_profile(manifest, dec2, limits, "rows", (300 * 4 + 1,))
    assert "--max-queries" in outside_profile(manifest, dec2, limits, "coord", (1, 1001, 2))
    c = manifest.data["base_dim"]
    assert "--max-lr" in outside_profile(manifest, dec2, limits, "q", (1, c, 64 * 4 + 13, 5))
    grouped = manifest.graph("grouped", 1)
    _, run, groups = GroupingRule.of(manifest)
    # a block keeps one whole group (run^2 queries) even under a smaller chunk limit (review finding)
    tiny = BuildLimits(tile=64, max_queries=4, max_image=300, opt_tile=32, opt_queries=4)
    assert outside_profile(manifest, grouped, tiny, "sel", (run * run,)) is None
    assert outside_profile(manifest, grouped, limits, "ry", (groups, run)) is None
    assert "decoder_grouping" in outside_profile(manifest, grouped, limits, "ry", (groups, run + 1))


def _graph(variants=()):
    return GraphEntry("decoder", 0, "decoder1.onnx", "a" * 64, [], [],
                      variants={v: {"file": f"decoder1.{v}.onnx", "sha256": v * 16} for v in variants})


def test_build_recipe_per_tensorrt_version():
    """What each TensorRT version needs, from NVIDIA/TensorRT's headers and bindings: weak
    typing with FP16/INT8 flags and precision constraints up to 10.x (deprecated in 10.12), the
    STRONGLY_TYPED network flag from 9.0, no weak typing at all in 11.0 (BuilderFlag FP16/INT8
    and ILayer.precision removed, release/11.0 NvInfer.h and pyGraph.cpp)."""
    both = _graph(("fp16", "int8"))
    r = build_recipe(8, both, "fp16")
    assert (r.file, r.strongly_typed, r.pin_fp32) == ("decoder1.onnx", False, True)
    assert set(r.builder_flags) == {"FP16", "OBEY_PRECISION_CONSTRAINTS"}
    for major in (10, 11):
        r = build_recipe(major, both, "fp16")
        assert (r.file, r.strongly_typed, r.builder_flags, r.pin_fp32) == ("decoder1.fp16.onnx", True, (), False)
        r = build_recipe(major, both, "int8")
        assert (r.file, r.strongly_typed, r.builder_flags) == ("decoder1.int8.onnx", True, ())
    r = build_recipe(8, both, "int8")
    assert (r.file, r.strongly_typed, r.builder_flags) == ("decoder1.int8.onnx", False, ("INT8",))
    for major in (8, 10, 11):
        r = build_recipe(major, both, "fp32")
        assert (r.precision, r.file, r.builder_flags, r.pin_fp32) == ("fp32", "decoder1.onnx", (), False)
    plain = _graph()
    r = build_recipe(10, plain, "fp16")  # no variant: 10.x still has weak typing
    assert r.pin_fp32 and r.precision == "fp16" and r.notice is None
    r = build_recipe(11, plain, "fp16")  # 11: FP32 with a notice instead of a crash
    assert r.precision == "fp32" and r.file == "decoder1.onnx" and "no fp16 variant" in r.notice
    with pytest.raises(ModelDirError, match="clit-calibrate"):
        build_recipe(10, plain, "int8")


def test_network_flags_per_version():
    """Enum values from NvInfer.h: 8.5 EXPLICIT_BATCH = 0 (the ONNX parser requires it); 10.x
    EXPLICIT_BATCH = 0 (deprecated, ignored) and STRONGLY_TYPED = 1; 11.x STRONGLY_TYPED = 0
    (deprecated, ignored: always strongly typed) and no EXPLICIT_BATCH."""
    from types import SimpleNamespace as NS

    v8 = NS(NetworkDefinitionCreationFlag=NS(EXPLICIT_BATCH=0))
    v10 = NS(NetworkDefinitionCreationFlag=NS(EXPLICIT_BATCH=0, STRONGLY_TYPED=1))
    v11 = NS(NetworkDefinitionCreationFlag=NS(STRONGLY_TYPED=0))
    assert network_flags(v8, 8, False) == 1
    assert network_flags(v10, 10, False) == 0 and network_flags(v10, 10, True) == 2
    assert network_flags(v11, 11, True) == 0 and network_flags(v11, 11, False) == 0


def _release(version: str):
    """(trt module, engine, context) with exactly the scratch-memory members TensorRT
    ``version`` binds, as read in NVIDIA/TensorRT python/src/infer/pyCore.cpp per release branch
    (8.5 and 8.6 alike; 10.0; 10.1-10.16; 11.0-11.1): a deprecated member warns on use
    (DeprecationWarning, python/src/utils.cpp), ``device_memory`` is write-only (bound with no
    getter).  What these model is the bindings' surface; whether TensorRT then runs is for the
    ``trt`` tests on a GPU."""
    import warnings
    from types import SimpleNamespace as NS

    v = tuple(int(part) for part in version.split("."))
    calls = []

    def deprecated(name, value=None):
        def f(*args):
            warnings.warn(f"{name} is deprecated", DeprecationWarning, stacklevel=2)
            calls.append((name, args))
            return value
        return f

    class Context:
        def _set(self, ptr):
            calls.append(("device_memory=", ptr))
        device_memory = property(None, _set)
        if v >= (10, 1):
            def set_device_memory(self, ptr, size):
                calls.append(("set_device_memory", ptr, size))

    strategy = NS(STATIC=0, ON_PROFILE_CHANGE=1, USER_MANAGED=2) if v >= (10,) else None

    class Engine:
        if v < (10,):
            device_memory_size = 1000

            def create_execution_context_without_device_memory(self):
                calls.append(("without_device_memory",))
                return Context()

            def create_execution_context(self):
                calls.append(("create_execution_context",))
                return Context()
        else:
            def create_execution_context(self, strategy=0):
                calls.append(("create_execution_context", strategy))
                return Context()
        if (10,) <= v < (11,):
            create_execution_context_without_device_memory = deprecated("without_device_memory", Context())
        if v == (10, 0):
            device_memory_size = 1000
        elif (10, 1) <= v < (11,):
            device_memory_size = property(deprecated("device_memory_size", 999))
        if v >= (10, 1):
            device_memory_size_v2 = 1000

    trt = NS(ExecutionContextAllocationStrategy=strategy) if strategy else NS()
    return trt, Engine(), calls


@pytest.mark.parametrize("version", ["8.5", "8.6", "10.0", "10.16", "11.1"])
def test_shared_scratch_calls_per_tensorrt_version(version):
    """Each release gets the calls it binds for a context without its own activation memory,
    its size and attaching a shared buffer, and no deprecated one where a successor exists."""
    import warnings

    from clit.runtime.tensorrt.backend import attach_scratch, context_without_memory, scratch_bytes

    trt, engine, calls = _release(version)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scratch_bytes(engine) == 1000
        ctx = context_without_memory(trt, engine)
        attach_scratch(ctx, 0x7F0000, 4096)
    v = tuple(int(part) for part in version.split("."))
    assert calls[0] == (("without_device_memory",) if v < (10,) else ("create_execution_context", 2))
    assert calls[1] == (("set_device_memory", 0x7F0000, 4096) if v >= (10, 1) else ("device_memory=", 0x7F0000))
    assert len(calls) == 2


def test_contexts_share_one_growing_scratch_buffer():
    """The runner's control flow over the calls above: one buffer, grown when a later engine needs
    more, re-attached to every earlier context, the old one freed."""
    from types import SimpleNamespace as NS

    from clit.runtime.tensorrt.backend import TensorRTRunner

    _, engine, calls = _release("10.16")
    log = []
    cuda = NS(malloc=lambda n: log.append(("malloc", n)) or 0x1000 * len(log), free=lambda p: log.append(("free", p)))
    runner = NS(_scratch=(0, 0), _engines={}, cuda=cuda, manifest=NS(encoder_halo=36))
    runner._smaller = lambda graph: TensorRTRunner._smaller(runner, graph)
    for name, need in (("a", 300), ("b", 200), ("c", 900)):
        ctx = engine.create_execution_context(2)
        TensorRTRunner._share_scratch(runner, _graph(), ctx, need)
        runner._engines[name] = (engine, ctx)
    # freed before the larger one is made: never both at once
    assert log == [("malloc", 300), ("free", 0x1000), ("malloc", 900)] and runner._scratch == (0x3000, 900)
    attached = [call for call in calls if call[0] == "set_device_memory"]
    # a gets the first buffer, b shares it, then a and b move to the grown one, and c gets it
    assert attached == [("set_device_memory", 0x1000, 300)] * 2 + [("set_device_memory", 0x3000, 900)] * 3
    runner.cuda.malloc = lambda n: (_ for _ in ()).throw(MemoryError("cuMemAlloc failed: out of memory"))
    with pytest.raises(RuntimeError, match="no GPU memory.*--max-lr"):  # names what to lower, and
        TensorRTRunner._share_scratch(runner, _graph(), engine.create_execution_context(2), 2000)
    assert runner._engines == {} and runner._scratch == (0, 0)  # no context keeps the freed buffer


class _Config:
    """IBuilderConfig's timing-cache calls as documented (pyCoreDoc.h, release/8.5 and 11.1):
    ``create_timing_cache(b"")`` makes a new cache, ``set_timing_cache`` returns a bool, False
    when the cache's CUDA device properties differ from the current device.  What TensorRT does
    with corrupt data is not documented: this stand-in raises, or returns None, as asked."""

    def __init__(self, corrupt="raise", foreign=False):
        self.corrupt, self.foreign, self.attached = corrupt, foreign, None

    def create_timing_cache(self, data):
        if data and data.startswith(b"BAD"):
            if self.corrupt == "raise":
                raise RuntimeError("Serialization assertion magicTagRead == kMAGIC_TAG failed")
            return None
        return {"data": bytes(data)}

    def set_timing_cache(self, cache, ignore_mismatch):
        ok = not (self.foreign and cache["data"]) or ignore_mismatch
        if ok:
            self.attached = cache
        return ok


def test_timing_cache_new_corrupt_foreign_and_missing(tmp_path):
    log = []
    path = tmp_path / "t.cache"
    assert _timing_cache(None, _Config(), None, log.append) is None  # no cache wanted
    cfg = _Config()
    assert _timing_cache(None, cfg, path, log.append) == {"data": b""} and cfg.attached and not log  # new one
    path.write_bytes(b"GOOD")
    assert _timing_cache(None, _Config(), path, log.append) == {"data": b"GOOD"}  # reused
    for corrupt in ("raise", "none"):
        path.write_bytes(b"BAD")
        log.clear()
        cfg = _Config(corrupt=corrupt)
        assert _timing_cache(None, cfg, path, log.append) == {"data": b""} and cfg.attached == {"data": b""}
        assert len(log) == 1 and "new one" in log[0]
    path.write_bytes(b"GOOD")
    log.clear()
    cfg = _Config(foreign=True)  # made on another GPU: refused, so a new one (strict, not ignore_mismatch)
    assert _timing_cache(None, cfg, path, log.append) == {"data": b""} and "another device" in log[0]
    assert timing_cache_name("10.3.0", "Orin (nvgpu)", "8.7") == "timing-10.3.0-Orin-nvgpu-sm8.7.cache"


def test_engine_key_changes_with_recipe_device_and_format(model_dir):
    manifest = load_manifest(model_dir)
    graph = manifest.graph("decoder", 0)
    limits = BuildLimits()
    strong = BuildRecipe("fp16", "decoder1.fp16.onnx", "b" * 64, True, (), False)
    weak = BuildRecipe("fp16", graph.file, graph.sha256, False, ("FP16", "OBEY_PRECISION_CONSTRAINTS"), True)
    base = engine_key_fields(manifest, graph, weak, "8.5.2", "Orin", "8.7", limits, 1 << 30)
    assert base["engine_format"] == ENGINE_FORMAT and base["flags"]["tf32"] is False
    assert base["flags"]["fp32_region_rule"] is not None  # a new pinning rule rebuilds pinned engines
    others = [engine_key_fields(manifest, graph, strong, "8.5.2", "Orin", "8.7", limits, 1 << 30),
              engine_key_fields(manifest, graph, weak, "8.6.2", "Orin", "8.7", limits, 1 << 30),
              engine_key_fields(manifest, graph, weak, "8.5.2", "Xavier", "7.2", limits, 1 << 30),
              engine_key_fields(manifest, graph, weak, "8.5.2", "Orin", "8.7", BuildLimits(tile=256), 1 << 30),
              engine_key_fields(manifest, graph, weak, "8.5.2", "Orin", "8.7", limits, 1 << 29)]
    keys = {cache_key(base)} | {cache_key(o) for o in others}
    assert len(keys) == 1 + len(others)


@pytest.mark.parametrize("n_branches", [2, 3])
def test_default_limits_fit_the_memory(bundled_with_branches, n_branches):
    """The default build limits are the largest whose estimated engine memory fits the budget
    (the GPU's free memory, or a Jetson's shared RAM), down to 2 GiB with three branches, and
    whole-image encoders (SwinIR, halo 0) get a smaller largest LR side rather than limits
    that can never fit."""
    from clit.runtime.manifest import Manifest
    from clit.runtime.memory_plan import GIB, fitting_limits, tensorrt_bytes
    from clit.runtime.tensorrt.backend import device_label

    manifest = bundled_with_branches(n_branches)
    previous = None
    for gib in (2, 4, 8, 16, 64):
        limits = fitting_limits(manifest, gib * GIB)
        assert tensorrt_bytes(manifest, limits) <= gib * GIB and limits.max_image == 4096
        check_limits(manifest, limits)
        if previous is not None:
            assert (limits.tile, limits.max_queries) >= (previous.tile, previous.max_queries)
        previous = limits
    assert fitting_limits(manifest, 1 << 50) == BuildLimits()  # plenty of memory: the defaults
    whole = Manifest(manifest.root, {**manifest.data, "encoder_halo": 0, "window_size": 8})
    limits = fitting_limits(whole, 8 * GIB)
    assert limits.max_image < 4096 and tensorrt_bytes(whole, limits) <= 8 * GIB
    assert device_label("Orin", 16, 64 << 30) != device_label("Orin", 8, 8 << 30)


def test_limits_given_are_kept_and_the_others_fitted(bundled_with_branches):
    """clit-build's options fix the limits they name and the others are still fitted to the
    memory: --max-window alone on a 2 GiB board used to take the 512 tile and 32768-query
    defaults for the rest (an engine far over the budget).  The tile and chunk not given are
    the largest that fit (the next larger tile, with the smallest chunk, or the next larger
    chunk does not); the given limits are kept even when nothing fits (the runner then
    reports the estimate)."""
    from dataclasses import replace

    from clit.runtime.geometry import window_padded_size
    from clit.runtime.manifest import Manifest
    from clit.runtime.memory_plan import FIT_QUERIES, FIT_TILES, GIB, fitting_limits, tensorrt_bytes
    from clit.runtime.tensorrt.build_cli import given_limits, limits_from
    from clit.runtime.tensorrt.profiles import default_window, encoder_window

    three = bundled_with_branches(3)
    budget = 2 * GIB
    assert given_limits("1024x768", None, None, 2000) == {"tile": 1024, "max_window": 2000}
    assert given_limits(None, None, None, None) == {}
    # nothing given: README's three-branch figure for 2 GiB (tile 96, 8192 queries)
    assert fitting_limits(three, budget) == BuildLimits(tile=96, max_queries=8192, max_image=4096, opt_tile=96,
                                                        opt_queries=8192, max_window=384)
    assert tensorrt_bytes(three, limits_from({"max_window": 1024}, three)) > budget  # what clit-build used to build

    def over(limits, **change):
        if "tile" in change and "max_window" not in change:
            change["max_window"] = max(limits.max_window, default_window(change["tile"]))
        return tensorrt_bytes(three, replace(limits, **change)) > budget

    for given in ({"max_window": 1024}, {"max_window": 128}, {"tile": 64}, {"max_queries": 4096},
                  {"max_image": 1024}, {"tile": 64, "max_window": 300}):
        limits = fitting_limits(three, budget, given)
        assert {k: getattr(limits, k) for k in given} == given
        assert tensorrt_bytes(three, limits) <= budget, given
        check_limits(three, limits)
        if "tile" not in given and limits.tile != FIT_TILES[0]:
            bigger = FIT_TILES[FIT_TILES.index(limits.tile) - 1]
            window = {} if "max_window" in given else {"max_window": default_window(bigger)}
            assert over(limits, tile=bigger, max_queries=given.get("max_queries", FIT_QUERIES[-1]), **window), given
        if "max_queries" not in given and limits.max_queries != FIT_QUERIES[0]:
            assert over(limits, max_queries=FIT_QUERIES[FIT_QUERIES.index(limits.max_queries) - 1]), given
    # a window limit below what the fit would choose leaves memory for a larger tile
    assert fitting_limits(three, budget, {"max_window": 128}).tile > fitting_limits(three, budget).tile
    too_big = fitting_limits(three, budget, {"tile": 512, "max_queries": 32768})
    assert (too_big.tile, too_big.max_queries) == (512, 32768) and tensorrt_bytes(three, too_big) > budget
    whole = Manifest(three.root, {**three.data, "encoder_halo": 0, "window_size": 8})
    assert fitting_limits(whole, 8 * GIB, {"max_image": 1024}).max_image == 1024
    # a given LR side below a given tile lowers the tile (no tile is larger than its image); it
    # used to raise the side, so a whole-image encoder got a profile larger than asked
    small = fitting_limits(whole, 8 * GIB, {"tile": 512, "max_image": 200})
    assert (small.tile, small.max_image, small.max_window) == (200, 200, default_window(200))
    assert encoder_window(whole, small) == max(window_padded_size((200, 200), 8))
    shown = limits_from({"max_image": 200}, three)
    assert (shown.tile, shown.max_image) == (200, 200)
    fitted = fitting_limits(whole, 8 * GIB, {"tile": 128})
    assert fitted.tile == 128 and tensorrt_bytes(whole, fitted) <= 8 * GIB
    assert fitted.max_image == 4096 or tensorrt_bytes(whole, replace(fitted, max_image=2 * fitted.max_image)) > 8 * GIB
    with pytest.raises(ValueError, match="unknown build limits"):
        fitting_limits(three, budget, {"tile_size": 64})
    # --print-profiles' defaults: a window at least the last branch's grid per LR pixel
    assert limits_from({"tile": 2}, three).max_window == 16 and limits_from({}, three) == BuildLimits()


FAKE_PYCUDA = r"""
import atexit, os, sys
STACK = []

def _module_cleanup():  # what pycuda's C++ module cleanup does (src/cpp/cuda.hpp): abort if not empty
    if STACK:
        sys.stderr.write("PyCUDA ERROR: The context stack was not empty upon module cleanup.\n")
        sys.stderr.flush()
        os.abort()

atexit.register(_module_cleanup)  # registered first, so it runs after the handlers registered later

class Context:
    def push(self):
        STACK.append(self)
    def pop(self):
        STACK.pop()

class Device:
    @staticmethod
    def count():
        return 1
    def __init__(self, i):
        pass
    def retain_primary_context(self):
        return Context()
    def compute_capability(self):
        return (8, 7)
    def name(self):
        return "Fake Orin"
    def get_attribute(self, attr):
        return 1

class device_attribute:
    INTEGRATED = "integrated"
    MULTIPROCESSOR_COUNT = "multiprocessor_count"

def mem_get_info():
    return (6 << 30, 8 << 30)

class Stream:
    handle = 0

def init():
    pass
"""

FAKE_CUDA_RUNTIME = """
def cudaGetDeviceCount():  # a cuda-python built for a newer CUDA major than the driver's
    return (35, 0)  # cudaErrorInsufficientDriver
"""


def _fake_packages(root, cuda_python: bool):
    (root / "pycuda").mkdir(parents=True)
    (root / "pycuda" / "__init__.py").write_text("")
    (root / "pycuda" / "driver.py").write_text(FAKE_PYCUDA)
    if cuda_python:
        (root / "cuda" / "bindings").mkdir(parents=True)
        (root / "cuda" / "__init__.py").write_text("")
        (root / "cuda" / "bindings" / "__init__.py").write_text("")
        (root / "cuda" / "bindings" / "runtime.py").write_text(FAKE_CUDA_RUNTIME)


@pytest.mark.parametrize("cuda_python", [False, True])
def test_pycuda_context_is_popped_at_exit(tmp_path, cuda_python):
    """The exit path only (a stand-in pycuda that aborts like the real one when a context is
    still pushed; what pycuda does with a real driver is not shown here): a probe plus a runner
    share one context, which is popped at exit, so the process exits 0 instead of 134.  With a
    cuda-python that fails its first call (driver too old for its CUDA major) the shim falls
    back to pycuda and says why."""
    _fake_packages(tmp_path, cuda_python)
    script = textwrap.dedent("""
        import sys
        from clit.runtime.tensorrt import cuda_api
        a = cuda_api.open_cuda()
        b = cuda_api.open_cuda()
        print(a is b, a.name, a.device_info()[2], a.mem_info()[1] >> 30, "|".join(cuda_api.FALLBACK_REASONS))
    """)
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    same, name, integrated, total, reasons = done.stdout.split(" ", 4)
    assert same == "True" and name == "pycuda" and integrated == "True" and total == "8"
    if cuda_python:
        assert "cuda-python: CudaError: CUDA error 35" in reasons
    # the stand-in does abort when a pushed context is left behind (the check above can fail)
    leak = "import pycuda.driver as d\nd.Device(0).retain_primary_context().push()\n"
    done = subprocess.run([sys.executable, "-c", leak], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == -6 and "context stack was not empty" in done.stderr


@pytest.mark.trt
def test_tensorrt_fp32_matches_onnxruntime(model_dir, tmp_path, rng):
    """On a GPU machine with TensorRT: FP32 engines (TF32 off) build, are cached, and match ONNX
    Runtime FP32 within 1e-4 at one and two cascade stages."""
    img = rng.random((37, 45, 3), dtype=np.float32)
    ref_engine = make_engine("onnxruntime", model_dir=model_dir, precision="fp32")
    trt_engine = make_engine("tensorrt", model_dir=model_dir, precision="fp32", cache_dir=tmp_path)
    assert "fp32" in trt_engine.name
    for scale in (2, 3.7, 6, 12):
        ref = ref_engine.upscale(img, scale=scale)
        got = trt_engine.upscale(img, scale=scale)
        assert got.shape == ref.shape and np.isfinite(got).all()
        assert np.abs(got - ref).max() <= 1e-4, scale
    again = make_engine("tensorrt", model_dir=model_dir, precision="fp32", cache_dir=tmp_path)
    assert np.array_equal(again.upscale(img, scale=2), trt_engine.upscale(img, scale=2))


@pytest.mark.trt
@pytest.mark.parametrize("lr_shape, scale", [((37, 45), 2), ((37, 45), 6), ((4, 1100), 16)])
def test_tensorrt_fp16_within_45_db(model_dir, tmp_path, rng, lr_shape, scale):
    """FP16 engines (coordinate path in FP32) against ONNX Runtime FP32: >= 45 dB, including a
    strip whose second branch reads a grid 4400 wide (> 4096, where FP16 coordinates would
    miss pixels)."""
    from clit.runtime.metrics import psnr

    img = rng.random((*lr_shape, 3), dtype=np.float32)
    ref = make_engine("onnxruntime", model_dir=model_dir, precision="fp32").upscale(img, scale=scale)
    engine = make_engine("tensorrt", model_dir=model_dir, precision="fp16", cache_dir=tmp_path)
    assert "fp16" in engine.name
    got = engine.upscale(img, scale=scale)
    assert got.shape == ref.shape and np.isfinite(got).all()
    assert psnr(np.clip(got, 0, 1), np.clip(ref, 0, 1)) >= 45


@pytest.mark.trt
def test_tensorrt_int8_builds_the_qdq_graphs(model_dir, tmp_path, rng, data_dir):
    """INT8 engines from a clit-calibrate directory (Q/DQ graphs: INT8 flag on 8.x, strongly
    typed from 10) agree with the same graphs on ONNX Runtime."""
    pytest.importorskip("onnx")
    from clit.calibration.int8 import calibrate
    from clit.runtime.metrics import psnr

    out = tmp_path / "int8"
    # default scales: every branch calibrated (2,4,8 would leave a three-branch model's third without data)
    calibrate(model_dir, out, data_dir / "train" / "HR", max_images=4, hr_crop=96, log=lambda m: None)
    reference = make_engine("onnxruntime", model_dir=out, precision="int8")
    engine = make_engine("tensorrt", model_dir=out, precision="int8", cache_dir=tmp_path / "c")
    assert "int8" in engine.name
    built = engine.runner.build_all()  # engines are built on first use: build all nine, whatever the scales run
    assert len(built) == len(load_manifest(out).graphs) and all("int8" in line for line in built), built
    for shape, scale in (((37, 45, 3), 4), ((9, 11, 3), 24)):  # x24 runs the third branch's engines
        img = rng.random(shape, dtype=np.float32)
        ref, got = reference.upscale(img, scale=scale), engine.upscale(img, scale=scale)
        assert got.shape == ref.shape and psnr(np.clip(got, 0, 1), np.clip(ref, 0, 1)) >= 40, scale
