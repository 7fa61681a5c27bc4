"""tools/same_graphs.py: graph structure compared up to weight values and tensor names."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

TOOL = Path(__file__).resolve().parents[1] / "tools" / "same_graphs.py"
spec = importlib.util.spec_from_file_location("same_graphs", TOOL)
same_graphs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(same_graphs)


def mlp(path: Path, hidden: int = 8, prefix: str = "a", seed: int = 0, act: str = "Relu") -> Path:
    """x (N, 4) -> Gemm -> act -> Gemm -> y (N, 3), helper tensors named with ``prefix``."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((4, hidden)).astype(np.float32), f"{prefix}_w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 3)).astype(np.float32), f"{prefix}_w2")
    nodes = [helper.make_node("Gemm", ["x", f"{prefix}_w1"], [f"{prefix}_h"]),
             helper.make_node(act, [f"{prefix}_h"], [f"{prefix}_r"]),
             helper.make_node("Gemm", [f"{prefix}_r", f"{prefix}_w2"], ["y"], alpha=1.0)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w1, w2])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_same_structure_ignores_weights_and_helper_names(tmp_path):
    a = mlp(tmp_path / "a.onnx")
    assert same_graphs.first_difference(a, mlp(tmp_path / "b.onnx", prefix="b", seed=1)) is None
    assert "initializer" in same_graphs.first_difference(a, mlp(tmp_path / "c.onnx", hidden=16))
    assert "Relu against Gelu" in same_graphs.first_difference(a, mlp(tmp_path / "d.onnx", act="Gelu"))


def test_cli_exit_codes(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    mlp(old / "decoder1.onnx"), mlp(new / "decoder1.onnx", prefix="z", seed=3), mlp(new / "decoder2.onnx")
    run = subprocess.run([sys.executable, str(TOOL), str(old), str(new)], capture_output=True, text=True)
    assert run.returncode == 0 and "decoder1.onnx: same structure" in run.stdout and "only in" in run.stdout
    mlp(new / "decoder1.onnx", hidden=5)
    run = subprocess.run([sys.executable, str(TOOL), str(old), str(new)], capture_output=True, text=True)
    assert run.returncode == 1 and "DIFFERENT" in run.stdout


def test_bundled_branches_share_one_structure():
    """The bundled model's branches 2 and 3 are exported separately but are one architecture;
    the per-query and grouped decoders are not."""
    from clit.runtime.bundled import bundled_model_dir

    d = bundled_model_dir()
    if d is None or not (d / "decoder3.onnx").is_file():
        pytest.skip("needs a bundled model with three branches")
    for f in ("decoder{}.onnx", "decoder{}.grouped.onnx", "decoder{}.fp16.onnx", "branch{}.onnx"):
        assert same_graphs.first_difference(d / f.format(2), d / f.format(3)) is None, f
    assert same_graphs.first_difference(d / "decoder1.onnx", d / "decoder1.grouped.onnx") is not None
