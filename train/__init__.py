"""Training-side package: the CLIT model in PyTorch, its encoders, checkpoints, training
(``clit-train``) and evaluation (``clit-eval``).

Public API::

    model = clit.train.load_model("model.pth")     # official or our checkpoint
    hr = model.upscale(lr, scale=3.5)               # or size=(H, W); lr (B,3,h,w) in [0,1]

The names below are imported on first use, so ``clit.train.evaluate`` (bicubic and exported
models) runs without PyTorch.
"""

from __future__ import annotations

import importlib

_LAZY = {"CLIT": ".model", "CheckpointError": ".checkpoint", "load_model": ".checkpoint",
         "save_checkpoint": ".checkpoint"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
