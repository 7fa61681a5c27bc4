"""Image I/O: integer pixels of every mode and depth, 16-bit PNGs (every colour type and filter,
interlaced, EXIF-oriented) decoded exactly, 16-bit writes, pixel bounds and bombs, ICC rules,
corrupt files; clit-infer keeps channels, depth and ICC."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import png  # pypng: an independent PNG encoder/decoder (dev extra)
import pytest
from PIL import Image, ImageCms, ImageOps

from clit.runtime import images
from clit.runtime.images import (
    DEFAULT_MAX_PIXELS,
    PNG_SIGNATURE,
    ImageError,
    encode_png16,
    quantize,
    read_image,
    read_rgb,
    read_uint8,
    write_image,
)

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(w: int, h: int, depth: int, colour: int, idat: bytes, interlace: int = 0, extra: bytes = b"") -> bytes:
    return (PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, interlace)) + extra
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def _filtered_png16(arr: np.ndarray, filters: list[int], extra: bytes = b"") -> bytes:
    """A 16-bit PNG whose row y uses filter filters[y % len(filters)], built by the PNG spec's
    forward filters (the decoder under test undoes them); ``extra`` chunks go before IDAT."""
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
    return _png(w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], zlib.compress(b"".join(lines)), extra=extra)


def _pypng16(arr: np.ndarray, interlace: bool = False, **kw) -> bytes:
    h, w, c = arr.shape
    buf = io.BytesIO()
    png.Writer(w, h, greyscale=c < 3, alpha=c in (2, 4), bitdepth=16, interlace=interlace, **kw).write(
        buf, arr.reshape(h, w * c).tolist())
    return buf.getvalue()


def _pypng_read(data: bytes) -> tuple[np.ndarray, dict]:
    w, h, rows, info = png.Reader(bytes=data).read()
    return np.array([list(r) for r in rows]).reshape(h, w, info["planes"]), info


def _png_chunks(data: bytes) -> list[bytes]:
    return [kind for kind, _ in png.Reader(bytes=data).chunks()]


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _icc(space: bytes, tags=()) -> bytes:
    """A minimal ICC v2 profile: a well-formed 128-byte header for colour space ``space``
    (b'RGB ', b'GRAY', b'CMYK'), a white point tag (libpng wants some tag data) and ``tags``
    ((signature, data) pairs)."""
    pcs, cls = (b"Lab ", b"prtr") if space == b"CMYK" else (b"XYZ ", b"mntr")
    tags = [(b"wtpt", b"XYZ " + bytes(4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)), *tags]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    head = (struct.pack(">I", offset + len(body)) + b"lcms" + struct.pack(">I", 0x02100000) + cls + space + pcs
            + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + bytes(28) + _s15(0.9642) + _s15(1.0)
            + _s15(0.8249) + bytes(48))
    assert len(head) == 128
    return head + struct.pack(">I", len(tags)) + table + body


def _cmyk_profile() -> bytes:
    """A usable CMYK -> Lab printer profile: an A2B0 lut16 over a 2^4 grid (invented inks)."""
    clut = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    lum = 100 * (1 - 0.25 * c) * (1 - 0.35 * m) * (1 - 0.1 * y) * (1 - 0.85 * k)
                    a, b = 70 * m - 35 * c, 80 * y - 45 * c - 10 * m
                    clut += [round(lum * 65280 / 100), round((a + 128) * 256), round((b + 128) * 256)]
    lut = (b"mft2" + bytes(4) + bytes([4, 3, 2, 0]) + b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
           + struct.pack(">HH", 2, 2) + struct.pack(">8H", *[0, 65535] * 4) + struct.pack(f">{len(clut)}H", *clut)
           + struct.pack(">6H", *[0, 65535] * 3))
    return _icc(b"CMYK", [(b"A2B0", lut)])


RGB_ICC, GRAY_ICC = _icc(b"RGB "), _icc(b"GRAY")


def _iccp(profile: bytes) -> bytes:
    return _chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(profile))


def _exif_chunk(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = exif.tobytes()
    return _chunk(b"eXIf", data[6:] if data.startswith(b"Exif\x00\x00") else data)


def _profile_for(channels: int) -> bytes:
    return GRAY_ICC if channels <= 2 else RGB_ICC


# --- 16-bit PNG decoding --------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_every_colour_type_and_filter(rng, tmp_path, channels):
    """Every colour type of 16-bit PNG, rows of every filter type (spec-built), decodes exactly."""
    arr = rng.integers(0, 65536, (11, 9, channels), dtype=np.uint16)
    arr[6:] = arr[6:7] + rng.integers(0, 3, (5, 9, channels), dtype=np.uint16)  # smooth rows too
    for filters in ([0, 1, 2, 3, 4], [4], [3], [1, 3, 4, 2]):
        path = tmp_path / f"f{''.join(map(str, filters))}.png"
        path.write_bytes(_filtered_png16(arr, filters, extra=_iccp(_profile_for(channels))))
        pic = read_image(path)
        assert pic.bit_depth == 16 and pic.pixels.dtype == np.uint16 and pic.pixels.shape == arr.shape
        np.testing.assert_array_equal(pic.pixels, arr)
        assert pic.icc == _profile_for(channels)
    (tmp_path / "pypng.png").write_bytes(_pypng16(arr))
    np.testing.assert_array_equal(read_image(tmp_path / "pypng.png").pixels, arr)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(13, 10), (1, 1), (3, 17), (9, 2)])
def test_png16_interlaced(rng, tmp_path, channels, shape):
    """Adam7 16-bit PNGs (pypng), sizes with empty passes included, decode exactly."""
    arr = rng.integers(0, 65536, (*shape, channels), dtype=np.uint16)
    data = _pypng16(arr, interlace=True)
    assert data[28] == 1  # IHDR interlace method: Adam7
    (tmp_path / "i.png").write_bytes(data)
    pic = read_image(tmp_path / "i.png")
    assert pic.bit_depth == 16 and pic.pixels.dtype == np.uint16
    np.testing.assert_array_equal(pic.pixels, arr)


def test_png16_rgb_with_trns_stays_rgb(rng, tmp_path):
    """A tRNS colour key is ignored for 16-bit RGB, as for 8-bit RGB (3 channels either way)."""
    arr = rng.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    (tmp_path / "t16.png").write_bytes(_pypng16(arr, transparent=tuple(int(v) for v in arr[0, 0])))
    np.testing.assert_array_equal(read_image(tmp_path / "t16.png").pixels, arr)
    Image.fromarray((arr >> 8).astype(np.uint8)).save(tmp_path / "t8.png", transparency=(1, 2, 3))
    assert read_image(tmp_path / "t8.png").pixels.shape == (6, 5, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_16bit_like_pillow_8bit(rng, tmp_path, orientation):
    """A 16-bit PNG with an eXIf orientation is turned exactly as Pillow's exif_transpose turns
    the same image saved as 8 bits (high and low bytes compared separately), for 1-4 channels;
    8-bit images are turned as Pillow does too."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    for channels in (1, 2, 3, 4):
        hi = rng.integers(0, 256, (5, 8, channels), dtype=np.uint8)
        lo = rng.integers(0, 256, (5, 8, channels), dtype=np.uint8)
        want = []
        for name, part in (("hi", hi), ("lo", lo)):
            path = tmp_path / f"{name}{channels}.png"
            Image.fromarray(part[..., 0] if channels == 1 else part, MODES[channels]).save(path, exif=exif)
            with Image.open(path) as im:
                turned = np.asarray(ImageOps.exif_transpose(im))
            turned = turned.reshape(turned.shape[0], turned.shape[1], channels)
            want.append(turned)
            pic8 = read_image(path)
            assert pic8.bit_depth == 8
            np.testing.assert_array_equal(pic8.pixels, turned)
        deep = (hi.astype(np.uint16) << 8) | lo
        path = tmp_path / f"deep{channels}.png"
        path.write_bytes(_filtered_png16(deep, [4, 1, 3], extra=_exif_chunk(orientation)))
        pic = read_image(path)
        assert pic.bit_depth == 16
        np.testing.assert_array_equal(pic.pixels, (want[0].astype(np.uint16) << 8) | want[1])
        assert read_uint8(path).shape[:2] == (5, 8)  # dataset reads stay as stored
    if orientation in (5, 6, 7, 8):
        assert pic.pixels.shape[:2] == (8, 5)
    for fmt in ("tif", "jpg", "webp"):  # other containers of EXIF, 8-bit
        Image.fromarray(hi[..., :3]).save(tmp_path / f"o.{fmt}", exif=exif)
        with Image.open(tmp_path / f"o.{fmt}") as im:
            np.testing.assert_array_equal(read_image(tmp_path / f"o.{fmt}").pixels,
                                          np.asarray(ImageOps.exif_transpose(im)))


