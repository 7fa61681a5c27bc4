"""Image reading and writing for the runtime (numpy + Pillow, no torch).

Arrays are (H, W, C) float32 in [0, 1] with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4
(RGBA).  Outputs are written atomically (a temporary file in the target folder, then a
rename), so an interrupted run never leaves a partial image.  16-bit colour PNGs are read
and written here because Pillow truncates them on reading and cannot write them.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .atomic import atomic_write


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the reason."""


@dataclass
class Picture:
    """A decoded image: ``pixels`` (H, W, C) float32 in [0, 1], C = 1 (gray), 2 (gray +
    alpha), 3 (RGB) or 4 (RGBA); the source ``bit_depth`` (8 or 16) and ICC profile."""

    pixels: np.ndarray
    bit_depth: int = 8
    icc: bytes | None = None


_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def read_image(path: str | os.PathLike) -> Picture:
    """Read an image keeping gray/alpha channels, 16-bit depth and the ICC profile.

    EXIF orientation is applied.  Palette, CMYK and other modes become RGB(A); 16-bit RGB(A)
    and gray+alpha PNGs (which Pillow truncates to 8 bits) are decoded by :func:`decode_png16`."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.format == "PNG" and _png_header(path)[:2] in ((16, 2), (16, 4), (16, 6)):
                pixels = decode_png16(path.read_bytes()).astype(np.float32) / 65535.0
                return Picture(pixels, 16, im.info.get("icc_profile"))
            im.load()
            icc = im.info.get("icc_profile")
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im).astype(np.float32)
                pic = Picture((arr / 65535.0)[..., None], 16, icc)
            elif im.mode == "F":
                pic = Picture(np.clip(np.asarray(im, dtype=np.float32), 0, 1)[..., None], 16, icc)
            else:
                if im.mode not in _CHANNELS:
                    has_alpha = im.mode in ("PA", "La") or "transparency" in im.info
                    im = im.convert("RGBA" if has_alpha else ("L" if im.mode == "1" else "RGB"))
                arr = np.asarray(im, dtype=np.float32).reshape(im.size[1], im.size[0], _CHANNELS[im.mode])
                pic = Picture(arr / 255.0, 8, icc)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None
    if pic.pixels.shape[0] == 0 or pic.pixels.shape[1] == 0:
        raise ImageError(f"{path}: image has zero size")
    return pic


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) float32 RGB in [0, 1] (gray repeated, alpha dropped)."""
    px = read_image(path).pixels
    return np.ascontiguousarray(np.repeat(px[..., :1], 3, axis=2) if px.shape[2] < 3 else px[..., :3])


def _png_header(path: Path) -> tuple[int, int, int]:
    """(bit depth, colour type, interlace) from a PNG's IHDR."""
    with open(path, "rb") as f:
        head = f.read(33)
    return head[24], head[25], head[28]


def decode_png16(data: bytes) -> np.ndarray:
    """Decode a 16-bit PNG (gray, gray+alpha, RGB, RGBA; not interlaced) to (H, W, C) uint16."""
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG file")
    pos, idat, header = 8, [], None
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError("PNG data is truncated")
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ValueError("PNG without IHDR")
    w, h, depth, colour, _, _, interlace = header
    if depth != 16 or colour not in _PNG_COLOUR_CHANNELS or interlace:
        raise ValueError(f"decode_png16 handles 16-bit non-interlaced PNGs, got depth {depth}, colour {colour}, "
                         f"interlace {interlace}")
    c = _PNG_COLOUR_CHANNELS[colour]
    bpp, stride = 2 * c, 2 * c * w
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    except zlib.error:
        raise ValueError("PNG data is corrupt or truncated") from None
    if raw.size != h * (stride + 1):
        raise ValueError("PNG data is truncated")
    rows = raw.reshape(h, stride + 1)
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    for y in range(h):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 1:  # Sub: running sum per byte lane
            line = np.cumsum(line.reshape(w, bpp), axis=0).reshape(-1) & 255
        elif kind == 2:  # Up
            line = (line + prev) & 255
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            line = _unfilter_sequential(line, prev, bpp, kind)
        elif kind != 0:
            raise ValueError(f"unknown PNG filter {kind}")
        out[y] = line
        prev = line.astype(np.int32)
    return out.view(">u2").astype(np.uint16).reshape(h, w, c)


