"""One-line errors instead of tracebacks, in every command, for the bad inputs a new user meets
(real processes; the commands that need torch skip without it)."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from conftest import DATA, GOLDEN
from PIL import Image

from clit.runtime.errors import TRACEBACK_ENV, describe, error_boundary

COMMANDS = {"clit-infer": "from clit.runtime.cli import main", "clit-eval": "from clit.train.evaluate import main",
            "clit-parity": "from clit.calibration.cli import main", "clit-train": "from clit.train.cli import main",
            "clit-export": "from clit.export.cli import main", "clit-build": "from clit.runtime.tensorrt.build_cli import main",
            "clit-calibrate": "from clit.calibration.cli import calibrate_main as main"}


def run(command: str, *args, env=None):
    code = f"{COMMANDS[command]}; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


def assert_one_line(done, *fragments, code=None):
    assert done.returncode != 0 and (code is None or done.returncode == code), (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if "rror" in line]
    assert len(lines) == 1, done.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


def test_empty_input_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line(run("clit-infer", tmp_path / "empty", "--scale", 2, "-o", tmp_path / "out"), "no images", code=2)


@pytest.mark.parametrize("out", ["newdir/", "newdir"])
def test_single_input_into_a_new_folder(tmp_path, photo, out):
    target = tmp_path / out
    done = run("clit-infer", photo, "--scale", 2, "-o", str(target) + ("/" if out.endswith("/") else ""))
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "newdir" / "photo.png").size == (36, 28)


def test_bad_max_memory_and_scale(tmp_path, photo):
    done = run("clit-infer", photo, "--scale", 2, "-o", tmp_path / "o.png", "--max-memory", "lots")
    assert done.returncode == 2 and "a size like 4G" in done.stderr and "Traceback" not in done.stderr
    done = run("clit-infer", photo, "--scale", "nan", "-o", tmp_path / "o.png")
    assert done.returncode == 2 and "finite" in done.stderr and "Traceback" not in done.stderr


def test_parity_scales_nan(tmp_path):
    from clit.runtime.bundled import bundled_model_dir

    done = run("clit-parity", "--model", bundled_model_dir(), "--data", tmp_path, "--scales", "nan")
    assert done.returncode == 2 and "finite numbers" in done.stderr and "Traceback" not in done.stderr


def test_device_cuda_without_a_gpu(tmp_path, photo):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    ckpt = GOLDEN / "edsr_lit_small.pth"
    if not ckpt.is_file():
        pytest.skip(f"golden models not found at {GOLDEN}")
    done = run("clit-infer", photo, "--checkpoint", ckpt, "--backend", "torch", "--device", "cuda", "--scale", 2,
               "-o", tmp_path / "o.png")
    assert_one_line(done, "--device cuda", "CUDA is not available", code=2)
    if not (DATA / "train" / "HR").is_dir():
        pytest.skip(f"training images not found at {DATA}")
    from conftest import REPO

    done = run("clit-train", "--config", REPO / "configs" / "cpu_small_clit2.yaml", "--train-dir",
               DATA / "train" / "HR", "--out", tmp_path / "run", "--device", "cuda")
    assert_one_line(done, "--device cuda", code=2)
    assert not (tmp_path / "run").exists()


def test_binary_file_as_training_config(tmp_path):
    pytest.importorskip("torch")
    config = tmp_path / "model.pth"
    config.write_bytes(bytes(range(256)) * 4)
    (tmp_path / "images").mkdir()
    done = run("clit-train", "--config", config, "--train-dir", tmp_path / "images", "--out", tmp_path / "run")
    assert_one_line(done, "not a text file", code=2)
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    done = run("clit-train", "--config", tmp_path / "list.yaml", "--train-dir", tmp_path / "images", "--out",
               tmp_path / "r2")
    assert_one_line(done, "YAML mapping", code=2)


def test_export_with_an_unreadable_image(lit_checkpoint, tmp_path):
    ckpt = lit_checkpoint
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    done = run("clit-export", ckpt, "-o", tmp_path / "m", "--image", bad)
    assert_one_line(done, "bad.png", code=2)
    assert not (tmp_path / "m").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "ckpt.pth"]


def test_build_and_calibrate_bad_model_dirs(tmp_path):
    assert_one_line(run("clit-build", tmp_path / "nope", "--print-profiles"), "no such folder", code=1)
    (tmp_path / "images").mkdir()
    done = run("clit-calibrate", tmp_path / "nope", "-o", tmp_path / "q", "--data", tmp_path / "images")
    assert_one_line(done, "nope", code=2)


def test_the_boundary_itself(monkeypatch):
    """An unexpected exception (a bug) is one line with how to see the traceback; with
    CLIT_TRACEBACK=1 it propagates; an OSError names its file."""
    @click.command()
    @error_boundary("clit-demo")
    def demo():
        {}["missing"]

    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    res = CliRunner().invoke(demo, [])
    assert res.exit_code == 2 and res.output.strip() == f"clit-demo: error: 'missing' (KeyError; set {TRACEBACK_ENV}=1 for the traceback)"
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    assert isinstance(CliRunner().invoke(demo, []).exception, KeyError)
    assert describe(PermissionError(13, "Permission denied", "/x/y.png")) == "/x/y.png: Permission denied"
    assert describe(MemoryError()).startswith("out of memory")
