"""clit-eval end to end: table and JSON, model backends, bicubic without torch, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from clit.train.evaluate import main as eval_cli


@pytest.fixture
def small_set5(data_dir, tmp_path):
    """tmp/Set5/HR with one 150x120 crop of a Set5 image (PNG): for tests of clit-eval's
    plumbing, where a whole image through a model only costs time."""
    from clit.runtime.images import read_uint8, write_image

    folder = tmp_path / "Set5" / "HR"
    folder.mkdir(parents=True)
    write_image(folder / "crop.png", read_uint8(data_dir / "Set5" / "HR" / "baby.png")[200:320, 180:330])
    return folder


def test_eval_json_and_table_bicubic(data_dir, tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(eval_cli, ["--method", "bicubic", "--data", str(data_dir / "Set5" / "HR"),
                                        "--data", str(data_dir / "Set14" / "HR"), "--scales", "2,3.7",
                                        "--max-images", "2", "--json", str(out), "--markdown", "bicubic"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    rows = doc["results"]
    assert [(r["dataset"], r["scale"]) for r in rows] == [("Set5", 2.0), ("Set5", 3.7), ("Set14", 2.0), ("Set14", 3.7)]
    for r in rows:
        assert r["images"] == 2 and 20 < r["psnr"] < 45 and 0 < r["ssim"] < 1 and 0 < r["ssim_y"] < 1
        assert r["seconds"] >= 0
    assert rows[0]["psnr"] > rows[1]["psnr"]  # x2 is easier than x3.7
    assert "Set14" in res.output and "SSIM-Y" in res.output
    md = [line for line in res.output.splitlines() if line.startswith("|")]
    assert md[0] == "| dataset | method | x2 | x3.7 |"
    assert md[3] == f"| Set14 | bicubic | {rows[2]['psnr']:.2f} / {rows[2]['ssim_y']:.4f} | " \
                    f"{rows[3]['psnr']:.2f} / {rows[3]['ssim_y']:.4f} |"


def test_eval_json_persists_each_image_and_resume_continues(data_dir, tmp_path, monkeypatch):
    """An interrupted run leaves in --json the pairs it finished and the images it scored of the
    pair it was in (complete: false); --resume keeps both and runs only the rest, giving the
    table of an uninterrupted run."""
    import clit.train.evaluate as ev

    set5 = str(data_dir / "Set5" / "HR")
    args = ["--method", "bicubic", "--data", set5, "--scales", "2,3,4", "--max-images", "2"]
    full = tmp_path / "full.json"
    assert CliRunner().invoke(eval_cli, [*args, "--json", str(full)]).exit_code == 0
    straight = json.loads(full.read_text())
    assert straight["complete"] is True and straight["partial"] == {}

    real, calls = ev.make_pair, []

    def interrupted_at_fourth(img, scale):
        calls.append(scale)
        if len(calls) == 4:  # the second image of x3
            raise KeyboardInterrupt
        return real(img, scale)

    part = tmp_path / "part.json"
    monkeypatch.setattr(ev, "make_pair", interrupted_at_fourth)
    CliRunner().invoke(eval_cli, [*args, "--json", str(part)])
    doc = json.loads(part.read_text())
    assert doc["complete"] is False and [r["scale"] for r in doc["results"]] == [2.0]
    assert list(doc["partial"]) == ["Set5 x3"] and len(doc["partial"]["Set5 x3"]) == 1

    calls.clear()
    res = CliRunner().invoke(eval_cli, [*args, "--json", str(part), "--resume"])
    assert res.exit_code == 0, res.output
    assert calls == [3.0, 4.0, 4.0] and "Set5 x2: kept" in res.output and "Set5 x3: 1 images kept" in res.output
    resumed = json.loads(part.read_text())
    assert resumed["complete"] is True and resumed["partial"] == {}
    assert len(resumed["results"]) == len(straight["results"])
    for a, b in zip(resumed["results"], straight["results"]):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}

    # another setup, or no --json, is refused
    res = CliRunner().invoke(eval_cli, [*args, "--quantize", "--json", str(part), "--resume"])
    assert res.exit_code == 2 and "quantize" in res.output
    res = CliRunner().invoke(eval_cli, [*args, "--resume"])
    assert res.exit_code == 2 and "--resume needs --json" in res.output


def test_eval_resume_with_fewer_pairs_keeps_the_others_in_json(data_dir, tmp_path):
    """--resume asking for some of the pairs already in --json (one scale to check, another
    dataset's file) rewrites the file with every earlier result still in it, not only those
    asked for this time."""
    set5 = str(data_dir / "Set5" / "HR")
    out = tmp_path / "r.json"
    args = ["--method", "bicubic", "--data", set5, "--max-images", "1", "--json", str(out)]
    assert CliRunner().invoke(eval_cli, [*args, "--scales", "2,3,4"]).exit_code == 0
    before = json.loads(out.read_text())["results"]
    res = CliRunner().invoke(eval_cli, [*args, "--scales", "3,6", "--resume"])
    assert res.exit_code == 0, res.output
    after = json.loads(out.read_text())
    assert after["complete"] is True
    assert sorted(r["scale"] for r in after["results"]) == [2.0, 3.0, 4.0, 6.0]
    assert {r["scale"]: r for r in after["results"] if r["scale"] != 6.0} == {r["scale"]: r for r in before}
    assert "Set5 x3: kept" in res.output and "Set5 x2" not in res.output  # kept in the file, not run or shown


def test_eval_threads_reach_onnx_runtime(small_set5, monkeypatch):
    """--threads is ONNX Runtime's intra-op thread count of the model's sessions."""
    import onnxruntime as ort

    seen = []
    real = ort.InferenceSession

    def recording(path, sess_options=None, **kw):
        seen.append(sess_options.intra_op_num_threads)
        return real(path, sess_options=sess_options, **kw)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    res = CliRunner().invoke(eval_cli, ["--backend", "onnxruntime", "--threads", "1", "--data", str(small_set5),
                                        "--scales", "2"])
    assert res.exit_code == 0, res.output
    assert seen and set(seen) == {1}


def test_eval_threads_reach_torch(golden_dir):
    """``threads`` (clit-eval --threads, passed to make_engine as above) is torch's intra-op
    thread count for the torch backend too (it used to be ignored there)."""
    torch = pytest.importorskip("torch")
    from clit.runtime.engines import make_engine

    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    try:
        make_engine("torch", checkpoint=golden_dir / "edsr_lit_small.pth", threads=want)
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)


def test_eval_resume_refuses_a_changed_model_file(golden_dir, small_set5, tmp_path):
    """The setup records the model file's sha256: new weights at the same path are not mixed
    into results of the old ones."""
    pytest.importorskip("torch")
    ckpt = tmp_path / "model.pth"
    shutil.copyfile(golden_dir / "edsr_lit_small.pth", ckpt)
    args = ["--checkpoint", str(ckpt), "--data", str(small_set5), "--json", str(tmp_path / "r.json")]
    res = CliRunner().invoke(eval_cli, [*args, "--scales", "2"])
    assert res.exit_code == 0, res.output
    shutil.copyfile(golden_dir / "edsr_clit2_small.pth", ckpt)
    res = CliRunner().invoke(eval_cli, [*args, "--scales", "2,3", "--resume"])
    assert res.exit_code == 2 and "model_sha256 differ" in res.output


def test_eval_quantize_changes_little(data_dir, tmp_path):
    from clit.train.evaluate import BicubicEngine, evaluate

    a = evaluate(BicubicEngine(), data_dir / "Set5" / "HR", 3, "benchmark", max_images=2)
    b = evaluate(BicubicEngine(), data_dir / "Set5" / "HR", 3, "benchmark", quantize=True, max_images=2)
    assert a.psnr != b.psnr and abs(a.psnr - b.psnr) < 0.05


def test_eval_checkpoint_and_exported_model_agree(exported_clit2, small_set5, tmp_path):
    """A golden random-weight model through torch and through its ONNX export: same table."""
    ckpt, model_dir = exported_clit2
    runs = {}
    for key, flag in (("torch", ["--checkpoint", str(ckpt)]), ("onnx", ["--model", str(model_dir)])):
        out = tmp_path / f"{key}.json"
        res = CliRunner().invoke(eval_cli, [*flag, "--data", str(small_set5), "--scales", "2.5,6",
                                            "--protocol", "div2k", "--max-images", "1", "--json", str(out)])
        assert res.exit_code == 0, res.output
        runs[key] = json.loads(out.read_text())["results"]
    for a, b in zip(runs["torch"], runs["onnx"]):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-3) and a["ssim"] == pytest.approx(b["ssim"], abs=1e-5)


def test_eval_bad_inputs(small_set5, golden_dir, tmp_path):
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(eval_cli, ["--method", "bicubic", "--data", str(empty), "--scales", "2"])
    assert res.exit_code == 1 and "no images" in res.output
    res = runner.invoke(eval_cli, ["--method", "bicubic", "--data", str(empty), "--scales", "2,x"])
    assert res.exit_code == 2 and "comma-separated" in res.output
    # the 1-branch golden model cannot do x6: reported per dataset/scale, exit code 1, other scales still run
    pytest.importorskip("torch")
    res = runner.invoke(eval_cli, ["--checkpoint", str(golden_dir / "edsr_lit_small.pth"), "--data",
                                   str(small_set5), "--scales", "2,6"])
    assert res.exit_code == 1 and "x6" in res.output and "largest scale x4" in res.output
    assert "Set5" in res.output.split("dataset")[-1]


def test_bicubic_eval_runs_without_torch(data_dir):
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from clit.train.evaluate import main\n"
        f"main(['--method', 'bicubic', '--data', r'{data_dir / 'Set5' / 'HR'}', '--scales', '4', '--max-images', '1'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Set5" in done.stdout
