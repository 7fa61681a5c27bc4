# ruff: noqa: E402  (torch is imported through pytest.importorskip first)
"""clit-train: learning on real crops, bit-exact resume, DDP with 2 CPU processes, configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import yaml
from click.testing import CliRunner
from PIL import Image

from clit.train.checkpoint import read_checkpoint
from clit.train.cli import main as train_cli
from clit.train.config import ConfigError, load_config, normalize_config
from clit.train.trainer import TrainOptions, partial_init, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_crops(tmp_path_factory):
    from conftest import DATA

    src = sorted((DATA / "train" / "HR").glob("*.webp"))[:8]
    if len(src) < 8:
        pytest.skip(f"training images not found at {DATA / 'train' / 'HR'}")
    out = tmp_path_factory.mktemp("crops")
    for i, path in enumerate(src):
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        Image.fromarray(arr[200:400, 300:500]).save(out / f"{i}.png")
    return out


def tiny_config(n_branches: int = 2, **over) -> dict:
    cfg = {
        "train_dataset": {"dataset": {"repeat": 2, "skip_k": 2},
                          "wrapper": {"inp_size": 24, "scale_min": [1] * n_branches, "scale_max": [3] * n_branches,
                                      "sample_q": 256, "augment": True, "k": n_branches},
                          "batch_size": 4},
        "val_dataset": {"dataset": {"first_k": 2, "repeat": 2},
                        "wrapper": {"inp_size": 24, "scale_min": [1.5] * n_branches,
                                    "scale_max": [1.5] * n_branches, "sample_q": 256},
                        "batch_size": 4},
        "model": {"name": "clit", "args": {
            "base_dim": 16, "head": 2, "r": 1, "imnet_num": n_branches, "conv_num": n_branches,
            "encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_resblocks": 2, "n_feats": 16}},
            "pb_spec": {"name": "posenc", "args": {"posenc_type": "sinusoid", "posenc_scale": 10, "enc_dims": 16}},
            "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [32, 32], "act": "gelu"}}}},
        "optimizer": {"name": "adam", "args": {"lr": 1e-3}},
        "epoch_max": 2,
        "multi_step_lr": {"milestones": [1], "gamma": 0.5},
        "epoch_save": 1,
        "seed": 3,
    }
    cfg.update(over)
    return cfg


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_loss_decreases_on_real_crops(train_crops, tmp_path):
    cfg = tiny_config(1, epoch_max=6, multi_step_lr=None)
    cfg["train_dataset"]["wrapper"].update(scale_min=[2], scale_max=[2], augment=False)
    cfg["train_dataset"]["dataset"]["repeat"] = 4  # 6 images x 4 / 4 = 6 steps per epoch, 36 steps
    summary = train(TrainOptions(config=cfg, train_dir=train_crops, val_dir=train_crops, out=tmp_path / "run",
                                 progress=False))
    log = _log(tmp_path / "run")
    assert summary["epochs_run"] == 6 and [r["epoch"] for r in log] == list(range(1, 7))
    first, last = log[0]["train_loss"]["1"], log[-1]["train_loss"]["1"]
    assert last < 0.8 * first, (first, last)
    assert log[-1]["val_psnr"][0] > log[0]["val_psnr"][0]
    assert (tmp_path / "run" / "best.pth").is_file() and (tmp_path / "run" / "epoch-6.pth").is_file()


def _state(path: Path) -> dict:
    ckpt = read_checkpoint(path)
    return {"model": ckpt["model"]["sd"], "opt": ckpt["optimizer"]["sd"]["state"], "epoch": ckpt["epoch"],
            "sched": ckpt["clit"]["scheduler"], "best": ckpt["clit"]["best"]}


def test_resume_is_bit_exact(train_crops, tmp_path):
    cfg = tiny_config(2)
    kw = dict(train_dir=train_crops, val_dir=train_crops, progress=False)
    train(TrainOptions(config=cfg, out=tmp_path / "straight", **kw))
    train(TrainOptions(config=cfg, out=tmp_path / "split", epochs=1, **kw))
    assert read_checkpoint(tmp_path / "split" / "last.pth")["epoch"] == 1
    train(TrainOptions(config=None, out=tmp_path / "split", resume=tmp_path / "split" / "last.pth", **kw))
    a, b = _state(tmp_path / "straight" / "last.pth"), _state(tmp_path / "split" / "last.pth")
    assert a["epoch"] == b["epoch"] == 2 and a["sched"] == b["sched"] and a["best"] == b["best"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i in a["opt"]:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a["opt"][i][k], b["opt"][i][k])
    assert _log(tmp_path / "straight")[1] | {"seconds": 0} == _log(tmp_path / "split")[1] | {"seconds": 0}
    # and the run really trained: weights moved from the initialisation
    torch.manual_seed(cfg["seed"])
    from clit.train.checkpoint import build_model
    init = build_model(cfg["model"]["args"]).state_dict()
    assert any(not torch.equal(init[k], a["model"][k]) for k in init)


def test_cumulative_init_copies_matching_weights(train_crops, tmp_path):
    train(TrainOptions(config=tiny_config(1, epoch_max=1), train_dir=train_crops, out=tmp_path / "s1",
                       progress=False))
    from clit.train.checkpoint import build_model
    two = build_model(tiny_config(2)["model"]["args"])
    copied, total = partial_init(two, tmp_path / "s1" / "last.pth")
    one = read_checkpoint(tmp_path / "s1" / "last.pth")["model"]["sd"]
    assert 0 < copied < total and copied == len(one)
    for k, v in one.items():
        assert torch.equal(two.state_dict()[k], v)


def test_ddp_two_cpu_processes(train_crops, tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(2, epoch_max=1)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "clit.train.cli", "--config", str(cfg_path), "--train-dir", str(train_crops), "--val-dir", str(train_crops),
           "--out", str(tmp_path / "ddp"), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = _log(tmp_path / "ddp")
    assert len(log) == 1 and set(log[0]["train_loss"]) == {"1", "2"}  # one log line: rank 0 only
    assert np.isfinite(list(log[0]["train_loss"].values())).all() and log[0]["val_psnr"][-1] > 10
    assert read_checkpoint(tmp_path / "ddp" / "last.pth")["epoch"] == 1


def test_config_errors(tmp_path):
    bad = tiny_config()
    bad["train_dataset"]["wrapper"]["scal_max"] = [4, 4]
    with pytest.raises(ConfigError, match="scal_max"):
        normalize_config(bad)
    bad = tiny_config()
    bad["train_dataset"]["wrapper"]["scale_max"] = [4]
    with pytest.raises(ConfigError, match="2 entries"):
        normalize_config(bad)
    path = tmp_path / "c.yaml"
    path.write_text("train_dataset: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_build(name):
    cfg = load_config(REPO / "configs" / name)
    from clit.train.checkpoint import build_model

    if cfg["model"]["args"]["base_dim"] <= 64:  # building the big ones only costs time
        build_model(cfg["model"]["args"])
    assert cfg["model"]["args"]["imnet_num"] == len(cfg["train_dataset"]["wrapper"]["scale_min"]) or \
        isinstance(cfg["train_dataset"]["wrapper"]["scale_min"][0], list)


def test_cli_errors(train_crops, tmp_path):
    runner = CliRunner()
    res = runner.invoke(train_cli, ["--train-dir", str(train_crops), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--config" in res.output
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config()))
    res = runner.invoke(train_cli, ["--config", str(cfg_path), "--train-dir", str(tmp_path / "nope"),
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "nope: not a folder" in res.output


def test_bf16_autocast_on_cpu(train_crops, tmp_path):
    summary = train(TrainOptions(config=tiny_config(2, epoch_max=1), train_dir=train_crops, out=tmp_path / "amp",
                                 amp="bf16", progress=False))
    assert summary["epochs_run"] == 1
    assert all(np.isfinite(v) for v in _log(tmp_path / "amp")[0]["train_loss"].values())


def test_decoder_learns_beyond_the_bilinear_skip(train_crops):
    """Fitting one real batch drives the L1 loss far below what the bilinear skip alone gives
    (a model that only learned to output a zero residual would stop at the skip's loss)."""
    from clit.train.checkpoint import build_model
    from clit.train.trainer import Dist, make_loader

    cfg = normalize_config(tiny_config(1))
    cfg["train_dataset"]["wrapper"].update(scale_min=[2], scale_max=[2])
    loader, sampler = make_loader(cfg["train_dataset"], train_crops, 1, 0, Dist(), 0, train=True)
    sampler.set_epoch(1)
    b = next(iter(loader))
    torch.manual_seed(0)
    model = build_model(cfg["model"]["args"])
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    gt = (b["gt"] - 0.5) / 0.5
    with torch.no_grad():
        skip_loss = (model.skip((b["lr"] - 0.5) / 0.5, b["coord"]) - gt).abs().mean().item()
    for _ in range(250):
        loss = (model(b["lr"], b["grids"], b["coord"], b["cell"])[-1] - gt).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * skip_loss, (loss.item(), skip_loss)
