"""The numpy upscaling pipeline shared by every graph backend (no torch).

plan the cascade -> encoder -> per branch: q/k/v maps (branch graph for k >= 2) -> decoder
over the output grid in chunks of N queries -> ``acc_k = r_k + 0.75 acc_(k-1)`` -> + the
bilinear (border) skip of the normalised input -> de-normalise.  The output is NOT clamped.

A backend is anything with ``run(file, feeds) -> list[np.ndarray]`` for the graph files the
manifest lists (see :mod:`clit.runtime.onnx_backend`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .geometry import CASCADE_DISCOUNT, NORM_MEAN, NORM_STD, CascadePlan, pixel_centres, plan_cascade, unnormalize
from .manifest import Manifest

DEFAULT_CHUNK = 30000


class GraphRunner(Protocol):
    def run(self, file: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


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

    def __init__(self, manifest: Manifest, runner: GraphRunner, precision: str = "fp32"):
        self.manifest, self.runner, self.precision = manifest, runner, precision
        for entry in manifest.graphs:
            entry.file_for(precision)  # fail early if a variant is missing

    def _file(self, kind: str, branch: int = 0) -> str:
        return self.manifest.graph(kind, branch).file_for(self.precision)

    def plan(self, lr_size, scale=None, size=None) -> CascadePlan:
        return plan_cascade(lr_size, scale=scale, size=size, max_branches=self.manifest.n_branches)

    def encode(self, image: np.ndarray) -> list[np.ndarray]:
        """image (1, 3, h, w) float32 in [0, 1] -> feat, q, k, v."""
        return self.runner.run(self._file("encoder"), {"image": image})

    def branch_maps(self, feat: np.ndarray, k: int, grid: tuple[int, int],
                    rows: slice = slice(None), cols: slice = slice(None)) -> list[np.ndarray]:
        """q, k, v of branch ``k`` >= 1 on ``grid``, or on the window ``rows x cols`` of it.

        The 3x3 convs see zeros beyond the window, so a window is computed with one pixel
        of halo on every side that is not an image border and cropped: windowed and whole
        results are identical."""
        gh, gw = grid
        r0, r1, _ = rows.indices(gh)
        c0, c1, _ = cols.indices(gw)
        h0, h1, w0, w1 = max(r0 - 1, 0), min(r1 + 1, gh), max(c0 - 1, 0), min(c1 + 1, gw)
        feeds = {"feat": feat, "size": np.array(feat.shape[2:], dtype=np.float32),
                 "rows": pixel_centres(gh)[h0:h1], "cols": pixel_centres(gw)[w0:w1]}
        maps = self.runner.run(self._file("branch", k), feeds)
        return [np.ascontiguousarray(m[:, :, r0 - h0:r1 - h0, c0 - w0:c1 - w0]) for m in maps]

    def decode(self, k: int, maps, grid, coord: np.ndarray, cell: np.ndarray, offset=(0, 0)) -> np.ndarray:
        """Residual (N, 3) of branch ``k`` at ``coord`` (N, 2) from (a window of) its maps
        whose top-left pixel is ``offset`` of the full ``grid``."""
        gh, gw = grid
        r = self.manifest.radius
        feeds = {"q": maps[0], "k": maps[1], "v": maps[2], "offset": np.asarray(offset, dtype=np.int32),
                 "size": np.array([gh, gw], dtype=np.float32), "rows": pixel_centres(gh),
                 "cols": pixel_centres(gw), "drow": neighbour_offsets(gh, r), "dcol": neighbour_offsets(gw, r),
                 "coord": coord[None], "cell": cell}
        return self.runner.run(self._file("decoder", k), feeds)[0][0]

    def upscale(self, img: np.ndarray, scale=None, size=None, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
        """img (h, w, 3) float in [0, 1] -> (H, W, 3) float32, not clamped."""
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image must be (h, w, 3), got {img.shape}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        h, w = img.shape[:2]
        plan = self.plan((h, w), scale=scale, size=size)
        x = np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32)
        ws = self.manifest.window_size
        if ws > 1:  # SwinIR: mirror-pad bottom/right, upscale, crop (as the official evaluation)
            scale = scale if size is None else (plan.out_size[0] / h, plan.out_size[1] / w)
            ph, pw = (h // ws + 1) * ws, (w // ws + 1) * ws
            x = np.concatenate([x, x[:, :, ::-1]], 2)[:, :, :ph]
            x = np.ascontiguousarray(np.concatenate([x, x[:, :, :, ::-1]], 3)[:, :, :, :pw])
            out = self._run_plan(x, self.plan((ph, pw), scale=scale), chunk)
            return out[: plan.out_size[0], : plan.out_size[1]]
        return self._run_plan(x, plan, chunk)

    def _run_plan(self, x: np.ndarray, plan: CascadePlan, chunk: int) -> np.ndarray:
        out_h, out_w = plan.out_size
        n = out_h * out_w
        rows, cols = pixel_centres(out_h), pixel_centres(out_w)
        cell = plan.cell

        def coords(start: int, stop: int) -> np.ndarray:
            idx = np.arange(start, stop)
            return np.stack([rows[idx // out_w], cols[idx % out_w]], -1)

        feat, *maps0 = self.encode(x)
        acc = np.empty((n, 3), dtype=np.float32)
        for k, grid in enumerate(plan.grids):
            maps = maps0 if k == 0 else self.branch_maps(feat, k, grid)
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                res = self.decode(k, maps, grid, coords(start, stop), cell)
                acc[start:stop] = res if k == 0 else res + acc[start:stop] * np.float32(CASCADE_DISCOUNT)
        x_norm = (x[0] - np.float32(NORM_MEAN)) / np.float32(NORM_STD)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            c = coords(start, stop)
            acc[start:stop] += bilinear_border(x_norm, c[:, 0], c[:, 1])
        return (acc * np.float32(NORM_STD) + np.float32(NORM_MEAN)).reshape(out_h, out_w, 3)