# --- Pillow modes, ICC ----------------------------------------------------------------------


def test_read_image_modes_and_icc(rng, tmp_path):
    rgba = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    cases = {"L": rgba[..., 0], "LA": rgba[..., :2], "RGB": rgba[..., :3], "RGBA": rgba}
    for mode, arr in cases.items():
        path = tmp_path / f"{mode}.png"
        profile = GRAY_ICC if mode in ("L", "LA") else RGB_ICC
        Image.fromarray(arr).save(path, icc_profile=profile)
        pic = read_image(path)
        assert pic.pixels.dtype == np.uint8 and pic.bit_depth == 8
        assert pic.pixels.shape == (6, 7, arr.shape[2] if arr.ndim == 3 else 1)
        np.testing.assert_array_equal(pic.pixels.reshape(arr.shape), arr)
        assert pic.icc == profile
        rgb = read_rgb(path)
        assert rgb.dtype == np.float32 and rgb.shape == (6, 7, 3)
        want = np.repeat(arr[..., None], 3, axis=2) if mode == "L" else (
            np.repeat(arr[..., :1], 3, axis=2) if mode == "LA" else arr[..., :3])
        np.testing.assert_array_equal(rgb, want.astype(np.float32) / 255)
    pal = Image.fromarray(rgba[..., 0]).convert("P")
    pal.save(tmp_path / "p.png", transparency=0, icc_profile=RGB_ICC)
    pic = read_image(tmp_path / "p.png")
    assert pic.pixels.shape == (6, 7, 4) and pic.icc == RGB_ICC
    pal.save(tmp_path / "p3.png")
    assert read_image(tmp_path / "p3.png").pixels.shape == (6, 7, 3)
    Image.fromarray(rgba[..., 0] > 127).save(tmp_path / "bw.png")
    pic = read_image(tmp_path / "bw.png")
    assert pic.pixels.shape == (6, 7, 1) and set(np.unique(pic.pixels)) <= {0, 255}
    gray16 = rng.integers(0, 65536, (5, 4), dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png", icc_profile=GRAY_ICC)  # Pillow: I;16
    pic = read_image(tmp_path / "g16.png")
    assert pic.bit_depth == 16 and pic.pixels.dtype == np.uint16 and pic.icc == GRAY_ICC
    np.testing.assert_array_equal(pic.pixels[..., 0], gray16)
    np.testing.assert_array_equal(read_rgb(tmp_path / "g16.png")[..., 1], gray16.astype(np.float32) / 65535)
    rgb16 = rng.integers(0, 65536, (5, 4, 3), dtype=np.uint16)
    (tmp_path / "rgb16.png").write_bytes(_filtered_png16(rgb16, [4, 3]))
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgb16.png"), rgb16.astype(np.float32) / 65535)


def test_float_and_int32_images_become_uint16(rng, tmp_path):
    f = (rng.random((4, 6)) * 1.6 - 0.3).astype(np.float32)
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    pic = read_image(tmp_path / "f.tif")
    assert pic.bit_depth == 16 and pic.pixels.dtype == np.uint16
    np.testing.assert_array_equal(pic.pixels[..., 0], np.rint(np.clip(f, 0, 1) * 65535).astype(np.uint16))
    i = rng.integers(-70000, 140000, (4, 6), dtype=np.int32)
    Image.fromarray(i, "I").save(tmp_path / "i.tif")
    pic = read_image(tmp_path / "i.tif")
    assert pic.bit_depth == 16
    np.testing.assert_array_equal(pic.pixels[..., 0], np.clip(i, 0, 65535).astype(np.uint16))


def test_icc_kept_only_when_it_matches(rng, tmp_path):
    """A profile is attached only when its colour space is that of the pixels returned; a gray
    image with an RGB-tagged profile (and the reverse) gets none, so outputs carry none."""
    gray = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    for name, arr, profile, kept in (("g-rgb", gray, RGB_ICC, False), ("g-gray", gray, GRAY_ICC, True),
                                     ("rgb-gray", rgb, GRAY_ICC, False), ("rgb-rgb", rgb, RGB_ICC, True),
                                     ("rgb-cmyk", rgb, _icc(b"CMYK"), False), ("g-short", gray, b"GRAY", False)):
        path = tmp_path / f"{name}.png"
        Image.fromarray(arr).save(path, icc_profile=profile)
        pic = read_image(path)
        assert pic.icc == (profile if kept else None), name
        write_image(tmp_path / f"out-{name}.png", pic.pixels, 8, icc=pic.icc)
        assert Image.open(tmp_path / f"out-{name}.png").info.get("icc_profile") == (profile if kept else None)
    for channels in (1, 2, 3, 4):
        arr = rng.integers(0, 65536, (3, 4, channels), dtype=np.uint16)
        for profile in (RGB_ICC, GRAY_ICC):
            path = tmp_path / f"d{channels}.png"
            path.write_bytes(_filtered_png16(arr, [0], extra=_iccp(profile)))
            assert read_image(path).icc == (profile if profile == _profile_for(channels) else None)


def test_cmyk_jpeg_colour_managed_or_plain(rng, tmp_path):
    """CMYK JPEGs become RGB without a profile: through ImageCms when the embedded profile is a
    usable CMYK one, else (a CMYK-tagged header only, or none) Pillow's plain convert('RGB')."""
    cmyk = Image.fromarray(rng.integers(0, 256, (8, 10, 4), dtype=np.uint8), "CMYK")
    usable = _cmyk_profile()
    for name, profile in (("none", None), ("header", _icc(b"CMYK")), ("usable", usable)):
        path = tmp_path / f"{name}.jpg"
        cmyk.save(path, quality=95, **({"icc_profile": profile} if profile else {}))
        with Image.open(path) as im:
            assert im.mode == "CMYK" and im.info.get("icc_profile") == profile
            plain = np.asarray(im.convert("RGB"))
            managed = np.asarray(ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(usable)),
                                                           ImageCms.createProfile("sRGB"), outputMode="RGB"))
        pic = read_image(path)
        assert pic.pixels.shape == (8, 10, 3) and pic.bit_depth == 8 and pic.icc is None
        np.testing.assert_array_equal(pic.pixels, managed if name == "usable" else plain)
        write_image(tmp_path / f"{name}.png", pic.pixels, 16, icc=pic.icc)
        assert b"iCCP" not in _png_chunks((tmp_path / f"{name}.png").read_bytes())
    assert not np.array_equal(managed, plain)  # the colour-managed branch really differs
    np.testing.assert_array_equal(read_uint8(tmp_path / "usable.jpg"), plain)  # the data loader: plain


