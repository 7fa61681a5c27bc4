"""Which layers of an exported graph must stay FP32 when the rest runs in FP16.

TensorRT 8.5-10 builds the FP32 graph with ``BuilderFlag.FP16`` and pins the layers listed
here to FP32 (precision constraints); the manifest records the list per graph.  The
explicitly mixed-precision ONNX that TensorRT 11 (strongly typed) needs is not produced yet:
onnxconverter-common 1.16 emits invalid graphs for these models (tensors that are both a
graph output and an internal input; retyped Cast nodes).
"""

from __future__ import annotations

import re

import onnx

from .graphs import FP32_SCOPES

_SCOPE = re.compile(rf"^({'|'.join(FP32_SCOPES)})(_\d+)?$")


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that must stay FP32: those inside an FP32 scope of graphs.py."""
    return [n.name for n in model.graph.node if any(_SCOPE.match(seg) for seg in n.name.split("/")[1:-1])]
