"""Audit ONNX graphs against TensorRT's published ONNX operator support.

The matrix (``data/trt_onnx_ops.json``) holds onnx-tensorrt's ``docs/operators.md`` for
TensorRT 8.5, 8.6 and 10 (10.1 GA); no 11.x matrix was available when it was made, so
``11`` repeats 10 and says so.  On top of the matrix, this project forbids ops that break
its TensorRT plan whatever the version says (GridSample, FFT, scatter writes, complex types).

For every node:

* the op must be supported for the target;
* every input and output that carries the op's data type (the ONNX schema's type constraint of
  the tensors the matrix describes: input 0's, or the values of Where, the output of
  ConstantOfShape, both sides of Cast) must have a type the matrix lists; INT64 counts as INT32
  on 8.x, whose parser casts it down;
* the matrix's restrictions are checked where they can be (``axes``/``K``/``axis`` inputs that
  must be initializers, zero points that must be zero, pooling rank, MaxPool's ``Indices``,
  Resize modes); a restriction of an op in the graph that cannot be checked becomes a *note*;
* ops whose output shape depends on tensor values (NonZero, NonMaxSuppression, Unique,
  Compress), and shape inputs (Reshape, Expand, Tile, Range, ...) computed from data rather
  than from shapes and constants, are findings: TensorRT plans memory from shapes.

Findings fail ``clit-export --check``; notes are recorded only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import onnx
from onnx import numpy_helper

MATRIX_FILE = Path(__file__).with_name("data") / "trt_onnx_ops.json"
TARGETS = ("8.5", "8.6", "10", "11")

FORBIDDEN = {
    "GridSample": "GridSample is not allowed (opset-20 mis-parse; use index math + Gather)",
    "DFT": "FFT is not allowed (no TensorRT support across versions)",
    "STFT": "FFT is not allowed (no TensorRT support across versions)",
    "ScatterND": "scatter writes are not allowed",
    "ScatterElements": "scatter writes are not allowed",
    "Scatter": "scatter writes are not allowed",
}
DATA_DEPENDENT = {"NonZero", "NonMaxSuppression", "Unique", "Compress"}
# inputs that are shapes or sizes: they must come from shapes and constants, not from data
SHAPE_INPUTS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "Range": (0, 1, 2), "ConstantOfShape": (0,),
                "TopK": (1,), "OneHot": (1,), "Resize": (2, 3), "Slice": (1, 2, 3, 4), "Pad": (1,)}
# restrictions of the matrix that are checked here: op -> (inputs that must be constants)
CONSTANT_INPUTS = {"Slice": (3,), "Squeeze": (1,), "Unsqueeze": (1,), "TopK": (1,), "CumSum": (1,),
                   "InstanceNormalization": (1, 2), "Pad": (3,), "OneHot": (1,),
                   **{f"Reduce{r}": (1,) for r in ("L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod",
                                                   "Sum", "SumSquare")}}
ZERO_POINT = {"QuantizeLinear": 2, "DequantizeLinear": 2}
RESIZE_MODES = {"coordinate_transformation_mode": {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                                                   "asymmetric", "align_corners"},
                "mode": {"nearest", "linear"},
                "nearest_mode": {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}}

_TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.BOOL: "BOOL", onnx.TensorProto.DOUBLE: "DOUBLE",
    onnx.TensorProto.COMPLEX64: "COMPLEX64", onnx.TensorProto.COMPLEX128: "COMPLEX128",
}


@dataclass(frozen=True)
class Finding:
    graph: str
    node: str
    op: str
    problem: str
    note: bool = False  # a restriction that could not be checked: recorded, never fails --check

    def __str__(self) -> str:
        return f"{self.graph}: {self.op} ({self.node}): {'note: ' if self.note else ''}{self.problem}"


@lru_cache(maxsize=1)
def load_matrix() -> dict:
    return json.loads(MATRIX_FILE.read_text())


def _tensor_types(model: onnx.ModelProto) -> dict:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types[vi.name] = _TYPE_NAMES.get(vi.type.tensor_type.elem_type, str(vi.type.tensor_type.elem_type))
    for init in inferred.graph.initializer:
        types[init.name] = _TYPE_NAMES.get(init.data_type, str(init.data_type))
    for node in inferred.graph.node:  # Constant outputs are not always in value_info
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types.setdefault(node.output[0], _TYPE_NAMES.get(attr.t.data_type, "?"))
    return types


def typed_tensors(node: onnx.NodeProto, opset: int) -> list:
    """The inputs and outputs of ``node`` that carry the data type the matrix describes: those
    whose schema type constraint is that of input 0 (Where: of its values; ConstantOfShape: of
    its output; Cast: input and output)."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset)
    except onnx.defs.SchemaError:
        return list(node.input[:1])
    ins = [(name, schema.inputs[min(i, len(schema.inputs) - 1)].type_str) for i, name in enumerate(node.input)]
    outs = [(name, schema.outputs[min(i, len(schema.outputs) - 1)].type_str) for i, name in enumerate(node.output)]
    if node.op_type == "Cast":
        return [node.input[0], node.output[0]]
    if node.op_type == "ConstantOfShape":
        return [node.output[0]]
    if not ins:
        return []
    key = ins[1][1] if node.op_type == "Where" and len(ins) > 1 else ins[0][1]
    return [n for n, t in ins + outs if n and t == key]


