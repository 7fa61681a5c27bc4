"""ONNX export of CLIT checkpoints."""
