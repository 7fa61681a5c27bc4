"""Export-friendly views of a CLIT model: the three graph kinds, without GridSample.

Every lookup is explicit index math + Gather, so the graphs parse on TensorRT 8.5+ and run
on ONNX Runtime; neighbours outside the feature map are zeroed with a mask (zero padding).
Coordinates stay float32 and follow :mod:`clit.runtime.geometry` bit for bit: the pixel
centre and neighbour-offset tables are graph *inputs* that the runtime builds with that
module, so no coordinate constant is baked in and the same graph serves every size.

* :class:`EncoderGraph` ``image (1,3,H,W) in [0,1] -> feat, q, k, v`` (branch 1's maps).
* :class:`BranchGraph` (branch k >= 2) ``feat (1,C,h,w), size (2,) float (h, w), rows (Hw,),
  cols (Ww,) ->
  q, k, v`` for the window of the intermediate grid whose pixel-centre coordinates are
  ``rows x cols``.  The 3x3 convs zero-pad at the window edge, so the runtime asks for one
  extra pixel of halo on every side that is not an image border and drops it.
* :class:`DecoderGraph` ``q, k, v window (1,C,hq,wq), offset (2,) int64 (window origin in
  the branch map), size (2,) float (branch map h, w), rows (h,), cols (w,), drow (2r+1,),
  dcol (2r+1,) neighbour offsets in [-1,1] units, coord (N,2), cell (2,) -> residual (N,3)``.
  The batch is 1; N is dynamic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clit.train.model import CLIT


def _bilinear_rows(coord: torch.Tensor, n: torch.Tensor):
    """grid_sample bilinear (align_corners=False) along one axis: lower index, upper index,
    and their weights for coordinates ``coord`` on an axis of length ``n`` (float)."""
    u = (coord + 1.0) * (n * 0.5) - 0.5
    lo = torch.floor(u)
    t = u - lo
    return lo.to(torch.int64), lo.to(torch.int64) + 1, 1.0 - t, t


def _gather_rows_cols(fmap: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
    """fmap (C, h, w); iy, ix int64 of one shape, inside the map -> (*shape, C)."""
    c, _, w = fmap.shape
    flat = fmap.reshape(c, -1).transpose(0, 1)  # (h*w, C)
    idx = iy * w + ix
    return flat.index_select(0, idx.reshape(-1)).reshape(*idx.shape, c)


class EncoderGraph(nn.Module):
    """image in [0, 1] -> encoder features after conv_ch, and branch 1's q, k, v maps."""

    def __init__(self, model: CLIT):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        feat = self.model.encode(image)
        q, k, v = self.model.branch_maps(feat, 0)
        return feat, q, k, v


