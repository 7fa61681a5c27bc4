"""Nothing lost, nothing half-done: every command checks its inputs first, builds its result
beside the target, replaces the target only when complete, refuses an output that is,
contains or lies inside an input, and "do not overwrite" is atomic.  Real files, real
processes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA
from PIL import Image

from clit.runtime.atomic import atomic_write, refuse_overlap, replace_dir
from clit.runtime.bundled import bundled_model_dir


def cli(module, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def calibrate(*args):
    """clit-calibrate in a fresh process (its console script's function)."""
    return subprocess.run([sys.executable, "-c", "from clit.calibration.cli import calibrate_main; calibrate_main()",
                           *map(str, args)], capture_output=True, text=True, timeout=600)


def digest(path: Path) -> str:
    """A tree's (or file's) content hash, to show it was not touched."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode() if path.is_dir() else b"")
            h.update(p.read_bytes())
    return h.hexdigest()


def one_line(done, fragment):
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if "rror" in line]
    assert len(lines) == 1 and fragment in lines[0], done.stderr


@pytest.fixture
def model(tmp_path):
    src = bundled_model_dir()
    if src is None:
        pytest.skip("this installation has no bundled model")
    shutil.copytree(src, tmp_path / "model")
    return tmp_path / "model"


# ------------------------------------------------------------------ the rules themselves
def test_overlap_rule(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    refuse_overlap(tmp_path / "out", [tmp_path / "in"])
    for out, word in [(tmp_path / "in", "is the input"), (tmp_path, "contains the input"),
                      (tmp_path / "in" / "sub" / "x", "lies inside the input")]:
        with pytest.raises(ValueError, match=word):
            refuse_overlap(out, [tmp_path / "in"])
    (tmp_path / "link").symlink_to(tmp_path / "in")
    with pytest.raises(ValueError, match="is the input"):
        refuse_overlap(tmp_path / "link", [tmp_path / "in"])


def test_no_overwrite_is_atomic(tmp_path):
    """Another writer finishing first, between our temporary file and its move into place:
    ours fails, theirs stays, no temporary file is left."""
    target = tmp_path / "out.png"

    def write(f):
        f.write(b"ours")
        target.write_bytes(b"theirs")  # the other process's file appears now

    with pytest.raises(FileExistsError, match="exists"):
        atomic_write(target, write, overwrite=False)
    assert target.read_bytes() == b"theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    atomic_write(tmp_path / "new.png", lambda f: f.write(b"x"), overwrite=False)
    assert (tmp_path / "new.png").read_bytes() == b"x"


def test_replace_dir_keeps_the_old_one_until_the_new_one_is_there(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "old").write_text("old")
    (tmp_path / "staged").mkdir()
    (tmp_path / "staged" / "new").write_text("new")
    replace_dir(tmp_path / "staged", tmp_path / "target")
    assert sorted(p.name for p in (tmp_path / "target").iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


# ------------------------------------------------------------------ clit-infer
def test_infer_refuses_two_inputs_for_one_output(tmp_path, photo):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(photo, tmp_path / "a" / "x.png")
    shutil.copy(photo, tmp_path / "b" / "x.png")
    done = cli("clit.runtime.cli", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "--scale", 2,
               "-o", tmp_path / "d", "--overwrite")
    assert done.returncode == 2 and "would both be written to" in done.stderr, done.stderr
    assert not (tmp_path / "d").exists()
    (tmp_path / "a" / "y.jpg").write_bytes((tmp_path / "a" / "x.png").read_bytes())  # y.jpg -> y.png ...
    shutil.copy(photo, tmp_path / "a" / "y.png")  # ... and y.png -> y.png
    done = cli("clit.runtime.cli", tmp_path / "a", "--scale", 2, "-o", tmp_path / "d")
    assert done.returncode == 2 and "y.png" in done.stderr and not (tmp_path / "d").exists()


def test_infer_refuses_to_write_over_or_into_its_input(tmp_path, photo):
    before = digest(photo)
    done = cli("clit.runtime.cli", photo, "--scale", 2, "-o", photo, "--overwrite")
    assert done.returncode == 2 and "is the input" in done.stderr and digest(photo) == before
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photo, folder / "p.png")
    done = cli("clit.runtime.cli", folder, "--scale", 2, "-o", folder / "x2")
    assert done.returncode == 2 and "lies inside the input" in done.stderr and not (folder / "x2").exists()


def test_concurrent_runs_without_overwrite_one_wins(tmp_path, photo):
    out = tmp_path / "out.png"
    procs = [subprocess.Popen([sys.executable, "-m", "clit.runtime.cli", str(photo), "--scale", "2", "-o", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert "exists (use --overwrite)" in loser and "Traceback" not in loser
    assert Image.open(out).size == (36, 28)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "photo.png"]  # no temporary file left


# ------------------------------------------------------------------ clit-calibrate
def test_calibrate_never_deletes_its_input(model, tmp_path):
    pytest.importorskip("onnx")
    if not (DATA / "train" / "HR").is_dir():
        pytest.skip(f"training images not found at {DATA}")
    before = digest(model)
    done = calibrate(model, "-o", model, "--data", DATA / "train" / "HR", "--force")
    assert done.returncode == 2 and "is the input" in done.stderr and digest(model) == before
    for out, word in [(model / "int8", "lies inside the input"), (model.parent, "contains the input")]:
        done = calibrate(model, "-o", out, "--data", DATA / "train" / "HR", "--force")
        assert done.returncode == 2 and word in done.stderr and digest(model) == before, done.stderr


def test_calibrate_with_a_bad_input_keeps_the_existing_output(model, tmp_path):
    pytest.importorskip("onnx")
    existing = tmp_path / "int8"
    existing.mkdir()
    (existing / "manifest.json").write_text("{}")  # a model directory it may replace ...
    (existing / "keep").write_text("precious")
    before = digest(existing)
    done = calibrate(model, "-o", existing, "--data", tmp_path / "no-such-folder", "--force")
    assert done.returncode == 2 and "no-such-folder" in done.stderr
    assert digest(existing) == before  # ... but not before everything was checked and the result built
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    (tmp_path / "data").mkdir()
    done = calibrate(model, "-o", other, "--data", tmp_path / "data", "--force")
    assert done.returncode == 2 and "not a model directory" in done.stderr and (other / "notes.txt").is_file()


# ------------------------------------------------------------------ clit-export
def test_export_force_replaces_model_directories_only(lit_checkpoint, tmp_path):
    checkpoint = lit_checkpoint
    plain = tmp_path / "plain.txt"
    plain.write_text("not a model")
    done = cli("clit.export.cli", checkpoint, "-o", plain, "--force", "--no-parity")
    assert done.returncode == 2 and plain.read_text() == "not a model"
    one_line(done, "is not a folder")
    done = cli("clit.export.cli", checkpoint, "-o", tmp_path, "--force", "--no-parity")  # contains the checkpoint
    assert done.returncode == 2 and "contains the input" in done.stderr and checkpoint.is_file()
    out = tmp_path / "model"
    assert cli("clit.export.cli", checkpoint, "-o", out, "--no-parity", "--precision", "fp32").returncode == 0
    before = digest(out)
    done = cli("clit.export.cli", checkpoint, "-o", out, "--force", "--image", tmp_path / "missing.png")
    assert done.returncode == 2 and digest(out) == before  # a bad input: the old directory is untouched
    done = cli("clit.export.cli", checkpoint, "-o", out, "--force", "--no-parity", "--precision", "fp32")
    assert done.returncode == 0 and json.loads((out / "manifest.json").read_text())["graphs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "model", "plain.txt"]  # no leftovers


# ------------------------------------------------------------------ clit-eval
def test_eval_keeps_scores_around_an_unreadable_image(tmp_path):
    if not (DATA / "Set5" / "HR").is_dir():
        pytest.skip(f"real images not found at {DATA}")
    folder = tmp_path / "Set5" / "HR"
    shutil.copytree(DATA / "Set5" / "HR", folder)
    names = sorted(p.name for p in folder.iterdir())
    (folder / names[2]).write_bytes((folder / names[2]).read_bytes()[:300])  # truncated
    report = tmp_path / "r.json"
    done = cli("clit.train.evaluate", "--method", "bicubic", "--data", folder, "--scales", "2,3", "--json", report)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count(names[2]) == 2  # one line per scale, naming the image
    doc = json.loads(report.read_text())
    assert [r["images"] for r in doc["results"]] == [4, 4] and doc["complete"]
    assert all(list(r["failed"]) == [names[2]] for r in doc["results"])
    assert "4/5" in done.stdout  # the table says how many images each figure covers
    clean = cli("clit.train.evaluate", "--method", "bicubic", "--data", DATA / "Set5" / "HR", "--scales", "2",
                "--max-images", 2)
    assert clean.returncode == 0


def test_eval_refuses_an_unwritable_json_at_once(tmp_path):
    (tmp_path / "file").write_text("x")
    done = cli("clit.train.evaluate", "--method", "bicubic", "--data", tmp_path, "--scales", "2",
               "--json", tmp_path / "file" / "r.json")
    assert done.returncode == 2
    one_line(done, "file")
