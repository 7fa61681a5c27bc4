"""Draws ``samples/sample.png``, the demo input of ``make demo`` (our own synthetic image).

A sharp 512x384 scene (text, rings, stripes, a gradient sky, a chequered floor) is drawn and
reduced x4 with bicubic, so the 128x96 result looks like the low-resolution inputs the model
was trained on.  Deterministic: ``python samples/make_sample.py`` rewrites the same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

W, H, SCALE = 512, 384, 4


def draw_scene() -> Image.Image:
    """The high-resolution scene."""
    y = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
    sky = (np.array([70, 130, 200]) * (1 - y) + np.array([235, 200, 150]) * y).astype(np.uint8)
    img = Image.fromarray(np.broadcast_to(sky, (H, W, 3)).copy())
    d = ImageDraw.Draw(img)
    for i in range(8):  # chequered floor
        for j in range(16):
            if (i + j) % 2:
                d.rectangle([j * 32, 256 + i * 16, j * 32 + 31, 271 + i * 16], fill=(40, 40, 48))
    for i, r in enumerate(range(12, 96, 7)):  # concentric rings
        d.ellipse([390 - r, 125 - r, 390 + r, 125 + r], outline=(180, 30, 40) if i % 2 else (250, 250, 240),
                  width=3)
    x = 24.0
    for k in range(18):  # stripes, 5 to 22 pixels apart
        d.line([round(x), 30, round(x) + 30, 190], fill=(20, 20, 20), width=2)
        x += 5 + k
    font = ImageFont.load_default(size=36)  # Pillow >= 10.1
    d.text((30, 208), "CLIT x4 demo", fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return img


def main() -> None:
    out = Path(__file__).with_name("sample.png")
    draw_scene().resize((W // SCALE, H // SCALE), Image.BICUBIC, reducing_gap=None).save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