def _unfilter_sequential(line: np.ndarray, up: np.ndarray, bpp: int, kind: int) -> np.ndarray:
    res = line.copy()
    left = np.zeros(bpp, np.int32)
    upleft = np.zeros(bpp, np.int32)
    for x in range(0, len(line), bpp):
        b = up[x:x + bpp]
        if kind == 3:
            pred = (left + b) >> 1
        else:
            p = left + b - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - b), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, b, upleft))
        left = (res[x:x + bpp] + pred) & 255
        res[x:x + bpp] = left
        upleft = b
    return res


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursive), sorted by their path relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"{root}: not a folder")
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise ImageError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def read_uint8(path: str | os.PathLike) -> np.ndarray:
    """An image as (H, W, 3) uint8 RGB, Pillow ``convert('RGB')`` as the official data loader
    (no EXIF rotation: dataset images are used as stored)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None
    if 0 in arr.shape:
        raise ImageError(f"{path}: image has zero size")
    return arr


QUANTIZE_BLOCK = 1 << 20  # samples per block


def quantize(img: np.ndarray, bit_depth: int) -> np.ndarray:
    """Clamp to [0, 1] and round to 8- or 16-bit integers (in blocks of rows, so a large image
    needs no float temporaries of its own size)."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, got {bit_depth}")
    top = 255 if bit_depth == 8 else 65535
    img = np.asarray(img)
    out = np.empty(img.shape, dtype=np.uint8 if bit_depth == 8 else np.uint16)
    src, dst = (img, out) if img.ndim >= 2 else (img.reshape(1, -1), out.reshape(1, -1))
    rows = max(1, QUANTIZE_BLOCK // max(1, src[0].size))
    for y in range(0, len(src), rows):
        block = np.clip(src[y:y + rows], 0.0, 1.0)
        block *= top
        dst[y:y + rows] = np.rint(block, out=block)
    return out


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4}


def encode_png16(arr: np.ndarray, icc: bytes | None = None) -> bytes:
    """Encode an (H, W, C) uint16 array, C = 1-4 (gray, gray+alpha, RGB, RGBA), as a 16-bit PNG."""
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w, c = arr.shape
    if arr.dtype != np.uint16 or c not in (1, 2, 3, 4):
        raise ValueError("encode_png16 expects (H, W, 1-4) uint16")
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = np.ascontiguousarray(arr.astype(">u2")).view(np.uint8).reshape(h, w * 2 * c)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    extra = chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)) if icc else b""
    return PNG_SIGNATURE + chunk(b"IHDR", header) + extra + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def write_image(path: str | os.PathLike, img: np.ndarray, bit_depth: int = 8, icc: bytes | None = None) -> None:
    """Write (H, W, C) float in [0, 1] atomically (C = 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA),
    keeping ``icc``; 16-bit needs a .png path."""
    path = Path(path)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"image must be (H, W, 1-4), got {img.shape}")
    q = quantize(img, bit_depth)
    suffix = path.suffix.lower()
    if bit_depth == 16 and suffix != ".png":
        raise ValueError(f"{path}: 16-bit output needs a .png file")
    fmt = Image.registered_extensions().get(suffix)
    if bit_depth == 8 and fmt is None:
        raise ValueError(f"{path}: unknown image format {suffix!r}")
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[q.shape[2]]
    if bit_depth == 8 and fmt in ("JPEG", "BMP") and mode in ("LA", "RGBA"):
        raise ValueError(f"{path}: {fmt} cannot store alpha; use .png, .webp or .tiff")

    def write(f) -> None:
        if bit_depth == 16:
            f.write(encode_png16(q, icc))
        else:
            options = {"icc_profile": icc} if icc else {}
            Image.fromarray(q[..., 0] if mode == "L" else q).save(f, format=fmt, **options)

    atomic_write(path, write)
