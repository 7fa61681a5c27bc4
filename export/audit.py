"""Audit ONNX graphs against TensorRT's published ONNX operator support.

The matrix (``data/trt_onnx_ops.json``) holds onnx-tensorrt's ``docs/operators.md`` for
TensorRT 8.5, 8.6 and 10 (10.1 GA); no 11.x matrix was available when it was made, so
``11`` repeats 10 and says so.  On top of the matrix, this project forbids ops that break
its TensorRT plan whatever the version says (GridSample, FFT, scatter writes, complex
types).  Type checks are a heuristic on each node's first data input (the tensor the
published types describe); INT64 counts as INT32 on 8.x, whose parser casts it down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import onnx

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

_TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.BOOL: "BOOL", onnx.TensorProto.DOUBLE: "DOUBLE",
    onnx.TensorProto.COMPLEX64: "COMPLEX64", onnx.TensorProto.COMPLEX128: "COMPLEX128",
}
_CHECK_OUTPUT = {"ConstantOfShape"}  # the published type is the output's (the input is a shape)
_CHECK_SECOND = {"Where"}  # first input is the boolean condition


@dataclass(frozen=True)
class Finding:
    graph: str
    node: str
    op: str
    problem: str

    def __str__(self) -> str:
        return f"{self.graph}: {self.op} ({self.node}): {self.problem}"


@lru_cache(maxsize=1)
def load_matrix() -> dict:
    return json.loads(MATRIX_FILE.read_text())


def _tensor_types(model: onnx.ModelProto) -> dict[str, str]:
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


def audit_model(model: onnx.ModelProto, target: str, name: str = "graph") -> list[Finding]:
    """Everything in ``model`` that TensorRT ``target`` (8.5, 8.6, 10, 11) cannot take."""
    if target not in TARGETS:
        raise ValueError(f"unknown TensorRT target {target!r} (one of {', '.join(TARGETS)})")
    spec = load_matrix()["versions"][target]
    findings: list[Finding] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset > spec["max_opset"]:
        findings.append(Finding(name, "-", "-", f"opset {opset} is above TensorRT {target}'s {spec['max_opset']}"))
    types = _tensor_types(model)
    int64_ok = not spec.get("int64_cast_to_int32", False)
    for node in model.graph.node:
        label = node.name or (node.output[0] if node.output else "?")
        if node.domain not in ("", "ai.onnx"):
            findings.append(Finding(name, label, node.op_type, f"custom domain {node.domain!r} needs a plugin"))
            continue
        if node.op_type in FORBIDDEN:
            findings.append(Finding(name, label, node.op_type, FORBIDDEN[node.op_type]))
            continue
        entry = spec["ops"].get(node.op_type)
        if entry is None or not entry["supported"]:
            findings.append(Finding(name, label, node.op_type, f"not supported by TensorRT {target}"))
            continue
        allowed = {t.replace("INF64", "INT64") for t in entry["types"]}  # typo in the 10.x table
        if not allowed or node.op_type == "Constant":
            continue
        if node.op_type in _CHECK_OUTPUT:
            tensor = node.output[0]
        elif node.op_type in _CHECK_SECOND and len(node.input) > 1:
            tensor = node.input[1]
        else:
            tensor = node.input[0] if node.input else ""
        ttype = types.get(tensor)
        if ttype is None:
            continue
        if ttype.startswith("COMPLEX"):
            findings.append(Finding(name, label, node.op_type, "complex tensors are not allowed"))
        elif ttype == "INT64" and not int64_ok and "INT32" in allowed:
            continue
        elif ttype not in allowed:
            findings.append(Finding(name, label, node.op_type,
                                    f"{ttype} input, TensorRT {target} supports {', '.join(sorted(allowed))}"))
    return findings


def audit_file(path: Path, target: str) -> list[Finding]:
    return audit_model(onnx.load(str(path), load_external_data=False), target, name=path.name)
