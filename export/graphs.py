"""Export-friendly views of a CLIT model: the three graph kinds, without GridSample.

Every lookup is explicit index math (int32, as TensorRT 8.x needs) + Gather, so the graphs
parse on TensorRT 8.5+ and run on ONNX Runtime; neighbours outside the feature map are
zeroed with a mask (zero padding).  Coordinates stay float32 and follow
:mod:`clit.runtime.geometry` bit for bit: the pixel-centre and neighbour-offset tables are
graph *inputs* that the runtime builds with that module, so no coordinate constant is baked
in and the same graph serves every size.

* :class:`EncoderGraph` ``image (1,3,H,W) in [0,1] -> feat, q, k, v`` (branch 1's maps).
* :class:`BranchGraph` (branch k >= 2) ``feat window (1,C,hf,wf), offset (2,) int32 (its
  origin in the LR feature map), size (2,) float (LR h, w), rows (Hw,), cols (Ww,) -> q, k,
  v`` for the window of the intermediate grid whose pixel-centre coordinates are
  ``rows x cols``.  The 3x3 convs zero-pad at the window edge, so the
  runtime asks for one extra pixel of halo on every side that is not an image border.
* :class:`DecoderGraph` ``q, k, v window (1,C,hq,wq), offset (2,) int32 (window origin in
  the branch map), size (2,) float (branch map h, w), rows (h,), cols (w,), drow (2r+1,),
  dcol (2r+1,) neighbour offsets in [-1,1] units, coord (1,N,2), cell (2,) -> residual
  (1,N,3)``.  The batch is 1 (one image at a time); N is dynamic.

Precision: the coordinate math, relative positions, sinusoidal encoding (arguments reach
thousands of radians), the logits and the softmax must stay FP32 in FP16 builds; which nodes
those are is decided by dataflow from the coordinate inputs (:mod:`clit.runtime.fp32_region`),
not by the module names below.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clit.train.model import CLIT


def _dim(t: torch.Tensor, i: int) -> torch.Tensor:
    """Size of dimension ``i`` as an int32 tensor (stays dynamic when traced)."""
    return torch._shape_as_tensor(t)[i].to(torch.int32)


def _clamp(x: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Clamp an int32 tensor to [0, top] with Max/Min (TensorRT's Clip is float-only)."""
    return torch.minimum(torch.maximum(x, torch.tensor(0, dtype=torch.int32)), top)


