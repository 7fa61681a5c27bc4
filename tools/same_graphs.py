"""Do two model directories run the same graphs, up to weight values?

    python tools/same_graphs.py OLD_MODEL_DIR NEW_MODEL_DIR

For every ONNX file the two directories share: the same operators in the same order, wired
the same way, with the same attributes, initializer and constant shapes and dtypes, inputs and
outputs; tensor names are compared by first appearance, since each export numbers its helper
tensors anew.  Same structure means the same work per run on any backend (ONNX Runtime,
TensorRT), so a retrained model with the same graphs costs the same per output pixel (how the
bundled model v2 was checked against v1 at x2-x16).  Exit 1 if any shared graph differs or
none is shared.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx


def structure(path: Path):
    """The graph of ``path`` without weight values or tensor names."""
    graph = onnx.load(str(path), load_external_data=False).graph
    names: dict = {}

    def name(n: str) -> str:
        return "" if n == "" else names.setdefault(n, f"t{len(names)}")

    def attrs(node):
        out = []
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                out.append((a.name, tuple(a.t.dims), a.t.data_type))
            elif a.type == onnx.AttributeProto.GRAPH:
                out.append((a.name, "subgraph", len(a.g.node)))
            else:
                out.append((a.name, onnx.helper.get_attribute_value(a)))
        return tuple(out)

    io = [(v.name, str(v.type)) for v in (*graph.input, *graph.output)]
    for v in graph.input:
        name(v.name)
    nodes = [(n.op_type, n.domain, tuple(map(name, n.input)), tuple(map(name, n.output)), attrs(n))
             for n in graph.node]
    inits = sorted((name(i.name), tuple(i.dims), i.data_type) for i in graph.initializer)
    return io, nodes, inits


def first_difference(a: Path, b: Path) -> str | None:
    """None if ``a`` and ``b`` have the same structure, else what differs first."""
    (io_a, nodes_a, init_a), (io_b, nodes_b, init_b) = structure(a), structure(b)
    if io_a != io_b:
        return "inputs or outputs differ"
    if len(nodes_a) != len(nodes_b):
        return f"{len(nodes_a)} nodes against {len(nodes_b)}"
    for i, (x, y) in enumerate(zip(nodes_a, nodes_b)):
        if x != y:
            return f"node {i}: {x[0]} against {y[0]}" if x[0] != y[0] else f"node {i} ({x[0]}): wiring or attributes"
    if init_a != init_b:
        return "initializer shapes or dtypes differ"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    old, new = (Path(p) for p in argv)
    shared = sorted({p.name for p in old.glob("*.onnx")} & {p.name for p in new.glob("*.onnx")})
    if not shared:
        print(f"no ONNX file is in both {old} and {new}", file=sys.stderr)
        return 1
    differ = 0
    for f in shared:
        why = first_difference(old / f, new / f)
        differ += why is not None
        print(f"{f}: {'same structure' if why is None else 'DIFFERENT: ' + why}")
    only = sorted({p.name for p in new.glob("*.onnx")} - set(shared))
    if only:
        print(f"only in {new}: {', '.join(only)}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
