"""Which tensors must stay FP32 in FP16 builds: an ablation on the strong golden models.

Each model of ``../shared/golden/strong`` is exported; the whole pipeline then runs on its LR
input with every graph's FP16 variant evaluated by ``onnx.reference`` (true float16
arithmetic, see :mod:`clit.export.fp16_check`), once with the FP32 region of
:mod:`clit.runtime.fp32_region` and once with each part of it given back to FP16:

* ``index``: coordinate-only nodes upstream of a rounding to an index (nearest pixel, bilinear
  corners);
* ``weights+encoding``: the other coordinate-only nodes: bilinear weights, relative positions,
  the sinusoidal encoding and its projection, the zero-padding masks;
* ``logits``: the rest of the region: the bilinear q sample, the gathered keys and q.k;
* ``softmax``; and ``old scopes``: the region the first exports pinned by module names.

Printed per model and scale: PSNR of the FP16 image against ONNX Runtime FP32 (peak 1, outputs
clamped).

    python benchmarks/fp16_study.py [--models edsr_clit2_small,...] [--scales 2,3.7,6,12]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from clit.export.fp16_check import ReferenceRunner
from clit.export.onnx_export import encoder_halo, export_graphs
from clit.export.precision import graph_ops, region, to_mixed_fp16
from clit.runtime.manifest import FORMAT_VERSION, Manifest
from clit.runtime.metrics import psnr
from clit.runtime.onnx_backend import OnnxRuntimeRunner
from clit.runtime.pipeline import Pipeline
from clit.train import load_model

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "strong"
OLD_SCOPES = re.compile(r"^(axis|neighbours|bias|softmax)(_\d+)?$")


def parts(model: onnx.ModelProto) -> dict:
    """The FP32 region split into the parts named in the module docstring (node names)."""
    reg = region(model)
    ops = {op.name: op for op in graph_ops(model)}
    producer = {t: op for op in ops.values() for t in op.outputs}
    # coordinate-only nodes upstream of a float -> int conversion
    index, stack = set(), [t for op in ops.values() if not op.computes_float and any(op.float_inputs)
                           for t in op.inputs if t in reg.coordinate_only]
    while stack:
        op = producer.get(stack.pop())
        if op is not None and op.name in reg.ops and op.name not in index:
            index.add(op.name)
            stack += [t for t in op.inputs if t in reg.coordinate_only]
    coord = {n for n in reg.ops if any(t in reg.coordinate_only for t in ops[n].outputs)}
    softmax = {n for n in reg.ops if ops[n].kind == "softmax"}
    old = {n.name for n in model.graph.node if any(OLD_SCOPES.match(s) for s in n.name.split("/")[1:-1])}
    return {"region": set(reg.ops), "index": index, "weights+encoding": coord - index,
            "logits": set(reg.ops) - coord - softmax, "softmax": softmax, "old scopes": old}


def variants(out: Path, graphs: list) -> dict:
    """variant label -> {fp16 file -> ModelProto with that FP32 set}."""
    labels = ("region", "index", "weights+encoding", "logits", "softmax", "old scopes")
    found: dict = {label: {} for label in labels}
    for g in graphs:
        model = onnx.load(str(out / g["file"]))
        p = parts(model)
        half = g["variants"]["fp16"]["file"]
        for label in labels:
            keep = p["old scopes"] if label == "old scopes" else p["region"] - (p[label] if label != "region" else set())
            found[label][half] = to_mixed_fp16(model, keep_fp32=keep)
    return found


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="edsr_lit_small,edsr_clit2_small,edsr_clit3_small,rdn_clit2_small,"
                                        "swinir_clit2_small")
    ap.add_argument("--scales", default="2,3.7,6,12,18")
    args = ap.parse_args(argv)
    if not GOLDEN.is_dir():
        sys.exit(f"golden models not found at {GOLDEN}")
    scales = [float(s) for s in args.scales.split(",")]
    print("| model | scale | " + " | ".join(("region", "index", "weights+encoding", "logits", "softmax",
                                              "old scopes")) + " |")
    print("|---|---|" + "---|" * 6)
    for name in args.models.split(","):
        model = load_model(GOLDEN / f"{name}.pth")
        lr = np.load(GOLDEN / f"{name}.npz")["lr"][0].transpose(1, 2, 0)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            graphs = export_graphs(model, out, precisions=("fp32", "fp16"))
            manifest = Manifest(out, {"format_version": FORMAT_VERSION, "n_branches": model.n_branches,
                                      "radius": model.r, "window_size": model.window_size,
                                      "encoder_halo": encoder_halo(model), "graphs": graphs})
            full = Pipeline(manifest, OnnxRuntimeRunner(manifest))
            found = variants(out, graphs)
            for s in scales:
                try:
                    full.plan(lr.shape[:2], scale=s)
                except ValueError:  # more stages than the model has branches
                    continue
                ref = np.clip(full.upscale(lr, scale=s), 0, 1)
                cells = []
                for label, models in found.items():
                    t0 = time.perf_counter()
                    got = Pipeline(manifest, ReferenceRunner(manifest, models), precision="fp16").upscale(lr, scale=s)
                    cells.append(f"{psnr(np.clip(got, 0, 1), ref):.1f} dB")
                    print(f"  {name} x{s:g} {label}: {cells[-1]} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
                print(f"| {name} | x{s:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
