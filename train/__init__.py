"""Training-side package: the CLIT model in PyTorch, its encoders and checkpoints.

Public API::

    model = clit.train.load_model("model.pth")     # official or our checkpoint
    hr = model.upscale(lr, scale=3.5)               # or size=(H, W); lr (B,3,h,w) in [0,1]
"""

from .checkpoint import CheckpointError, load_model, save_checkpoint
from .model import CLIT

__all__ = ["CLIT", "CheckpointError", "load_model", "save_checkpoint"]
