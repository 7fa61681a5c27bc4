"""The runtime without torch: Upscaler over an exported model directory on ONNX Runtime."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import scale_key
from test_cli_infer import infer, read_png16

pytest.importorskip("torch")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import GOLDEN

    if not (GOLDEN / "index.json").is_file():
        pytest.skip(f"golden reference outputs not found at {GOLDEN}")
    out = tmp_path_factory.mktemp("export") / "edsr_clit2_small"
    done = subprocess.run([sys.executable, "-m", "clit.export.cli", str(GOLDEN / "edsr_clit2_small.pth"), "-o",
                           str(out), "--no-parity"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("scale, tile", [(2.5, None), (12, 6)])
def test_cli_onnxruntime_reproduces_golden_16bit(golden_dir, model_dir, tmp_path, scale, tile):
    out = tmp_path / "o.png"
    done = infer(golden_dir / "edsr_clit2_small_lr.png", "--model", model_dir, "--backend", "onnxruntime",
                 "--precision", "fp32", "--scale", scale, "--bit-depth", 16, "-o", out,
                 *(["--tile", tile] if tile else []))
    assert done.returncode == 0, done.stderr
    assert "backend: onnxruntime-cpu fp32" in done.stderr
    ref = np.clip(np.load(golden_dir / "edsr_clit2_small.npz")[f"s{scale_key(scale)}"], 0, 1)
    got = read_png16(out)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1 / 65535 + 1e-5


UPSCALE_WITHOUT_TORCH = r"""
import sys
sys.modules["torch"] = None
import numpy as np
from clit.runtime.upscaler import Upscaler
up = Upscaler(sys.argv[1], backend="onnxruntime", precision="fp32")
img = (np.random.default_rng(0).random((9, 11, 3)) * 255).astype(np.uint8)
out = up.upscale(img, scale=6)
assert out.shape == (54, 66, 3) and out.dtype == np.uint8
np.save(sys.argv[2], out)
print(up.backend)
"""


def test_upscaler_runs_without_torch_and_matches_torch(model_dir, tmp_path):
    import torch

    from clit.train import load_model

    done = subprocess.run([sys.executable, "-c", UPSCALE_WITHOUT_TORCH, str(model_dir), str(tmp_path / "o.npy")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    got = np.load(tmp_path / "o.npy")
    img = (np.random.default_rng(0).random((9, 11, 3)) * 255).astype(np.uint8)
    from conftest import GOLDEN

    ref_model = load_model(GOLDEN / "edsr_clit2_small.pth")
    lr = torch.from_numpy(img.astype(np.float32).transpose(2, 0, 1) / 255)[None]
    ref = np.rint(np.clip(ref_model.upscale(lr, scale=6)[0].permute(1, 2, 0).numpy(), 0, 1) * 255)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


def test_upscaler_dtypes_channels_and_errors(model_dir, rng):
    from clit.runtime.upscaler import Upscaler

    up = Upscaler(model_dir, precision="fp32")
    rgb = rng.random((6, 7, 3), dtype=np.float32)
    base = up.upscale(rgb, scale=2)
    assert base.shape == (12, 14, 3) and base.dtype == np.float32 and 0 <= base.min() and base.max() <= 1
    u16 = up.upscale((rgb * 65535).round().astype(np.uint16), scale=2)
    assert u16.dtype == np.uint16 and np.abs(u16 / 65535 - base).max() < 2e-4
    gray = up.upscale(rgb[..., 0], size=(9, 20))
    assert gray.shape == (9, 20) and gray.dtype == np.float32
    rgba = np.concatenate([rgb, np.linspace(0, 1, 42, dtype=np.float32).reshape(6, 7, 1)], axis=2)
    out = up.upscale((rgba * 255).astype(np.uint8), scale=3)
    assert out.shape == (18, 21, 4) and out.dtype == np.uint8
    assert out[..., 3].min() < 30 and out[..., 3].max() > 220  # the alpha ramp survives
    with pytest.raises(ValueError, match="NaN"):
        up.upscale(np.full((4, 4, 3), np.nan, dtype=np.float32), scale=2)
    with pytest.raises(TypeError, match="int32"):
        up.upscale(np.zeros((4, 4, 3), dtype=np.int32), scale=2)
    with pytest.raises(ValueError, match="non-empty"):
        up.upscale(np.zeros((0, 4, 3), dtype=np.uint8), scale=2)
    with pytest.raises(ValueError, match="x16"):
        up.upscale(rgb, scale=17)
    with pytest.raises(ValueError, match="no manifest.json"):
        Upscaler(model_dir.parent)


def test_no_model_without_a_bundled_one(tmp_path, monkeypatch):
    import clit.runtime.bundled as bundled
    from clit.runtime.upscaler import Upscaler

    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path / "missing")
    for backend in ("auto", "onnxruntime", "torch"):
        with pytest.raises(ValueError, match="no bundled default model"):
            Upscaler(backend=backend)


def test_onnxruntime_provider_preferences():
    from clit.runtime.onnx_backend import default_providers

    assert default_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    names = [p[0] if isinstance(p, tuple) else p for p in default_providers(gpu)]
    assert names == ["CUDAExecutionProvider", "CPUExecutionProvider"]  # ORT's TensorRT EP only on request
    trt, cuda, cpu = default_providers(gpu, "fp16", "/cache", use_tensorrt=True)
    assert trt[0] == "TensorrtExecutionProvider" and trt[1]["trt_fp16_enable"] is True
    assert trt[1]["trt_engine_cache_path"] == "/cache" and cuda[1]["cudnn_conv_algo_search"] == "HEURISTIC"


def test_onnxruntime_profiles_each_graph_it_ran(model_dir, tmp_path, rng):
    """``profile_dir``: one ONNX Runtime profile per graph that ran, with node events of that graph."""
    import json

    from clit.runtime.manifest import load_manifest
    from clit.runtime.onnx_backend import OnnxRuntimeRunner
    from clit.runtime.pipeline import Pipeline

    manifest = load_manifest(model_dir)
    runner = OnnxRuntimeRunner(manifest, profile_dir=str(tmp_path))
    Pipeline(manifest, runner, grouping="off").upscale(rng.random((9, 7, 3), dtype=np.float32), scale=2)
    profiles = runner.end_profiling()
    assert set(profiles) == {"encoder.onnx", "decoder1.onnx"}  # x2: one branch, per-query decoder
    for file, path in profiles.items():
        assert str(tmp_path) in path
        nodes = {e["name"] for e in json.loads(open(path).read()) if e.get("cat") == "Node"}
        assert any(n.endswith("_kernel_time") for n in nodes), file
    assert OnnxRuntimeRunner(manifest).end_profiling() == {}
