"""Write a CLIT model as ONNX graphs (encoder, per-branch maps, per-branch decoders).

Uses the TorchScript-based ``torch.onnx.export`` (``dynamo=False``): it gives plain,
TensorRT-parsable graphs at opsets 16-19 with named dynamic axes.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from clit.runtime.geometry import block_groups, pixel_centres
from clit.runtime.manifest import sha256_file
from clit.train.model import CLIT

from .graphs import BranchGraph, DecoderGraph, EncoderGraph, GroupedDecoderGraph
from .precision import fp32_nodes, to_mixed_fp16

GRAPHS = {"branch": BranchGraph, "decoder": DecoderGraph, "grouped": GroupedDecoderGraph}
OPSET_DEFAULT = 17
OPSETS_ALLOWED = (16, 17, 18, 19)
PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its file and its inputs/outputs as (name, dtype, shape) with
    dynamic dimensions named by strings."""

    kind: str
    branch: int
    file: str
    inputs: tuple
    outputs: tuple

    def as_dict(self, sha256: str) -> dict:
        def io(items):
            return [{"name": n, "dtype": d, "shape": list(s)} for n, d, s in items]

        return {"kind": self.kind, "branch": self.branch, "file": self.file, "sha256": sha256,
                "inputs": io(self.inputs), "outputs": io(self.outputs)}


def _export(module, args, path: Path, spec: GraphSpec, opset: int) -> None:
    dynamic = {}
    for name, _, shape in spec.inputs + spec.outputs:
        axes = {i: d for i, d in enumerate(shape) if isinstance(d, str)}
        if axes:
            dynamic[name] = axes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=[n for n, _, _ in spec.inputs], output_names=[n for n, _, _ in spec.outputs],
            dynamic_axes=dynamic,
        )


