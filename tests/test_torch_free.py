"""The deployment path with no torch installed, as on a Jetson (JetPack 5: Python 3.8): the
bundled model through ``clit-infer`` and ``clit-parity --reference``.

``make test`` runs this module (and every other test that needs no torch) a second time on
Python 3.8 with only the runtime installed (``pip install .``); there the reference outputs
come from the Python 3.11 environment (``CLIT_TEST_REFERENCE``, written by the Makefile with
``clit-parity --save-reference``).  Where torch is importable the test makes the reference
itself and runs the device side with torch blocked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clit.runtime.bundled import bundled_model_dir
from clit.runtime.images import read_image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "sample.png"
BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"
REFERENCE_ARGS = ["--max-images", "1", "--scales", "2,6", "--hr-crop", "48"]  # the Makefile uses the same


def run(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code, *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def model_dir() -> Path:
    path = bundled_model_dir()
    if path is None:
        pytest.skip("this installation has no bundled model")
    return path


def test_clit_infer_with_the_bundled_model_without_torch(model_dir, tmp_path):
    out = tmp_path / "sample_x2.png"
    done = run("from clit.runtime.cli import main; main(sys.argv[1:])", SAMPLE, "--scale", "2", "-o", out)
    assert done.returncode == 0, done.stderr
    assert "backend: onnxruntime" in done.stderr
    src, got = read_image(SAMPLE), read_image(out)
    assert got.pixels.shape == (2 * src.pixels.shape[0], 2 * src.pixels.shape[1], src.pixels.shape[2])
    assert got.pixels.std() > 10  # an image, not a constant


def test_parity_against_a_stored_reference_without_torch(model_dir, data_dir, tmp_path):
    ref = os.environ.get("CLIT_TEST_REFERENCE")
    if ref:
        ref = Path(ref)
    else:
        pytest.importorskip("torch")  # make the reference here, then check it with torch blocked
        ref = tmp_path / "ref.npz"
        made = subprocess.run([sys.executable, "-m", "clit.calibration.cli", "--model", str(model_dir), "--data",
                               str(data_dir / "Set5" / "HR"), *REFERENCE_ARGS, "--save-reference", str(ref)],
                              capture_output=True, text=True, timeout=600)
        assert made.returncode == 0, made.stderr
    assert ref.is_file(), f"{ref}: no reference file"
    report = tmp_path / "r.json"
    done = run("from clit.calibration.cli import main; main(sys.argv[1:])", "--model", model_dir, "--data",
               data_dir / "Set5" / "HR", *REFERENCE_ARGS, "--reference", ref, "--json", report)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout
    import json

    doc = json.loads(report.read_text())
    assert doc["pass"] and len(doc["rows"]) == 2 and max(r["max_abs"] for r in doc["rows"]) <= 1e-4
    assert np.isfinite([r["psnr_backend"] for r in doc["rows"]]).all()
