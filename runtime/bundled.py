"""The default model shipped inside the package (``clit/runtime/models/default``).

It holds the exported ONNX graphs (FP32 and FP16 variants) with their ``manifest.json``, a
model card (``README.md``) and, in the source tree only, the PyTorch checkpoint they came from
(``checkpoint.pth``: the torch backend's reference; a wheel leaves it out, since the torch-free
runtime never reads it, which keeps the installed model small).  ``clit-infer``, ``clit-eval``
and :class:`~clit.runtime.upscaler.Upscaler` use it when no model is given.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent / "models" / "default"
CHECKPOINT_NAME = "checkpoint.pth"


def bundled_model_dir() -> Path | None:
    """The bundled model directory, or None when this installation has none."""
    return BUNDLED_DIR if (BUNDLED_DIR / "manifest.json").is_file() else None


def bundled_checkpoint() -> Path | None:
    """The bundled model's PyTorch checkpoint (for the torch backend), or None (an installation
    from a wheel or ``pip install .`` has the graphs only)."""
    path = BUNDLED_DIR / CHECKPOINT_NAME
    return path if path.is_file() else None
