"""Image I/O: 16-bit PNG decoding (every filter type), channels, ICC; clit-infer keeps them."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from clit.runtime import images
from clit.runtime.images import PNG_SIGNATURE, decode_png16, encode_png16, quantize, read_image, write_image


def _filtered_png16(arr: np.ndarray, filters: list[int]) -> bytes:
    """A 16-bit PNG whose row y uses filter filters[y % len(filters)], built by the PNG spec's
    forward filters (the decoder under test undoes them)."""
    h, w, c = arr.shape
    bpp = 2 * c
    raw = arr.astype(">u2").view(np.uint8).reshape(h, w * bpp).astype(np.int64)
    lines = []
    for y in range(h):
        kind = filters[y % len(filters)]
        cur, up = raw[y], raw[y - 1] if y else np.zeros_like(raw[0])
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), up[:-bpp]])
        if kind == 0:
            pred = 0
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = up
        elif kind == 3:
            pred = (left + up) // 2
        else:
            p = left + up - upleft
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        lines.append(bytes([kind]) + ((cur - pred) % 256).astype(np.uint8).tobytes())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    return (PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(lines))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_decode_png16_every_filter(rng, channels):
    arr = rng.integers(0, 65536, (11, 9, channels), dtype=np.uint16)
    arr[4:] = arr[4:5]  # some smooth rows too
    assert np.array_equal(decode_png16(_filtered_png16(arr, [0, 1, 2, 3, 4])), arr)
    assert np.array_equal(decode_png16(encode_png16(arr)), arr)


def test_decode_matches_pillow_on_pillow_png(rng):
    yy, xx = np.mgrid[:40, :50]
    arr = ((yy * 700 + xx * 300 + rng.integers(0, 30, yy.shape)) % 65535).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # Pillow's own adaptive filtering
    assert np.array_equal(decode_png16(buf.getvalue())[..., 0], np.asarray(Image.open(buf)))
    with pytest.raises(ValueError, match="truncated"):
        data = buf.getvalue()
        decode_png16(data[: data.index(b"IEND") - 30] + data[data.index(b"IEND") - 4:])


@pytest.mark.parametrize("shape", [(37, 53, 3), (29, 31), (7,)])
def test_quantize_in_blocks_equals_one_pass(rng, monkeypatch, shape):
    """Block-wise rounding (several blocks, a ragged last one, a strided view) gives exactly
    clamp-scale-round of the whole array, out-of-range values included."""
    monkeypatch.setattr(images, "QUANTIZE_BLOCK", 100)
    x = (rng.random(shape) * 1.4 - 0.2).astype(np.float32)
    for view in (x, x[::2]):
        for bits, dtype in ((8, np.uint8), (16, np.uint16)):
            want = np.rint(np.clip(view, 0, 1) * (2**bits - 1)).astype(dtype)
            got = quantize(view, bits)
            assert got.dtype == dtype and got.shape == view.shape
            np.testing.assert_array_equal(got, want)


def test_read_image_modes_and_icc(rng, tmp_path):
    rgba = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    cases = {"L": rgba[..., 0], "LA": rgba[..., :2], "RGB": rgba[..., :3], "RGBA": rgba}
    for mode, arr in cases.items():
        path = tmp_path / f"{mode}.png"
        Image.fromarray(arr).save(path, icc_profile=b"not-a-real-profile")
        pic = read_image(path)
        assert pic.pixels.shape == (6, 7, arr.shape[2] if arr.ndim == 3 else 1) and pic.bit_depth == 8
        assert np.array_equal(np.rint(pic.pixels * 255).astype(np.uint8).reshape(arr.shape), arr)
        assert pic.icc == b"not-a-real-profile"
    pal = Image.fromarray(rgba[..., 0]).convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    assert read_image(tmp_path / "p.png").pixels.shape[2] == 4
    rgb16 = rng.integers(0, 65536, (5, 4, 3), dtype=np.uint16)
    (tmp_path / "rgb16.png").write_bytes(_filtered_png16(rgb16, [4, 3]))
    pic = read_image(tmp_path / "rgb16.png")
    assert pic.bit_depth == 16 and np.array_equal(np.rint(pic.pixels * 65535).astype(np.uint16), rgb16)


def test_write_image_channels_icc(rng, tmp_path):
    img = rng.random((5, 6, 2))
    write_image(tmp_path / "la16.png", img, 16, icc=b"abc")
    pic = read_image(tmp_path / "la16.png")
    assert pic.bit_depth == 16 and pic.icc == b"abc" and np.abs(pic.pixels - img).max() <= 0.5 / 65535 + 1e-7
    write_image(tmp_path / "g.webp", img[..., :1], 8, icc=b"xyz")
    pic = read_image(tmp_path / "g.webp")
    assert pic.icc == b"xyz"
    with pytest.raises(ValueError, match="cannot store alpha"):
        write_image(tmp_path / "a.jpg", img, 8)
    assert not list(tmp_path.glob("a.jpg*")) and not list(tmp_path.glob(".a.jpg*"))


def infer(*args):
    return subprocess.run([sys.executable, "-m", "clit.runtime.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_keeps_gray_alpha_depth_icc(golden_dir, tmp_path, rng):
    pytest.importorskip("torch")
    ckpt = golden_dir / "edsr_lit_small.pth"
    lr = np.asarray(Image.open(golden_dir / "edsr_lit_small_lr.png").convert("RGB"))[:16, :20]
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(lr[..., 0]).save(src / "gray.png", icc_profile=b"gray-icc")
    alpha = np.tile(np.linspace(0, 255, 20).astype(np.uint8), (16, 1))
    Image.fromarray(np.dstack([lr, alpha])).save(src / "sub" / "rgba.png")
    (src / "deep.png").write_bytes(encode_png16(lr.astype(np.uint16) * 257))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    done = infer(src, "--checkpoint", ckpt, "--scale", 2, "-o", out)
    assert done.returncode == 1 and "broken.png" in done.stderr  # the bad one is named, the others written
    gray = Image.open(out / "gray.png")
    assert gray.mode == "L" and gray.size == (40, 32) and gray.info.get("icc_profile") == b"gray-icc"
    rgba = read_image(out / "sub" / "rgba.png")
    assert rgba.pixels.shape == (32, 40, 4)
    expect_alpha = np.asarray(Image.fromarray(alpha.astype(np.float32) / 255, "F").resize((40, 32), Image.BICUBIC))
    assert np.abs(rgba.pixels[..., 3] - np.clip(expect_alpha, 0, 1)).max() <= 0.5 / 255 + 1e-6
    deep = read_image(out / "deep.png")
    assert deep.bit_depth == 16 and deep.pixels.shape == (32, 40, 3)
    assert not (out / "broken.png").exists()
    done = infer(str(src / "*.png"), "--checkpoint", ckpt, "--scale", 1.5, "--bit-depth", 8, "-o", tmp_path / "g")
    assert done.returncode == 1 and sorted(p.name for p in (tmp_path / "g").iterdir()) == ["deep.png", "gray.png"]
    assert read_image(tmp_path / "g" / "deep.png").bit_depth == 8
