"""Image reading and writing for the runtime (numpy, Pillow and OpenCV; no torch).

Decoded pixels are the image's own integers: (H, W, C) ``uint8`` or ``uint16`` with C = 1
(gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA).  :func:`write_image` takes those or floats in
[0, 1].  Outputs are written atomically (a temporary file in the target folder, then a
rename), so an interrupted run never leaves a partial image.

Who decodes what: 16-bit colour PNGs (RGB, RGBA, gray + alpha; plain or interlaced), which
Pillow truncates to 8 bits, are decoded by OpenCV (libpng); everything else, and every
file's metadata (size from the header, ICC profile, EXIF orientation), by Pillow.  16-bit
PNGs are written by OpenCV, 8-bit images by Pillow.

Every reader checks the header's width x height against ``max_pixels`` before any pixel is
decoded (:data:`DEFAULT_MAX_PIXELS`; ``None`` or 0: no limit).  Pillow's own
decompression-bomb check is switched off while our readers run, so that it neither warns
about images under our limit nor refuses the ones a raised limit lets through.  Decoders
stop at the rows the header announces, so a small header with an oversized compressed
stream costs no memory beyond the image (libpng still inflates the rest of the stream to
check it, which costs CPU time: about 2.5 s per MB of such a stream).

Colour: an input's ICC profile is kept (and so copied to the output) only when its colour
space (bytes 16-19 of the profile) matches the pixels returned: ``RGB `` for 3 or 4
channels, ``GRAY`` for 1 or 2.  CMYK images become RGB: through Pillow's ImageCms from the
embedded profile to sRGB when one is there and littlecms can build that transform (the
result is sRGB, no profile attached), otherwise with Pillow's plain ``convert('RGB')`` (no
profile attached either).  Palette and other modes become RGB or RGBA with Pillow's
``convert``.  EXIF orientation is applied by :func:`read_image` (8- and 16-bit alike).
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_write

# The default pixel bound of every reader: Pillow's own warning threshold (1 GiB / 12, about
# 9459 x 9459 and ten 4K UHD frames), half its error threshold.  At the limit a 16-bit RGBA
# image decodes to 0.7 GB and its float32 copy in the upscaler takes 1.4 GB, about half the
# 4 GiB process the CLI's memory plan targets; anything larger is not an input to upscale but
# most likely a mistake or a decompression bomb.  ``--max-pixels`` raises it.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the reason."""


@dataclass
class Picture:
    """A decoded image: ``pixels`` (H, W, C) ``uint8`` (``bit_depth`` 8) or ``uint16``
    (``bit_depth`` 16), C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA), and the ICC
    profile when it describes those pixels (else ``None``)."""

    pixels: np.ndarray
    bit_depth: int = 8
    icc: bytes | None = None


_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_GRAY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ORIENTATION = 0x0112  # EXIF tag
# Exceptions Pillow, OpenCV and zlib raise on corrupt or truncated data (Pillow's own open()
# catches SyntaxError, IndexError, TypeError and struct.error from its plugins).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error,
                  zlib.error, Image.DecompressionBombError)

_bomb_check_lock = threading.Lock()
_bomb_check_users = 0
_bomb_check_saved: int | None = None


@contextmanager
def _our_pixel_bound():
    """Pillow's decompression-bomb check (``Image.MAX_IMAGE_PIXELS``) off while one of our
    readers runs, restored when the last concurrent one ends: ``max_pixels`` is the bound."""
    global _bomb_check_users, _bomb_check_saved
    with _bomb_check_lock:
        if _bomb_check_users == 0:
            _bomb_check_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _bomb_check_users += 1
    try:
        yield
    finally:
        with _bomb_check_lock:
            _bomb_check_users -= 1
            if _bomb_check_users == 0:
                Image.MAX_IMAGE_PIXELS = _bomb_check_saved