# --- writing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_write_png16_round_trip_icc(rng, tmp_path, channels):
    """uint16 pixels written as a 16-bit PNG of the same colour type (pypng, an independent
    decoder, agrees), the ICC profile in an iCCP chunk right after IHDR; read back exactly."""
    arr = rng.integers(0, 65536, (7, 9, channels), dtype=np.uint16)
    arr[0, :4] = [[0] * channels, [65535] * channels, [255] * channels, [256] * channels]
    profile = _profile_for(channels)
    path = tmp_path / "out.png"
    write_image(path, arr, 16, icc=profile)
    data = path.read_bytes()
    assert data[24:26] == bytes([16, {1: 0, 2: 4, 3: 2, 4: 6}[channels]])  # bit depth, colour type
    assert _png_chunks(data)[:2] == [b"IHDR", b"iCCP"]
    got, info = _pypng_read(data)
    assert info["bitdepth"] == 16 and info["planes"] == channels
    np.testing.assert_array_equal(got, arr)
    pic = read_image(path)
    assert pic.bit_depth == 16 and pic.icc == profile
    np.testing.assert_array_equal(pic.pixels, arr)
    assert Image.open(path).info["icc_profile"] == profile
    np.testing.assert_array_equal(_pypng_read(encode_png16(arr))[0], arr)  # without a profile too
    assert b"iCCP" not in _png_chunks(encode_png16(arr))


