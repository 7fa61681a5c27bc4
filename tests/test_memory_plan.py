"""Default tile/chunk from the memory budget: the arithmetic, and a measured run within it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clit.runtime import memory_plan
from clit.runtime.geometry import plan_cascade
from clit.runtime.manifest import load_manifest
from clit.runtime.memory_plan import (
    GIB,
    MAX_WINDOW,
    available_memory,
    choose,
    decoder_bytes,
    fast_tile,
    memory_budget,
    output_bytes,
    resident_memory,
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
    tile, chunk = choose(m, full_hd, memory_budget(4 * GIB, used=0))
    assert tile is not None and tile < 1920
    assert output_bytes(full_hd) + decoder_bytes(m, chunk) + tile_bytes(m, full_hd, tile) <= memory_budget(4 * GIB, used=0)
    x12 = plan_cascade((1080, 1920), scale=12, max_branches=2)
    tile12, _ = choose(m, x12, memory_budget(8 * GIB, used=0))
    assert tile12 is not None and tile12 <= tile  # a finer grid needs smaller tiles
    assert tile_bytes(m, full_hd, 64) < tile_bytes(m, full_hd, 256)
    assert choose(m, full_hd, memory_budget(4 * GIB, used=0), chunk=1000)[1] == 1000


def test_branch_windows_stay_small(model_dir):
    """Large cascade grids are tiled even when memory would allow the whole image (the
    decoders run faster on small maps), and each window then fits in MAX_WINDOW a side."""
    m = load_manifest(model_dir)
    x8 = plan_cascade((256, 256), scale=8, max_branches=2)  # branch-2 grid 1024 x 1024
    assert not fast_tile(x8, None)
    tile, _ = choose(m, x8, memory_budget(64 * GIB, used=0))
    assert tile is not None and fast_tile(x8, tile) and not fast_tile(x8, 2 * tile)
    assert max(tile * g / lr for grid in x8.grids for g, lr in zip(grid, x8.lr_size)) <= MAX_WINDOW
    small = plan_cascade((100, 60), scale=4, max_branches=2)
    assert fast_tile(small, None) and choose(m, small, memory_budget(64 * GIB, used=0))[0] is None


def test_budget_counts_what_the_process_holds(monkeypatch):
    """The plan's target is the whole process: memory already held is taken off it, and it
    never plans for more than the system has available (fixed here: the real figure moves)."""
    assert available_memory() > 0
    monkeypatch.setattr(memory_plan, "available_memory", lambda: 6 * GIB)
    assert memory_budget(4 * GIB, used=GIB) == int(3 * GIB * 0.75)
    assert memory_budget(GIB, used=2 * GIB) == 0
    assert memory_budget(16 * GIB, used=0) == int(6 * GIB * 0.75)
    assert memory_budget(used=GIB // 2) == int(3.5 * GIB * 0.75)  # default target: 4 GiB


GROWTH = r"""
import numpy as np
from clit.runtime.memory_plan import resident_memory
before = resident_memory()
block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, written so that it is resident
print(resident_memory() - before, int(block.sum()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_resident_memory_follows_allocations():
    """In a fresh process (a long-lived one may hand back pages it already holds)."""
    assert resident_memory() > 0
    done = subprocess.run([sys.executable, "-c", GROWTH], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    grown, total = (int(v) for v in done.stdout.split())
    assert total == 64 << 20
    assert 56 << 20 <= grown <= 72 << 20, grown


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
