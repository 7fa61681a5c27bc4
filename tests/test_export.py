"""clit-export: ONNX graphs reproduce the official outputs through the numpy runtime."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import golden_cases, golden_index, graphs_manifest, scale_key

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from clit.export.audit import audit_model  # noqa: E402
from clit.export.cli import max_safe_queries  # noqa: E402
from clit.export.onnx_export import encoder_halo, export_graphs, graph_specs  # noqa: E402
from clit.runtime.geometry import coord_grid, plan_cascade  # noqa: E402
from clit.runtime.manifest import FORMAT_VERSION, ModelDirError, load_manifest  # noqa: E402
from clit.runtime.onnx_backend import OnnxRuntimeRunner  # noqa: E402
from clit.runtime.pipeline import Pipeline  # noqa: E402
from clit.train import load_model  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (torch model, Pipeline over its exported graphs), exported once per module."""
    cache = {}

    def get(golden_dir, name):
        if name not in cache:
            model = load_model(golden_dir / f"{name}.pth")
            out = tmp_path_factory.mktemp(name)
            graphs = export_graphs(model, out)
            manifest = graphs_manifest(out, model, graphs)
            cache[name] = (model, Pipeline(manifest, OnnxRuntimeRunner(manifest)))
        return cache[name]

    return get


@pytest.mark.parametrize("name, scale", golden_cases())
def test_onnx_reproduces_golden(golden_dir, exported, name, scale):
    _, pipe = exported(golden_dir, name)
    ref = np.load(golden_dir / f"{name}.npz")
    img = ref["lr"][0].transpose(1, 2, 0)
    out = pipe.upscale(img, scale=scale, chunk=4099)
    expected = ref[f"s{scale_key(scale)}"]
    assert out.shape == expected.shape and np.isfinite(out).all()
    assert np.abs(out - expected).max() <= TOL


def test_dynamic_shapes_and_odd_sizes(golden_dir, exported, rng):
    model, pipe = exported(golden_dir, "edsr_clit2_small")  # traced at 13x17
    for h, w in [(5, 7), (31, 9), (64, 48)]:
        img = rng.random((h, w, 3), dtype=np.float32)
        feat, q, k, v = pipe.encode(img.transpose(2, 0, 1)[None].copy())
        with torch.no_grad():
            ref = model.encode(torch.from_numpy(img.transpose(2, 0, 1).copy())[None]).numpy()
        assert feat.shape == ref.shape and np.abs(feat - ref).max() <= 1e-5
        out = pipe.upscale(img, scale=(5.5, 2.25))
        with torch.no_grad():
            ref_out = model.upscale(torch.from_numpy(img.transpose(2, 0, 1).copy())[None], scale=(5.5, 2.25))
        assert out.shape == (round(h * 5.5), round(w * 2.25), 3)
        assert np.abs(out - ref_out[0].permute(1, 2, 0).numpy()).max() <= TOL


@pytest.mark.parametrize("n", [1, 2, 6001])
def test_decoder_query_counts(golden_dir, exported, rng, n):
    model, pipe = exported(golden_dir, "edsr_clit2_small")
    img = rng.random((11, 13, 3), dtype=np.float32)
    plan = plan_cascade((11, 13), scale=7.3)
    feat, *maps0 = pipe.encode(img.transpose(2, 0, 1)[None].copy())
    coord = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    coord[0] = (-1 + 1e-6, 1 - 1e-6) if n > 0 else coord[0]  # a corner query
    for k, grid in enumerate(plan.grids):
        maps = maps0 if k == 0 else pipe.branch_maps(feat, (0, 0), k, grid, (11, 13), (0, grid[0]), (0, grid[1]))
        res = pipe.decode(k, maps, grid, coord, plan.cell)
        with torch.no_grad():
            x = torch.from_numpy(feat) if k == 0 else model.branch_input(torch.from_numpy(feat), grid)
            ref = model.query(k, model.branch_maps(x, k), torch.from_numpy(coord)[None],
                              torch.from_numpy(plan.cell)[None])[0].numpy()
        assert res.shape == (n, 3) and np.abs(res - ref).max() <= 1e-5


