"""Deployment runtime (never imports torch): cascade planning, backends, image I/O.

It runs on Python 3.8 (JetPack 5's Python); training and export need 3.9 or newer."""

import sys

TRAINING_PYTHON = (3, 9)


def require_training_python(feature: str) -> None:
    """ImportError with a clear message when ``feature`` (training or export) runs on a Python
    older than :data:`TRAINING_PYTHON`; the runtime itself does not call this."""
    if sys.version_info[:2] < TRAINING_PYTHON:
        raise ImportError(f"{feature} needs Python {'.'.join(map(str, TRAINING_PYTHON))} or newer (this is "
                          f"{sys.version.split()[0]}); the runtime (clit-infer, clit-build, clit-parity "
                          "--reference) runs on 3.8")
