"""TensorRT backend: what can be checked without TensorRT (profiles against the real pipeline's
shapes, the engine cache with its lock and corruption handling, clit-build's dry run), and
the engine tests themselves, marked ``trt`` (they skip without TensorRT and a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from clit.runtime.engines import make_engine
from clit.runtime.manifest import load_manifest
from clit.runtime.onnx_backend import OnnxRuntimeRunner
from clit.runtime.pipeline import Pipeline
from clit.runtime.tensorrt.build_cli import main as build_cli
from clit.runtime.tensorrt.engine_cache import EngineCache, cache_key
from clit.runtime.tensorrt.profiles import BuildLimits, input_profiles


@pytest.fixture
def model_dir(exported_clit2):
    return exported_clit2[1]


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


@pytest.mark.parametrize("tile, cases", [
    (8, [((21, 30), 2), ((17, 9), 3.7), ((20, 26), 6), ((12, 11), 12), ((9, 10), (16, 5))]),
    (13, [((40, 27), 4), ((14, 33), 7.5)]),
])
def test_profiles_cover_what_the_pipeline_feeds(model_dir, rng, tile, cases):
    manifest = load_manifest(model_dir)
    limits = BuildLimits(tile=tile, max_queries=700, max_image=40, opt_tile=4, opt_queries=100)
    runner = RecordingRunner(manifest)
    pipe = Pipeline(manifest, runner)
    for (h, w), scale in cases:
        pipe.upscale(rng.random((h, w, 3), dtype=np.float32), scale=scale, chunk=700, tile=tile)
    checked = 0
    for g in manifest.graphs:
        profiles = input_profiles(manifest, g, limits)
        for (file, name), (lo, hi) in runner.seen.items():
            if file != g.file or name not in profiles:
                continue
            pmin, _, pmax = (np.array(s) for s in profiles[name])
            assert (pmin <= lo).all() and (hi <= pmax).all(), (file, name, lo, hi, profiles[name])
            checked += 1
    assert checked >= 15  # encoder image; branch feat/rows/cols; q/k/v/rows/cols/coord of both decoders


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
    from clit.runtime.manifest import GraphEntry, ModelDirError

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


@pytest.mark.trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_onnxruntime(model_dir, tmp_path, rng, precision):
    """On a GPU machine with TensorRT: engines build, are cached, and match ONNX Runtime FP32."""
    from clit.runtime.metrics import psnr

    img = rng.random((37, 45, 3), dtype=np.float32)
    ref_engine = make_engine("onnxruntime", model_dir=model_dir, precision="fp32")
    trt_engine = make_engine("tensorrt", model_dir=model_dir, precision=precision, cache_dir=tmp_path)
    for scale in (2, 3.7, 6, 12):
        ref = ref_engine.upscale(img, scale=scale)
        got = trt_engine.upscale(img, scale=scale)
        assert got.shape == ref.shape and np.isfinite(got).all()
        if precision == "fp32":
            assert np.abs(got - ref).max() <= 1e-3
        else:
            assert psnr(np.clip(got, 0, 1), np.clip(ref, 0, 1)) >= 45
    again = make_engine("tensorrt", model_dir=model_dir, precision=precision, cache_dir=tmp_path)
    assert np.array_equal(again.upscale(img, scale=2), trt_engine.upscale(img, scale=2))
