"""Model directories are checked on load, once, in the loader: the manifest's schema, and every
graph file against its sha256, with one line naming the problem (clit-infer and clit-parity
through real processes).  Runs without torch (a copy of the bundled model)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from clit.runtime.bundled import bundled_model_dir
from clit.runtime.manifest import FORMAT_VERSION, ModelDirError, load_manifest


@pytest.fixture
def model(tmp_path):
    src = bundled_model_dir()
    if src is None:
        pytest.skip("this installation has no bundled model")
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def edit_manifest(model, change):
    data = json.loads((model / "manifest.json").read_text())
    change(data)
    (model / "manifest.json").write_text(json.dumps(data))


def cli(*args, module="clit.runtime.cli"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=300)


def one_line_error(done, *fragments):
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, done.stderr
    assert all(f in errors[0] for f in fragments), errors[0]


def test_corrupt_graph_is_named(model, tmp_path):
    data = bytearray((model / "encoder.onnx").read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64  # bit rot in the middle
    (model / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match="encoder.onnx: does not match the manifest's sha256"):
        load_manifest(model)
    done = cli(tmp_path / "x.png", "--model", model, "--scale", 2, "-o", tmp_path / "y.png")
    one_line_error(done, "encoder.onnx", "sha256")


def test_swapped_graphs_are_refused(model, tmp_path):
    """decoder2.onnx replaced by decoder1.onnx parses fine and would run silently wrong."""
    shutil.copyfile(model / "decoder1.onnx", model / "decoder2.onnx")
    with pytest.raises(ModelDirError, match="decoder2.onnx: does not match"):
        load_manifest(model)
    load_manifest(model, verify=False)  # only the hash says so


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("graphs"), "'graphs' is missing"),
    (lambda d: d.pop("n_branches"), "'n_branches' is missing"),
    (lambda d: d.update(radius="3"), "'radius' is missing or not int"),
    (lambda d: d["graphs"][0].pop("sha256"), "graphs[0].'sha256'"),
    (lambda d: d["graphs"][0].update(kind="painter"), "graphs[0].'kind'"),
    (lambda d: d.update(graphs=[g for g in d["graphs"] if g["file"] != "decoder2.onnx"]), "no decoder graph for branch 2"),
    (lambda d: d["graphs"][0].update(file="../../etc/passwd"), "outside the model directory"),
    (lambda d: d.update(format_version=FORMAT_VERSION + 1), "format version"),
    (lambda d: d.update(format_version=1), "made by an earlier clit: re-export it with clit-export"),
    (lambda d: d.update(graphs=[g for g in d["graphs"] if g["kind"] != "grouped"]), "no grouped graph for branch 1"),
    (lambda d: d["decoder_grouping"].update(max_groups=0), "decoder_grouping.'max_groups'"),
    (lambda d: d["decoder_grouping"].update(max_groups=200), "decoder_grouping.'max_groups'"),
    (lambda d: d["decoder_grouping"].update(max_run=2.5), "decoder_grouping.'max_run'"),
    (lambda d: d["decoder_grouping"].update(min_queries_per_pixel=-1), "decoder_grouping.'min_queries_per_pixel'"),
    (lambda d: d.update(decoder_grouping=[1]), "'decoder_grouping' is missing or not dict"),
])
def test_manifest_schema_errors_are_one_line(model, tmp_path, change, message):
    edit_manifest(model, change)
    with pytest.raises(ModelDirError) as err:
        load_manifest(model)
    assert message in str(err.value) and "\n" not in str(err.value)
    done = cli("--model", model, "--data", tmp_path, "--reference", tmp_path / "r.npz", module="clit.calibration.cli")
    one_line_error(done, message)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ModelDirError, match="no manifest.json"):
        load_manifest(tmp_path)
    with pytest.raises(ModelDirError, match="no such folder"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="unreadable manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelDirError, match="a file"):
        load_manifest(tmp_path / "file")


def test_missing_graph_file(model):
    (model / "decoder1.fp16.onnx").unlink()
    with pytest.raises(ModelDirError, match="decoder1.fp16.onnx listed in the manifest is missing"):
        load_manifest(model)
