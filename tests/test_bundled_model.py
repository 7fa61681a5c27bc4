"""The bundled default model: what the package carries, the defaults that use it, its graphs
against its checkpoint, and the README quality table (Set5 x2 / x4 / x24 re-measured; every
cell against the recorded evaluations)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import DATA, REPO

from clit.runtime.bundled import BUNDLED_DIR, CHECKPOINT_NAME, bundled_model_dir
from clit.runtime.images import read_uint8

pytestmark = pytest.mark.skipif(bundled_model_dir() is None, reason=f"no bundled model at {BUNDLED_DIR}")
SAMPLE = REPO / "samples" / "sample.png"


def readme_table() -> dict[tuple[str, str], dict[float, str]]:
    """README's quality table: (dataset, method) -> scale -> non-empty cell ('PSNR / SSIM')."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| dataset | method |"))
    scales = [float(c.strip().lstrip("x")) for c in lines[start].strip("|").split("|")[2:]]
    rows = {}
    for line in lines[start + 2:]:  # after the head and its |---| line, up to the table's end
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0], cells[1]] = {s: c for s, c in zip(scales, cells[2:]) if c}
    return rows


def readme_table_psnr(dataset: str, method: str) -> dict[float, float]:
    """PSNR per scale of one row of README's quality table."""
    return {s: float(c.split("/")[0]) for s, c in readme_table()[dataset, method].items()}


def test_readme_bundled_rows_are_the_recorded_evaluations():
    """README's 'bundled' cells are exactly the clit-eval results recorded in eval/bundled/*.json,
    and those were made on today's model files (the manifest's sha256, which names every
    graph's): no cell typed by hand, none left out, none from an older model."""
    import json

    from clit.runtime.manifest import sha256_file

    digest = sha256_file(BUNDLED_DIR / "manifest.json")
    recorded = {}
    for path in sorted((REPO / "eval" / "bundled").glob("*.json")):
        doc = json.loads(path.read_text())
        assert doc["model_sha256"] == digest and doc["model"] is None, path.name  # the bundled model
        assert doc["protocol"] == "benchmark" and not doc["quantize"] and not doc["max_images"], path.name
        recorded.update({(r["dataset"], r["scale"]): f"{r['psnr']:.2f} / {r['ssim_y']:.4f}" for r in doc["results"]})
    table = {(dataset, s): c for (dataset, method), row in readme_table().items() if method == "bundled"
             for s, c in row.items()}
    assert recorded and table == recorded


def test_wheel_carries_the_model_graphs_not_the_checkpoint(tmp_path):
    """A real wheel (setuptools, from a copy of the source tree): every file of the bundled
    directory but the PyTorch checkpoint, under 30 MiB installed."""
    pytest.importorskip("setuptools", minversion="68", reason="building the wheel needs setuptools >= 68 here")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("train", "export", "runtime", "calibration", "serve"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("clit-*.whl")
    prefix = "clit/runtime/models/default/"
    with zipfile.ZipFile(wheel) as zf:
        sizes = {i.filename[len(prefix):]: i.file_size for i in zf.infolist() if i.filename.startswith(prefix)}
    shipped = {p.name for p in BUNDLED_DIR.iterdir() if p.is_file()}
    assert CHECKPOINT_NAME in shipped  # the source tree keeps it (the torch backend's reference)
    assert set(sizes) == shipped - {CHECKPOINT_NAME}
    assert {"manifest.json", "README.md"} <= set(sizes)
    assert sum(sizes.values()) < 30 * 2**20, sum(sizes.values())


def test_bundled_model_ships_fp16_variants():
    """TensorRT 10+ builds FP16 engines from the mixed-precision variants (TensorRT 11 has no
    other way): every bundled graph has one, and the manifest says so."""
    from clit.runtime.manifest import load_manifest

    manifest = load_manifest(BUNDLED_DIR)
    assert "fp16" in manifest.data["precisions"]
    for g in manifest.graphs:
        assert (BUNDLED_DIR / g.file_for("fp16")).is_file(), g.file


def test_clit_infer_and_upscaler_default_to_the_bundled_model(tmp_path):
    from clit.runtime.upscaler import Upscaler

    out = tmp_path / "x3.png"
    done = subprocess.run([sys.executable, "-m", "clit.runtime.cli", str(SAMPLE), "--scale", "3", "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lr = read_uint8(SAMPLE)
    explicit = Upscaler(BUNDLED_DIR, backend="onnxruntime").upscale(lr, scale=3)
    assert explicit.shape == (lr.shape[0] * 3, lr.shape[1] * 3, 3)
    np.testing.assert_array_equal(read_uint8(out), explicit)
    np.testing.assert_array_equal(Upscaler().upscale(lr, scale=3), explicit)


@pytest.mark.parametrize("scale", [2.5, 6, 20])  # one, two and three branches
def test_bundled_graphs_match_its_checkpoint(scale):
    pytest.importorskip("torch")
    from clit.runtime.geometry import STAGE_BASE
    from clit.runtime.manifest import load_manifest
    from clit.runtime.upscaler import Upscaler

    branches = load_manifest(BUNDLED_DIR).n_branches
    if scale > STAGE_BASE**branches:
        pytest.skip(f"x{scale} is beyond the bundled model's {branches} branches")

    rng = np.random.default_rng()
    img = read_uint8(SAMPLE)
    h, w = (24, 28) if scale <= STAGE_BASE**2 else (12, 14)  # x20: 240x280 out, through all three branches
    y, x = rng.integers(0, img.shape[0] - h), rng.integers(0, img.shape[1] - w)
    crop = img[y:y + h, x:x + w].astype(np.float32) / 255
    torch_out = Upscaler(backend="torch").upscale(crop, scale=scale)  # the bundled checkpoint
    ort_out = Upscaler(backend="onnxruntime").upscale(crop, scale=scale)
    assert torch_out.shape == ort_out.shape == (round(h * scale), round(w * scale), 3)
    assert np.abs(torch_out - ort_out).max() <= 1e-4


@pytest.mark.skipif(not (DATA / "Set5" / "HR").is_dir(), reason=f"Set5 not found under {DATA}")
@pytest.mark.parametrize("scale", [2, 4, 24])
def test_readme_quality_table_set5(scale):
    """Set5 within 0.02 dB of README's table: x2, x4 and, through the third branch, x24."""
    from clit.runtime.engines import make_engine
    from clit.train.evaluate import evaluate

    table = readme_table_psnr("Set5", "bundled")
    if scale not in table:
        pytest.skip(f"README's table has no Set5 x{scale} entry for the bundled model")
    engine = make_engine("onnxruntime", precision="fp32")
    got = evaluate(engine, DATA / "Set5" / "HR", scale, "benchmark")
    assert got.images == 5
    assert abs(got.psnr - table[scale]) <= 0.02, (scale, got.psnr, table[scale])


def test_torch_backend_names_the_missing_bundled_checkpoint(tmp_path, monkeypatch):
    """As installed from a wheel (graphs, no checkpoint): --backend torch says where it is."""
    import clit.runtime.bundled as bundled
    from clit.runtime.engines import make_engine

    installed = tmp_path / "default"
    installed.mkdir()
    shutil.copy2(BUNDLED_DIR / "manifest.json", installed / "manifest.json")
    monkeypatch.setattr(bundled, "BUNDLED_DIR", installed)
    with pytest.raises(ValueError, match="checkpoint.pth. is not installed with the package.*pip install -e"):
        make_engine("torch")
