"""Where a decoder's time goes: ONNX Runtime's profiler over one upscale (a benchmark).

Runs one upscale of a random LR image with every session profiled (``SessionOptions.
enable_profiling``), then sums the node events per graph and prints each graph's share of
the node time and its heaviest nodes (op type, node name, share, output shape of the first
event).  ``--grouping off`` profiles the per-query decoders, ``on``/``auto`` the grouped ones.

    python benchmarks/decoder_profile.py [--model DIR] [--size 256x256] [--scale 4] [--grouping auto] [--top 12]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model directory (default: the bundled one)")
    ap.add_argument("--size", default="256x256", help="LR WxH")
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--grouping", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--top", type=int, default=12, help="nodes listed per graph")
    args = ap.parse_args()

    from clit.runtime.bundled import bundled_model_dir
    from clit.runtime.manifest import load_manifest
    from clit.runtime.memory_plan import choose, memory_budget
    from clit.runtime.onnx_backend import OnnxRuntimeRunner
    from clit.runtime.pipeline import Pipeline

    manifest = load_manifest(args.model or bundled_model_dir())
    w, h = (int(v) for v in args.size.split("x"))
    img = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        runner = OnnxRuntimeRunner(manifest, profile_dir=tmp)
        pipe = Pipeline(manifest, runner, grouping=args.grouping)
        tile, chunk = choose(manifest, pipe.plan((h, w), scale=args.scale), memory_budget(), None)
        pipe.upscale(img, scale=args.scale, chunk=chunk, tile=tile)
        per_graph = {}
        for file, profile in runner.end_profiling().items():
            events = [e for e in json.loads(Path(profile).read_text()) if e.get("cat") == "Node"
                      and e["name"].endswith("_kernel_time")]
            nodes, shapes = collections.Counter(), {}
            for e in events:
                key = (e["args"].get("op_name", "?"), e["name"][: -len("_kernel_time")])
                nodes[key] += e["dur"]
                shapes.setdefault(key, e["args"].get("output_type_shape"))
            per_graph[file] = (nodes, shapes)
    total = sum(sum(n.values()) for n, _ in per_graph.values())
    print(f"{args.size} x{args.scale:g}, grouping {args.grouping}, tile {tile}, chunk {chunk}: "
          f"{total / 1e6:.2f} s of node time")
    for file, (nodes, shapes) in sorted(per_graph.items(), key=lambda kv: -sum(kv[1][0].values())):
        graph_total = sum(nodes.values())
        by_op = collections.Counter()
        for (op, _), d in nodes.items():
            by_op[op] += d
        print(f"\n{file}: {graph_total / 1e6:.2f} s ({100 * graph_total / total:.0f} %); by op: "
              + ", ".join(f"{op} {100 * d / graph_total:.0f} %" for op, d in by_op.most_common(6)))
        for (op, name), d in nodes.most_common(args.top):
            shape = shapes[(op, name)]
            dims = [list(s.values())[0] for s in shape] if shape else ""
            print(f"  {100 * d / graph_total:5.1f} %  {op:16s} {name:40s} {dims}")


if __name__ == "__main__":
    main()
