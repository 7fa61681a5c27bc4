"""A TensorRT network description made from an ONNX graph the way onnx-tensorrt's parser makes it.

No TensorRT here, so the FP32 pinning of weakly typed FP16 builds
(:mod:`clit.runtime.tensorrt.precision`) is tested on a description of the network the parser
would build, following its source (onnx/onnx-tensorrt, branches 8.5-GA fdeeaca8 and 8.6-GA
ee0b139b):

* layer names (``ImporterContext.cpp`` ``registerLayer`` / ``generateUniqueName``): the first
  layer of a node gets the node's name, every further registered layer ``<name>_<N>`` with one
  counter for the whole context; helper layers that are not registered keep TensorRT's default
  ``(Unnamed Layer* <index>) [<Type>]`` (8.x ``broadcastTensor``, ``castHelper``, the softmax's
  reshape back);
* constants and initializers are weights until a layer needs them as a tensor; then one
  CONSTANT layer named after the initializer (``convertToTensor``, ``registerLayer(layer,
  weights.getName())``), reused by later consumers, whose output tensor keeps its default name;
  Conv kernels and biases stay weights (no layer);
* a node's last ITensor takes the ONNX output name (``ModelImporter.cpp``, ``registerTensor``);
* per op: Cast is an IDENTITY layer with its output type set on 8.5 and a CAST layer on 8.6;
  Softmax (opset >= 13) is SOFTMAX plus an unnamed SHUFFLE back to the input shape; elementwise
  ops broadcast lower-rank inputs through unnamed SHUFFLEs; Gemm is MATRIX_MULTIPLY with its B
  as a CONSTANT layer, plus an unregistered ELEMENTWISE sum with C (after a broadcast SHUFFLE
  when C's rank is lower); GreaterOrEqual/LessOrEqual are an ELEMENTWISE comparison, an EQUAL
  and an OR; INT64 becomes INT32 (8.x ``convertINT64``).

Left out (they change no float dataflow): the INT32 shape-math layers the parser adds for
broadcasts with dynamic dimensions, and the per-helper broadcasts of GreaterOrEqual.

Only the Python API surface the runtime uses is modelled (``num_layers``, ``get_layer``,
``num_inputs``, ``get_input``, layer ``name``/``type``/``get_input``/``get_output``/``precision``/
``set_output_type``, tensor ``name``/``dtype``).  Each layer also records the ONNX node it came
from (``node``), which the code under test never reads.
"""

from __future__ import annotations

import enum
from types import SimpleNamespace

import onnx
from onnx import TensorProto, numpy_helper


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4


class LayerType(enum.Enum):
    CONSTANT = "Constant"
    CONVOLUTION = "Convolution"
    MATRIX_MULTIPLY = "MatrixMultiply"
    ELEMENTWISE = "ElementWise"
    UNARY = "Unary"
    ACTIVATION = "Activation"
    IDENTITY = "Identity"
    CAST = "Cast"
    SOFTMAX = "SoftMax"
    GATHER = "Gather"
    SHUFFLE = "Shuffle"
    SHAPE = "Shape"
    REDUCE = "Reduce"
    CONCATENATION = "Concatenation"
    SLICE = "Slice"
    SELECT = "Select"
    FILL = "Fill"


TRT = SimpleNamespace(DataType=DataType, LayerType=LayerType, float32=DataType.FLOAT, float16=DataType.HALF)

_TYPES = {TensorProto.FLOAT: DataType.FLOAT, TensorProto.FLOAT16: DataType.HALF, TensorProto.INT32: DataType.INT32,
          TensorProto.INT64: DataType.INT32, TensorProto.BOOL: DataType.BOOL, TensorProto.INT8: DataType.INT8}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Less", "Greater", "And", "Or"}
_OR_EQUAL = {"GreaterOrEqual", "LessOrEqual"}
_UNARY = {"Round", "Floor", "Ceil", "Sin", "Cos", "Erf", "Not", "Neg", "Abs", "Sqrt", "Exp", "Log"}
_ACTIVATION = {"Relu", "LeakyRelu", "Sigmoid", "Tanh"}
_SHUFFLE = {"Reshape", "Unsqueeze", "Squeeze", "Transpose", "Flatten"}
_SIMPLE = {"Gather": LayerType.GATHER, "Shape": LayerType.SHAPE, "ReduceSum": LayerType.REDUCE,
           "Concat": LayerType.CONCATENATION, "Slice": LayerType.SLICE, "Range": LayerType.FILL,
           "Conv": LayerType.CONVOLUTION}
# inputs that the importers read as weights (no tensor, no CONSTANT layer) when they are constants
_WEIGHT_INPUTS = {"Conv": (1, 2), "Unsqueeze": (1,), "Squeeze": (1,), "ReduceSum": (1,), "Slice": (1, 2, 3, 4),
                  "Reshape": (1,), "Range": (0, 1, 2)}


class Tensor:
    def __init__(self, name: str, dtype: DataType):
        self.name, self.dtype = name, dtype


class Layer:
    def __init__(self, index: int, name: str | None, kind: LayerType, inputs: list, outputs: list, node: str):
        self.name = name if name is not None else f"(Unnamed Layer* {index}) [{kind.value}]"
        self.type, self._inputs, self._outputs, self.node = kind, inputs, outputs, node
        self.precision, self.output_types = None, {}

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, i: int):
        return self._inputs[i]

    def get_output(self, i: int):
        return self._outputs[i]

    def set_output_type(self, i: int, dtype) -> None:
        self.output_types[i] = dtype