def test_write_image_integer_inputs(rng, tmp_path):
    """uint8/uint16 are written as they are at their own depth and converted exactly otherwise
    (uint16 -> 8: round(x / 257); uint8 -> 16: x * 257); floats are quantised as before."""
    u16 = rng.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    u16[0, :5, 0] = [128, 129, 385, 386, 65535]  # round(x / 257) edges: 0, 1, 1, 2, 255
    u8 = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    f = rng.random((6, 5, 3)).astype(np.float32)
    cases = [(u16, 16, u16), (u16, 8, np.rint(u16 / 257).astype(np.uint8)), (u8, 8, u8),
             (u8, 16, u8.astype(np.uint16) * 257), (f, 8, quantize(f, 8)), (f, 16, quantize(f, 16))]
    for k, (img, depth, want) in enumerate(cases):
        write_image(tmp_path / f"{k}.png", img, depth)
        pic = read_image(tmp_path / f"{k}.png")
        assert pic.bit_depth == depth and pic.pixels.dtype == want.dtype, k
        np.testing.assert_array_equal(pic.pixels, want)
    np.testing.assert_array_equal(read_image(tmp_path / "1.png").pixels[0, :5, 0], [0, 1, 1, 2, 255])
    write_image(tmp_path / "g.png", u16[..., 0], 16)  # (H, W) is gray
    assert read_image(tmp_path / "g.png").pixels.shape == (6, 5, 1)
    with pytest.raises(TypeError, match="int32"):
        write_image(tmp_path / "x.png", u16.astype(np.int32), 16)
    with pytest.raises(ValueError, match="needs a .png"):
        write_image(tmp_path / "x.tif", u16, 16)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_write_image_channels_icc(rng, tmp_path):
    img = rng.random((5, 6, 2))
    write_image(tmp_path / "la16.png", img, 16, icc=GRAY_ICC)
    pic = read_image(tmp_path / "la16.png")
    assert pic.bit_depth == 16 and pic.icc == GRAY_ICC and pic.pixels.shape == (5, 6, 2)
    np.testing.assert_array_equal(pic.pixels, quantize(img, 16))
    write_image(tmp_path / "c.webp", img[..., :1].repeat(3, axis=2), 8, icc=RGB_ICC)
    pic = read_image(tmp_path / "c.webp")
    assert pic.icc == RGB_ICC and pic.pixels.shape == (5, 6, 3)
    write_image(tmp_path / "g.tif", img[..., :1], 8, icc=GRAY_ICC)
    pic = read_image(tmp_path / "g.tif")
    assert pic.icc == GRAY_ICC and pic.pixels.shape == (5, 6, 1)
    np.testing.assert_array_equal(pic.pixels, quantize(img[..., :1], 8))
    with pytest.raises(ValueError, match="cannot store alpha"):
        write_image(tmp_path / "a.jpg", img, 8)
    assert not list(tmp_path.glob("a.jpg*")) and not list(tmp_path.glob(".a.jpg*"))


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