@pytest.mark.parametrize("is_cell, with_bias", [(True, True), (False, True), (True, False)])
def test_decoder_graph_variants_equal_model_query(tmp_path, rng, is_cell, with_bias):
    """The decoder graph's rewrites (bias split per axis, mask on the logits and weights,
    cell folded into the first layer's bias) equal the model's query, for models with and
    without the cell input and the positional bias, at queries near and beyond the borders."""
    from test_model import small_model

    over = {"is_cell": is_cell} if with_bias else {"is_cell": is_cell, "pb_spec": None}
    model = small_model(seed=3, imnet_num=1, conv_num=1, **over)
    graphs = export_graphs(model, tmp_path)
    manifest = graphs_manifest(tmp_path, model, graphs)
    pipe = Pipeline(manifest, OnnxRuntimeRunner(manifest))
    img = rng.random((9, 12, 3), dtype=np.float32)
    plan = plan_cascade((9, 12), scale=2.7)
    _, *maps = pipe.encode(img.transpose(2, 0, 1)[None].copy())
    coord = rng.uniform(-1, 1, (500, 2)).astype(np.float32)
    coord[:4] = [(-1, -1), (1 - 1e-6, 1 - 1e-6), (-1, 0.3), (0.2, 1 - 1e-6)]  # corners and edges
    res = pipe.decode(0, maps, plan.grids[0], coord, plan.cell)
    with torch.no_grad():
        ref = model.query(0, tuple(torch.from_numpy(m) for m in maps), torch.from_numpy(coord)[None],
                          torch.from_numpy(plan.cell)[None])[0].numpy()
    assert res.shape == (500, 3) and np.isfinite(res).all()
    assert np.abs(res - ref).max() <= 1e-5


def test_windowed_branch_maps_and_decoder_equal_whole(golden_dir, exported, rng):
    _, pipe = exported(golden_dir, "edsr_clit3_small")
    img = rng.random((9, 10, 3), dtype=np.float32)
    plan = plan_cascade((9, 10), scale=12)
    grid = plan.grids[1]  # 36 x 40
    feat, *_ = pipe.encode(img.transpose(2, 0, 1)[None].copy())
    whole = pipe.branch_maps(feat, (0, 0), 1, grid, (9, 10), (0, 36), (0, 40))
    for rows, cols in [((0, 7), (0, 9)), ((30, 36), (33, 40)), ((11, 23), (5, 31))]:
        win = pipe.branch_maps(feat, (0, 0), 1, grid, (9, 10), rows, cols)
        # the same window from a window of the LR features (origin 1, 2) that covers it
        covered = rows[0] >= 7 and cols[0] >= 11  # its bilinear sources lie inside the feature window
        part = pipe.branch_maps(feat[:, :, 1:, 2:], (1, 2), 1, grid, (9, 10), rows, cols) if covered else win
        for a, b, c in zip(win, whole, part):
            assert a.shape[2:] == (rows[1] - rows[0], cols[1] - cols[0])
            assert np.abs(a - b[:, :, rows[0]:rows[1], cols[0]:cols[1]]).max() <= 1e-6
            assert np.abs(c - a).max() <= 1e-6
    # decoder on a window + offset == decoder on the whole map, for queries inside it
    rows, cols = (10, 30), (6, 33)
    win = pipe.branch_maps(feat, (0, 0), 1, grid, (9, 10), rows, cols)
    out = coord_grid(*plan.out_size)
    y0, x0 = (10 + 3 + 1) * 3, (6 + 3 + 1) * 3  # output pixels whose 7x7 neighbourhood stays inside
    coord = out[y0:y0 + 15, x0:x0 + 20].reshape(-1, 2)
    a = pipe.decode(1, win, grid, coord, plan.cell, offset=(10, 6))
    b = pipe.decode(1, whole, grid, coord, plan.cell)
    assert np.abs(a - b).max() <= 1e-6


def test_audit_flags_planted_gridsample_and_passes_our_graphs(golden_dir, tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("GridSample", ["x", "g"], ["y"], align_corners=0)
    graph = helper.make_graph(
        [node], "planted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
         helper.make_tensor_value_info("g", TensorProto.FLOAT, [1, 2, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 2, 2])],
    )
    planted = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for target in ("8.5", "10"):
        assert [f.op for f in audit_model(planted, target)] == ["GridSample"]
    model = load_model(golden_dir / "rdn_clit2_small.pth")
    for g in export_graphs(model, tmp_path, opset=16):
        graph_model = onnx.load(str(tmp_path / g["file"]))
        for target in ("8.5", "8.6", "10", "11"):
            assert audit_model(graph_model, target) == [], (g["file"], target)