def encoder_halo(model: CLIT) -> int:
    """LR pixels of context the encoder graph's outputs need on every side: the summed
    radius of every convolution on the way (encoder, conv_ch, and branch 1's q/k/v convs).
    Exact for the sequential EDSR and the densely connected RDN (whose longest path runs
    through every conv); 0 for encoders that cannot be tiled exactly (SwinIR's windows
    depend on the whole image), which the runtime then runs whole."""
    if model.window_size > 1:
        return 0
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]  # EDSR's MeanShifts are 1x1
    radius = sum((c.kernel_size[0] - 1) // 2 * c.dilation[0] for c in convs)
    return radius + 1 + 1  # conv_ch, then the q/k/v convs


def graph_specs(model: CLIT) -> list[GraphSpec]:
    """The graphs of a model and their interfaces (what the manifest records)."""
    c, side = model.dim, 2 * model.r + 1
    maps = lambda h, w: [(n, "float32", (1, c, h, w)) for n in ("q", "k", "v")]  # noqa: E731
    specs = [GraphSpec("encoder", 0, "encoder.onnx", (("image", "float32", (1, 3, "H", "W")),),
                       (("feat", "float32", (1, c, "H", "W")), *maps("H", "W")))]
    for k in range(1, model.n_branches):
        specs.append(GraphSpec(
            "branch", k, f"branch{k + 1}.onnx",
            (("feat", "float32", (1, c, "hf", "wf")), ("offset", "int32", (2,)), ("size", "float32", (2,)),
             ("rows", "float32", ("Hw",)), ("cols", "float32", ("Ww",))),
            tuple(maps("Hw", "Ww")),
        ))
    window = (*[(n, "float32", (1, c, "hq", "wq")) for n in ("q", "k", "v")],  # both decoders' first inputs
              ("offset", "int32", (2,)), ("size", "float32", (2,)), ("rows", "float32", ("h",)),
              ("cols", "float32", ("w",)), ("drow", "float32", (side,)), ("dcol", "float32", (side,)))
    residual = (("residual", "float32", (1, "N", 3)),)
    for k in range(model.n_branches):
        specs.append(GraphSpec("decoder", k, f"decoder{k + 1}.onnx",
                               (*window, ("coord", "float32", (1, "N", 2)), ("cell", "float32", (2,))), residual))
    for k in range(model.n_branches):
        specs.append(GraphSpec(
            "grouped", k, f"decoder{k + 1}.grouped.onnx",
            (*window, ("cell", "float32", (2,)), ("yc", "float32", ("R",)), ("xc", "float32", ("S",)),
             ("gy", "int32", ("Gy",)), ("gx", "int32", ("Gx",)), ("ry", "int32", ("Gy", "My")),
             ("rx", "int32", ("Gx", "Mx")), ("sel", "int32", ("N",))),
            residual,
        ))
    return specs


def _example_inputs(model: CLIT, spec: GraphSpec) -> tuple:
    """Trace inputs of odd, distinct sizes so that no dimension is mistaken for another."""
    g = torch.Generator().manual_seed(0)
    c, r = model.dim, model.r
    if spec.kind == "encoder":
        ws = model.window_size  # SwinIR encoders take window multiples only (see _runtime_pads_input)
        return (torch.rand(1, 3, 13 if ws == 1 else 2 * ws, 17 if ws == 1 else 3 * ws, generator=g),)
    if spec.kind == "branch":
        return (torch.rand(1, c, 11, 15, generator=g), torch.tensor([2, 3], dtype=torch.int32),
                torch.tensor([17.0, 19.0]),
                torch.from_numpy(pixel_centres(23)), torch.from_numpy(pixel_centres(29)))
    h, w = 19, 21
    steps = np.arange(-r, r + 1, dtype=np.float32)
    common = (*[torch.rand(1, c, h, w, generator=g) for _ in range(3)], torch.tensor([0, 0], dtype=torch.int32),
              torch.tensor([float(h), float(w)]), torch.from_numpy(pixel_centres(h)), torch.from_numpy(pixel_centres(w)),
              torch.from_numpy(steps * np.float32(2 / h)), torch.from_numpy(steps * np.float32(2 / w)))
    if spec.kind == "grouped":  # a block of an anisotropic grid (x2.3 by x4.6): runs of 2-3 rows, 4-5 columns
        out_h, out_w = round(h * 2.3), round(w * 4.6)
        block = block_groups(pixel_centres(out_h)[3:14], pixel_centres(out_w)[2:15], (h, w))
        return (*common, torch.tensor([2 / out_h, 2 / out_w]),
                *[torch.from_numpy(block[n]) for n in ("yc", "xc", "gy", "gx", "ry", "rx", "sel")])
    coord = torch.rand(1, 37, 2, generator=g) * 2 - 1
    return (*common, coord, torch.tensor([2 / 61, 2 / 67]))


@contextmanager
def _runtime_pads_input(model: CLIT):
    """SwinIR: the runtime mirror-pads every input to a window multiple (as the official
    evaluation), so the encoder's own reflect pad (a no-op then, but Mod/If/Pad in ONNX)
    is left out of the graph; the encoder graph requires H and W multiples of the window."""
    enc = model.encoder
    before = getattr(enc, "pad_to_window", None)
    if before is not None:
        enc.pad_to_window = False
    try:
        yield
    finally:
        if before is not None:
            enc.pad_to_window = before


def export_graphs(model: CLIT, out_dir: Path, opset: int = OPSET_DEFAULT, precisions=("fp32",)) -> list[dict]:
    """Export every graph of ``model`` into ``out_dir``; returns their manifest entries.

    Each entry lists its ``fp32_layers``; with 'fp16' in ``precisions`` it also gets an
    explicitly mixed-precision variant ``<name>.fp16.onnx`` under ``variants``."""
    unknown = set(precisions) - set(PRECISIONS)
    if unknown or "fp32" not in precisions:
        raise ValueError(f"precisions must include fp32 and be among {', '.join(PRECISIONS)}, got {precisions}")
    if opset not in OPSETS_ALLOWED:
        raise ValueError(f"opset {opset} is not supported (allowed: {', '.join(map(str, OPSETS_ALLOWED))}; "
                         "never 20: TensorRT mis-parses its GridSample)")
    model = model.eval().float()
    entries = []
    for spec in graph_specs(model):
        module = EncoderGraph(model) if spec.kind == "encoder" else GRAPHS[spec.kind](model, spec.branch)
        path = out_dir / spec.file
        with torch.no_grad(), _runtime_pads_input(model):
            _export(module.eval(), _example_inputs(model, spec), path, spec, opset)
        entry = spec.as_dict(sha256_file(path))
        graph = onnx.load(str(path))
        entry["fp32_layers"] = fp32_nodes(graph)
        entry["variants"] = {}
        if "fp16" in precisions:
            half = path.with_name(path.stem + ".fp16.onnx")
            onnx.save(to_mixed_fp16(graph), str(half))
            entry["variants"]["fp16"] = {"file": half.name, "sha256": sha256_file(half)}
        entries.append(entry)
    return entries
