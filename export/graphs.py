"""Export-friendly views of a CLIT model: the three graph kinds, without GridSample.

Every lookup is explicit index math (int32, as TensorRT 8.x needs) + Gather, so the graphs
parse on TensorRT 8.5+ and run
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
* :class:`DecoderGraph` ``q, k, v window (1,C,hq,wq), offset (2,) int32 (window origin in
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
    return lo.to(torch.int32), lo.to(torch.int32) + 1, 1.0 - t, t


def _dim(t: torch.Tensor, i: int) -> torch.Tensor:
    """Size of dimension ``i`` as an int32 tensor (stays dynamic when traced)."""
    return torch._shape_as_tensor(t)[i].to(torch.int32)


def _clamp(x: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Clamp an int32 tensor to [0, top] with Max/Min (TensorRT's Clip is float-only)."""
    return torch.minimum(torch.maximum(x, torch.tensor(0, dtype=torch.int32)), top)


def _gather_rows_cols(fmap: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
    """fmap (C, h, w); iy, ix int32 of one shape, inside the map -> (*shape, C)."""
    c = fmap.shape[0]
    flat = fmap.reshape(c, -1).transpose(0, 1)  # (h*w, C)
    idx = iy * _dim(fmap, 2) + ix  # int32 throughout
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
        zero = torch.tensor(0.0)
        x_in = _bilinear_window(feat[0], rows.unsqueeze(1), cols.unsqueeze(0), size[0], size[1], zero, zero)
        return self.model.branch_maps(x_in.permute(2, 0, 1).unsqueeze(0), self.k)


class DecoderGraph(nn.Module):
    """Branch ``k``'s residual at query coordinates from (a window of) its q, k, v maps."""

    def __init__(self, model: CLIT, k: int):
        super().__init__()
        self.model, self.k = model, k
        self.r = model.r
        self.register_buffer("steps", torch.arange(-model.r, model.r + 1, dtype=torch.int32), persistent=False)

    def forward(self, q_map, k_map, v_map, offset, size, rows, cols, drow, dcol, coord, cell):
        m = self.model
        heads, dh = m.head, m.dim // m.head
        side = 2 * self.r + 1
        area = side * side
        c = v_map.shape[1]
        n = coord.shape[0]
        cy, cx = coord[:, 0], coord[:, 1]
        h_f, w_f = size[0], size[1]

        # nearest feature pixel, exactly as grid_sample 'nearest' (see geometry.unnormalize)
        iy = torch.round((cy + 1.0) * (h_f * 0.5) - 0.5).to(torch.int32)
        ix = torch.round((cx + 1.0) * (w_f * 0.5) - 0.5).to(torch.int32)
        ny = iy.unsqueeze(1) + self.steps  # (N, side) rows of the neighbours in the branch map
        nx = ix.unsqueeze(1) + self.steps
        h_i, w_i = h_f.to(torch.int32), w_f.to(torch.int32)
        valid = ((ny >= 0) & (ny < h_i)).unsqueeze(2) & ((nx >= 0) & (nx < w_i)).unsqueeze(1)  # N, side, side

        # relative positions (float32, same operations as the official code)
        centre_y = rows.index_select(0, _clamp(iy, _dim(rows, 0) - 1))
        centre_x = cols.index_select(0, _clamp(ix, _dim(cols, 0) - 1))
        rel_y = ((cy.unsqueeze(1) - (centre_y.unsqueeze(1) + drow)) * h_f).unsqueeze(2)  # N, side, 1
        rel_x = ((cx.unsqueeze(1) - (centre_x.unsqueeze(1) + dcol)) * w_f).unsqueeze(1)  # N, 1, side

        # keys / values of the 7x7 neighbourhood (broadcast N, side, side), zero outside the map
        ly = _clamp(ny - offset[0], _dim(v_map, 2) - 1).unsqueeze(2)
        lx = _clamp(nx - offset[1], _dim(v_map, 3) - 1).unsqueeze(1)
        mask = valid.to(v_map.dtype).reshape(n, area, 1)
        key = _gather_rows_cols(k_map[0], ly, lx).reshape(n, area, c) * mask
        val = _gather_rows_cols(v_map[0], ly, lx).reshape(n, area, c) * mask

        # q: bilinear at the query, in window-local pixel units
        oy, ox = offset[0].to(torch.float32), offset[1].to(torch.float32)
        q = _bilinear_window(q_map[0], cy, cx, h_f, w_f, oy, ox)  # N, C

        attn = torch.matmul(key.reshape(n, area, heads, dh).permute(0, 2, 1, 3), q.reshape(n, heads, dh, 1))
        attn = attn.reshape(n, heads, area).permute(0, 2, 1) / math.sqrt(dh)  # N, area, heads
        if m.pb_encoder is not None:
            attn = attn + _relative_bias(m.pb_encoder, rel_y, rel_x).reshape(n, area, heads)
        attn = F.softmax(attn, dim=1)
        feat_in = (val.reshape(n, area, heads, dh) * attn.unsqueeze(-1)).reshape(n, area * c)
        if m.is_cell:
            feat_in = torch.cat([feat_in, torch.zeros_like(coord) + cell * size], dim=-1)
        return m.imnets[self.k](feat_in)


def _bilinear_window(fmap, cy, cx, h_f, w_f, oy, ox):
    """Bilinear (zero padding) sample at global coords of a map of size (h_f, w_f), reading a
    window ``fmap`` (C, hq, wq) whose origin is at (oy, ox) of the full map.  ``cy`` and
    ``cx`` broadcast against each other (N and N, or Hw x 1 and 1 x Ww) -> (*shape, C)."""
    hq, wq = _dim(fmap, 1), _dim(fmap, 2)
    y0, y1, wy0, wy1 = _bilinear_rows(cy, h_f)
    x0, x1, wx0, wx1 = _bilinear_rows(cx, w_f)
    h_i, w_i = h_f.to(torch.int32), w_f.to(torch.int32)
    oy_i, ox_i = oy.to(torch.int32), ox.to(torch.int32)
    out = None
    for iy, wy in ((y0, wy0), (y1, wy1)):
        for ix, wx in ((x0, wx0), (x1, wx1)):
            inside = ((iy >= 0) & (iy < h_i)) & ((ix >= 0) & (ix < w_i))
            val = _gather_rows_cols(fmap, _clamp(iy - oy_i, hq - 1), _clamp(ix - ox_i, wq - 1))
            term = val * (wy * wx * inside.to(val.dtype)).unsqueeze(-1)
            out = term if out is None else out + term
    return out


def _relative_bias(pb, rel_y: torch.Tensor, rel_x: torch.Tensor) -> torch.Tensor:
    """The model's sinusoidal bias for rel = (rel_y, rel_x) given as broadcastable (N, s, 1)
    and (N, 1, s): the phase rel . B^T is written per axis (the same two products and sum as
    the 2-wide matmul), so no (N, s, s, 2) tensor has to be expanded."""
    by, bx = pb.b_vals[:, 0], pb.b_vals[:, 1]
    phase = rel_y.unsqueeze(-1) * by + rel_x.unsqueeze(-1) * bx  # N, s, s, F
    return pb.proj(torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1))
