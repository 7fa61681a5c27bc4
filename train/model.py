"""The CLIT model (Cascaded Local Implicit Transformer) in PyTorch.

Reproduces the official implementation (github jaroslaw1007/CLIT) operation for operation,
so official checkpoints give the official numbers.  The constructor takes the official
``model.args`` dict as keyword arguments.  A CLIT with one branch is the paper's LIT.

For an output coordinate x and branch k reading a feature map of size h x w:

* the 7x7 (``r = 3``) neighbourhood is centred on the nearest feature pixel; neighbours
  outside the map have key = value = 0 but keep their relative coordinate and bias;
* q is the bilinear sample of the q-map at x; rel = (x - neighbour) * (h, w);
* attention (``head`` heads) = softmax over the neighbours of q.k / sqrt(d) + bias(rel),
  the bias being a linear map of the sinusoidal encoding of rel;
* the MLP reads the attention-weighted values (neighbour-major) and the cell * (h, w).

Coordinates, the stage plan and the cascade constants come from
:mod:`clit.runtime.geometry`, shared with export and runtime.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from clit.runtime import require_training_python

require_training_python("clit.train (the PyTorch model)")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from clit.runtime.geometry import (  # noqa: E402
    CASCADE_DISCOUNT,
    NORM_MEAN,
    NORM_STD,
    CascadePlan,
    coord_grid,
    pixel_centres,
    plan_cascade,
    window_padded_size,
)

from .encoders import make_encoder  # noqa: E402

DEFAULT_CHUNK = 30000


class SinusoidalBias(nn.Module):
    """Relative-position bias: Linear(enc_dims -> head) of [sin(rel B^T), cos(rel B^T)].

    B holds the frequencies b = 2^linspace(0, posenc_scale, enc_dims / 4) - 1 as rows (b, 0)
    followed by (0, b).  Official ``posenc`` with ``posenc_type: sinusoid``.
    """

    def __init__(self, head: int, enc_dims: int = 64, posenc_scale: float = 10):
        super().__init__()
        b = 2.0 ** torch.linspace(0, posenc_scale, enc_dims // 4) - 1
        rows = torch.stack([b, torch.zeros_like(b)], dim=-1)
        self.register_buffer("b_vals", torch.cat([rows, rows.roll(1, -1)], dim=0), persistent=False)
        self.proj = nn.Linear(enc_dims, head)

    def forward(self, rel: torch.Tensor) -> torch.Tensor:
        phase = torch.matmul(rel, self.b_vals.transpose(-2, -1))
        return self.proj(torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1))


class MLP(nn.Module):
    """Official ``mlp``: Linear/activation stack (state-dict keys ``layers.{0,2,...}``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_list: Sequence[int], act: str = "relu"):
        super().__init__()
        acts = {"relu": lambda: nn.ReLU(True), "gelu": nn.GELU}
        if act is not None and act.lower() not in acts:
            raise ValueError(f"unknown MLP activation {act!r} (relu or gelu)")
        layers: list[nn.Module] = []
        last = in_dim
        for hidden in hidden_list:
            layers.append(nn.Linear(last, hidden))
            if act is not None:
                layers.append(acts[act.lower()]())
            last = hidden
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        return self.layers(x.reshape(-1, x.shape[-1])).view(*shape, -1)


