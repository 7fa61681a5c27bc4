"""The default model shipped inside the package (``clit/runtime/models/default``).

It holds the exported FP32 ONNX graphs with their ``manifest.json``, the PyTorch checkpoint
they came from (``checkpoint.pth``) and a model card (``README.md``).  ``clit-infer``,
``clit-eval`` and :class:`~clit.runtime.upscaler.Upscaler` use it when no model is given.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent / "models" / "default"
CHECKPOINT_NAME = "checkpoint.pth"


def bundled_model_dir() -> Path | None:
    """The bundled model directory, or None when this installation has none."""
    return BUNDLED_DIR if (BUNDLED_DIR / "manifest.json").is_file() else None


def bundled_checkpoint() -> Path | None:
    """The bundled model's PyTorch checkpoint (for the torch backend), or None."""
    path = BUNDLED_DIR / CHECKPOINT_NAME
    return path if path.is_file() else None
