"""Default tile/chunk from the memory budget: the arithmetic, and a measured run within it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clit.runtime.geometry import plan_cascade
from clit.runtime.manifest import load_manifest
from clit.runtime.memory_plan import (
    GIB,
    choose,
    decoder_bytes,
    memory_budget,
    output_bytes,
    tile_bytes,
)


@pytest.fixture
def model_dir(exported_clit2):
    return exported_clit2[1]


def test_choices_fit_the_budget(model_dir):
    m = load_manifest(model_dir)
    small = plan_cascade((64, 64), scale=2, max_branches=2)
    assert choose(m, small, 4 * GIB) == (None, 8192)  # fits whole
    full_hd = plan_cascade((1080, 1920), scale=4, max_branches=2)
    tile, chunk = choose(m, full_hd, memory_budget(4 * GIB))
    assert tile is not None and tile < 1920
    assert output_bytes(full_hd) + decoder_bytes(m, chunk) + tile_bytes(m, full_hd, tile) <= memory_budget(4 * GIB)
    x12 = plan_cascade((1080, 1920), scale=12, max_branches=2)
    tile12, _ = choose(m, x12, memory_budget(8 * GIB))
    assert tile12 is not None and tile12 <= tile  # a finer grid needs smaller tiles
    assert tile_bytes(m, full_hd, 64) < tile_bytes(m, full_hd, 256)
    assert choose(m, full_hd, memory_budget(4 * GIB), chunk=1000)[1] == 1000


CASE = r"""
import json, sys
import numpy as np
from clit.runtime.engines import OnnxEngine
engine = OnnxEngine(sys.argv[1], precision="fp32", threads=2, memory_limit=int(sys.argv[2]))
img = np.random.default_rng(0).random((160, 200, 3), dtype=np.float32)
tile, chunk = engine.settings(img.shape[:2], scale=4)
out = engine.upscale(img, scale=4)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]  # this process's own peak
print(json.dumps({"tile": tile, "chunk": chunk, "peak": int(hwm.split()[1]) * 1024, "shape": list(out.shape)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak from /proc/self/status")
def test_measured_peak_within_a_small_budget(model_dir):
    """800x640 output under a 400 MiB limit: the plan tiles, and the process peak stays below it
    (VmHWM: ru_maxrss would include the parent's peak, inherited across fork and exec)."""
    limit = 400 << 20
    done = subprocess.run([sys.executable, "-c", CASE, str(model_dir), str(limit)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout)
    assert res["shape"] == [640, 800, 3] and res["tile"] is not None
    assert res["peak"] <= limit, res
