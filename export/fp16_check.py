"""FP16 evidence that rounds like FP16: the graphs run by ``onnx.reference``.

ONNX Runtime's CPU provider is no instrument for FP16 accuracy: it drops fp32 -> fp16 -> fp32
Cast pairs (the graph Cast(fp16) -> Cast(fp32) returns its input bit for bit), and runs ops
that lack FP16 kernels in FP32.  ``onnx.reference.ReferenceEvaluator`` executes every float16
op in numpy float16, so a mixed-precision variant evaluated with :class:`ReferenceRunner`
rounds where a GPU FP16 engine rounds (it is slow: use small inputs).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from clit.runtime.manifest import Manifest


class ReferenceRunner:
    """A pipeline runner (``run(file, feeds)``) on ``onnx.reference``.  ``models`` maps a
    graph file to a replacement ModelProto (e.g. a variant with another FP32 region)."""

    def __init__(self, manifest: Manifest, models: dict | None = None):
        self.manifest = manifest
        self.models = dict(models or {})
        self._sessions: dict = {}

    def session(self, file: str):
        if file not in self._sessions:
            model = self.models.get(file) or onnx.load(str(self.manifest.root / file))
            self._sessions[file] = (ReferenceEvaluator(model), {i.name for i in model.graph.input})
        return self._sessions[file]

    def run(self, file: str, feeds: dict) -> list:
        evaluator, names = self.session(file)
        return evaluator.run(None, {k: v for k, v in feeds.items() if k in names})

    def intermediate(self, file: str, feeds: dict) -> dict:
        """Every tensor the graph computes for ``feeds`` (name -> array)."""
        evaluator, names = self.session(file)
        return evaluator.run(None, {k: v for k, v in feeds.items() if k in names}, intermediate=True)


def index_tensors(model: onnx.ModelProto) -> list:
    """Names of the integer tensors made by rounding coordinates: the outputs of the Casts to
    int32 that read a Round or Floor (nearest neighbours, bilinear corners)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for node in model.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to == onnx.TensorProto.INT32:
            src = producer.get(node.input[0])
            if src is not None and src.op_type in ("Round", "Floor"):
                out.append(node.output[0])
    return out


def psnr_contribution(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (peak 1) of two decoder residuals as they enter the image (x NORM_STD = 0.5)."""
    mse = float(np.mean((0.5 * (np.asarray(a, np.float64) - np.asarray(b, np.float64))) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)