class Network:
    def __init__(self):
        self.layers, self.inputs = [], []

    num_layers = property(lambda self: len(self.layers))
    num_inputs = property(lambda self: len(self.inputs))

    def get_layer(self, i: int) -> Layer:
        return self.layers[i]

    def get_input(self, i: int) -> Tensor:
        return self.inputs[i]


def parse(model: onnx.ModelProto, version: str = "8.5") -> Network:
    """The network onnx-tensorrt ``version`` (8.5 or 8.6) would build from ``model``."""
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in list(g.value_info) + list(g.input) + list(g.output)}
    weights = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    net, tensors, taken, counter = Network(), {}, set(), [0]
    for i in g.input:
        tensors[i.name] = Tensor(i.name, _TYPES[types[i.name]])
        net.inputs.append(tensors[i.name])

    def unique(base: str) -> str:  # generateUniqueName: one counter for the whole context
        name = base
        while name in taken:
            name = f"{base}_{counter[0]}"
            counter[0] += 1
        taken.add(name)
        return name

    def add(kind, inputs, out_types, node, name=None, registered=True) -> list:
        index = len(net.layers)
        outs = [Tensor(f"(Unnamed Layer* {index}) [{kind.value}]_output", t) for t in out_types]
        net.layers.append(Layer(index, unique(name) if registered else None, kind, inputs, outs, node))
        return outs

    const_layers = {}

    def as_tensor(name: str, node: str) -> Tensor:
        if name in tensors:
            return tensors[name]
        if name not in const_layers:  # convertToTensor: one CONSTANT layer per weights, named after them
            kind = weights[name].dtype.kind
            dtype = DataType.FLOAT if kind == "f" else DataType.BOOL if kind == "b" else DataType.INT32
            const_layers[name] = add(LayerType.CONSTANT, [], [dtype], name, name=name)[0]
        return const_layers[name]

    def rank(name: str) -> int:
        return weights[name].ndim if name in weights else ranks.get(name, 0)

    def broadcast(names: list, node: str) -> list:  # 8.x broadcastTensor: an unnamed SHUFFLE per lower rank
        top = max(rank(n) for n in names)
        out = []
        for n in names:
            t = as_tensor(n, node)
            if rank(n) < top:
                t = add(LayerType.SHUFFLE, [t], [t.dtype], node, registered=False)[0]
            out.append(t)
        return out

    for n in g.node:
        out_type = _TYPES.get(types.get(n.output[0]), DataType.FLOAT)
        data = [i for k, i in enumerate(n.input) if i and not (k in _WEIGHT_INPUTS.get(n.op_type, ()) and i in weights)]
        if n.op_type == "Constant":
            weights[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
            continue
        if n.op_type in _BINARY:
            outs = add(LayerType.ELEMENTWISE, broadcast(list(n.input), n.name), [out_type], n.name, n.name)
        elif n.op_type in _OR_EQUAL:
            ins = broadcast(list(n.input), n.name)
            a = add(LayerType.ELEMENTWISE, ins, [DataType.BOOL], n.name, n.name)[0]
            b = add(LayerType.ELEMENTWISE, ins, [DataType.BOOL], n.name, n.name)[0]
            outs = add(LayerType.ELEMENTWISE, [a, b], [DataType.BOOL], n.name, n.name)
        elif n.op_type in _UNARY:
            outs = add(LayerType.UNARY, [as_tensor(n.input[0], n.name)], [out_type], n.name, n.name)
        elif n.op_type in _ACTIVATION:
            outs = add(LayerType.ACTIVATION, [as_tensor(n.input[0], n.name)], [out_type], n.name, n.name)
        elif n.op_type == "Cast":
            kind = LayerType.IDENTITY if version == "8.5" else LayerType.CAST
            outs = add(kind, [as_tensor(n.input[0], n.name)], [out_type], n.name, n.name)
        elif n.op_type == "Softmax":
            t = add(LayerType.SOFTMAX, [as_tensor(n.input[0], n.name)], [out_type], n.name, n.name)
            outs = add(LayerType.SHUFFLE, t, [out_type], n.name, registered=False)
        elif n.op_type == "MatMul":
            outs = add(LayerType.MATRIX_MULTIPLY, broadcast(list(n.input), n.name), [out_type], n.name, n.name)
        elif n.op_type == "Gemm":
            a, b = as_tensor(n.input[0], n.name), as_tensor(n.input[1], n.name)
            outs = add(LayerType.MATRIX_MULTIPLY, [a, b], [out_type], n.name, n.name)
            if len(n.input) > 2:  # the bias sum is not registered (8.5-GA builtin_op_importers.cpp, Gemm)
                c = as_tensor(n.input[2], n.name)
                if rank(n.input[2]) < 2:
                    c = add(LayerType.SHUFFLE, [c], [out_type], n.name, registered=False)[0]
                outs = add(LayerType.ELEMENTWISE, [outs[0], c], [out_type], n.name, registered=False)
        elif n.op_type in _SHUFFLE:
            outs = add(LayerType.SHUFFLE, [as_tensor(i, n.name) for i in data], [out_type], n.name, n.name)
        elif n.op_type == "Where":
            outs = add(LayerType.SELECT, broadcast(list(n.input), n.name), [out_type], n.name, n.name)
        elif n.op_type in _SIMPLE:
            outs = add(_SIMPLE[n.op_type], [as_tensor(i, n.name) for i in data], [out_type], n.name, n.name)
        else:
            raise NotImplementedError(f"no parser model for ONNX op {n.op_type} ({n.name})")
        outs[-1].name = n.output[0]  # registerTensor: the node's last tensor takes the ONNX name
        tensors[n.output[0]] = outs[-1]
    return net