def _grid(coord: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) (row, col) coordinates -> grid_sample grid (B, N, 1, 2) in (x, y) order."""
    return coord.unsqueeze(2).flip(-1)


class CLIT(nn.Module):
    """CLIT with ``imnet_num`` cascade branches; arguments as in official checkpoints."""

    def __init__(
        self,
        encoder_spec: dict,
        imnet_spec: dict,
        pb_spec: dict | None = None,
        base_dim: int = 192,
        head: int = 8,
        r: int = 3,
        imnet_num: int = 1,
        conv_num: int = 1,
        is_cell: bool = True,
        local_attn: bool = True,
        verbose: bool = False,
    ):
        super().__init__()
        if imnet_num != conv_num:
            raise ValueError(f"imnet_num ({imnet_num}) and conv_num ({conv_num}) must be equal")
        if not local_attn:
            raise ValueError("local_attn=False (plain LIIF-style decoding) is not supported")
        if base_dim % head:
            raise ValueError(f"base_dim {base_dim} is not divisible by head {head}")
        self.dim, self.head, self.r = base_dim, head, r
        self.n_branches = imnet_num
        self.is_cell = is_cell
        self.encoder = make_encoder(encoder_spec)
        self.conv_ch = nn.Conv2d(self.encoder.out_dim, base_dim, 3, padding=1)

        def convs() -> nn.ModuleList:
            return nn.ModuleList(nn.Conv2d(base_dim, base_dim, 3, padding=1) for _ in range(conv_num))

        self.conv_vs, self.conv_qs, self.conv_ks = convs(), convs(), convs()
        self.pb_encoder = _make_bias(pb_spec, head) if pb_spec else None
        area = (2 * r + 1) ** 2
        imnet_args = dict(imnet_spec.get("args") or {})
        if imnet_spec.get("name", "mlp") != "mlp":
            raise ValueError(f"unknown imnet {imnet_spec.get('name')!r} (only 'mlp')")
        imnet_args["in_dim"] = base_dim * area + (2 if is_cell else 0)
        imnet_args.setdefault("out_dim", 3)
        self.imnets = nn.ModuleList(MLP(**imnet_args) for _ in range(imnet_num))
        d = torch.linspace(-r, r, 2 * r + 1)
        self.register_buffer("_steps", d, persistent=False)

    # ----------------------------------------------------------------- building blocks
    @property
    def window_size(self) -> int:
        """Input sizes the encoder needs a multiple of (SwinIR windows), else 1."""
        return getattr(self.encoder, "window_size", 1)

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        """LR image in [0, 1], (B, 3, h, w) -> feature map after ``conv_ch`` (B, C, h, w)."""
        return self.conv_ch(self.encoder((lr - NORM_MEAN) / NORM_STD))

    def branch_input(self, feat: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """Input of a branch k >= 2: ``feat`` resampled (bilinear, zero padding,
        align_corners=False) to the pixel centres of ``grid_size``, (B, C, *grid_size)."""
        b = feat.shape[0]
        h, w = grid_size
        coord = torch.from_numpy(coord_grid(h, w)).to(feat.device).reshape(1, -1, 2).expand(b, -1, -1)
        out = F.grid_sample(feat, _grid(coord), mode="bilinear", align_corners=False)
        return out.reshape(b, -1, h, w)

    def branch_maps(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, v) maps of branch ``k`` (0-based) from its input features."""
        return self.conv_qs[k](x), self.conv_ks[k](x), self.conv_vs[k](x)

    def query(self, k: int, maps, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Residual of branch ``k`` at ``coord`` (B, N, 2): (B, N, 3), normalised units."""
        q_map, k_map, v_map = maps
        b, n, _ = coord.shape
        h, w = v_map.shape[-2:]
        heads, dh, area = self.head, self.dim // self.head, (2 * self.r + 1) ** 2
        grid = _grid(coord)

        centres = torch.from_numpy(coord_grid(h, w)).to(coord.device).permute(2, 0, 1)
        centre = F.grid_sample(centres.unsqueeze(0).expand(b, -1, -1, -1), grid, mode="nearest", align_corners=False)
        centre = centre.permute(0, 2, 3, 1)  # B, N, 1, 2
        delta = torch.stack(torch.meshgrid(self._steps * (2 / h), self._steps * (2 / w), indexing="ij"), dim=-1)
        neigh = centre + delta.view(1, 1, -1, 2)  # B, N, 49, 2
        neigh_grid = neigh.flip(-1)

        q = F.grid_sample(q_map, grid, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        q = q.reshape(b, n, 1, heads, dh).permute(0, 1, 3, 2, 4)
        key = F.grid_sample(k_map, neigh_grid, mode="nearest", align_corners=False).permute(0, 2, 3, 1)
        key = key.reshape(b, n, area, heads, dh).permute(0, 1, 3, 4, 2)
        val = F.grid_sample(v_map, neigh_grid, mode="nearest", align_corners=False).permute(0, 2, 3, 1)

        rel = coord.unsqueeze(2) - neigh
        rel[..., 0] *= h
        rel[..., 1] *= w

        attn = torch.matmul(q, key).reshape(b, n, heads, area).permute(0, 1, 3, 2) / math.sqrt(dh)
        if self.pb_encoder is not None:
            attn = attn + self.pb_encoder(rel)
        attn = F.softmax(attn, dim=-2).reshape(b, n, area, heads, 1)
        val = torch.mul(val.reshape(b, n, area, heads, dh), attn).reshape(b, n, -1)
        if self.is_cell:
            rel_cell = cell.unsqueeze(1).repeat(1, n, 1)
            rel_cell[..., 0] *= h
            rel_cell[..., 1] *= w
            val = torch.cat([val, rel_cell], dim=-1)
        return self.imnets[k](val)

    @staticmethod
    def skip(x_norm: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        """Bilinear (border padding) sample of the normalised input at ``coord``: (B, N, 3)."""
        out = F.grid_sample(x_norm, _grid(coord), mode="bilinear", padding_mode="border", align_corners=False)
        return out[:, :, :, 0].permute(0, 2, 1)

    # ----------------------------------------------------------------- training forward
    def forward(self, lr, grids, coord, cell):
        """Training/official forward: predictions (normalised) of every active stage.

        ``lr`` (B, 3, h, w) in [0, 1]; ``grids`` the feature-grid size of each active branch
        (``grids[0]`` is (h, w), see :class:`~clit.runtime.geometry.CascadePlan`); ``coord``
        (B, N, 2) queries of the final grid; ``cell`` (B, 2).  Returns a list, one (B, N, 3)
        tensor per stage; stage i is what a model stopped after i + 1 branches predicts.
        """
        if len(grids) > self.n_branches:
            raise ValueError(f"{len(grids)} stages requested, the model has {self.n_branches} branches")
        feat = self.encode(lr)
        skip = self.skip((lr - NORM_MEAN) / NORM_STD, coord)
        preds, acc = [], None
        for k, grid_size in enumerate(grids):
            x = feat if k == 0 else self.branch_input(feat, grid_size)
            res = self.query(k, self.branch_maps(x, k), coord, cell)
            acc = res if acc is None else res + acc * CASCADE_DISCOUNT
            preds.append(acc + skip)
        return preds

    # ----------------------------------------------------------------- inference
    def plan(self, lr_size, scale=None, size=None) -> CascadePlan:
        """The cascade plan for an LR of ``lr_size`` (see :func:`plan_cascade`)."""
        return plan_cascade(lr_size, scale=scale, size=size, max_branches=self.n_branches)

    @torch.no_grad()
    def upscale(self, lr: torch.Tensor, scale=None, size=None, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
        """Upscale ``lr`` (B, 3, h, w) float in [0, 1] by ``scale`` (number or (sh, sw)) or to
        ``size = (H, W)``.  Returns (B, 3, H, W), de-normalised and NOT clamped.

        Queries are evaluated ``chunk`` at a time: the large per-query tensors (N x 49 x C)
        are bounded by ``chunk``, and the result does not depend on it.
        """
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise ValueError(f"lr must be (B, 3, h, w), got {tuple(lr.shape)}")
        if not lr.is_floating_point():
            raise TypeError(f"lr must be a float tensor in [0, 1], got {lr.dtype}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        h, w = lr.shape[-2:]
        plan = self.plan((h, w), scale=scale, size=size)
        ws = self.window_size
        if ws > 1:
            scale = scale if size is None else (plan.out_size[0] / h, plan.out_size[1] / w)
            return self._upscale_padded(lr, plan, scale, ws, chunk)
        return self._upscale_plan(lr, plan, chunk)

    def _upscale_padded(self, lr, plan: CascadePlan, scale, ws: int, chunk: int) -> torch.Tensor:
        """SwinIR path, as the official evaluation: mirror-pad bottom/right by
        (h // ws + 1) * ws - h (at least one), upscale the padded image by the same scale,
        crop the top-left ``plan.out_size``."""
        ph, pw = window_padded_size(plan.lr_size, ws)
        x = torch.cat([lr, lr.flip(2)], 2)[..., :ph, :]
        x = torch.cat([x, x.flip(3)], 3)[..., :pw]
        out_h, out_w = plan.out_size
        return self._upscale_plan(x, self.plan((ph, pw), scale=scale), chunk)[..., :out_h, :out_w]

    def _upscale_plan(self, lr, plan: CascadePlan, chunk: int) -> torch.Tensor:
        b = lr.shape[0]
        out_h, out_w = plan.out_size
        n = out_h * out_w
        rows = torch.from_numpy(pixel_centres(out_h)).to(lr.device)
        cols = torch.from_numpy(pixel_centres(out_w)).to(lr.device)
        cell = torch.from_numpy(plan.cell).to(lr.device).unsqueeze(0).expand(b, -1)

        def coords(start: int, stop: int) -> torch.Tensor:
            idx = torch.arange(start, stop, device=lr.device)
            return torch.stack([rows[idx // out_w], cols[idx % out_w]], -1).unsqueeze(0).expand(b, -1, -1)

        feat = self.encode(lr)
        acc = torch.empty(b, n, 3, dtype=lr.dtype, device=lr.device)
        for k, grid_size in enumerate(plan.grids):
            x = feat if k == 0 else self.branch_input(feat, grid_size)
            maps = self.branch_maps(x, k)
            del x
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                res = self.query(k, maps, coords(start, stop), cell)
                acc[:, start:stop] = res if k == 0 else res + acc[:, start:stop] * CASCADE_DISCOUNT
            del maps
        x_norm = (lr - NORM_MEAN) / NORM_STD
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            acc[:, start:stop] += self.skip(x_norm, coords(start, stop))
        out = acc * NORM_STD + NORM_MEAN
        return out.view(b, out_h, out_w, 3).permute(0, 3, 1, 2)


def _make_bias(pb_spec: dict, head: int) -> SinusoidalBias:
    args = dict(pb_spec.get("args") or {})
    if pb_spec.get("name", "posenc") != "posenc" or args.get("posenc_type") != "sinusoid":
        raise ValueError(
            f"unsupported positional bias {pb_spec.get('name')!r}/{args.get('posenc_type')!r} "
            "(the released CLIT uses posenc/sinusoid)"
        )
    return SinusoidalBias(head, enc_dims=args.get("enc_dims", 256), posenc_scale=args.get("posenc_scale", 6))
