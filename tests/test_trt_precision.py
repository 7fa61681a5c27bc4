"""FP16 precision by dataflow: the FP32 region of the exported graphs, of their FP16 variants
and of the TensorRT networks the ONNX parser makes of them (tests/parser_network.py)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto  # noqa: E402
from parser_network import TRT, parse  # noqa: E402

from clit.export.precision import fp32_nodes  # noqa: E402
from clit.export.precision import region as onnx_region  # noqa: E402
from clit.runtime.fp32_region import COORDINATE_INPUTS  # noqa: E402
from clit.runtime.tensorrt.precision import network_ops, pin_fp32, select_fp32_layers  # noqa: E402

MODELS = ["edsr_lit_small", "edsr_clit2_small", "edsr_clit3_small", "rdn_clit2_small", "swinir_clit2_small"]


def coordinate_path(model: onnx.ModelProto) -> set:
    """Float tensors of the coordinate path, stated on the graph directly (not with the code
    under test): computed from a coordinate input and feeding a rounding to an index (Round,
    Floor, a Cast to an integer), the sinusoidal encoding (Sin/Cos) or the softmax; and the
    inputs of those ops."""
    nodes = list(model.graph.node)
    tainted = {i.name for i in model.graph.input if i.name in COORDINATE_INPUTS}
    for n in nodes:
        if any(i in tainted for i in n.input):
            tainted.update(n.output)
    producer = {o: n for n in nodes for o in n.output}
    sinks = [n for n in nodes if n.op_type in ("Round", "Floor", "Sin", "Cos", "Softmax")
             or (n.op_type == "Cast" and n.attribute[0].i in (TensorProto.INT32, TensorProto.INT64))]
    path, stack = set(), [i for n in sinks for i in n.input if i in tainted]
    while stack:
        t = stack.pop()
        if t not in path:
            path.add(t)
            if t in producer:
                stack += [i for i in producer[t].input if i in tainted]
    return path


def types(model: onnx.ModelProto) -> dict:
    g = onnx.shape_inference.infer_shapes(model).graph
    out = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    out.update({i.name: i.data_type for i in g.initializer})
    return out


@pytest.mark.parametrize("name", MODELS)
def test_fp16_variants_keep_the_coordinate_path_fp32(strong_fp16, name):
    """Every exported FP16 variant (EDSR, RDN, SwinIR; 1-3 branches): no FP16 tensor on the
    coordinate path, while the MLP and convolutions are FP16 (else FP16 would be pointless)."""
    manifest = strong_fp16(name)
    out, graphs = manifest.root, manifest.data["graphs"]
    checked = 0
    for g in graphs:
        full = onnx.load(str(out / g["file"]))
        half = onnx.load(str(out / g["variants"]["fp16"]["file"]))
        path, ty = coordinate_path(full), types(half)
        floats = {t for t in path if types(full).get(t) == TensorProto.FLOAT}
        assert g["kind"] == "encoder" or floats, g["file"]  # decoders and branches have a coordinate path
        wrong = sorted(t for t in floats if ty.get(t) != TensorProto.FLOAT)
        assert not wrong, f"{g['file']}: FP16 on the coordinate path: {wrong[:5]}"
        weights = [i for i in half.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
                   and i.dims and np.prod(i.dims) >= 64]
        assert weights and any(i.data_type == TensorProto.FLOAT16 for i in weights), g["file"]
        if g["kind"] == "decoder":  # the MLP's weights are FP16, the projection of the encoding is not
            mlp = [i for i in half.graph.initializer if "imnets" in i.name]
            assert mlp and all(i.data_type == TensorProto.FLOAT16 for i in mlp)
        checked += 1
    assert checked == len(graphs)


@pytest.mark.parametrize("version", ["8.5", "8.6"])
@pytest.mark.parametrize("name", ["edsr_lit_small", "edsr_clit3_small", "rdn_clit2_small"])
def test_pinning_on_the_parsers_network(strong_fp16, name, version):
    """On the network the parser builds (multi-layer nodes, unnamed helpers, constants named
    after their initializers, identity or cast layers): every float layer of the coordinate
    path is pinned to FP32 whatever its name, and so are the casts that turn it into indices
    (precision only); no other integer/bool/shape layer is, and the pinned nodes are exactly
    the ONNX graph's FP32 region.  Name matching, as the first backend did, leaves some of
    those layers unpinned."""
    manifest = strong_fp16(name)
    out, graphs = manifest.root, manifest.data["graphs"]
    for g in graphs:
        if g["kind"] == "encoder":
            continue
        model = onnx.load(str(out / g["file"]))
        net = parse(model, version)
        pinning = pin_fp32(TRT, net)
        region = set(fp32_nodes(model))
        pinned = [layer for layer in net.layers if layer.precision is not None]
        floats = (TRT.DataType.FLOAT, TRT.DataType.HALF)
        casts = [layer for layer in pinned if layer.type in (TRT.LayerType.IDENTITY, TRT.LayerType.CAST)
                 and layer.get_output(0).dtype not in floats]
        for layer in pinned:  # FP32 output types on float outputs only; integer outputs keep theirs
            assert layer.output_types == {j: TRT.float32 for j in range(layer.num_outputs)
                                          if layer.get_output(j).dtype in floats}, layer.name
            assert layer in casts or all(layer.get_output(j).dtype in floats for j in range(layer.num_outputs))
        assert {layer.node for layer in casts} == set(onnx_region(model).casts)
        assert len(casts) >= 4  # nearest row/col and bilinear floor row/col (decoder); floors (branch)
        assert all(layer.get_input(0).dtype in floats for layer in casts)
        computed = {layer.node for layer in pinned if layer.type != TRT.LayerType.CONSTANT and layer not in casts}
        assert computed == region, (g["file"], sorted(computed ^ region)[:6])
        consts = {layer.node for layer in pinned if layer.type == TRT.LayerType.CONSTANT}
        assert consts and not any("imnets" in c for c in consts)  # the encoding's constants, not MLP weights
        ops, inputs = network_ops(TRT, net)
        assert len(select_fp32_layers(ops, inputs).layers) == len(pinning.layers) == len(pinned)
        # every layer that a region node made and that computes floats is pinned, helpers included,
        # except the softmax's reshape back, which moves its FP32 output to an FP16 reader
        made = [layer for layer in net.layers if layer.node in region and layer.type != TRT.LayerType.CONSTANT
                and layer.get_output(0).dtype in floats]
        missed = [layer.name for layer in made if layer.precision is None]
        assert all("[Shuffle]" in m for m in missed), missed
        by_name = [layer for layer in made if layer.name not in set(g["fp32_layers"])]
        assert by_name, "name matching would have pinned every layer"
        assert any(layer.name.startswith("(Unnamed Layer") for layer in by_name)