def test_audit_checks_outputs_restrictions_and_data_dependent_shapes():
    """Planted graphs: a Cast whose *output* type TensorRT lacks (the first input is fine), the
    matrix's restrictions (computed Unsqueeze axes, a non-zero Q/DQ zero point, MaxPool's
    Indices used), a data-dependent output shape (NonZero) and a Reshape whose shape comes from
    tensor values; an unchecked restriction is a note, not a finding."""
    from onnx import TensorProto, helper

    def model(nodes, inits=(), outs=("y",), out_type=TensorProto.FLOAT):
        graph = helper.make_graph(nodes, "planted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                                  [helper.make_tensor_value_info(o, out_type, None) for o in outs], list(inits))
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    def problems(m, target="8.5", notes=False):
        return [(f.op, f.note) for f in audit_model(m, target, notes=notes)]

    cast = model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE, name="c")], out_type=TensorProto.DOUBLE)
    assert problems(cast) == [("Cast", False)]
    axes = model([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Slice", ["s", "z", "o"], ["a"]),
                  helper.make_node("Unsqueeze", ["x", "a"], ["y"])],
                 [helper.make_tensor("z", TensorProto.INT64, [1], [0]), helper.make_tensor("o", TensorProto.INT64, [1], [1])])
    assert ("Unsqueeze", False) in problems(axes)
    q = model([helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["q"]),
               helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["y"])],
              [helper.make_tensor("sc", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("zp", TensorProto.INT8, [], [3])])
    assert problems(q) == [("QuantizeLinear", False), ("DequantizeLinear", False)]
    nz = model([helper.make_node("NonZero", ["x"], ["y"])], out_type=TensorProto.INT64)
    assert ("NonZero", False) in problems(nz, "10")
    values = model([helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
                    helper.make_node("Cast", ["m"], ["n"], to=TensorProto.INT64),
                    helper.make_node("Unsqueeze", ["n", "zero"], ["shape"]),
                    helper.make_node("Reshape", ["x", "shape"], ["y"])],
                   [helper.make_tensor("zero", TensorProto.INT64, [1], [0])])
    assert ("Reshape", False) in problems(values, "10")
    pool = helper.make_graph([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2])], "p",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                              helper.make_tensor_value_info("i", TensorProto.INT64, None)])
    assert ("MaxPool", False) in problems(helper.make_model(pool, opset_imports=[helper.make_opsetid("", 17)]))
    rnd = model([helper.make_node("RandomNormalLike", ["x"], ["r"], seed=1.0), helper.make_node("Add", ["x", "r"], ["y"])])
    assert problems(rnd) == [] and problems(rnd, notes=True) == [("RandomNormalLike", True)]


def test_graph_interfaces_are_dynamic(golden_dir):
    model = load_model(golden_dir / "edsr_clit3_small.pth")
    specs = {(s.kind, s.branch): s for s in graph_specs(model)}
    assert set(specs) == {("encoder", 0), ("branch", 1), ("branch", 2), ("decoder", 0), ("decoder", 1), ("decoder", 2),
                          ("grouped", 0), ("grouped", 1), ("grouped", 2)}
    grouped = dict((n, shape) for n, _, shape in specs[("grouped", 1)].inputs)
    assert grouped["ry"] == ("Gy", "My") and grouped["sel"] == ("N",) and grouped["yc"] == ("R",)
    coord = dict((n, shape) for n, _, shape in specs[("decoder", 2)].inputs)["coord"]
    assert coord == (1, "N", 2)
    assert max_safe_queries(256, 3) * 49 * 256 < 2**31 <= (max_safe_queries(256, 3) + 1) * 49 * 256
    assert max_safe_queries(32, 1) == (2**31 - 1) // (9 * 32)


