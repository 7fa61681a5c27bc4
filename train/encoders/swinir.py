"""SwinIR classic-SR body as CLIT's encoder (upsampler 'none').

The body is followed by ``conv_before_upsample`` (conv to 64 channels + LeakyReLU), exactly
as the official CLIT ``swinir`` encoder.  Module and buffer names follow the official code so
official state dicts (which also store ``attn_mask`` and ``relative_position_index``
buffers) load as they are.  Inputs whose size is not a multiple of the window are
reflect-padded, as the official forward does; the model's ``upscale`` pads beforehand
(symmetric, see :mod:`clit.train.model`), so this only matters for direct calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws * ws, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, ws * ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws^2, ws^2) index into the (2 ws - 1)^2 relative-position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def _region_labels(n: int, ws: int, shift: int) -> torch.Tensor:
    """0 / 1 / 2 for the three bands of one axis: [0, n-ws), [n-ws, n-shift), [n-shift, n)."""
    idx = torch.arange(n)
    return (idx >= n - ws).to(torch.float32) + (idx >= n - shift).to(torch.float32)


def shifted_window_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """(nW, ws^2, ws^2) additive mask (0 / -100) for shifted-window attention on h x w.

    Written without in-place slice writes so that it traces to TensorRT-friendly ops for
    any (dynamic) h and w; the values are the official ones (region label 3 * row band +
    column band)."""
    region = _region_labels(h, ws, shift)[:, None] * 3 + _region_labels(w, ws, shift)[None, :]
    win = window_partition(region[None, :, :, None], ws)[..., 0]  # not squeeze: an ONNX If when traced
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(ws))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim, resolution, heads, ws, shift, mlp_ratio, drop_path):
        super().__init__()
        if min(resolution) <= ws:  # official rule: one window covers the whole training crop
            shift, ws = 0, min(resolution)
        self.ws, self.shift, self.resolution = ws, shift, tuple(resolution)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(*self.resolution, ws, shift) if shift > 0 else None
        self.register_buffer("attn_mask", mask)

    def _mask(self, size: tuple[int, int], device) -> torch.Tensor | None:
        if self.shift == 0:
            return None
        if size == self.resolution:
            return self.attn_mask
        return shifted_window_mask(*size, self.ws, self.shift).to(device)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.ws), self._mask(size, x.device))
        y = window_reverse(y, self.ws, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    def __init__(self, dim, resolution, depth, heads, ws, mlp_ratio, drop_paths):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, resolution, heads, ws, 0 if i % 2 == 0 else ws // 2, mlp_ratio, drop_paths[i])
            for i in range(depth)
        )

    def forward(self, x, size):
        for block in self.blocks:
            x = block(x, size)
        return x


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *size)


class RSTB(nn.Module):
    """Residual Swin Transformer block: a BasicLayer, a 3x3 conv, and a skip."""

    def __init__(self, dim, resolution, depth, heads, ws, mlp_ratio, drop_paths):
        super().__init__()
        self.residual_group = BasicLayer(dim, resolution, depth, heads, ws, mlp_ratio, drop_paths)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x, size):
        return _tokens(self.conv(_image(self.residual_group(x, size), size))) + x


class PatchEmbed(nn.Module):
    """Holds the optional LayerNorm applied to the tokens (patch size 1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_tokens(x))


class SwinIR(nn.Module):
    def __init__(
        self,
        img_size: int = 48,
        embed_dim: int = 180,
        depths=(6, 6, 6, 6, 6, 6),
        num_heads=(6, 6, 6, 6, 6, 6),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        drop_path_rate: float = 0.1,
        num_feat: int = 64,
    ):
        super().__init__()
        self.window_size = window_size
        self.pad_to_window = True  # the official reflect pad; export turns it off (see clit.export)
        self.out_dim = num_feat
        self.conv_first = nn.Conv2d(3, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim)
        res = (img_size, img_size)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        self.layers = nn.ModuleList()
        start = 0
        for depth, heads in zip(depths, num_heads):
            self.layers.append(RSTB(embed_dim, res, depth, heads, window_size, mlp_ratio, dpr[start : start + depth]))
            start += depth
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_to_window:
            h, w = x.shape[-2:]
            ws = self.window_size
            x = F.pad(x, (0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws), "reflect")
        x = self.conv_first(x)
        size = (x.shape[2], x.shape[3])
        t = self.patch_embed(x)
        for layer in self.layers:
            t = layer(t, size)
        body = _image(self.norm(t), size)
        return self.conv_before_upsample(self.conv_after_body(body) + x)


def make_swinir(**kwargs) -> SwinIR:
    """Official ``swinir`` encoder (the official factory takes no size arguments; ours
    accepts ``embed_dim``, ``depths``, ``num_heads``, ``window_size``, ``mlp_ratio``,
    ``img_size`` and ``drop_path_rate`` for smaller variants)."""
    return SwinIR(**kwargs)
