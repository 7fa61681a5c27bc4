"""End-to-end ``clit-infer`` with the torch backend against the official golden outputs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import scale_key
from PIL import Image

pytest.importorskip("torch")


def read_png16(path):
    """Decode the 48-bit PNGs clit-infer writes with pypng (an encoder/decoder independent of
    the OpenCV the runtime writes with) -> (H, W, 3) float64 in [0, 1]."""
    import png

    w, h, rows, info = png.Reader(filename=str(path)).asDirect()
    assert info["bitdepth"] == 16 and info["planes"] == 3 and not info["greyscale"]
    return np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(h, w, 3).astype(np.float64) / 65535


def infer(*args):
    return subprocess.run([sys.executable, "-m", "clit.runtime.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("name, scale", [("edsr_clit2_small", 6), ("edsr_lit_small", 3.7), ("edsr_clit3_small", 18)])
def test_cli_reproduces_golden_16bit(golden_dir, tmp_path, name, scale):
    out = tmp_path / "out.png"
    done = infer(golden_dir / f"{name}_lr.png", "--checkpoint", golden_dir / f"{name}.pth", "--backend", "torch",
                 "--scale", scale, "--bit-depth", 16, "-o", out)
    assert done.returncode == 0, done.stderr
    got = read_png16(out)
    ref = np.clip(np.load(golden_dir / f"{name}.npz")[f"s{scale_key(scale)}"], 0, 1)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1 / 65535 + 1e-5


def test_cli_batch_errors_are_reported_and_others_processed(golden_dir, tmp_path):
    good = golden_dir / "edsr_lit_small_lr.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:200])  # truncated PNG
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "taken.png").write_bytes(b"keep me")
    taken = tmp_path / "taken.png"
    taken.write_bytes(good.read_bytes())
    done = infer(good, broken, tmp_path / "missing.png", taken, "--checkpoint", golden_dir / "edsr_lit_small.pth",
                 "--size", "50x30", "-o", outdir)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, done.stderr
    assert any("broken.png" in e for e in errors) and any("missing.png" in e for e in errors)
    assert any("exists" in e for e in errors)
    assert (outdir / "taken.png").read_bytes() == b"keep me"
    with Image.open(outdir / "edsr_lit_small_lr.png") as im:
        assert im.size == (50, 30)
    assert sorted(p.name for p in outdir.iterdir()) == ["edsr_lit_small_lr.png", "taken.png"]  # no partial files
    umask = os.umask(0)
    os.umask(umask)
    assert (outdir / "edsr_lit_small_lr.png").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize("args, message", [
    (["--scale", "0"], "finite number > 0"),
    (["--scale", "nan"], "finite number > 0"),
    (["--scale", "2", "--size", "4x4"], "exactly one"),
    (["--scale", "100"], "largest scale x4"),
])
def test_cli_bad_arguments(golden_dir, tmp_path, args, message):
    done = infer(golden_dir / "edsr_lit_small_lr.png", "--checkpoint", golden_dir / "edsr_lit_small.pth",
                 "-o", tmp_path / "o.png", *args)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert not (tmp_path / "o.png").exists()


def test_cli_bad_checkpoint(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 9, 3), dtype=np.uint8)).save(img)
    done = infer(img, "--checkpoint", junk, "--scale", 2, "-o", tmp_path / "o.png")
    assert done.returncode == 2 and "not a PyTorch checkpoint" in done.stderr


def test_cli_verbose_reports_stages_and_the_tiling_used(exported_clit2, golden_dir, tmp_path):
    """-v names each pipeline stage and the tile and chunk the run used (here the given ones)."""
    out = tmp_path / "out.png"
    done = infer(golden_dir / "edsr_clit2_small_lr.png", "--model", exported_clit2[1], "--backend", "onnxruntime",
                 "--scale", 6, "--tile", 13, "--chunk", 777, "-v", "-o", out)
    assert done.returncode == 0, done.stderr
    for stage in ("encoder", "branch 1 decoder", "branch 2 maps", "branch 2 decoder", "bilinear skip"):
        assert stage in done.stderr
    assert "tile 13, chunk 777" in done.stderr
    assert out.is_file()