def export_cli(*args):
    return subprocess.run([sys.executable, "-m", "clit.export.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_writes_manifest_with_parity(golden_dir, data_dir, tmp_path):
    out = tmp_path / "model"
    done = export_cli(golden_dir / "edsr_lit_small.pth", "-o", out, "--check")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["n_branches"] == 1
    assert manifest["stage_base"] == 4 and manifest["cascade_discount"] == 0.75
    assert manifest["encoder_halo"] == 8  # 2 residual blocks: head + 4 + body conv + conv_ch + q/k/v
    assert manifest["source"]["sha256"] == hashlib.sha256((golden_dir / "edsr_lit_small.pth").read_bytes()).hexdigest()
    for g in manifest["graphs"]:
        assert hashlib.sha256((out / g["file"]).read_bytes()).hexdigest() == g["sha256"]
    results = {(r["precision"], r.get("scale")): r for r in manifest["parity"]["results"]}
    assert results[("fp32", 2.0)]["status"] == "pass" and results[("fp32", 3.7)]["status"] == "pass"
    assert results[("fp32", 6.0)]["status"] == "skipped" and "1 branch" in results[("fp32", 6.0)]["reason"]
    assert results[("fp32", 2.0)]["max_abs_diff"] <= TOL
    assert results[("fp16", 3.7)]["status"] == "pass" and results[("fp16", 3.7)]["psnr_vs_fp32"] >= 45
    assert manifest["precisions"] == ["fp32", "fp16"]
    assert manifest["tensorrt_audit"]["findings"] == {"8.5": [], "8.6": [], "10": [], "11": []}
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    load_manifest(out)  # the runtime accepts it


def test_cli_bad_inputs_leave_nothing_behind(golden_dir, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_text("nope")
    cases = [
        ([junk, "-o", tmp_path / "a", "--no-parity"], "not a PyTorch checkpoint"),
        ([golden_dir / "edsr_lit_small.pth", "-o", tmp_path / "b", "--opset", "20"], "20 is refused"),
        ([golden_dir / "edsr_lit_small.pth", "-o", tmp_path / "e", "--precision", "fp16"], "fp32 included"),
        ([golden_dir / "edsr_lit_small.pth", "-o", tmp_path / "c", "--opset", "18", "--check", "--no-parity"],
         "opset 18 is above TensorRT 8.5"),
    ]
    for args, message in cases:
        done = export_cli(*args)
        assert done.returncode != 0 and message in done.stderr, done.stderr
    existing = tmp_path / "d"
    existing.mkdir()
    (existing / "keep").write_text("x")
    done = export_cli(golden_dir / "edsr_lit_small.pth", "-o", existing, "--no-parity")
    assert done.returncode != 0 and "exists" in done.stderr and (existing / "keep").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "junk.pth"]  # no temp dirs left


def test_golden_index_lists_models(golden_dir):
    assert len(golden_index()) >= 4


def test_fp32_layers_cover_coordinates_encoding_and_softmax(golden_dir, tmp_path):
    model = load_model(golden_dir / "edsr_clit2_small.pth")
    entries = {(g["kind"], g["branch"]): g for g in export_graphs(model, tmp_path)}
    assert entries[("encoder", 0)]["fp32_layers"] == []
    for key in [("decoder", 0), ("decoder", 1)]:
        graph = onnx.load(str(tmp_path / entries[key]["file"]))
        pinned = set(entries[key]["fp32_layers"])
        ops = {n.name: n.op_type for n in graph.graph.node}
        must = [name for name, op in ops.items() if op in ("Sin", "Cos", "Softmax", "Round")]
        assert len(must) >= 5 and set(must) <= pinned
        assert not any(ops[name] == "Gemm" and "imnets" in name for name in pinned)  # the MLP may be FP16
    branch = set(entries[("branch", 1)]["fp32_layers"])
    assert any("Floor" in name for name in branch) and not any("Conv" in name for name in branch)


@pytest.mark.parametrize("name, scale, tile", [("edsr_clit3_small", 18, 5), ("edsr_clit2_small", 2.5, 7),
                                               ("edsr_clit2_small", 12, 4), ("rdn_clit2_small", 6, 9)])
def test_tiled_equals_untiled(golden_dir, exported, name, scale, tile):
    """Tiles that do not divide the image, with borders and corners inside the image: the
    encoder runs per tile (LR window + halo) and the branch maps per tile window."""
    _, pipe = exported(golden_dir, name)
    img = np.load(golden_dir / f"{name}.npz")["lr"][0].transpose(1, 2, 0)
    whole = pipe.upscale(img, scale=scale)
    tiled = pipe.upscale(img, scale=scale, tile=tile, chunk=777)
    assert tiled.shape == whole.shape and np.isfinite(tiled).all()
    assert np.abs(tiled - whole).max() <= 1e-5


def test_fp16_variant_is_mixed_precision(golden_dir, tmp_path, rng):
    from onnx import TensorProto

    model = load_model(golden_dir / "edsr_clit2_small.pth")
    entries = export_graphs(model, tmp_path, precisions=("fp32", "fp16"))
    for entry in entries:
        half = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / entry["variants"]["fp16"]["file"])))
        g = half.graph
        types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
        types.update({i.name: i.data_type for i in g.initializer})
        assert all(v.type.tensor_type.elem_type != TensorProto.FLOAT16 for v in list(g.input) + list(g.output))
        if entry["kind"] != "decoder":
            continue
        weights = {i.name: i.data_type for i in g.initializer if "imnets" in i.name}
        assert weights and set(weights.values()) == {TensorProto.FLOAT16}  # the MLP is FP16
        for node in g.node:
            if node.op_type in ("Sin", "Cos", "Softmax", "Round"):
                assert types[node.input[0]] == TensorProto.FLOAT, node.name  # pinned layers read FP32
    manifest = graphs_manifest(tmp_path, model, entries)
    img = rng.random((12, 15, 3), dtype=np.float32)
    full = Pipeline(manifest, OnnxRuntimeRunner(manifest)).upscale(img, scale=6)
    from clit.export.fp16_check import ReferenceRunner  # float16 arithmetic (ONNX Runtime's CPU would not round)
    from clit.runtime.metrics import psnr

    half = Pipeline(manifest, ReferenceRunner(manifest), precision="fp16").upscale(img, scale=6)
    assert half.shape == full.shape and not np.array_equal(half, full)  # it really is another computation
    assert psnr(np.clip(half, 0, 1), np.clip(full, 0, 1)) >= 45
    with pytest.raises(ModelDirError, match="no int8 variant"):
        Pipeline(manifest, OnnxRuntimeRunner(manifest), precision="int8")