def _gather(fmap: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
    """fmap (C, h, w); broadcastable int32 iy, ix inside the map -> (*shape, C)."""
    c = fmap.shape[0]
    flat = fmap.reshape(c, -1).transpose(0, 1)  # (h*w, C)
    idx = iy * _dim(fmap, 2) + ix
    return flat.index_select(0, idx.reshape(-1)).reshape(*idx.shape, c)


class BilinearAxis(nn.Module):
    """grid_sample bilinear (align_corners=False) along one axis -> lower and
    upper pixel index (int32), their weights, and whether each index is inside the axis."""

    def forward(self, coord: torch.Tensor, n: torch.Tensor):
        u = (coord + 1.0) * (n * 0.5) - 0.5
        lo_f = torch.floor(u)
        t = u - lo_f
        lo = lo_f.to(torch.int32)
        hi = lo + 1
        n_i = n.to(torch.int32)
        return (lo, 1.0 - t, (lo >= 0) & (lo < n_i)), (hi, t, (hi >= 0) & (hi < n_i))


class Bilinear(nn.Module):
    """Bilinear sample (zero padding) at global coordinates of a map of size (h, w), reading
    a window ``fmap`` (C, hq, wq) whose origin is ``(oy, ox)`` of the full map.  ``cy`` and
    ``cx`` broadcast against each other (N and N, or Hw x 1 and 1 x Ww) -> (*shape, C)."""

    def __init__(self):
        super().__init__()
        self.axis = BilinearAxis()

    def forward(self, fmap, cy, cx, h_f, w_f, oy, ox):
        hq, wq = _dim(fmap, 1), _dim(fmap, 2)
        out = None
        for iy, wy, in_y in self.axis(cy, h_f):
            for ix, wx, in_x in self.axis(cx, w_f):
                val = _gather(fmap, _clamp(iy - oy, hq - 1), _clamp(ix - ox, wq - 1))
                weight = wy * wx * (in_y & in_x).to(val.dtype)
                term = val * weight.unsqueeze(-1)
                out = term if out is None else out + term
        return out


class AxisNeighbours(nn.Module):
    """Per axis: the nearest pixel (exactly as grid_sample 'nearest', see
    ``geometry.unnormalize``), its 2r+1 neighbours, which exist, and the relative positions
    ``(c - neighbour_centre) * n`` computed with the official float32 operations."""

    def __init__(self, radius: int):
        super().__init__()
        self.register_buffer("steps", torch.arange(-radius, radius + 1, dtype=torch.int32), persistent=False)

    def forward(self, c, n_f, centres, delta):
        i = torch.round((c + 1.0) * (n_f * 0.5) - 0.5).to(torch.int32)
        nb = i.unsqueeze(1) + self.steps  # N, side
        valid = (nb >= 0) & (nb < n_f.to(torch.int32))
        centre = centres.index_select(0, _clamp(i, _dim(centres, 0) - 1))
        rel = (c.unsqueeze(1) - (centre.unsqueeze(1) + delta)) * n_f
        return nb, valid, rel

    def around(self, g, c, n_f, centres, delta):
        """The same for queries grouped by nearest pixel: ``g`` (G,) int32 the groups' nearest
        pixels, ``c`` (G, M) their queries' coordinates -> neighbours and validity (G, side),
        relative positions (G, M, side), with the same float32 operations."""
        nb = g.unsqueeze(1) + self.steps
        valid = (nb >= 0) & (nb < n_f.to(torch.int32))
        centre = centres.index_select(0, _clamp(g, _dim(centres, 0) - 1))
        rel = (c.unsqueeze(2) - (centre[:, None, None] + delta)) * n_f
        return nb, valid, rel


class RelativeBias(nn.Module):
    """The model's sinusoidal bias for rel = (rel_y, rel_x) given per axis as
    (N, s) each -> (N, s, s, heads).

    Every frequency row of ``b_vals`` is (b, 0) or (0, b), so each phase is rel_y * b or
    rel_x * b (the official 2-wide matmul adds an exact +-0) and the linear projection splits
    into a y part and an x part: the sines and cosines are taken on (N, s) instead of
    (N, s, s), and the bias is the broadcast sum y (N, s, 1) + x (N, 1, s).  Only the order
    of the projection's additions differs from the official graph (float32 rounding).
    """

    def __init__(self, pb):
        super().__init__()
        self.pb = pb
        b_vals = pb.b_vals
        y_rows = b_vals[:, 1] == 0  # a (0, 0) row (b = 2^0 - 1) has phase 0 on either axis
        x_rows = ~y_rows & (b_vals[:, 0] == 0)
        if not bool((y_rows | x_rows).all()):
            raise ValueError("RelativeBias needs every frequency row to be (b, 0) or (0, b)")
        n_phase = b_vals.shape[0]
        for name, rows in (("y", y_rows), ("x", x_rows)):
            # the projection's input is [sin(phases), cos(phases)]: these phases' columns of each
            idx = rows.nonzero()[:, 0]
            cols = torch.cat([idx, idx + n_phase])
            self.register_buffer(f"freq_{name}", b_vals[rows].sum(-1), persistent=False)
            self.register_buffer(f"cols_{name}", cols, persistent=False)

    def _axis(self, rel: torch.Tensor, freq: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        phase = rel.unsqueeze(-1) * freq  # N, s, F
        proj = self.pb.proj.weight.index_select(1, cols).t()  # constant-folded at export
        return torch.matmul(torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1), proj)  # N, s, heads

    def forward(self, rel_y, rel_x):
        by = self._axis(rel_y, self.freq_y, self.cols_y)
        bx = self._axis(rel_x, self.freq_x, self.cols_x) + self.pb.proj.bias
        return by.unsqueeze(2) + bx.unsqueeze(1)


class AttentionSoftmax(nn.Module):
    """Softmax over the neighbours of q.k / sqrt(d) + bias."""

    def __init__(self, head_dim: int, dim: int = 1):
        super().__init__()
        self.scale, self.dim = math.sqrt(head_dim), dim

    def forward(self, logits, bias):
        logits = logits / self.scale
        if bias is not None:
            logits = logits + bias
        return F.softmax(logits, dim=self.dim)


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
        self.sample = Bilinear()

    def forward(self, feat, offset, size, rows, cols):
        x_in = self.sample(feat[0], rows.unsqueeze(1), cols.unsqueeze(0), size[0], size[1], offset[0], offset[1])
        return self.model.branch_maps(x_in.permute(2, 0, 1).unsqueeze(0), self.k)


class DecoderGraph(nn.Module):
    """Branch ``k``'s residual at query coordinates from (a window of) its q, k, v maps."""

    def __init__(self, model: CLIT, k: int, softmax_dim: int = 1):
        super().__init__()
        self.model, self.k = model, k
        self.neighbours = AxisNeighbours(model.r)
        self.q_sample = Bilinear()
        self.bias = RelativeBias(model.pb_encoder) if model.pb_encoder is not None else None
        self.softmax = AttentionSoftmax(model.dim // model.head, dim=softmax_dim)

    def forward(self, q_map, k_map, v_map, offset, size, rows, cols, drow, dcol, coord, cell):
        m = self.model
        coord = coord[0]  # (1, N, 2): the batch is 1
        heads, dh, c = m.head, m.dim // m.head, m.dim
        n = coord.shape[0]
        area = (2 * m.r + 1) ** 2
        cy, cx = coord[:, 0], coord[:, 1]
        h_f, w_f = size[0], size[1]

        ny, valid_y, rel_y = self.neighbours(cy, h_f, rows, drow)  # N, side each
        nx, valid_x, rel_x = self.neighbours(cx, w_f, cols, dcol)

        # keys / values of the neighbourhood (broadcast N, side, side).  Zero padding: a
        # neighbour outside the map has key = value = 0, i.e. logit 0 and no value; the mask
        # is applied to the (N, area, heads) logits and weights, which gives the same numbers
        # as masking the (N, area, C) keys and values at an eighth of the work.
        ly = _clamp(ny - offset[0], _dim(v_map, 2) - 1).unsqueeze(2)
        lx = _clamp(nx - offset[1], _dim(v_map, 3) - 1).unsqueeze(1)
        mask = (valid_y.unsqueeze(2) & valid_x.unsqueeze(1)).to(v_map.dtype).reshape(n, area, 1)
        key = _gather(k_map[0], ly, lx).reshape(n, area, heads, dh)
        val = _gather(v_map[0], ly, lx).reshape(n, area, heads, dh)
        q = self.q_sample(q_map[0], cy, cx, h_f, w_f, offset[0], offset[1])  # N, C

        logits = (key * q.reshape(n, 1, heads, dh)).sum(-1) * mask  # N, area, heads
        bias = None
        if self.bias is not None:
            bias = self.bias(rel_y, rel_x).reshape(n, area, heads)
        attn = self.softmax(logits, bias) * mask
        feat_in = (val * attn.unsqueeze(-1)).reshape(n, area * c)
        layers = m.imnets[self.k].layers
        if m.is_cell:
            # The MLP input ends with cell * (h, w), the same for every query: fold its two
            # columns of the first layer into that layer's bias instead of appending them to
            # the (N, area * C) input (same sum, another order of additions).
            w = layers[0].weight
            first = F.linear(feat_in, w[:, : area * c], layers[0].bias + torch.matmul(cell * size, w[:, area * c:].t()))
        else:
            first = layers[0](feat_in)
        return layers[1:](first).unsqueeze(0)


class GroupedDecoderGraph(DecoderGraph):
    """Branch ``k``'s residual for a block of the output grid, with the first MLP layer
    evaluated once per feature pixel (exact for any checkpoint).

    With attention weights a[n, j, h] over the 7x7 neighbours j of query n's nearest pixel p
    and values v, the first layer is ``b1 + sum_(j,h) a[n,j,h] T_p[j,h]`` with
    ``T_p[j,h] = W1[:, (j,h)] @ v_(p+j)[h]``: T depends on p only, so it is computed once per
    pixel (49 C hidden multiply-adds, one query's first layer) and each query then costs
    49 x heads x hidden instead of 49 x C x hidden.

    The block's queries are the rows ``yc`` x columns ``xc`` of the output grid.  The runtime
    groups each axis by nearest pixel (:func:`clit.runtime.geometry.axis_groups`): ``gy``
    (Gy,) the pixel rows, ``ry`` (Gy, My) the indices into ``yc`` of each group's rows (runs
    padded by repeating their last row), likewise ``gx``, ``rx``; the groups are their
    products (P = Gy Gx pixels, M = My Mx query slots each).  ``sel`` (N,) picks, for every
    query of the block in row-major order, its slot, so the residual (1, N, 3) comes back in
    that order.  The other inputs are the per-query decoder's.
    """

    def __init__(self, model: CLIT, k: int):
        super().__init__(model, k, softmax_dim=-1)  # the same parts; the neighbours are the last axis here
        m = model
        area, c, heads = (2 * m.r + 1) ** 2, m.dim, m.head
        w1 = m.imnets[k].layers[0].weight  # (hidden, area * C [+ 2 cell columns])
        hidden = w1.shape[0]
        # (heads * area, dh, hidden): W1's block for head h and neighbour j (head-major), transposed
        self.register_buffer("w1_blocks", w1[:, : area * c].detach().reshape(hidden, area, heads, c // heads)
                             .permute(2, 1, 3, 0).reshape(heads * area, c // heads, hidden).contiguous(),
                             persistent=False)

    def forward(self, q_map, k_map, v_map, offset, size, rows, cols, drow, dcol, cell, yc, xc, gy, gx, ry, rx, sel):
        m = self.model
        heads, dh, c = m.head, m.dim // m.head, m.dim
        side = 2 * m.r + 1
        area = side * side
        h_f, w_f = size[0], size[1]
        my, mx = ry.shape[1], rx.shape[1]

        cy, cx = yc.index_select(0, ry.reshape(-1)).reshape(ry.shape), xc.index_select(0, rx.reshape(-1)).reshape(rx.shape)
        ny, valid_y, rel_y = self.neighbours.around(gy, cy, h_f, rows, drow)  # (Gy, 7), (Gy, 7), (Gy, My, 7)
        nx, valid_x, rel_x = self.neighbours.around(gx, cx, w_f, cols, dcol)

        # keys and values of each group pixel's neighbourhood: (P, area, C); zero padding by mask
        ly = _clamp(ny - offset[0], _dim(v_map, 2) - 1)[:, None, :, None]
        lx = _clamp(nx - offset[1], _dim(v_map, 3) - 1)[None, :, None, :]
        key = _gather(k_map[0], ly, lx).reshape(-1, area, heads, dh)
        # values head-major, (heads, area * P, dh), gathered from the window laid out (heads, pixels, dh):
        # the T products below then read them without a transpose of the gathered (P, area, C) block
        flat = (ly * _dim(v_map, 3) + lx).permute(2, 3, 0, 1).reshape(-1)  # (area * P,) neighbour-major
        val = v_map[0].reshape(heads, dh, -1).transpose(1, 2).index_select(1, flat)
        mask = (valid_y[:, None, :, None] & valid_x[None, :, None, :]).to(v_map.dtype).reshape(-1, 1, 1, area)

        # q at every query slot: (Gy, My, Gx, Mx, C) -> (P, heads, M, dh)
        q = self.q_sample(q_map[0], cy[:, :, None, None], cx[None, None, :, :], h_f, w_f, offset[0], offset[1])
        q = q.permute(0, 2, 1, 3, 4).reshape(-1, my * mx, heads, dh).permute(0, 2, 1, 3)
        logits = torch.matmul(q, key.permute(0, 2, 3, 1)) * mask  # (P, heads, M, area)
        bias = None
        if self.bias is not None:
            by = self.bias._axis(rel_y, self.bias.freq_y, self.bias.cols_y)  # (Gy, My, side, heads)
            bx = self.bias._axis(rel_x, self.bias.freq_x, self.bias.cols_x) + self.bias.pb.proj.bias
            by = by.permute(0, 3, 1, 2)[:, None, :, :, None, :, None]  # (Gy, 1, heads, My, 1, side, 1)
            bx = bx.permute(0, 3, 1, 2)[None, :, :, None, :, None, :]  # (1, Gx, heads, 1, Mx, 1, side)
            bias = (by + bx).reshape(-1, heads, my * mx, area)
        attn = self.softmax(logits, bias) * mask  # (P, heads, M, area)

        # T_p = W1 blocks @ values: (heads * area, P, dh) @ (heads * area, dh, hidden) -> (P, heads * area, hidden)
        t = torch.matmul(val.reshape(heads * area, -1, dh), self.w1_blocks).permute(1, 0, 2)
        weights = attn.permute(0, 2, 1, 3).reshape(-1, my * mx, heads * area)  # (P, M, heads * area)
        layers = m.imnets[self.k].layers
        b1 = layers[0].bias
        if m.is_cell:  # the cell columns of the first layer, folded into its bias (as DecoderGraph)
            b1 = b1 + torch.matmul(cell * size, layers[0].weight[:, area * c:].t())
        hidden = self.w1_blocks.shape[-1]  # a constant: reading t's shape would keep t's transpose alive
        first = (torch.matmul(weights, t) + b1).reshape(-1, hidden)  # (P * M, hidden)
        return layers[1:](first.index_select(0, sel)).unsqueeze(0)