def _check_size(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    """Refuse a header's (width, height) that is empty or over ``max_pixels``."""
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(f"{path}: image has zero size")
    if max_pixels and w * h > max_pixels:
        raise ImageError(f"{path}: {w}x{h} is {w * h:,} pixels, over the limit of {max_pixels:,} pixels "
                         f"(use --max-pixels to raise the limit)")


@contextmanager
def _opened(path: Path, max_pixels: int | None):
    """``Image.open(path)`` with its header checked against ``max_pixels``; decoding errors
    inside the block become :class:`ImageError` naming the file."""
    if max_pixels is not None and max_pixels < 0:
        raise ValueError(f"max_pixels must be >= 0 (0 or None: no limit), got {max_pixels}")
    try:
        with _our_pixel_bound(), Image.open(path) as im:
            _check_size(path, im.size, max_pixels)
            yield im
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    """Read an image keeping gray/alpha channels, 8- or 16-bit integers and a matching ICC
    profile, with EXIF orientation applied.

    ``pixels`` is (H, W, C) uint8 or uint16, C = 1-4 (see :class:`Picture`).  Palette and other
    modes become RGB(A); CMYK is colour-managed to sRGB when its profile allows (module
    docstring); 32-bit float images are clipped to [0, 1] and rounded to uint16, 32-bit
    integer ones clipped to [0, 65535].  Over ``max_pixels`` (header width x height; ``None``
    or 0: no limit) it raises :class:`ImageError` before decoding, as for unreadable files."""
    path = Path(path)
    with _opened(path, max_pixels) as im:
        icc = im.info.get("icc_profile") or None
        depth, colour, _ = _png_header(path) if im.format == "PNG" else (8, None, 0)
        if depth == 16 and colour in (2, 4, 6):
            # Not im.getexif(): Pillow's PNG version decodes the image first when no eXIf chunk
            # came before the pixels.
            orientation = Image.Image.getexif(im).get(_ORIENTATION, 1)
            pixels = _decode_png16(path, colour)
        else:
            im.load()
            # After load(): recent Pillow turns TIFFs upright itself when loading them and drops
            # the tag (so does ImageOps.exif_transpose, which the 8-bit path used to call).
            orientation = im.getexif().get(_ORIENTATION, 1)
            pixels, depth, icc = _pillow_pixels(im, icc)
    pixels = _oriented(pixels, orientation)
    return Picture(pixels, depth, _matching_icc(icc, pixels.shape[2]))


def _png_header(path: Path) -> tuple[int, int, int]:
    """(bit depth, colour type, interlace) from a PNG's IHDR."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 29 or head[12:16] != b"IHDR":
        raise ValueError("PNG without IHDR")
    return head[24], head[25], head[28]


def _decode_png16(path: Path, colour: int) -> np.ndarray:
    """A 16-bit PNG of colour type 2 (RGB), 6 (RGBA) or 4 (gray + alpha), any filter, plain or
    interlaced, as (H, W, 3, 4 or 2) uint16, through OpenCV.  OpenCV returns BGR(A) and gray
    + alpha as BGRA; a tRNS chunk, which it expands to alpha, is dropped as for 8-bit RGB."""
    import cv2

    try:
        arr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ValueError(f"OpenCV: {str(exc).strip().splitlines()[-1]}") from None
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError("the PNG data is corrupt or truncated (OpenCV could not decode it)")
    if colour == 4:
        return np.ascontiguousarray(arr[..., [0, 3]])  # gray came back replicated as B = G = R
    if arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB, dst=arr)  # in place: no second image
    if colour == 6:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA, dst=arr)
    return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)


def _pillow_pixels(im: Image.Image, icc: bytes | None) -> tuple[np.ndarray, int, bytes | None]:
    """A loaded Pillow image as ((H, W, C) uint8/uint16, bit depth, ICC profile)."""
    mode = im.mode
    if mode in _GRAY16_MODES:
        return np.asarray(im).astype(np.uint16)[..., None], 16, icc
    if mode == "I":
        return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)[..., None], 16, icc
    if mode == "F":
        return quantize(np.nan_to_num(np.asarray(im, dtype=np.float32)), 16)[..., None], 16, icc
    if mode == "CMYK":
        im, icc = _cmyk_to_rgb(im, icc), None
    elif mode not in _CHANNELS:
        has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else ("L" if mode == "1" else "RGB"))
    arr = np.asarray(im, dtype=np.uint8).reshape(im.size[1], im.size[0], _CHANNELS[im.mode])
    return arr, 8, icc


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """CMYK -> sRGB through the embedded profile when littlecms accepts it, else Pillow's
    plain conversion."""
    if icc:
        try:
            from PIL import ImageCms
        except ImportError:  # Pillow built without littlecms
            return im.convert("RGB")
        try:
            transform = ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                                ImageCms.createProfile("sRGB"), "CMYK", "RGB")
            return ImageCms.applyTransform(im, transform)
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # not a usable CMYK profile
    return im.convert("RGB")


def _matching_icc(icc: bytes | None, channels: int) -> bytes | None:
    """``icc`` when its colour space (header bytes 16-19) is that of ``channels``, else None."""
    if not icc or len(icc) < 20:
        return None
    return icc if icc[16:20] == (b"GRAY" if channels <= 2 else b"RGB ") else None


def _oriented(arr: np.ndarray, orientation) -> np.ndarray:
    """(H, W, C) turned upright for an EXIF orientation (1-8), as Pillow's exif_transpose."""
    if orientation == 2:  # mirrored
        arr = arr[:, ::-1]
    elif orientation == 3:  # rotated 180
        arr = arr[::-1, ::-1]
    elif orientation == 4:  # flipped
        arr = arr[::-1]
    elif orientation == 5:  # transposed
        arr = arr.transpose(1, 0, 2)
    elif orientation == 6:  # rotated 90 clockwise to be upright
        arr = arr.transpose(1, 0, 2)[:, ::-1]
    elif orientation == 7:  # transversed
        arr = arr[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:  # rotated 90 counter-clockwise to be upright
        arr = arr.transpose(1, 0, 2)[::-1]
    else:
        return arr
    return np.ascontiguousarray(arr)


def read_rgb(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image as (H, W, 3) float32 RGB in [0, 1] (integers / 255 or / 65535; gray
    repeated, alpha dropped, EXIF orientation applied as by :func:`read_image`)."""
    pic = read_image(path, max_pixels)
    px = pic.pixels
    rgb = np.repeat(px[..., :1], 3, axis=2) if px.shape[2] < 3 else px[..., :3]
    out = rgb.astype(np.float32)
    return np.divide(out, 255 if pic.bit_depth == 8 else 65535, out=out)


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


def read_uint8(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image as (H, W, 3) uint8 RGB, Pillow ``convert('RGB')`` as the official data loader
    (no EXIF rotation: dataset images are used as stored; 16-bit ones keep Pillow's 8 bits),
    refused like :func:`read_image` over ``max_pixels``."""
    path = Path(path)
    with _opened(path, max_pixels) as im:
        return np.asarray(im.convert("RGB"))


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


def _to_depth(img: np.ndarray, bit_depth: int) -> np.ndarray:
    """``img`` as ``bit_depth`` integers: floats in [0, 1] quantised; uint8 and uint16 as they
    are when they match, else converted exactly (x * 257; round(x / 257), in blocks of rows)."""
    if np.issubdtype(img.dtype, np.floating):
        return quantize(img, bit_depth)
    if img.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"image dtype must be float, uint8 or uint16, got {img.dtype}")
    have = 8 if img.dtype == np.uint8 else 16
    if have == bit_depth:
        return img
    if bit_depth == 16:
        out = img.astype(np.uint16)
        out *= 257
        return out
    out = np.empty(img.shape, np.uint8)
    rows = max(1, QUANTIZE_BLOCK // max(1, img[0].size))
    for y in range(0, len(img), rows):  # round(x / 257) == (x + 128) // 257 (no ties: 257 is odd)
        block = img[y:y + rows].astype(np.uint32)
        block += 128
        block //= 257
        out[y:y + rows] = block
    return out


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png16(arr: np.ndarray, icc: bytes | None = None) -> bytes:
    """Encode an (H, W, C) uint16 array, C = 1-4 (gray, gray+alpha, RGB, RGBA), as a 16-bit PNG
    with OpenCV (its default settings: Sub filter, zlib level 1; on 16-bit photos adaptive
    filtering and higher levels save under 6 % for 3-5x the time), ``icc`` in an iCCP chunk."""
    return b"".join(_png16_parts(arr, icc))


def _png16_parts(arr: np.ndarray, icc: bytes | None) -> list:
    """:func:`encode_png16`'s file in pieces (the last one a view of OpenCV's buffer)."""
    import cv2

    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"encode_png16 expects (H, W, 1-4) uint16, got {arr.shape} {arr.dtype}")
    h, w, c = arr.shape
    if c == 1:
        src = np.ascontiguousarray(arr[..., 0])
    elif c == 3:
        src = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2BGR)
    elif c == 4:
        src = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGBA2BGRA)
    else:
        # OpenCV writes 1, 3 or 4 channels.  A 16-bit gray+alpha pixel is 4 bytes (gray and alpha,
        # big-endian), like an 8-bit RGBA one, and PNG filters work on bytes with that pixel size:
        # OpenCV's 8-bit RGBA PNG of those bytes, with IHDR saying 16-bit gray+alpha, is the image.
        # OpenCV writes BGRA input as RGBA, so the bytes go in as (alpha hi, gray lo, gray hi, alpha lo).
        be = np.ascontiguousarray(arr, dtype=">u2").view(np.uint8).reshape(h, w, 4)
        src = np.ascontiguousarray(be[..., [2, 1, 0, 3]])
    ok, buf = cv2.imencode(".png", src)
    data = memoryview(buf.reshape(-1)) if ok else memoryview(b"")
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("OpenCV could not encode the PNG")
    ihdr = bytes(data[16:29])
    if c == 2:
        ihdr = ihdr[:8] + bytes([16, 4]) + ihdr[10:]  # bit depth 16, colour type 4 (gray + alpha)
    extra = _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)) if icc else b""
    return [PNG_SIGNATURE, _png_chunk(b"IHDR", ihdr), extra, data[33:]]


