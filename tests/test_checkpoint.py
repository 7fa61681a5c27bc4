"""Loading official checkpoints, saving ours, and one-line errors for bad files."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
from clit.train import CheckpointError, load_model, save_checkpoint  # noqa: E402
from clit.train.checkpoint import read_checkpoint  # noqa: E402


@pytest.fixture
def official(golden_dir):
    return torch.load(golden_dir / "edsr_clit2_small.pth", map_location="cpu", weights_only=True)


def _write(tmp_path, obj, name="x.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_official_checkpoint_with_training_state_loads(official, tmp_path):
    ckpt = dict(official, optimizer={"name": "adam", "args": {"lr": 1e-4}, "sd": {}}, epoch=7)
    model = load_model(_write(tmp_path, ckpt))
    assert model.n_branches == 2 and not model.training


def test_save_roundtrip_keeps_official_structure(official, tmp_path):
    model = load_model(_write(tmp_path, official))
    out = tmp_path / "ours.pth"
    save_checkpoint(out, model, official["model"]["args"], epoch=3)
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert raw["model"]["name"] == "clit" and raw["model"]["args"] == official["model"]["args"]
    assert set(raw["model"]["sd"]) == set(official["model"]["sd"]) and raw["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.pth", "x.pth"]  # no temporary files left
    again = load_model(out)
    lr = torch.rand(1, 3, 9, 10)
    assert torch.equal(model.upscale(lr, scale=5), again.upscale(lr, scale=5))


def _bad_cases(official):
    sd = official["model"]["sd"]
    missing = copy.deepcopy(official)
    for key in list(sd)[:5]:
        del missing["model"]["sd"][key]
    extra = copy.deepcopy(official)
    extra["model"]["sd"]["decoder.extra.weight"] = torch.zeros(1)
    shape = copy.deepcopy(official)
    shape["model"]["sd"]["conv_ch.weight"] = torch.zeros(1, 2, 3, 3)
    enc = copy.deepcopy(official)
    enc["model"]["args"]["encoder_spec"]["name"] = "vgg"
    arg = copy.deepcopy(official)
    arg["model"]["args"]["bogus"] = 1
    liif = copy.deepcopy(official)
    liif["model"]["name"] = "liif"
    return [
        ([1, 2, 3], "no 'model' entry"),
        ({"state_dict": {}}, "no 'model' entry"),
        (liif, "'liif', not 'clit'"),
        (enc, "unknown encoder 'vgg'"),
        (arg, "bogus"),
        (missing, "missing keys encoder.sub_mean.weight, encoder.sub_mean.bias, encoder.add_mean.weight (+2 more)"),
        (extra, "unexpected keys decoder.extra.weight"),
        (shape, "wrong shape keys conv_ch.weight"),
    ]


def test_bad_checkpoints_give_one_line_errors(official, tmp_path):
    for i, (obj, message) in enumerate(_bad_cases(official)):
        path = _write(tmp_path, obj, f"bad{i}.pth")
        with pytest.raises(CheckpointError) as err:
            load_model(path)
        text = str(err.value)
        assert message in text and str(path) in text and "\n" not in text, text


def test_not_a_checkpoint_file(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as err:
        read_checkpoint(junk)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "absent.pth")
