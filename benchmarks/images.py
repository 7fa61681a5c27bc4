"""Time of ``read_image`` and 16-bit ``write_image`` on a 3840x2160 16-bit RGB PNG.

The input is a real photo (Set14 barbara from ../shared/data, a 16:9 crop upscaled with
Pillow bicubic in float, so the 16 bits carry real gradations, plus Gaussian noise of
0.1 % so that rows filter differently) written by OpenCV with libpng's adaptive filtering
(the row filters used are printed).  Without ../shared/data a smooth synthetic image is
used, and the output says so.  Each figure is the median of --repeat runs after one warm-up.

    python benchmarks/images.py [--size 3840x2160] [--repeat 3] [--source IMG]
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from clit.runtime.images import read_image, write_image

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "Set14" / "HR" / "barbara.png"
FILTERS = ("None", "Sub", "Up", "Average", "Paeth")


def make_image(source: Path | None, w: int, h: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint16 RGB and a description of where it came from."""
    if source is not None and source.is_file():
        im = Image.open(source).convert("RGB")
        cw = min(im.width, im.height * w // h)
        ch = cw * h // w
        crop = np.asarray(im.crop((0, 0, cw, ch)), dtype=np.float32) / 255
        up = np.dstack([np.asarray(Image.fromarray(np.ascontiguousarray(crop[..., i]), "F").resize((w, h), Image.BICUBIC))
                        for i in range(3)])
        what = f"{source.name} crop {cw}x{ch} upscaled (Pillow bicubic, float) + noise"
    else:
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        up = np.dstack([0.5 + 0.4 * np.sin(xx / 97 + k) * np.cos(yy / 53 - k) for k in range(3)])
        what = f"SYNTHETIC smooth image ({source} not found) + noise"
    up += rng.normal(0, 1e-3, up.shape).astype(np.float32)
    return np.rint(np.clip(up, 0, 1) * 65535).astype(np.uint16), what


def filter_counts(data: bytes, h: int, row_bytes: int) -> dict[str, int]:
    """How many rows of a non-interlaced PNG use each filter type."""
    pos, idat = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        if data[pos + 4:pos + 8] == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, row_bytes + 1)
    kinds = np.bincount(raw[:, 0], minlength=5)
    return {FILTERS[k]: int(n) for k, n in enumerate(kinds) if n}


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="3840x2160", help="WxH of the test image")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs (the median is reported)")
    ap.add_argument("--source", type=Path, default=SOURCE, help="photo to upscale into the test image")
    args = ap.parse_args()
    w, h = map(int, args.size.lower().split("x"))
    arr, what = make_image(args.source, w, h, np.random.default_rng(0))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, Pillow {Image.__version__}, "
          f"OpenCV {cv2.__version__}; {os.cpu_count()} CPUs, load average {load}")
    print(f"input: {w}x{h} 16-bit RGB, {what}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.png"
        ok, buf = cv2.imencode(".png", cv2.cvtColor(arr, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_PNG_COMPRESSION, 6, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_DEFAULT])
        assert ok
        src.write_bytes(buf.tobytes())
        print(f"file: {src.stat().st_size / 1e6:.1f} MB (OpenCV, adaptive filters, zlib 6); rows by filter: "
              f"{filter_counts(buf.tobytes(), h, w * 6)}")
        pic = read_image(src)
        assert pic.bit_depth == 16 and np.array_equal(pic.pixels, arr), "decoded pixels differ"
        t_read = timed(lambda: read_image(src), args.repeat)
        dst = Path(tmp) / "out.png"
        t_write = timed(lambda: write_image(dst, pic.pixels, 16), args.repeat)
        assert np.array_equal(read_image(dst).pixels, arr)
        mp = w * h / 1e6
        print(f"read_image   {t_read:6.3f} s  ({t_read / mp * 1e3:.0f} ms per megapixel), median of {args.repeat}")
        print(f"write_image  {t_write:6.3f} s  ({t_write / mp * 1e3:.0f} ms per megapixel), 16-bit, "
              f"{dst.stat().st_size / 1e6:.1f} MB, median of {args.repeat}")


if __name__ == "__main__":
    main()
