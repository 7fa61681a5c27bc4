"""Which layers of an FP16 build must compute in FP32, decided by dataflow (no names).

One rule for every graph this project builds, whatever represents it: the exported ONNX
graphs (:mod:`clit.export.precision` makes the mixed-precision ``*.fp16.onnx`` from it) and
the TensorRT networks the ONNX parser makes of them (:mod:`clit.runtime.tensorrt.precision`
pins their layers).  The graph is given as :class:`Op` records: a name, a kind, input and
output tensor names, and which outputs are floating point.

Tensors of the coordinate path:

* **coordinate-only** (``C``): the coordinate inputs (``coord``, ``size``, ``rows``, ``cols``,
  ``drow``, ``dcol``, ``offset``) and every tensor computed from them and constants alone:
  pixel indices, bilinear weights, relative positions, the sinusoidal encoding and its
  projection (the bias), the zero-padding masks;
* **feeding a coordinate sink** (``U``): every tensor that depends on a coordinate input and
  reaches a *sink*: a float -> integer/bool conversion (rounding to an index, a comparison) or
  the attention softmax.  In the decoder this adds the bilinear q sample, the gathered keys
  and the logits q.k.

Every layer with a floating-point output in ``C`` or ``U`` computes in FP32, and so does a
softmax on that path, and so do the float constants (and layers computed from constants
alone) that those layers read.  The casts that turn those floats into indices read them in
FP32 (``casts``: TensorRT pins their precision, not their integer output type); other integer,
bool and shape layers get no precision (TensorRT refuses FP32 constraints on layers that
neither read nor write floats).  What is left for
FP16 is what FP16 is for: the attention-weighted values, the MLP, the encoder and the branch
convs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

RULE_VERSION = 2  # bump when the rule changes: TensorRT engines pinned by an older rule are rebuilt
COORDINATE_INPUTS = ("coord", "size", "rows", "cols", "drow", "dcol", "offset")

CONSTANT, SHAPE, SOFTMAX, CAST, OTHER = "constant", "shape", "softmax", "cast", "other"


@dataclass(frozen=True)
class Op:
    """One operation: ``kind`` is CONSTANT (no data input: constants, weights), SHAPE (reads
    only its input's shape), SOFTMAX, CAST (a type conversion), or OTHER; ``float_outputs``
    and ``float_inputs`` flag each tensor."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    float_outputs: tuple[bool, ...]
    float_inputs: tuple[bool, ...] = ()

    @property
    def computes_float(self) -> bool:
        return any(self.float_outputs)


@dataclass(frozen=True)
class Region:
    coordinate_only: frozenset  # tensor names (C)
    feeds_sink: frozenset  # tensor names (U)
    ops: frozenset  # names of the ops that compute in FP32 (constant-folded ones feeding them included)
    constants: frozenset  # names of the CONSTANT ops whose float outputs FP32 ops read
    casts: frozenset  # names of the CAST ops turning coordinate-path floats into integers (read in FP32)

    def tensors(self) -> frozenset:
        return self.coordinate_only | self.feeds_sink


def fp32_region(ops: Iterable[Op], graph_inputs: Iterable[str], constants: Iterable[str] = (),
                coordinate_inputs: Iterable[str] = COORDINATE_INPUTS) -> Region:
    """The FP32 region of a graph whose ``ops`` are in topological order.  ``graph_inputs``
    are its input tensors (those named in ``coordinate_inputs`` start the coordinate path),
    ``constants`` tensors known without running it (ONNX initializers)."""
    ops = list(ops)
    inputs = set(graph_inputs)
    sources = inputs & set(coordinate_inputs)
    known = set(constants) | {""}  # '' is an absent optional input
    coord_only = set(sources)
    tainted = set(sources)
    for op in ops:
        data = [t for t in op.inputs if t]
        if op.kind in (CONSTANT, SHAPE) or all(t in known for t in data):
            known.update(op.outputs)
            continue
        if any(t in tainted for t in data):
            tainted.update(op.outputs)
            if all(t in coord_only or t in known for t in data):
                coord_only.update(op.outputs)

    producer = {t: op for op in ops for t in op.outputs}
    sinks = [op for op in ops if _is_sink(op, tainted)]
    feeds_sink: set = set()
    stack = [t for op in sinks for t in op.inputs if t in tainted]
    while stack:
        t = stack.pop()
        if t in feeds_sink:
            continue
        feeds_sink.add(t)
        op = producer.get(t)
        if op is not None and op.kind not in (CONSTANT, SHAPE):
            stack += [s for s in op.inputs if s in tainted and s not in feeds_sink]

    on_path = coord_only | feeds_sink
    chosen = {op.name for op in ops if op.kind not in (CONSTANT, SHAPE) and op.computes_float
              and (any(t in on_path for t, f in zip(op.outputs, op.float_outputs) if f)
                   or (op.kind == SOFTMAX and op in sinks))}
    # constants, and float ops computed from constants alone, that FP32 ops read stay FP32 too
    # (a frequency or a projection rounded to FP16 would undo the FP32 path)
    constants: set = set()
    stack = [t for op in ops if op.name in chosen for t in op.inputs if t in known]
    seen: set = set()
    while stack:
        t = stack.pop()
        op = producer.get(t)
        if t in seen or op is None or not op.computes_float:
            continue
        seen.add(t)
        if op.kind == CONSTANT:
            constants.add(op.name)
        elif op.kind != SHAPE:
            chosen.add(op.name)
            stack += [s for s in op.inputs if s in known]
    casts = {op.name for op in sinks if op.kind == CAST}
    return Region(frozenset(coord_only), frozenset(feeds_sink), frozenset(chosen), frozenset(constants),
                  frozenset(casts))


def _is_sink(op: Op, tainted: set) -> bool:
    """A softmax on the coordinate path, or a float -> integer/bool conversion of a tainted
    tensor (an index, a validity test)."""
    if op.kind == SOFTMAX:
        return any(t in tainted for t in op.inputs)
    if op.kind in (CONSTANT, SHAPE) or op.computes_float:
        return False
    return any(t in tainted and f for t, f in zip(op.inputs, op.float_inputs))