def test_uint16_to_uint8_in_blocks(tmp_path, monkeypatch):
    """round(x / 257) for every uint16 value, in blocks of rows, strided views too."""
    monkeypatch.setattr(images, "QUANTIZE_BLOCK", 1000)
    u16 = np.arange(65536, dtype=np.uint16).reshape(256, 256, 1)
    for view in (u16, u16[::3, ::2]):
        write_image(tmp_path / "q.png", view, 8)
        np.testing.assert_array_equal(read_image(tmp_path / "q.png").pixels, np.rint(view / 257).astype(np.uint8))


# --- bounds, bombs, corrupt files ---------------------------------------------------------


def test_bomb_header_refused_at_once(tmp_path):
    """Headers claiming 100000 x 100000 pixels are refused from the header, by every reader,
    with one line naming the file, the size, the limit and the override; Pillow says nothing."""
    for name, depth, colour in (("rgb16", 16, 2), ("gray16", 16, 0), ("rgb8", 8, 2), ("la16", 16, 4)):
        path = tmp_path / f"{name}.png"
        path.write_bytes(_png(100000, 100000, depth, colour, zlib.compress(bytes(1000))))
        for reader in (read_image, read_uint8, read_rgb):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with pytest.raises(ImageError) as err:
                    reader(path)
            msg = str(err.value)
            assert str(path) in msg and "10,000,000,000 pixels" in msg and f"{DEFAULT_MAX_PIXELS:,}" in msg
            assert "use --max-pixels to raise the limit" in msg and "\n" not in msg
            assert not caught, [str(w.message) for w in caught]
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's own check is back after our reads


