"""ONNX export of CLIT checkpoints (Python 3.9+, PyTorch)."""

from clit.runtime import require_training_python

require_training_python("clit.export")
