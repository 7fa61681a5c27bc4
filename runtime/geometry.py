"""Coordinates and the cascade stage plan: the one torch-free definition.

``clit.train``, ``clit.export`` and ``clit.runtime`` all import this module, so the
conventions below hold everywhere:

* Coordinates are (row, column) pairs in [-1, 1] at pixel centres: pixel ``i`` of an axis
  of length ``n`` sits at ``-1 + (2i + 1) / n``.  :func:`pixel_centres` reproduces the
  official ``make_coord`` bit for bit in float32.
* The cascade splits a scale into stages with base 4: ``s <= 4 -> [s]``, otherwise 4's
  followed by the remainder (x6 -> [4, 1.5], x18 -> [4, 4, 1.125]).  One decoder branch per
  stage; branch 1 reads the encoder features (the LR grid), branch ``k >= 2`` reads them
  resampled to the output grid of stage ``k - 1``.
* Anisotropic scales ``(sh, sw)`` (and exact output sizes) plan each axis on its own with
  the same rule; the axis that needs fewer stages is padded with trailing stages of 1.0, so
  both axes have the same number of branches.  For ``sh == sw`` this is the official plan.
* Branch outputs are accumulated as ``acc_k = r_k + 0.75 * acc_(k-1)``.
* Images are normalised ``(x - 0.5) / 0.5`` on the way in, ``y * 0.5 + 0.5`` on the way out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Tuple  # typing's alias: tuple[...] at module level needs Python 3.9

import numpy as np

STAGE_BASE = 4.0
CASCADE_DISCOUNT = 0.75
NORM_MEAN, NORM_STD = 0.5, 0.5  # model input (x - 0.5) / 0.5, output y * 0.5 + 0.5

Size = Tuple[int, int]


def pixel_centres(n: int) -> np.ndarray:
    """Pixel-centre coordinates of an axis of length ``n`` (float32, official make_coord)."""
    if n < 1:
        raise ValueError(f"axis length must be >= 1, got {n}")
    r = 1.0 / n  # (v1 - v0) / (2 n) with v0, v1 = -1, 1
    # Same float32 operations, in the same order, as the official torch code.
    return np.float32(-1.0 + r) + np.float32(2.0 * r) * np.arange(n, dtype=np.float32)


def coord_grid(h: int, w: int) -> np.ndarray:
    """Pixel-centre coordinate grid of an h x w image: (h, w, 2) float32, (row, col) last."""
    rows, cols = pixel_centres(h), pixel_centres(w)
    grid = np.empty((h, w, 2), dtype=np.float32)
    grid[..., 0] = rows[:, None]
    grid[..., 1] = cols[None, :]
    return grid


def unnormalize(coord: np.ndarray, n: int) -> np.ndarray:
    """Map [-1, 1] coordinates to pixel units of an axis of length ``n`` (pixel i at i).

    float32, evaluated as ``(c + 1) * (n / 2) - 0.5``: the exact operations of PyTorch's CPU
    grid_sample (align_corners=False).  The order matters where a coordinate falls exactly
    between two pixels (scales like x1.5 or x2.5), see :func:`nearest_index`.
    """
    c = np.asarray(coord, dtype=np.float32)
    return (c + np.float32(1.0)) * np.float32(n / 2.0) - np.float32(0.5)


def nearest_index(coord: np.ndarray, n: int) -> np.ndarray:
    """Index of the pixel nearest to each coordinate (grid_sample 'nearest' semantics).

    Ties (exactly half-way) round to even, as grid_sample does; the result may lie outside
    [0, n) for coordinates outside the image.  int64.
    """
    return np.rint(unnormalize(coord, n)).astype(np.int64)


def axis_groups(coords: np.ndarray, n: int, max_run: int | None = None):
    """Queries along one axis grouped by their nearest pixel (of an axis of length ``n``):
    ``coords`` ascending -> ``(pixels, runs, group, slot)``: ``pixels`` (G,) int32 the groups'
    nearest pixels, ``runs`` (G, M) int32 the indices into ``coords`` of each group's queries
    (M the longest run; shorter runs repeat their last index), and per query its group and
    its slot in the run.  Same nearest pixel as :func:`nearest_index` (ties to even).  With
    ``max_run``, longer runs are split into near-equal parts of at most that many queries (a
    pixel then heads several groups)."""
    idx = nearest_index(coords, n)
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    lengths = np.diff(np.r_[starts, len(idx)])
    if max_run is not None and lengths.max() > max_run:
        parts = -(-lengths // max_run)  # ceil: pieces per run
        sizes = np.concatenate([np.diff(np.linspace(0, L, k + 1).round().astype(int)) for L, k in zip(lengths, parts)])
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        lengths = sizes
    runs = starts[:, None] + np.minimum(np.arange(int(lengths.max()))[None, :], lengths[:, None] - 1)
    group = np.repeat(np.arange(len(starts)), lengths)
    slot = np.arange(len(idx)) - np.repeat(starts, lengths)
    return idx[starts].astype(np.int32), runs.astype(np.int32), group, slot


def block_groups(rows: np.ndarray, cols: np.ndarray, grid, max_run: int | None = None) -> dict:
    """The grouped decoder's inputs for the block ``rows x cols`` (ascending output coordinates)
    on a feature grid ``(gh, gw)``: per axis the groups' nearest pixels and runs
    (:func:`axis_groups`, runs split at ``max_run``), and ``sel``, for every query of the block
    in row-major order, its slot in the (Gy, Gx, My, Mx) group layout."""
    gy, ry, grp_r, slot_r = axis_groups(rows, grid[0], max_run)
    gx, rx, grp_c, slot_c = axis_groups(cols, grid[1], max_run)
    my, mx = ry.shape[1], rx.shape[1]
    sel = ((grp_r[:, None] * len(gx) + grp_c[None, :]) * my + slot_r[:, None]) * mx + slot_c[None, :]
    return {"yc": np.ascontiguousarray(rows, dtype=np.float32), "xc": np.ascontiguousarray(cols, dtype=np.float32),
            "gy": gy, "gx": gx, "ry": ry, "rx": rx, "sel": sel.reshape(-1).astype(np.int32)}


def stage_plan(scale: float, base: float = STAGE_BASE) -> list[float]:
    """Per-stage scales for one axis (official ``sample_system_scale``).

    >>> stage_plan(3.7), stage_plan(6), stage_plan(18)
    ([3.7], [4.0, 1.5], [4.0, 4.0, 1.125])
    """
    _check_scale(scale)
    if scale <= base:
        return [scale]
    stages: list[float] = [base]
    s = scale / base
    while s > 1:
        stages.append(base if s >= base else s)
        s = s / base
    return stages


def _check_scale(scale: float) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
        raise TypeError(f"scale must be a number, got {scale!r}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")


def window_padded_size(lr_size: Sequence[int], window: int) -> Size:
    """Size after the official SwinIR evaluation padding: bottom/right mirror padding to
    (h // window + 1) * window rows (always at least one) and likewise columns."""
    h, w = lr_size
    return (h // window + 1) * window, (w // window + 1) * window


@dataclass(frozen=True)
class CascadePlan:
    """Everything the model needs to know about one upscale, besides the pixels.

    ``stages[k] = (sh, sw)`` is the scale of stage ``k``; ``grids[k]`` is the size of the
    feature map that branch ``k`` reads (``grids[0]`` is the LR size); ``out_size`` is the
    final output size, queried by every branch with ``cell``.
    """

    lr_size: Size
    out_size: Size
    stages: tuple[tuple[float, float], ...]
    grids: tuple[Size, ...]

    @property
    def n_branches(self) -> int:
        return len(self.stages)

    @property
    def cell(self) -> np.ndarray:
        """(2 / H, 2 / W) of the final grid, float32 (the decoder's cell input before scaling)."""
        h, w = self.out_size
        return np.array([2.0 / h, 2.0 / w], dtype=np.float32)

    @property
    def scale(self) -> tuple[float, float]:
        return (math.prod(s[0] for s in self.stages), math.prod(s[1] for s in self.stages))


def plan_cascade(
    lr_size: Sequence[int],
    scale: float | Sequence[float] | None = None,
    size: Sequence[int] | None = None,
    max_branches: int | None = None,
    base: float = STAGE_BASE,
) -> CascadePlan:
    """Plan an upscale of an LR image of ``lr_size = (h, w)``.

    Give exactly one of ``scale`` (a number, or ``(sh, sw)``) or ``size = (H, W)``.  The
    output size is ``round(h * sh) x round(w * sw)`` (Python rounding) or ``size``.  With
    ``max_branches``, a scale that needs more stages than that is a ``ValueError``.
    """
    h, w = (int(v) for v in lr_size)
    if h < 1 or w < 1:
        raise ValueError(f"input size must be at least 1x1, got {h}x{w}")
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    if size is not None:
        out_h, out_w = (int(v) for v in size)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"output size must be at least 1x1, got {out_h}x{out_w}")
        sh, sw = out_h / h, out_w / w
    else:
        if isinstance(scale, (tuple, list)):
            if len(scale) != 2:
                raise ValueError(f"an anisotropic scale is (sh, sw), got {scale!r}")
            sh, sw = scale
        else:
            sh = sw = scale
        _check_scale(sh)
        _check_scale(sw)
        out_h, out_w = round(h * sh), round(w * sw)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"scale {scale!r} turns {h}x{w} into an empty image")

    plan_h, plan_w = stage_plan(sh, base), stage_plan(sw, base)
    n = max(len(plan_h), len(plan_w))
    plan_h += [1.0] * (n - len(plan_h))
    plan_w += [1.0] * (n - len(plan_w))
    if max_branches is not None and n > max_branches:
        largest = base**max_branches
        raise ValueError(
            f"scale {max(sh, sw):g} needs {n} cascade stages but the model has {max_branches} "
            f"branch{'es' if max_branches > 1 else ''} (largest scale x{largest:g})"
        )
    stages = tuple(zip(plan_h, plan_w))
    return CascadePlan(
        lr_size=(h, w),
        out_size=(out_h, out_w),
        stages=stages,
        grids=((h, w), *stage_sizes((h, w), stages)[:-1]),
    )


def stage_sizes(lr_size: Sequence[int], stages: Sequence[float | Sequence[float]]) -> list[Size]:
    """Grid size after each stage: ``round(h * s_1 * ... * s_k)`` per axis (official rounding).

    ``stages`` holds numbers or ``(sh, sw)`` pairs.  Branch ``k >= 1`` reads the grid of stage
    ``k - 1``; training takes its ground-truth crop size from the last entry.

    >>> stage_sizes((48, 48), [4, 1.5])
    [(192, 192), (288, 288)]
    """
    h, w = lr_size
    pairs = [(s, s) if isinstance(s, (int, float, np.floating, np.integer)) else tuple(s) for s in stages]
    return [(round(h * math.prod(p[0] for p in pairs[: k + 1])), round(w * math.prod(p[1] for p in pairs[: k + 1])))
            for k in range(len(pairs))]
