"""Image reading and writing for the runtime (numpy + Pillow, no torch).

Arrays are (H, W, 3) float32 RGB in [0, 1].  Outputs are written atomically (a temporary
file in the target folder, then a rename), so an interrupted run never leaves a partial
image.  16-bit RGB PNGs are encoded here because Pillow cannot write them.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .atomic import atomic_write


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the reason."""


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) float32 RGB in [0, 1] (EXIF orientation applied)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                gray = np.asarray(im, dtype=np.float32) / 65535.0
                return np.repeat(gray[..., None], 3, axis=2)
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{path}: image has zero size")
    return arr


def quantize(img: np.ndarray, bit_depth: int) -> np.ndarray:
    """Clamp to [0, 1] and round to 8- or 16-bit integers."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, got {bit_depth}")
    top = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.rint(np.clip(img, 0.0, 1.0) * top).astype(dtype)


def encode_png16(rgb16: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint16 array as a 48-bit RGB PNG."""
    h, w, c = rgb16.shape
    if c != 3 or rgb16.dtype != np.uint16:
        raise ValueError("encode_png16 expects (H, W, 3) uint16")
    rows = np.ascontiguousarray(rgb16.astype(">u2")).view(np.uint8).reshape(h, w * 6)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def write_image(path: str | os.PathLike, img: np.ndarray, bit_depth: int = 8) -> None:
    """Write (H, W, 3) float RGB atomically; 16-bit needs a .png path."""
    path = Path(path)
    q = quantize(img, bit_depth)
    suffix = path.suffix.lower()
    if bit_depth == 16 and suffix != ".png":
        raise ValueError(f"{path}: 16-bit output needs a .png file")

    def write(f) -> None:
        if bit_depth == 16:
            f.write(encode_png16(q))
        else:
            fmt = Image.registered_extensions().get(suffix)
            if fmt is None:
                raise ValueError(f"{path}: unknown image format {suffix!r}")
            Image.fromarray(q, "RGB").save(f, format=fmt)

    atomic_write(path, write)
