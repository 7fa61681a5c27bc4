"""EDSR / EDSR-baseline feature extractor (no upsampling tail).

Module names follow the official code so that official state dicts load as they are.  The
``sub_mean`` / ``add_mean`` MeanShift convolutions exist in official checkpoints but are not
applied by the official forward pass; they are kept (frozen, unused) only for the keys.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class MeanShift(nn.Conv2d):
    """Frozen 1x1 conv adding or subtracting the DIV2K RGB mean (kept for state-dict keys)."""

    def __init__(self, sign: int, rgb_mean=(0.4488, 0.4371, 0.4040)):
        super().__init__(3, 3, kernel_size=1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * torch.tensor(rgb_mean)
        self.requires_grad_(False)


class ResBlock(nn.Module):
    def __init__(self, n_feats: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(_conv3(n_feats, n_feats), nn.ReLU(True), _conv3(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mul(self.res_scale) + x


class EDSR(nn.Module):
    """EDSR body: head conv, ``n_resblocks`` residual blocks, a conv, and a long skip."""

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0):
        super().__init__()
        self.sub_mean = MeanShift(-1)
        self.add_mean = MeanShift(+1)
        self.head = nn.Sequential(_conv3(3, n_feats))
        blocks: list[nn.Module] = [ResBlock(n_feats, res_scale) for _ in range(n_resblocks)]
        self.body = nn.Sequential(*blocks, _conv3(n_feats, n_feats))
        self.out_dim = n_feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return self.body(x) + x


def make_edsr_baseline(n_resblocks=16, n_feats=64, res_scale=1.0) -> EDSR:
    """Official ``edsr-baseline`` (defaults 16 blocks x 64 channels)."""
    return EDSR(n_resblocks, n_feats, res_scale)


def make_edsr(n_resblocks=32, n_feats=256, res_scale=0.1) -> EDSR:
    """Official ``edsr`` (defaults 32 blocks x 256 channels, res_scale 0.1)."""
    return EDSR(n_resblocks, n_feats, res_scale)