def test_max_pixels_override(rng, tmp_path, monkeypatch):
    """An image just over a small limit is refused; at the limit, or with None / 0, it reads.
    Pillow's own bound neither warns nor refuses what ours lets through, and is restored."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # Pillow would warn above 40, refuse above 80
    arr8 = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(arr8).save(tmp_path / "a.png")
    arr16 = rng.integers(0, 65536, (10, 12, 4), dtype=np.uint16)
    (tmp_path / "b.png").write_bytes(_filtered_png16(arr16, [4]))
    for name in ("a.png", "b.png"):
        path = tmp_path / name
        for reader in (read_image, read_uint8, read_rgb):
            with pytest.raises(ImageError, match=r"120 pixels, over the limit of 119 pixels \(use --max-pixels"):
                reader(path, max_pixels=119)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a DecompressionBombWarning would fail here
                for limit in (120, None, 0, 10**12):
                    reader(path, max_pixels=limit)
        np.testing.assert_array_equal(read_image(path, max_pixels=120).pixels, arr8 if name == "a.png" else arr16)
    assert Image.MAX_IMAGE_PIXELS == 40
    with pytest.raises(ValueError, match="max_pixels"):
        read_image(tmp_path / "a.png", max_pixels=-1)


def _zlib_bomb(gib: int) -> bytes:
    """A zlib stream of ``gib`` GiB of zeros (about 1 MB a GiB), valid to the checksum: one
    16 MiB block compressed once and repeated (full flushes make the copies independent)."""
    block = bytes(1 << 24)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    seg = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    n = gib * 64
    adler = 1
    for _ in range(n):
        adler = zlib.adler32(block, adler)
    stream = b"\x78\xda" + seg * n + b"\x03\x00" + struct.pack(">I", adler)
    assert zlib.decompressobj().decompress(stream, 1 << 20) == bytes(1 << 20)
    return stream


PEAK_SCRIPT = r"""
import json, sys, time
import cv2  # loaded before measuring: its code is not the decoder's memory
from clit.runtime.images import ImageError, read_image, read_uint8
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024
reader = {"read_image": read_image, "read_uint8": read_uint8}[sys.argv[2]]
before, t = hwm(), time.perf_counter()
try:
    out = reader(sys.argv[1])
    result = list(getattr(out, "pixels", out).shape)
except ImageError as exc:
    result = str(exc)
