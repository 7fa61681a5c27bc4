"""FP16 variants of exported graphs, with the precision-critical layers kept in FP32.

* TensorRT 8.5-10: build the FP32 graph with ``BuilderFlag.FP16`` and pin the layers listed
  by :func:`fp32_nodes` to FP32 (precision constraints); the manifest records the list.
* TensorRT 11 (strongly typed networks, no FP16 builder flag) and ONNX Runtime: the
  explicitly mixed-precision graph (``*.fp16.onnx``) from :func:`to_mixed_fp16`.

The rewrite is done here rather than with onnxconverter-common, whose 1.16 converter emits
invalid graphs for these models (tensors that are both a graph output and an internal
input; retyped Cast nodes).  It is deliberately simple: every node is FP32 (pinned) or
FP16; float tensors crossing between the two get a Cast; graph inputs and outputs stay FP32.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graphs import FP32_SCOPES

_SCOPE = re.compile(rf"^({'|'.join(FP32_SCOPES)})(_\d+)?$")
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
_NO_INPUT_CAST = {"Shape", "Cast"}  # these read any type; casting their input would only lose bits


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that must stay FP32: those inside an FP32 scope of graphs.py."""
    return [n.name for n in model.graph.node if any(_SCOPE.match(seg) for seg in n.name.split("/")[1:-1])]


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    names = {v.name for v in list(g.value_info) + list(g.input) + list(g.output) if v.type.tensor_type.elem_type == FLOAT}
    names |= {i.name for i in g.initializer if i.data_type == FLOAT}
    for node in g.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.data_type == FLOAT:
            names.add(node.output[0])
    return names


def _half_attr(node: onnx.NodeProto) -> None:
    """Turn an FP16-region node's own float constants / target type into FP16."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
            attr.i = HALF
        elif attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
            attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))


def to_mixed_fp16(model: onnx.ModelProto, keep_fp32: set[str] | None = None) -> onnx.ModelProto:
    """FP16 copy of ``model`` with the nodes in ``keep_fp32`` (default: :func:`fp32_nodes`)
    left in FP32; FP32 graph inputs and outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    keep = set(fp32_nodes(model) if keep_fp32 is None else keep_fp32)
    floats = _float_tensors(model)
    g = model.graph
    region = {n.name: (FLOAT if n.name in keep else HALF) for n in g.node}

    consumers: dict[str, set[int]] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(region[node.name])
    precision = {i.name: FLOAT for i in g.input}
    for init in g.initializer:  # weights used only by FP16 nodes become FP16
        if init.data_type == FLOAT and consumers.get(init.name) == {HALF}:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
            precision[init.name] = HALF
        elif init.data_type == FLOAT:
            precision[init.name] = FLOAT

    casts: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        if (name, to) not in casts:
            out = f"{name}__as_{'fp32' if to == FLOAT else 'fp16'}"
            nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}/Cast"))
            casts[(name, to)] = out
        return casts[(name, to)]

    for node in g.node:
        want = region[node.name]
        if node.op_type not in _NO_INPUT_CAST:
            for i, name in enumerate(node.input):
                if name in floats and precision.get(name, FLOAT) != want:
                    node.input[i] = cast(name, want)
        if want == HALF:
            _half_attr(node)
        nodes.append(node)
        for name in node.output:
            if name in floats:
                precision[name] = want

    for out in g.output:  # FP32 outputs
        if out.name in floats and precision.get(out.name) == HALF:
            inner = f"{out.name}__fp16"
            for node in nodes:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if i == out.name else i for i in node.input]
            nodes.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT, name=f"{out.name}/Cast_out"))
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)