def write_image(path: str | os.PathLike, img: np.ndarray, bit_depth: int = 8, icc: bytes | None = None,
                overwrite: bool = True) -> None:
    """Write (H, W, C) pixels atomically (C = 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA), keeping
    ``icc``.  ``img`` is float in [0, 1] (quantised by :func:`quantize`) or uint8/uint16
    (written as they are at their own depth, else converted exactly: x * 257, round(x / 257)).
    16-bit needs a .png path.  ``overwrite=False``: FileExistsError if ``path`` exists when the
    finished file is moved into place (atomic: two writers cannot both win)."""
    path = Path(path)
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"image must be (H, W, 1-4), got {img.shape}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, got {bit_depth}")
    suffix = path.suffix.lower()
    if bit_depth == 16 and suffix != ".png":
        raise ValueError(f"{path}: 16-bit output needs a .png file")
    fmt = Image.registered_extensions().get(suffix)
    if bit_depth == 8 and fmt is None:
        raise ValueError(f"{path}: unknown image format {suffix!r}")
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[img.shape[2]]
    if bit_depth == 8 and fmt in ("JPEG", "BMP") and mode in ("LA", "RGBA"):
        raise ValueError(f"{path}: {fmt} cannot store alpha; use .png, .webp or .tiff")
    q = _to_depth(img, bit_depth)

    def write(f) -> None:
        if bit_depth == 16:
            for part in _png16_parts(q, icc):
                f.write(part)
        else:
            options = {"icc_profile": icc} if icc else {}
            Image.fromarray(np.ascontiguousarray(q[..., 0] if mode == "L" else q)).save(f, format=fmt, **options)

    atomic_write(path, write, overwrite=overwrite)
