"""The PyTorch reference model behind the runtime's engine interface (see clit.runtime.engines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_model, torch_device
from .model import DEFAULT_CHUNK


class TorchEngine:
    """Maps an RGB float32 image (h, w, 3) in [0, 1] to the model output (H, W, 3), not clamped."""

    def __init__(self, checkpoint: Path, device: str = "cpu", chunk: int = DEFAULT_CHUNK, threads: int = 0):
        if threads:  # torch's intra-op threads are per process (0: leave torch's default, every core)
            torch.set_num_threads(threads)
        self.model = load_model(checkpoint, device=torch_device(device))
        self.device, self.chunk = device, chunk
        self.name = f"torch-{device} fp32"
        self.source = Path(checkpoint)

    def upscale(self, img: np.ndarray, scale=None, size=None, sink=None, out_itemsize: int = 4) -> np.ndarray | None:
        """The reference runs the whole image (its memory follows the largest branch grid); a
        ``sink`` gets it as one tile."""
        lr = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].to(self.device)
        out = self.model.upscale(lr, scale=scale, size=size, chunk=self.chunk)
        out = np.ascontiguousarray(out[0].permute(1, 2, 0).cpu().numpy())
        if sink is None:
            return out
        sink((0, out.shape[0]), (0, out.shape[1]), out)
        return None