def test_swinir_exports_dynamic_and_tensorrt_clean(tmp_path, rng):
    """SwinIR's shifted-window masks must follow the input size (no size baked in at trace
    time), and no ScatterND/Mod may appear; 8.5 needs opset 16 (no LayerNormalization)."""
    from test_model import small_model

    swin = {"name": "swinir", "args": {"embed_dim": 12, "depths": [2], "num_heads": [3], "window_size": 4,
                                       "img_size": 16, "drop_path_rate": 0.0}}
    model = small_model(encoder_spec=swin)
    for opset in (16, 17):
        out = tmp_path / f"o{opset}"
        out.mkdir()
        graphs = export_graphs(model, out, opset=opset)
        findings = {t: [f for g in graphs for f in audit_model(onnx.load(str(out / g["file"])), t)]
                    for t in ("8.5", "8.6", "10")}
        assert findings["8.6"] == [] and findings["10"] == []
        assert {f.op for f in findings["8.5"]} == (set() if opset == 16 else {"LayerNormalization"})
        manifest = graphs_manifest(out, model, graphs)
        assert encoder_halo(model) == 0  # SwinIR cannot be tiled exactly: the encoder runs whole
        pipe = Pipeline(manifest, OnnxRuntimeRunner(manifest))
        for h, w in [(13, 17), (7, 9), (20, 11)]:  # traced at 8x12
            img = rng.random((h, w, 3), dtype=np.float32)
            with torch.no_grad():
                ref = model.upscale(torch.from_numpy(img.transpose(2, 0, 1).copy())[None], scale=5.5)
            got = pipe.upscale(img, scale=5.5)
            assert got.shape == (round(h * 5.5), round(w * 5.5), 3)
            assert np.abs(got - ref[0].permute(1, 2, 0).numpy()).max() <= TOL
            assert np.abs(pipe.upscale(img, scale=5.5, tile=4) - got).max() <= 1e-5  # branch maps per tile
