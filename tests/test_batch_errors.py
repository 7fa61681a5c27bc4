"""The batch promise: every failure of one input is one line naming the file and the reason,
the next input still runs, and the exit code is 1 at the end, whatever the failure: a corrupt
file, a decompression bomb, a full disk, a read-only file system.  Real processes; the full
disk and the read-only file system are small tmpfs mounts in a private mount namespace
(skipped where this machine cannot make one)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clit.runtime.bundled import bundled_model_dir

pytestmark = pytest.mark.skipif(bundled_model_dir() is None, reason="this installation has no bundled model")


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height, with a few bytes of data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture
def batch(tmp_path, rng):
    """good.png (small), big.png (a larger output), bomb.png (header 100000x100000), broken.png."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(src / "a_good.png")
    Image.fromarray(rng.integers(0, 256, (90, 90, 3), dtype=np.uint8)).save(src / "b_big.png")
    png_header_only(src / "c_bomb.png", 100000, 100000)
    (src / "d_broken.png").write_bytes((src / "a_good.png").read_bytes()[:60])
    return src


def error_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_bad_inputs_one_line_each_others_written(batch, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "clit.runtime.cli", str(batch), "--scale", "2", "-o", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 2, done.stderr
    assert "c_bomb.png" in errors[0] and "100000x100000" in errors[0] and "--max-pixels" in errors[0]
    assert "d_broken.png" in errors[1]
    assert sorted(p.name for p in out.iterdir()) == ["a_good.png", "b_big.png"]


def _namespace_shell() -> list | None:
    """A command prefix that runs a shell in a private mount namespace where mount works."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "--mount", "--propagation", "private"],
                   ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=16k none /mnt && umount /mnt"],
                               capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


@pytest.mark.parametrize("fs, reason", [("size=64k", "No space left on device"), ("ro,size=64k", "Read-only")])
def test_write_failures_are_one_line_and_the_batch_goes_on(batch, tmp_path, fs, reason):
    prefix = _namespace_shell()
    if prefix is None:
        pytest.skip("cannot make a private mount namespace here (unshare/mount not permitted)")
    out = tmp_path / "out"
    out.mkdir()
    cmd = f'mount -t tmpfs -o {fs} none "{out}" && exec "{sys.executable}" -m clit.runtime.cli "{batch}" ' \
          f'--scale 2 -o "{out}"'
    done = subprocess.run([*prefix, "sh", "-c", cmd], capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    errors = error_lines(done.stderr)
    failing = ["b_big.png", "c_bomb.png", "d_broken.png"] if "ro" not in fs else \
        ["a_good.png", "b_big.png", "c_bomb.png", "d_broken.png"]
    assert len(errors) == len(failing), done.stderr
    for name, line in zip(failing, errors):
        assert name in line, line
    writes = [line for line in errors if "b_big.png" in line or ("ro" in fs and "a_good.png" in line)]
    assert writes and all(reason in line for line in writes), errors
