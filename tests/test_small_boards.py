"""Small boards and scripts: no output-sized float buffer (each tile is quantised into the
output as it finishes), ``--max-memory`` steers the memory plan and ``-v`` says what it chose,
progress bars only on a terminal, ``--quiet``.  Runs without torch (the bundled model)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from clit.runtime.bundled import bundled_model_dir
from clit.runtime.engines import make_engine
from clit.runtime.memory_plan import GIB
from clit.runtime.upscaler import Upscaler

pytestmark = pytest.mark.skipif(bundled_model_dir() is None, reason="this installation has no bundled model")


def traced_peak(fn) -> int:
    """Peak bytes of Python/numpy allocations (tracemalloc sees numpy's buffers) during fn()."""
    tracemalloc.start()  # a fresh start: the peak counts from here (reset_peak needs Python 3.9)
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_integer_outputs_never_exist_as_float(rng):
    """Same image, same tiles: asking for uint8 instead of float32 saves (almost) the whole
    difference between a float32 and a uint8 output: no float copy of the output was made."""
    img = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    up = Upscaler(backend="onnxruntime", tile=16, chunk=2048)
    up.upscale(img, scale=8, dtype=np.uint8)  # warm-up: sessions and arenas exist before measuring
    results = {}
    peaks = {d: traced_peak(lambda d=d: results.__setitem__(d, up.upscale(img, scale=8, dtype=d)))
             for d in (np.uint8, np.float32)}
    out_pixels = 256 * 384 * 3
    assert results[np.uint8].shape == (256, 384, 3) and results[np.uint8].dtype == np.uint8
    np.testing.assert_array_equal(results[np.uint8], np.rint(results[np.float32] * 255).astype(np.uint8))
    saved = peaks[np.float32] - peaks[np.uint8]
    assert saved >= 0.9 * out_pixels * (4 - 1), (peaks, out_pixels)


def test_max_memory_steers_the_plan(rng):
    """The plan tiles a 600x600 -> x2 image within 1 GiB but not within 4 GiB (no image is run:
    only the plan), and Upscaler passes max_memory through."""
    small = make_engine("onnxruntime", memory_limit=1 * GIB)
    large = make_engine("onnxruntime", memory_limit=4 * GIB)
    tile_small, _ = small.settings((600, 600), scale=2, out_itemsize=1)
    tile_large, _ = large.settings((600, 600), scale=2, out_itemsize=1)
    assert tile_small is not None and (tile_large is None or tile_large > tile_small)
    assert small.budget < large.budget <= 0.75 * 4 * GIB
    assert Upscaler(backend="onnxruntime", max_memory=1 * GIB).engine.memory_limit == 1 * GIB


def test_verbose_reports_the_budget_for_max_memory(tmp_path, rng):
    src = tmp_path / "in.png"
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(src)
    done = subprocess.run([sys.executable, "-m", "clit.runtime.cli", str(src), "--scale", "2", "-o",
                           str(tmp_path / "o.png"), "--max-memory", "1500M", "-v"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    budget = float(re.search(r"memory plan budget (\d+) MiB", done.stderr).group(1))
    assert 0 < budget <= 0.75 * 1500


def _run_with_terminal(args) -> str:
    """clit-infer with stderr on a pseudo-terminal; what it wrote there."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real terminal has a width
    try:
        proc = subprocess.Popen([sys.executable, "-m", "clit.runtime.cli", *map(str, args)], stderr=slave,
                                stdout=subprocess.DEVNULL)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=300) == 0
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)


def test_progress_bars_only_on_a_terminal_and_quiet(tmp_path, rng):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(src / f"{i}.png")
    piped = subprocess.run([sys.executable, "-m", "clit.runtime.cli", str(src), "--scale", "2", "-o",
                            str(tmp_path / "a")], capture_output=True, text=True)
    assert piped.returncode == 0 and "\r" not in piped.stderr and "\x1b[" not in piped.stderr
    assert piped.stderr.strip().splitlines() == [line for line in piped.stderr.strip().splitlines()
                                                 if line.startswith("backend:")]
    shown = _run_with_terminal([src, "--scale", "2", "-o", tmp_path / "b"])
    assert "images" in shown and "\r" in shown  # tqdm draws on a terminal
    quiet = _run_with_terminal([src, "--scale", "2", "-o", tmp_path / "c", "--quiet"])
    assert quiet.strip() == ""