class BranchGraph(nn.Module):
    """Branch ``k`` >= 2: resample the features to a window of the stage grid, then q, k, v."""

    def __init__(self, model: CLIT, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, feat: torch.Tensor, size: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
        hw, ww = rows.shape[0], cols.shape[0]
        y = rows.unsqueeze(1).expand(hw, ww).reshape(-1)
        x = cols.unsqueeze(0).expand(hw, ww).reshape(-1)
        zero = torch.zeros((), dtype=torch.float32)
        x_in = _bilinear_window(feat[0], y, x, size[0], size[1], zero, zero)  # (Hw*Ww, C)
        x_in = x_in.transpose(0, 1).reshape(1, -1, hw, ww)
        return self.model.branch_maps(x_in, self.k)


class DecoderGraph(nn.Module):
    """Branch ``k``'s residual at query coordinates from (a window of) its q, k, v maps."""

    def __init__(self, model: CLIT, k: int):
        super().__init__()
        self.model, self.k = model, k
        self.r = model.r
        self.register_buffer("steps", torch.arange(-model.r, model.r + 1, dtype=torch.int64), persistent=False)

    def forward(self, q_map, k_map, v_map, offset, size, rows, cols, drow, dcol, coord, cell):
        m = self.model
        heads, dh = m.head, m.dim // m.head
        side = 2 * self.r + 1
        area = side * side
        _, c, hq, wq = v_map.shape
        n = coord.shape[0]
        cy, cx = coord[:, 0], coord[:, 1]
        h_f, w_f = size[0], size[1]

        # nearest feature pixel, exactly as grid_sample 'nearest' (see geometry.unnormalize)
        iy = torch.round((cy + 1.0) * (h_f * 0.5) - 0.5).to(torch.int64)
        ix = torch.round((cx + 1.0) * (w_f * 0.5) - 0.5).to(torch.int64)
        ny = iy.unsqueeze(1) + self.steps  # (N, side) rows of the neighbours in the branch map
        nx = ix.unsqueeze(1) + self.steps
        h_i, w_i = h_f.to(torch.int64), w_f.to(torch.int64)
        valid = ((ny >= 0) & (ny < h_i)).unsqueeze(2) & ((nx >= 0) & (nx < w_i)).unsqueeze(1)  # N, side, side

        # relative positions (float32, same operations as the official code)
        centre_y = rows.index_select(0, iy.clamp(0, rows.shape[0] - 1))
        centre_x = cols.index_select(0, ix.clamp(0, cols.shape[0] - 1))
        rel_y = (cy.unsqueeze(1) - (centre_y.unsqueeze(1) + drow)) * h_f  # N, side
        rel_x = (cx.unsqueeze(1) - (centre_x.unsqueeze(1) + dcol)) * w_f
        rel = torch.stack(
            [rel_y.unsqueeze(2).expand(n, side, side), rel_x.unsqueeze(1).expand(n, side, side)], dim=-1
        ).reshape(n, area, 2)

        # keys / values of the 7x7 neighbourhood, zero outside the map
        ly = (ny - offset[0]).clamp(0, hq - 1).unsqueeze(2).expand(n, side, side)
        lx = (nx - offset[1]).clamp(0, wq - 1).unsqueeze(1).expand(n, side, side)
        mask = valid.to(v_map.dtype).reshape(n, area, 1)
        key = _gather_rows_cols(k_map[0], ly, lx).reshape(n, area, c) * mask
        val = _gather_rows_cols(v_map[0], ly, lx).reshape(n, area, c) * mask

        # q: bilinear at the query, in window-local pixel units
        oy, ox = offset[0].to(torch.float32), offset[1].to(torch.float32)
        q = _bilinear_window(q_map[0], cy, cx, h_f, w_f, oy, ox)  # N, C

        attn = torch.matmul(key.reshape(n, area, heads, dh).permute(0, 2, 1, 3), q.reshape(n, heads, dh, 1))
        attn = attn.reshape(n, heads, area).permute(0, 2, 1) / math.sqrt(dh)  # N, area, heads
        if m.pb_encoder is not None:
            attn = attn + m.pb_encoder(rel)
        attn = F.softmax(attn, dim=1)
        feat_in = (val.reshape(n, area, heads, dh) * attn.unsqueeze(-1)).reshape(n, area * c)
        if m.is_cell:
            feat_in = torch.cat([feat_in, (cell * size).unsqueeze(0).expand(n, 2)], dim=-1)
        return m.imnets[self.k](feat_in)


def _bilinear_window(fmap, cy, cx, h_f, w_f, oy, ox):
    """Bilinear (zero padding) sample at global coords of a map of size (h_f, w_f), reading a
    window ``fmap`` (C, hq, wq) whose origin is at (oy, ox) of the full map -> (N, C)."""
    _, hq, wq = fmap.shape
    y0, y1, wy0, wy1 = _bilinear_rows(cy, h_f)
    x0, x1, wx0, wx1 = _bilinear_rows(cx, w_f)
    h_i, w_i = h_f.to(torch.int64), w_f.to(torch.int64)
    oy_i, ox_i = oy.to(torch.int64), ox.to(torch.int64)
    out = None
    for iy, wy in ((y0, wy0), (y1, wy1)):
        for ix, wx in ((x0, wx0), (x1, wx1)):
            inside = (iy >= 0) & (iy < h_i) & (ix >= 0) & (ix < w_i)
            val = _gather_rows_cols(fmap, (iy - oy_i).clamp(0, hq - 1), (ix - ox_i).clamp(0, wq - 1))
            term = val * (wy * wx * inside.to(val.dtype)).unsqueeze(-1)
            out = term if out is None else out + term
    return out
