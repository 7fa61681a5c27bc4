"""FP16 variants of exported graphs, with the coordinate path kept in FP32.

Which nodes stay FP32 is decided by dataflow (:mod:`clit.runtime.fp32_region`: the tensors
computed from the coordinate inputs, and those feeding index math or the attention softmax),
not by names, so a node is never missed because of how it is called.

* TensorRT 8.5-10: the FP32 graph with ``BuilderFlag.FP16``; the runtime pins the same region
  on the TensorRT network itself (:mod:`clit.runtime.tensorrt.precision`).  The manifest lists
  the region's ONNX nodes as ``fp32_layers`` (documentation, trtexec, INT8 exclusions).
* TensorRT 11 (strongly typed networks, no FP16 builder flag) and ONNX Runtime: the
  explicitly mixed-precision graph (``*.fp16.onnx``) from :func:`to_mixed_fp16`.

The rewrite is done here rather than with onnxconverter-common, whose 1.16 converter emits
invalid graphs for these models (tensors that are both a graph output and an internal
input; retyped Cast nodes).  It is deliberately simple: every node is FP32 or FP16; float
tensors crossing between the two get a Cast; graph inputs and outputs stay FP32; a constant
is FP16 only when every node reading it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from clit.runtime.fp32_region import CAST, CONSTANT, OTHER, SHAPE, SOFTMAX, Op, Region, fp32_region

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
_NO_INPUT_CAST = {"Shape", "Cast"}  # these read any type; casting their input would only lose bits
_KINDS = {"Constant": CONSTANT, "Shape": SHAPE, "Size": SHAPE, "Softmax": SOFTMAX, "Cast": CAST}


def _types(model: onnx.ModelProto) -> dict:
    """tensor name -> ONNX element type (shape inference, initializers, Constant values)."""
    g = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    for node in g.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def graph_ops(model: onnx.ModelProto) -> list:
    """The nodes of ``model`` as :class:`~clit.runtime.fp32_region.Op` records."""
    types = _types(model)

    def is_float(t: str) -> bool:
        return types.get(t) in _FLOAT_TYPES

    return [Op(n.name, _KINDS.get(n.op_type, OTHER), tuple(n.input), tuple(n.output),
               tuple(is_float(t) for t in n.output), tuple(is_float(t) for t in n.input)) for n in model.graph.node]


def region(model: onnx.ModelProto) -> Region:
    """The FP32 region of an exported graph (see :mod:`clit.runtime.fp32_region`)."""
    for node in model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ValueError(f"node {node.name} ({node.op_type}) has a subgraph: the FP16 rewrite handles flat "
                             "graphs only (export without control flow)")
    return fp32_region(graph_ops(model), [i.name for i in model.graph.input], [i.name for i in model.graph.initializer])


def fp32_nodes(model: onnx.ModelProto) -> list:
    """Names of the nodes that must stay FP32, in graph order."""
    keep = region(model).ops
    return [n.name for n in model.graph.node if n.name in keep]


def _half_attr(node: onnx.NodeProto) -> None:
    """Turn an FP16-region node's own float constants / target type into FP16."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
            attr.i = HALF
        elif attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
            attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))


def to_mixed_fp16(model: onnx.ModelProto, keep_fp32: set | None = None) -> onnx.ModelProto:
    """FP16 copy of ``model`` with the nodes in ``keep_fp32`` (default: :func:`fp32_nodes`)
    left in FP32; FP32 graph inputs and outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    keep = set(fp32_nodes(model) if keep_fp32 is None else keep_fp32)
    types = _types(model)
    floats = {t for t, ty in types.items() if ty == FLOAT}
    g = model.graph
    region = {n.name: (FLOAT if n.name in keep else HALF) for n in g.node}
    readers: dict = {}
    for node in g.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
    for node in g.node:  # a Constant node is FP16 only when every reader is
        if node.op_type == "Constant":
            region[node.name] = HALF if all(region[r] == HALF for r in readers.get(node.output[0], [])) else FLOAT

    consumers: dict = {}
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