print(json.dumps({"grew": hwm() - before, "seconds": time.perf_counter() - t, "result": result}))
"""


def test_idat_inflation_bounded(tmp_path):
    """A 1x1 header followed by ~1 MB of IDAT inflating to 1 GiB (the old decoder took 2.1 GB on
    such a file): decoders stop at the rows the header announces, so the reading process grows
    by a few MB (peak RSS of a subprocess, /proc/self/status VmHWM), whatever the outcome."""
    if "VmHWM" not in open("/proc/self/status").read():
        pytest.skip("no VmHWM in /proc/self/status")
    stream = _zlib_bomb(1)
    assert len(stream) < 1_100_000
    for name, depth, colour in (("rgb16", 16, 2), ("rgba16", 16, 6), ("gray16", 16, 0), ("rgb8", 8, 2)):
        path = tmp_path / f"{name}.png"
        path.write_bytes(_png(1, 1, depth, colour, stream))
        for reader in ("read_image", "read_uint8"):
            done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path), reader], capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            res = json.loads(done.stdout)
            assert res["grew"] < 32 << 20, (name, reader, res)
            assert isinstance(res["result"], str) or res["result"][:2] == [1, 1], res


def test_corrupt_files_name_the_file(rng, tmp_path):
    """Truncated or garbled files of every format, and what OpenCV cannot decode, are an
    ImageError naming the file (one line, no traceback)."""
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    files = {}
    for fmt in ("png", "jpg", "webp", "bmp", "tif"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format={"jpg": "JPEG", "tif": "TIFF"}.get(fmt, fmt.upper()))
        files[f"cut.{fmt}"] = buf.getvalue()[: len(buf.getvalue()) * 2 // 3]
    deep = _filtered_png16(rng.integers(0, 65536, (40, 50, 3), dtype=np.uint16), [4])
    files["cut16.png"] = deep[: len(deep) * 2 // 3]
    files["noiend16.png"] = deep[:-12]  # all rows there, IEND missing: Pillow (read_uint8) reads it, libpng not
    bad_crc = bytearray(deep)
    bad_crc[deep.index(b"IDAT") + 50] ^= 0xFF
    files["crc16.png"] = bytes(bad_crc)
    files["short16.png"] = _png(5, 40, 16, 6, zlib.compress(bytes(30)))  # a valid stream, rows missing
    files["garbage.png"] = PNG_SIGNATURE + b" broken"
    files["empty.jpg"] = b""
    files["zero16.png"] = _png(0, 5, 16, 2, zlib.compress(b""))
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        for reader in (read_image, read_rgb) if name == "noiend16.png" else (read_image, read_uint8, read_rgb):
            with pytest.raises(ImageError) as err:
                reader(path)
            assert str(err.value).startswith(str(path)) and "\n" not in str(err.value), (name, err.value)
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")


# --- end to end -----------------------------------------------------------------------------


def infer(*args):
    return subprocess.run([sys.executable, "-m", "clit.runtime.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_keeps_gray_alpha_depth_icc(golden_dir, tmp_path, rng):
    pytest.importorskip("torch")
    ckpt = golden_dir / "edsr_lit_small.pth"
    lr = np.asarray(Image.open(golden_dir / "edsr_lit_small_lr.png").convert("RGB"))[:16, :20]
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(lr[..., 0]).save(src / "gray.png", icc_profile=GRAY_ICC)
    alpha = np.tile(np.linspace(0, 255, 20).astype(np.uint8), (16, 1))
    Image.fromarray(np.dstack([lr, alpha])).save(src / "sub" / "rgba.png")
    (src / "deep.png").write_bytes(encode_png16(lr.astype(np.uint16) * 257))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    done = infer(src, "--checkpoint", ckpt, "--scale", 2, "-o", out)
    assert done.returncode == 1 and "broken.png" in done.stderr  # the bad one is named, the others written
    assert "Traceback" not in done.stderr
    gray = Image.open(out / "gray.png")
    assert gray.mode == "L" and gray.size == (40, 32) and gray.info.get("icc_profile") == GRAY_ICC
    rgba = read_image(out / "sub" / "rgba.png")
    assert rgba.pixels.shape == (32, 40, 4) and rgba.pixels.dtype == np.uint8
    expect_alpha = np.asarray(Image.fromarray(alpha.astype(np.float32) / 255, "F").resize((40, 32), Image.BICUBIC))
    assert np.abs(rgba.pixels[..., 3] / 255 - np.clip(expect_alpha, 0, 1)).max() <= 0.5 / 255 + 1e-6
    deep = read_image(out / "deep.png")
    assert deep.bit_depth == 16 and deep.pixels.shape == (32, 40, 3) and deep.pixels.dtype == np.uint16
    assert not (out / "broken.png").exists()
    done = infer(str(src / "*.png"), "--checkpoint", ckpt, "--scale", 1.5, "--bit-depth", 8, "-o", tmp_path / "g")
    assert done.returncode == 1 and sorted(p.name for p in (tmp_path / "g").iterdir()) == ["deep.png", "gray.png"]
    assert read_image(tmp_path / "g" / "deep.png").bit_depth == 8