def _constants(model: onnx.ModelProto) -> dict:
    """tensor -> numpy value for initializers and Constant outputs."""
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _shape_derived(model: onnx.ModelProto, constants: dict) -> set:
    """Tensors computed only from shapes (Shape, Size) and constants."""
    derived = set(constants)
    for node in model.graph.node:
        if node.op_type in ("Shape", "Size") or (node.input and all(i in derived for i in node.input if i)):
            derived.update(node.output)
    return derived


def _restrictions(node: onnx.NodeProto, entry: dict, constants: dict, used: set) -> list:
    """(problem, is_note) for the matrix's restrictions of ``node``'s op."""
    text = entry.get("restrictions")
    if not text:
        return []
    out, checked = [], False
    if node.op_type in CONSTANT_INPUTS:
        checked = True
        for i in CONSTANT_INPUTS[node.op_type]:
            if i < len(node.input) and node.input[i] and node.input[i] not in constants:
                out.append((f"input {i} ({node.input[i]}) must be an initializer: {text}", False))
    if node.op_type in ZERO_POINT:
        checked = True
        i = ZERO_POINT[node.op_type]
        if i < len(node.input) and node.input[i]:
            zp = constants.get(node.input[i])
            if zp is None or zp.any():
                out.append((f"the zero point must be a zero constant: {text}", False))
    if node.op_type in ("MaxPool", "AveragePool", "LpPool"):
        checked = True
        kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), [])
        dilations = next((list(a.ints) for a in node.attribute if a.name == "dilations"), [])
        if node.op_type != "LpPool" and len(kernel) not in (2, 3):
            out.append((f"{len(kernel)}-D pooling: {text}", False))
        if any(d != 1 for d in dilations):
            out.append((f"dilations {dilations}: {text}", False))
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1] in used:
            out.append((f"the Indices output is used: {text}", False))
    if node.op_type == "Constant":
        checked = True
        kinds = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
        if kinds:
            out.append((f"{kinds[0]} attribute: {text}", False))
    if node.op_type == "LayerNormalization":
        checked = True
        if any(o in used for o in node.output[1:]):
            out.append((f"Mean/InvStdDev outputs are used: {text}", False))
    if node.op_type == "Resize":
        checked = True
        for attr in node.attribute:
            allowed = RESIZE_MODES.get(attr.name)
            if allowed is not None and attr.s.decode() not in allowed:
                out.append((f"{attr.name} {attr.s.decode()!r}: {text}", False))
    if not checked:
        out.append((f"restriction not checked automatically: {text}", True))
    return out


def audit_model(model: onnx.ModelProto, target: str, name: str = "graph", notes: bool = False) -> list:
    """Everything in ``model`` that TensorRT ``target`` (8.5, 8.6, 10, 11) cannot take; with
    ``notes``, also the restrictions that could not be checked."""
    if target not in TARGETS:
        raise ValueError(f"unknown TensorRT target {target!r} (one of {', '.join(TARGETS)})")
    spec = load_matrix()["versions"][target]
    findings: list = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset > spec["max_opset"]:
        findings.append(Finding(name, "-", "-", f"opset {opset} is above TensorRT {target}'s {spec['max_opset']}"))
    types = _tensor_types(model)
    constants = _constants(model)
    shapes = _shape_derived(model, constants)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    int64_ok = not spec.get("int64_cast_to_int32", False)
    for node in model.graph.node:
        label = node.name or (node.output[0] if node.output else "?")

        def add(problem: str, note: bool = False, label=label, node=node) -> None:
            findings.append(Finding(name, label, node.op_type, problem, note))

        if node.domain not in ("", "ai.onnx"):
            add(f"custom domain {node.domain!r} needs a plugin")
            continue
        if node.op_type in FORBIDDEN:
            add(FORBIDDEN[node.op_type])
            continue
        if node.op_type in DATA_DEPENDENT:
            add("its output shape depends on tensor values (TensorRT plans memory from shapes)")
        entry = spec["ops"].get(node.op_type)
        if entry is None or not entry["supported"]:
            add(f"not supported by TensorRT {target}")
            continue
        for i in SHAPE_INPUTS.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] and node.input[i] not in shapes:
                add(f"input {i} ({node.input[i]}) is a shape computed from tensor values, not from shapes")
        for problem, note in _restrictions(node, entry, constants, used):
            add(problem, note)
        allowed = {t.replace("INF64", "INT64") for t in entry["types"]}  # typo in the 10.x table
        if not allowed or node.op_type == "Constant":
            continue
        for tensor in typed_tensors(node, opset or 17):
            ttype = types.get(tensor)
            if ttype is None:
                continue
            if ttype.startswith("COMPLEX"):
                add(f"{tensor}: complex tensors are not allowed")
            elif ttype == "INT64" and not int64_ok and "INT32" in allowed:
                continue
            elif ttype not in allowed:
                add(f"{tensor} is {ttype}, TensorRT {target} supports {', '.join(sorted(allowed))}")
    return [f for f in findings if notes or not f.note]


def audit_file(path: Path, target: str, notes: bool = False) -> list:
    return audit_model(onnx.load(str(path), load_external_data=False), target, name=path.name, notes=notes)
