"""clit-parity: passes for ONNX Runtime FP32, fails and names the stage for a corrupted model,
reference round trip without torch, clear errors for bad inputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from clit.calibration.cli import main as parity_cli  # noqa: E402


@pytest.fixture
def exported(exported_clit2):
    return exported_clit2


def run(*args):
    return CliRunner().invoke(parity_cli, [str(a) for a in args])


def test_fp32_onnxruntime_passes_with_reports(exported, data_dir, tmp_path):
    ckpt, model = exported
    res = run("--model", model, "--data", data_dir / "Set5" / "HR", "--scales", "2,6", "--max-images", 2,
              "--hr-crop", 96, "--json", tmp_path / "r.json", "--markdown", tmp_path / "r.md")
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["pass"] and len(doc["rows"]) == 4 and [s["scale"] for s in doc["by_scale"]] == [2.0, 6.0]
    for r in doc["rows"]:
        assert r["max_abs"] <= 1e-4 and r["psnr_reference"] > 15 and abs(r["delta_psnr"]) < 1e-3
    assert "| 6 | 2 |" in (tmp_path / "r.md").read_text()


def test_corrupted_branch_is_named(exported, data_dir, tmp_path):
    ckpt, model = exported
    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    graph = onnx.load(str(bad / "decoder2.onnx"))  # branch 2's decoder
    init = max(graph.graph.initializer, key=lambda t: t.dims[0] if len(t.dims) == 1 else 0)
    arr = onnx.numpy_helper.to_array(init).copy()
    arr += 0.05
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(graph, str(bad / "decoder2.onnx"))
    args = ["--model", bad, "--checkpoint", ckpt, "--data", data_dir / "Set5" / "HR", "--scales", "2,6",
            "--max-images", 1, "--hr-crop", 96, "--json", tmp_path / "bad.json"]
    res = run(*args)  # the loader notices the file no longer matches the manifest
    assert res.exit_code == 2 and "decoder2.onnx: does not match the manifest's sha256" in res.output
    manifest = json.loads((bad / "manifest.json").read_text())  # as if exported that way: localisation
    for g in manifest["graphs"]:
        if g["file"] == "decoder2.onnx":
            g["sha256"] = hashlib.sha256((bad / "decoder2.onnx").read_bytes()).hexdigest()
    (bad / "manifest.json").write_text(json.dumps(manifest))
    res = run(*args)
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.output and "x6" in res.output and "x2:" not in res.output  # x2 uses branch 1 only
    assert "first diverging stage" in res.output and "branch 2 residual" in res.output
    stages = json.loads((tmp_path / "bad.json").read_text())["stages"]
    first = [s for s in stages if s["first"]][0]
    assert first["stage"] == "branch 2 residual"
    assert all(not s["over"] for s in stages[: stages.index(first)])  # encoder and maps agree


def test_reference_round_trip_without_torch(exported, data_dir, tmp_path):
    ckpt, model = exported
    ref = tmp_path / "ref.npz"
    args = ["--model", model, "--data", data_dir / "Set14" / "HR", "--scales", "3.7", "--max-images", 2,
            "--hr-crop", 64]
    res = run(*args, "--save-reference", ref)
    assert res.exit_code == 0 and ref.is_file(), res.output
    script = ("import sys; sys.modules['torch'] = None\n"
              "from clit.calibration.cli import main\n"
              f"main({[str(a) for a in args] + ['--reference', str(ref)]!r})\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "PASS" in done.stdout
    # the same reference does not fit other inputs
    res = run(*args[:-4], "--max-images", 3, "--hr-crop", 64, "--reference", ref)
    assert res.exit_code == 2 and "no reference for" in res.output
    res = run(*args[:-2], "--hr-crop", 80, "--reference", ref)
    assert res.exit_code == 2 and "differs" in res.output


def test_bad_inputs(exported, data_dir, tmp_path):
    ckpt, model = exported
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run("--model", model, "--checkpoint", ckpt, "--data", empty)
    assert res.exit_code == 2 and "no images" in res.output
    orphan = tmp_path / "orphan"
    shutil.copytree(model, orphan)
    manifest = json.loads((orphan / "manifest.json").read_text())
    manifest["source"]["path"] = str(tmp_path / "gone.pth")
    (orphan / "manifest.json").write_text(json.dumps(manifest))
    res = run("--model", orphan, "--data", data_dir / "Set5" / "HR", "--max-images", 1)
    assert res.exit_code == 2 and "was not found" in res.output and "--checkpoint" in res.output
    res = run("--model", model, "--data", data_dir / "Set5" / "HR", "--reference", tmp_path / "nope.npz")
    assert res.exit_code == 2 and "not a clit-parity reference" in res.output


def test_calibration_scales_run_every_branch():
    from clit.calibration.int8 import default_scales
    from clit.runtime.geometry import stage_plan

    assert default_scales(2) == [2, 4, 8] and default_scales(3) == [2, 4, 8, 32]
    for n in (1, 2, 3, 4):
        assert max(len(stage_plan(s)) for s in default_scales(n)) == n


def test_int8_calibration_of_three_branches(data_dir, tmp_path, monkeypatch):
    """The bundled model has three branches: by default clit-calibrate reaches all of them
    (its old default, 2,4,8, left branch 3 without data and failed only after collecting);
    scales that miss a branch or exceed the model are refused before any work."""
    import clit.calibration.int8 as int8
    from clit.calibration.cli import calibrate_main
    from clit.runtime.bundled import bundled_model_dir
    from clit.runtime.manifest import load_manifest

    model = bundled_model_dir()
    if model is None or load_manifest(model).n_branches != 3:
        pytest.skip("needs the bundled three-branch model")
    train = data_dir / "train" / "HR"
    collected = []
    real = int8.collect_inputs
    monkeypatch.setattr(int8, "collect_inputs", lambda *a, **k: collected.append(a) or real(*a, **k))
    for scales, said in (("2,4,8", "(x16, x64] (e.g. 32) for branch 3"), ("2,100", "beyond the model's largest (x64")):
        res = CliRunner().invoke(calibrate_main, [str(model), "-o", str(tmp_path / "no"), "--data", str(train),
                                                  "--scales", scales])
        assert res.exit_code == 2 and said in res.output, res.output
    assert not collected and not (tmp_path / "no").exists()
    with pytest.raises(ValueError, match="no calibration scales"):
        int8.calibrate(model, tmp_path / "no", train, scales=[])
    out = tmp_path / "int8"
    res = CliRunner().invoke(calibrate_main, [str(model), "-o", str(out), "--data", str(train), "--images", "1",
                                              "--hr-crop", "96"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["int8"]["scales"] == [2, 4, 8, 32]
    assert {g["branch"] for g in manifest["graphs"]} == {0, 1, 2}
    for g in manifest["graphs"]:
        q = onnx.load(str(out / g["variants"]["int8"]["file"]), load_external_data=False)
        assert any(n.op_type == "QuantizeLinear" for n in q.graph.node), g["file"]


def test_int8_calibration(exported, data_dir, tmp_path):
    """clit-calibrate writes Q/DQ variants (float kept where asked), its range caches are
    reused, and the INT8 directory passes clit-parity's INT8 threshold on real images."""
    from clit.calibration.cli import calibrate_main
    from clit.calibration.int8 import per_image_products

    ckpt, model = exported
    train = data_dir / "train" / "HR"
    out = tmp_path / "int8"
    res = CliRunner().invoke(calibrate_main, [str(model), "-o", str(out), "--data", str(train), "--images", "3",
                                              "--scales", "2,6", "--hr-crop", "96"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert "int8" in manifest["precisions"] and manifest["int8"]["method"] == "minmax"
    from clit.export.audit import TARGETS, audit_model

    for g in manifest["graphs"]:
        q = onnx.load(str(out / g["variants"]["int8"]["file"]))
        ops = [n.op_type for n in q.graph.node]
        assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0, g["file"]
        for target in TARGETS:  # e.g. no INT32 bias DequantizeLinear, which no TensorRT can build
            assert audit_model(q, target) == [], (g["file"], target)
        init_types = {i.name: i.data_type for i in q.graph.initializer}
        dq_inputs = [n.input[0] for n in q.graph.node if n.op_type == "DequantizeLinear"]
        assert all(init_types.get(t, onnx.TensorProto.INT8) == onnx.TensorProto.INT8 for t in dq_inputs)
        if g["kind"] in ("decoder", "grouped"):  # the output layer and the per-image cell term stay in float
            made_by = {o: n.op_type for n in q.graph.node for o in n.output}
            by_name = {n.name: n for n in q.graph.node}
            kept = per_image_products(out / g["file"])
            assert len(kept) == 1, (g["file"], kept)  # the cell term: (2,) x (2, hidden)
            last = [n for n in q.graph.node if n.op_type in ("MatMul", "Gemm")][-1]
            for node in [last, by_name[kept[0]]]:
                assert all(made_by.get(i) != "DequantizeLinear" for i in node.input), (g["file"], node.name)
    caches = sorted(p.name for p in (out / "calibration").iterdir())
    assert caches == sorted(f"{g['file'][:-5]}.json" for g in manifest["graphs"])
    again = tmp_path / "again"
    res = CliRunner().invoke(calibrate_main, [str(model), "-o", str(again), "--data", str(train), "--images", "1",
                                              "--scales", "2,6", "--hr-crop", "96", "--cache-dir",
                                              str(out / "calibration")])
    assert res.exit_code == 0, res.output
    for g in manifest["graphs"]:
        f = g["variants"]["int8"]["file"]
        assert (again / f).read_bytes() == (out / f).read_bytes(), f  # other images, but the cached ranges
    res = CliRunner().invoke(calibrate_main, [str(model), "-o", str(out), "--data", str(train)])
    assert res.exit_code == 2 and "exists" in res.output
    res = run("--model", out, "--checkpoint", ckpt, "--precision", "int8", "--data", data_dir / "Set5" / "HR",
              "--scales", "2,4", "--max-images", 2, "--hr-crop", 96)
    assert res.exit_code == 0, res.output
