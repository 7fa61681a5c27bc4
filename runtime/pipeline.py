"""The numpy upscaling pipeline shared by every graph backend (no torch).

plan the cascade -> per output tile: encoder on the tile's LR window (+ halo) -> per branch:
q/k/v maps of the tile's window of its grid (branch graph for k >= 2) -> decoder over the
tile's queries in chunks of N -> ``acc_k = r_k + 0.75 acc_(k-1)`` -> + the bilinear
(border) skip of the normalised input -> de-normalise.  The output is NOT clamped.

A backend is anything with ``run(file, feeds) -> list[np.ndarray]`` for the graph files the
manifest lists (see :mod:`clit.runtime.onnx_backend`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, NamedTuple, Protocol

import numpy as np

from .geometry import (
    CASCADE_DISCOUNT,
    NORM_MEAN,
    NORM_STD,
    CascadePlan,
    axis_groups,
    block_groups,
    nearest_index,
    pixel_centres,
    plan_cascade,
    unnormalize,
    window_padded_size,
)
from .manifest import Manifest
from .tiling import Span, bilinear_span, centres, grow, neighbourhood_span, tile_spans, union

DEFAULT_CHUNK = 8192  # queries per decoder run: ONNX Runtime keeps each session's peak (benchmarks/memory.py)
# The grouped decoder (see README, "How it works"), as clit-export records it in the manifest
# (``decoder_grouping``): a block holds at most MAX_GROUPS groups per axis of at most MAX_RUN
# queries per axis (longer runs are split), so that every tensor of the grouped graph is bounded
# by constants (TensorRT sizes them at the profile's maxima).
DEFAULT_MAX_RUN = 5
DEFAULT_MAX_GROUPS = 32
GROUPED_MAC_GAIN = 3.0  # see grouping_threshold
NEVER = 1e6  # queries per pixel: no output grid shares a feature pixel that much


def grouping_threshold(base_dim: int, heads: int) -> float:
    """Queries per feature pixel from which the grouped decoder pays off: where its first layer
    (49 heads hidden per query, 49 C hidden per pixel) needs ``GROUPED_MAC_GAIN`` times fewer
    multiply-adds than the per-query one (49 C hidden), i.e. C / (heads + C / q) >= the gain.
    Calibrated on ONNX Runtime CPU (benchmarks/fast_decoder.py): C = 64 and 8 heads give 4.8,
    and 4 queries per pixel (x2) lost while 6.25 (x2.5) won; C = 256 and 8 heads give 3.3, and
    4 per pixel (the third branch at x8) won."""
    room = base_dim / GROUPED_MAC_GAIN - heads
    return round(base_dim / room, 2) if room > 0 else NEVER


class GroupingRule(NamedTuple):
    """A model directory's ``decoder_grouping``; for fields it lacks, the defaults above and
    :func:`grouping_threshold` of its architecture."""

    min_queries_per_pixel: float
    max_run: int = DEFAULT_MAX_RUN
    max_groups: int = DEFAULT_MAX_GROUPS

    @classmethod
    def for_model(cls, base_dim: int, heads: int) -> GroupingRule:
        return cls(grouping_threshold(base_dim, heads))

    @classmethod
    def of(cls, manifest: Manifest) -> GroupingRule:
        rule = manifest.data.get("decoder_grouping", {})
        default = cls.for_model(int(manifest.data["base_dim"]), int(manifest.data.get("heads", 1)))
        return cls(*(type(d)(rule.get(f, d)) for f, d in zip(cls._fields, default)))


def group_blocks(rows: np.ndarray, cols: np.ndarray, grid, chunk: int, max_run: int = DEFAULT_MAX_RUN,
                 max_groups: int = DEFAULT_MAX_GROUPS) -> list:
    """Blocks (row span, col span) of the ``rows x cols`` queries of a tile for the grouped
    decoder: at most ``max_groups`` groups per axis (runs of queries sharing a feature pixel,
    split at ``max_run``) and at most ``chunk`` queries each (or one group, when a single one
    is larger), cut only between groups, so that no group is split across blocks."""
    def groups(coords, n):
        _, runs, _, _ = axis_groups(coords, n, max_run)
        return [(int(r[0]), int(r[-1]) + 1) for r in runs]

    def pack(spans, limit):  # consecutive groups: at most max_groups and ``limit`` items (at least one)
        out, first = [], 0
        for i in range(1, len(spans) + 1):
            if i == len(spans) or i - first == max_groups or spans[i][1] - spans[first][0] > limit:
                out.append((spans[first][0], spans[i - 1][1]))
                first = i
        return out

    row_groups, col_groups = groups(rows, grid[0]), groups(cols, grid[1])
    longest = max(b - a for a, b in row_groups)
    side = max(1, int(chunk ** 0.5))  # square-ish blocks: both axes' groups are bounded
    blocks = []
    for c0, c1 in pack(col_groups, max(side, chunk // (longest * max_groups))):
        blocks += [(rs, (c0, c1)) for rs in pack(row_groups, max(1, chunk // (c1 - c0)))]
    return blocks


class GraphRunner(Protocol):
    def run(self, file: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


Sink = Callable[[tuple, tuple, np.ndarray], None]  # (rows span, cols span, tile values)


def bilinear_border(img: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """grid_sample bilinear, border padding, align_corners=False, of img (C, h, w) at the
    points (rows[i], cols[i]) given in [-1, 1] -> (N, C) float32."""
    _, h, w = img.shape
    uy = np.clip(unnormalize(rows, h), 0, h - 1)
    ux = np.clip(unnormalize(cols, w), 0, w - 1)
    y0, x0 = np.floor(uy).astype(np.int64), np.floor(ux).astype(np.int64)
    ty, tx = (uy - y0)[:, None], (ux - x0)[:, None]
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    px = img.reshape(img.shape[0], -1).T  # (h*w, C)
    top = px[y0 * w + x0] * (1 - tx) + px[y0 * w + x1] * tx
    bottom = px[y1 * w + x0] * (1 - tx) + px[y1 * w + x1] * tx
    return (top * (1 - ty) + bottom * ty).astype(np.float32)


def neighbour_offsets(n: int, radius: int) -> np.ndarray:
    """Offsets -r..r pixels of an axis of length n in [-1, 1] units (float32, official)."""
    return np.arange(-radius, radius + 1, dtype=np.float32) * np.float32(2.0 / n)


class Pipeline:
    """Runs a model directory's graphs (``precision`` 'fp32' or an exported variant such as
    'fp16') through ``runner``; see module docstring."""

    def __init__(self, manifest: Manifest, runner: GraphRunner, precision: str = "fp32", grouping: str = "auto"):
        if grouping not in ("auto", "on", "off"):
            raise ValueError(f"grouping must be auto, on or off, got {grouping!r}")
        self.manifest, self.runner, self.precision, self.grouping = manifest, runner, precision, grouping
        self.rule = GroupingRule.of(manifest)
        self.timings: dict[str, float] = defaultdict(float)  # seconds per stage, summed over calls
        self.on_tile: Callable[[int, int], None] | None = None  # progress: (tiles done, tiles total)
        self.last_tiling: tuple[int | None, int] | None = None  # (tile, chunk) of the last upscale
        # (kind, branch) -> graph file, resolved once (fails here if a variant is missing)
        self._files = {(g.kind, g.branch): g.file_for(precision) for g in manifest.graphs}

    @contextmanager
    def _timed(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] += time.perf_counter() - t0

    def _file(self, kind: str, branch: int = 0) -> str:
        if (kind, branch) not in self._files:
            self.manifest.graph(kind, branch)  # raises the manifest's error naming what is missing
        return self._files[(kind, branch)]

    def plan(self, lr_size, scale=None, size=None) -> CascadePlan:
        return plan_cascade(lr_size, scale=scale, size=size, max_branches=self.manifest.n_branches)

    def encode(self, image: np.ndarray) -> list[np.ndarray]:
        """image (1, 3, h, w) float32 in [0, 1] -> feat, q, k, v."""
        with self._timed("encoder"):
            return self.runner.run(self._file("encoder"), {"image": image})

    def branch_maps(self, feat: np.ndarray, feat_origin, k: int, grid: tuple[int, int], lr_size,
                    rows: Span, cols: Span) -> list[np.ndarray]:
        """q, k, v of branch ``k`` >= 1 on the window ``rows x cols`` of its ``grid``, from a
        window of the LR features whose top-left is ``feat_origin`` of the LR map (size
        ``lr_size``).  The 3x3 convs see zeros beyond the window, so it is computed with one
        pixel of halo on every side that is not a grid border and cropped: windowed and whole
        results are identical."""
        gh, gw = grid
        (h0, h1), (w0, w1) = grow(rows, 1, gh), grow(cols, 1, gw)
        feeds = {"feat": feat, "offset": np.asarray(feat_origin, dtype=np.int32),
                 "size": np.asarray(lr_size, dtype=np.float32),
                 "rows": pixel_centres(gh)[h0:h1], "cols": pixel_centres(gw)[w0:w1]}
        with self._timed(f"branch {k + 1} maps"):
            maps = self.runner.run(self._file("branch", k), feeds)
        return [np.ascontiguousarray(m[:, :, rows[0] - h0:rows[1] - h0, cols[0] - w0:cols[1] - w0]) for m in maps]

    def decode(self, k: int, maps, grid, coord: np.ndarray, cell: np.ndarray, offset=(0, 0)) -> np.ndarray:
        """Residual (N, 3) of branch ``k`` at ``coord`` (N, 2) from (a window of) its maps
        whose top-left pixel is ``offset`` of the full ``grid``."""
        feeds = {**self._decoder_feeds(maps, grid, cell, offset), "coord": coord[None]}
        with self._timed(f"branch {k + 1} decoder"):
            return self.runner.run(self._file("decoder", k), feeds)[0][0]

    def decode_grouped(self, k: int, maps, grid, rows: np.ndarray, cols: np.ndarray, cell: np.ndarray,
                       offset=(0, 0)) -> np.ndarray:
        """Residual (R * S, 3), row-major, of branch ``k`` at the block ``rows x cols`` of
        output coordinates, through the grouped decoder (the first MLP layer once per feature
        pixel; :class:`clit.export.graphs.GroupedDecoderGraph`)."""
        feeds = {**self._decoder_feeds(maps, grid, cell, offset), **block_groups(rows, cols, grid, self.rule.max_run)}
        with self._timed(f"branch {k + 1} decoder"):
            return self.runner.run(self._file("grouped", k), feeds)[0][0]

    def _decoder_feeds(self, maps, grid, cell: np.ndarray, offset) -> dict:
        """The inputs both decoders share: the q/k/v window and its offset, the grid's size,
        pixel-centre and neighbour-offset tables, the cell."""
        gh, gw = grid
        r = self.manifest.radius
        return {"q": maps[0], "k": maps[1], "v": maps[2], "offset": np.asarray(offset, dtype=np.int32),
                "size": np.array([gh, gw], dtype=np.float32), "rows": pixel_centres(gh), "cols": pixel_centres(gw),
                "drow": neighbour_offsets(gh, r), "dcol": neighbour_offsets(gw, r), "cell": cell}

    def read_window(self, maps, offset, grid, ys: np.ndarray, xs: np.ndarray):
        """The part of a branch's q/k/v window (top-left ``offset`` of ``grid``) that queries at
        output coordinates ``ys``, ``xs`` read, and its top-left: a decoder run then lays out
        (and a TensorRT run copies) only the maps its chunk or block needs, not the tile's."""
        r = self.manifest.radius
        (y0, y1), (x0, x1) = neighbourhood_span(ys, grid[0], r), neighbourhood_span(xs, grid[1], r)
        oy, ox = offset
        return [np.ascontiguousarray(m[:, :, y0 - oy:y1 - oy, x0 - ox:x1 - ox]) for m in maps], (y0, x0)

    def use_grouped(self, k: int, rows: np.ndarray, cols: np.ndarray, grid) -> bool:
        """Whether branch ``k`` evaluates the queries ``rows x cols`` with the grouped decoder:
        per the manifest's rule (``decoder_grouping``: at least ``min_queries_per_pixel``
        queries share a feature pixel on average), or as :attr:`grouping` forces."""
        if self.grouping == "off" or ("grouped", k) not in self._files:
            return False
        # blocks assume consecutive queries' nearest pixels step by at most one (an axis not
        # downscaled): their q/k/v window is then at most max_groups + 2 radius (the TensorRT profile)
        if any(len(c) > 1 and np.diff(nearest_index(c, n)).max() > 1 for c, n in ((rows, grid[0]), (cols, grid[1]))):
            return False
        if self.grouping == "on":
            return True
        run = self.rule.max_run
        groups = len(axis_groups(rows, grid[0], run)[0]) * len(axis_groups(cols, grid[1], run)[0])
        return len(rows) * len(cols) >= self.rule.min_queries_per_pixel * groups

    def upscale(self, img: np.ndarray, scale=None, size=None, chunk: int = DEFAULT_CHUNK,
                tile: int | None = None, sink: Sink | None = None) -> np.ndarray | None:
        """img (h, w, 3) float in [0, 1] -> (H, W, 3) float32, not clamped.

        ``tile`` (LR pixels) evaluates the output in tiles: the encoder runs on each tile's
        LR window plus the manifest's ``encoder_halo`` and the branch maps on each tile's
        window of their grids, so memory follows the tile and ``chunk``, not the image; the
        result equals the untiled one.  Encoders that cannot be tiled exactly (halo 0:
        SwinIR) run once on the whole image, with the branch maps still per tile.

        With ``sink``, no output-sized float buffer exists: each finished tile (de-normalised,
        not clamped, a float32 array the sink may modify) goes to ``sink(rows, cols, tile)``
        with its output spans, and the method returns None."""
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image must be (h, w, 3), got {img.shape}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if tile is not None and tile < 1:
            raise ValueError(f"tile must be >= 1, got {tile}")
        h, w = img.shape[:2]
        plan = self.plan((h, w), scale=scale, size=size)
        self.last_tiling = (tile, chunk)
        x = np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32)
        ws = self.manifest.window_size
        if ws > 1:  # SwinIR: mirror-pad bottom/right, upscale, crop (as the official evaluation)
            scale = scale if size is None else (plan.out_size[0] / h, plan.out_size[1] / w)
            ph, pw = window_padded_size((h, w), ws)
            x = np.concatenate([x, x[:, :, ::-1]], 2)[:, :, :ph]
            x = np.ascontiguousarray(np.concatenate([x, x[:, :, :, ::-1]], 3)[:, :, :, :pw])
            return self._run_plan(x, self.plan((ph, pw), scale=scale), chunk, tile, sink, crop=plan.out_size)
        return self._run_plan(x, plan, chunk, tile, sink)

    def _run_plan(self, x: np.ndarray, plan: CascadePlan, chunk: int, tile: int | None, sink: Sink | None,
                  crop=None) -> np.ndarray | None:
        """Every output tile of ``plan`` into ``sink`` (or one float32 buffer, returned), cut to
        ``crop`` = (H, W) when the input was padded."""
        (out_h, out_w), (h, w) = plan.out_size, plan.lr_size
        keep_h, keep_w = crop or (out_h, out_w)
        whole = self.encode(x) if tile is None or self.manifest.encoder_halo == 0 else None
        x_norm = (x[0] - np.float32(NORM_MEAN)) / np.float32(NORM_STD)
        out = None
        if sink is None:
            out = np.empty((keep_h, keep_w, 3), dtype=np.float32)

            def sink(ys, xs, values):
                out[ys[0]:ys[1], xs[0]:xs[1]] = values

        tiles = [(ys, xs) for ys in tile_spans(out_h, h, tile) for xs in tile_spans(out_w, w, tile)
                 if ys[0] < keep_h and xs[0] < keep_w]
        for i, (ys, xs) in enumerate(tiles):
            values = self._tile(x, x_norm, plan, ys, xs, chunk, whole)
            values *= np.float32(NORM_STD)  # de-normalised per tile
            values += np.float32(NORM_MEAN)
            ys, xs = (ys[0], min(ys[1], keep_h)), (xs[0], min(xs[1], keep_w))
            sink(ys, xs, values[: ys[1] - ys[0], : xs[1] - xs[0]])
            if self.on_tile is not None:
                self.on_tile(i + 1, len(tiles))
        return out

    def _tile(self, x, x_norm, plan: CascadePlan, ys: Span, xs: Span, chunk: int, whole) -> np.ndarray:
        """The normalised prediction (acc + skip) of the output tile ``ys x xs``."""
        (out_h, out_w), (h, w) = plan.out_size, plan.lr_size
        radius = self.manifest.radius
        rows, cols = centres(out_h, ys), centres(out_w, xs)
        windows, need_y, need_x = [], None, None
        for k, (gh, gw) in enumerate(plan.grids):
            gy, gx = neighbourhood_span(rows, gh, radius), neighbourhood_span(cols, gw, radius)
            windows.append((gy, gx))
            if k == 0:
                need_y, need_x = union(need_y, gy), union(need_x, gx)
            else:  # the branch convs' halo, then the bilinear resample from the LR features
                need_y = union(need_y, bilinear_span(centres(gh, grow(gy, 1, gh)), h))
                need_x = union(need_x, bilinear_span(centres(gw, grow(gx, 1, gw)), w))
        if whole is not None:
            (feat, *maps0), origin = whole, (0, 0)
        else:
            halo = self.manifest.encoder_halo
            (y0, y1), (x0, x1) = grow(need_y, halo, h), grow(need_x, halo, w)
            (feat, *maps0), origin = self.encode(np.ascontiguousarray(x[:, :, y0:y1, x0:x1])), (y0, x0)

        grid_y, grid_x = np.meshgrid(rows, cols, indexing="ij")
        coord = np.stack([grid_y.ravel(), grid_x.ravel()], -1)
        n = coord.shape[0]
        acc = np.empty((n, 3), dtype=np.float32)
        for k, grid in enumerate(plan.grids):
            gy, gx = windows[k]
            if k == 0:
                maps, offset = maps0, origin
            else:
                maps, offset = self.branch_maps(feat, origin, k, grid, (h, w), gy, gx), (gy[0], gx[0])
            if self.use_grouped(k, rows, cols, grid):
                block = acc.reshape(len(rows), len(cols), 3)
                for (r0, r1), (c0, c1) in group_blocks(rows, cols, grid, chunk, self.rule.max_run, self.rule.max_groups):
                    part, at = self.read_window(maps, offset, grid, rows[r0:r1], cols[c0:c1])
                    res = self.decode_grouped(k, part, grid, rows[r0:r1], cols[c0:c1], plan.cell, at)
                    res = res.reshape(r1 - r0, c1 - c0, 3)
                    dst = block[r0:r1, c0:c1]
                    dst[...] = res if k == 0 else res + dst * np.float32(CASCADE_DISCOUNT)
                continue
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                part, at = self.read_window(maps, offset, grid, coord[start:stop, 0], coord[start:stop, 1])
                res = self.decode(k, part, grid, coord[start:stop], plan.cell, at)
                acc[start:stop] = res if k == 0 else res + acc[start:stop] * np.float32(CASCADE_DISCOUNT)
        with self._timed("bilinear skip"):
            acc += bilinear_border(x_norm, coord[:, 0], coord[:, 1])
        return acc.reshape(ys[1] - ys[0], xs[1] - xs[0], 3)
