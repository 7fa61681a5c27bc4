"""Index math for tiled evaluation (numpy, no torch).

An output tile needs, for every branch, a window of that branch's feature grid (the
nearest pixels of its queries plus the neighbourhood radius), and those windows need a
window of the LR image (plus the encoder's receptive-field halo).  All ranges are
half-open ``(start, stop)`` per axis, clamped to the axis.
"""

from __future__ import annotations

import math
from typing import Tuple  # typing's alias: tuple[...] at module level needs Python 3.9

import numpy as np

from .geometry import nearest_index, pixel_centres, unnormalize

Span = Tuple[int, int]


def grow(span: Span, by: int, n: int) -> Span:
    """``span`` widened by ``by`` on both sides, clamped to [0, n)."""
    return max(span[0] - by, 0), min(span[1] + by, n)


def union(a: Span | None, b: Span) -> Span:
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]))


def neighbourhood_span(coords: np.ndarray, n: int, radius: int) -> Span:
    """Pixels of an axis of length ``n`` that queries at ``coords`` read: their nearest
    pixel +- ``radius`` (this also covers the bilinear q sample, one pixel either side)."""
    idx = nearest_index(coords, n)
    return grow((int(idx.min()), int(idx.max()) + 1), radius, n)


def bilinear_span(coords: np.ndarray, n: int) -> Span:
    """Pixels of an axis of length ``n`` a bilinear (zero-padded) sample at ``coords`` reads."""
    u = np.floor(unnormalize(coords, n)).astype(np.int64)
    return max(int(u.min()), 0), min(int(u.max()) + 2, n)


def tile_spans(n_out: int, n_lr: int, tile: int | None) -> list[Span]:
    """Output spans of one axis for LR tiles of ``tile`` pixels (``None``: one span)."""
    if tile is None or tile >= n_lr:
        return [(0, n_out)]
    step = max(1, math.ceil(tile * n_out / n_lr))
    return [(s, min(s + step, n_out)) for s in range(0, n_out, step)]


def centres(n: int, span: Span) -> np.ndarray:
    """Pixel-centre coordinates of ``span`` on an axis of length ``n``."""
    return pixel_centres(n)[span[0]:span[1]]
