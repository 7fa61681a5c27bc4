"""RDN feature extractor (no upsampling tail), official module names."""

from __future__ import annotations

import torch
from torch import nn

RDN_CONFIGS = {"A": (20, 6, 32), "B": (16, 8, 64)}  # blocks, convs per block, growth


class RDBConv(nn.Module):
    def __init__(self, c_in: int, growth: int, k: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c_in, growth, k, padding=(k - 1) // 2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(x)), 1)


class RDB(nn.Module):
    """Residual dense block: densely connected convs, 1x1 local fusion, local skip."""

    def __init__(self, g0: int, growth: int, n_convs: int, k: int):
        super().__init__()
        self.convs = nn.Sequential(*[RDBConv(g0 + c * growth, growth, k) for c in range(n_convs)])
        self.LFF = nn.Conv2d(g0 + n_convs * growth, g0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFF(self.convs(x)) + x


class RDN(nn.Module):
    def __init__(self, G0: int = 64, RDNkSize: int = 3, RDNconfig: str = "B"):
        super().__init__()
        if RDNconfig not in RDN_CONFIGS:
            raise ValueError(f"unknown RDNconfig {RDNconfig!r} (expected A or B)")
        n_blocks, n_convs, growth = RDN_CONFIGS[RDNconfig]
        k = RDNkSize
        self.SFENet1 = nn.Conv2d(3, G0, k, padding=(k - 1) // 2)
        self.SFENet2 = nn.Conv2d(G0, G0, k, padding=(k - 1) // 2)
        self.RDBs = nn.ModuleList([RDB(G0, growth, n_convs, k) for _ in range(n_blocks)])
        self.GFF = nn.Sequential(nn.Conv2d(n_blocks * G0, G0, 1), nn.Conv2d(G0, G0, k, padding=(k - 1) // 2))
        self.out_dim = G0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.SFENet1(x)
        x = self.SFENet2(f1)
        outs = []
        for block in self.RDBs:
            x = block(x)
            outs.append(x)
        return self.GFF(torch.cat(outs, 1)) + f1


def make_rdn(G0=64, RDNkSize=3, RDNconfig="B") -> RDN:
    """Official ``rdn`` (G0 64; config A = 20x6x32, B = 16x8x64)."""
    return RDN(G0, RDNkSize, RDNconfig)
