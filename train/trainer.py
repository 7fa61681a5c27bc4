"""The training loop: official recipe, DDP under torchrun, atomic checkpoints, exact resume.

Loss: L1 between the last active stage's prediction and the ground truth, both normalised
((x - 0.5) / 0.5), as the official ``train.py``.  Checkpoints (rank 0): ``last.pth`` every
epoch, ``epoch-E.pth`` every ``epoch_save`` epochs, ``best.pth`` when the validation PSNR of
the full cascade improves.  A resumed run continues the same run: model, optimizer,
scheduler, grad scaler, epoch and RNG state are restored, and the data depend only on
(seed, epoch, step) (see :mod:`clit.train.data`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from clit.runtime.atomic import atomic_write
from clit.runtime.geometry import NORM_MEAN, NORM_STD

from .checkpoint import CheckpointError, build_model, load_state, read_checkpoint, save_checkpoint, torch_device
from .config import ConfigError, normalize_config
from .data import CascadedBatches, ImageFolder, StepSampler


@dataclass
class TrainOptions:
    config: dict | None
    train_dir: Path
    out: Path
    val_dir: Path | None = None
    init_from: Path | None = None
    resume: Path | None = None
    epochs: int | None = None
    device: str = "cpu"
    amp: str | None = None  # None, "bf16" or "fp16"
    workers: int = 0
    progress: bool = True


# ------------------------------------------------------------------ distributed helpers
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on the CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _all_sum(values: list[float], d: Dist) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


# ------------------------------------------------------------------ building blocks
def partial_init(model: torch.nn.Module, path: Path) -> tuple[int, int]:
    """Copy the weights of ``path`` whose names and shapes match (cumulative strategy).

    Returns (copied, total) parameter-tensor counts; a checkpoint that matches nothing is an error."""
    sd = read_checkpoint(path)["model"]["sd"]
    own = model.state_dict()
    match = {k: v for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not match:
        raise CheckpointError(f"{path}: no weights match the model (different architecture?)")
    own.update(match)
    model.load_state_dict(own)
    return len(match), len(own)


def make_loader(split: dict, folder: Path, n_branches: int, seed: int, d: Dist, workers: int,
                train: bool) -> tuple[DataLoader, StepSampler]:
    ds_args, wrap = split["dataset"], split["wrapper"]
    images = ImageFolder(folder, repeat=ds_args.get("repeat", 1), cache=ds_args["cache"],
                         first_k=ds_args.get("first_k"), skip_k=ds_args.get("skip_k", 0))
    batches = CascadedBatches(images, n_branches, wrap["scale_min"], wrap["scale_max"],
                              inp_size=wrap.get("inp_size", 48), sample_q=wrap.get("sample_q", 2304),
                              k=wrap.get("k", 1) if train else 1, augment=train and wrap.get("augment", False),
                              seed=seed if train else seed + 1, rank=d.rank if train else 0)
    world, rank = (d.world, d.rank) if train else (1, 0)
    sampler = StepSampler(len(images), split["batch_size"], world=world, rank=rank, seed=seed,
                          shuffle=train, fixed=not train)
    loader = DataLoader(batches, sampler=sampler, batch_size=None, num_workers=workers, collate_fn=_as_is)
    return loader, sampler


def _as_is(batch: dict) -> dict:
    return batch


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def validate(model, loader: DataLoader, device: torch.device, amp: str | None) -> list[float]:
    """Official validation: per-stage RGB PSNR on the sampled queries, averaged over batches
    (weighted by batch size).  Returns one PSNR per stage."""
    model.eval()
    sums, count = None, 0
    for batch in loader:
        batch = _to(batch, device)
        with _autocast(device, amp):
            preds = model(batch["lr"], batch["grids"], batch["coord"], batch["cell"])
        b = batch["lr"].shape[0]
        res = []
        for p in preds:
            p = (p.float() * NORM_STD + NORM_MEAN).clamp_(0, 1)
            mse = (p - batch["gt"]).pow(2).mean().item()
            res.append(-10 * math.log10(mse) * b)
        sums = res if sums is None else [s + r for s, r in zip(sums, res)]
        count += b
    model.train()
    return [s / count for s in sums]


# ------------------------------------------------------------------ the run
def _resolve_config(opts: TrainOptions, resume_ckpt: dict | None) -> dict:
    if resume_ckpt is None:
        if opts.config is None:
            raise ConfigError("a config is required (or --resume a run)")
        return normalize_config(opts.config)
    stored = resume_ckpt.get("clit", {}).get("config")
    if stored is None:
        raise CheckpointError(f"{opts.resume}: not a clit-train checkpoint (no stored config); "
                              "use --init-from to start a new run from its weights")
    if opts.config is not None:
        given = normalize_config(opts.config)
        differ = sorted(k for k in set(given) | set(stored) if k != "epoch_max" and given.get(k) != stored.get(k))
        if differ:
            raise ConfigError(f"--config differs from the resumed run's config in {', '.join(differ)}")
    return stored


def train(opts: TrainOptions) -> dict:
    """Run (or resume) a training; returns a summary (epochs run, best PSNR, paths)."""
    torch_device(opts.device)  # one line, before anything starts, if the device is not here
    d = init_distributed(opts.device)
    device = torch.device(f"cuda:{d.local_rank}" if opts.device == "cuda" and d.world > 1 else opts.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    resume_ckpt = read_checkpoint(opts.resume) if opts.resume else None
    cfg = _resolve_config(opts, resume_ckpt)
    epoch_max = opts.epochs or cfg["epoch_max"]
    seed = cfg["seed"]
    init_from = opts.init_from or cfg.get("init_from")

    torch.manual_seed(seed)
    args = cfg["model"]["args"]
    core = build_model(args, where="config model.args").to(device)
    n_branches = core.n_branches
    log = (lambda msg: tqdm.write(msg)) if d.main else (lambda msg: None)

    optimizer = torch.optim.Adam(core.parameters(), **cfg["optimizer"]["args"])
    ms = cfg.get("multi_step_lr")
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, **ms) if ms else None
    scaler = torch.amp.GradScaler(device.type, enabled=opts.amp == "fp16")
    start, best = 1, None
    if resume_ckpt is not None:
        load_state(core, resume_ckpt["model"]["sd"], where=str(opts.resume))
        optimizer.load_state_dict(resume_ckpt["optimizer"]["sd"])
        meta = resume_ckpt["clit"]
        if scheduler is not None and meta.get("scheduler"):
            scheduler.load_state_dict(meta["scheduler"])
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        torch.set_rng_state(resume_ckpt["state"])
        start, best = int(resume_ckpt["epoch"]) + 1, meta.get("best")
        log(f"resumed {opts.resume} at epoch {start}")
    elif init_from:
        copied, total = partial_init(core, Path(init_from))
        log(f"initialised {copied}/{total} tensors from {init_from}")

    model = core
    if d.world > 1:
        partial_stages = n_branches > 1 and cfg["train_dataset"]["wrapper"].get("k", 1) > 1
        model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=partial_stages)
    train_loader, train_sampler = make_loader(cfg["train_dataset"], opts.train_dir, n_branches, seed, d,
                                              opts.workers, train=True)
    val_loader = None
    if opts.val_dir is not None and cfg["val_dataset"] is not None and d.main:
        val_loader, _ = make_loader(cfg["val_dataset"], opts.val_dir, n_branches, seed, d, opts.workers, train=False)

    out = Path(opts.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.yaml", lambda f: f.write(yaml.safe_dump(cfg, sort_keys=False).encode()))
    loss_fn = torch.nn.L1Loss()
    epochs_run = 0
    for epoch in range(start, epoch_max + 1):
        t0 = time.perf_counter()
        train_sampler.set_epoch(epoch)
        model.train()
        sums = [0.0] * n_branches
        counts = [0] * n_branches
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{epoch_max}", disable=not (d.main and opts.progress),
                   leave=False, dynamic_ncols=True)
        for batch in bar:
            batch = _to(batch, device)
            with _autocast(device, opts.amp):
                preds = model(batch["lr"], batch["grids"], batch["coord"], batch["cell"])
                gt = (batch["gt"] - NORM_MEAN) / NORM_STD
                loss = loss_fn(preds[-1].float(), gt)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            k = batch["stages"] - 1
            sums[k] += loss.item()
            counts[k] += 1
            bar.set_postfix(loss=f"{loss.item():.4f}", stages=batch["stages"])
        if scheduler is not None:
            scheduler.step()
        totals = _all_sum(sums + [float(c) for c in counts], d)
        losses = {str(k + 1): totals[k] / totals[n_branches + k] for k in range(n_branches) if totals[n_branches + k]}

        val = None
        improved = False
        if val_loader is not None and epoch % cfg["epoch_val"] == 0:
            val = validate(core, val_loader, device, opts.amp)
            improved = best is None or val[-1] > best
            best = val[-1] if improved else best
        if d.main:
            meta = {"config": cfg, "best": best, "scheduler": scheduler.state_dict() if scheduler else None,
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None}
            extra = {"optimizer": {**cfg["optimizer"], "sd": optimizer.state_dict()}, "epoch": epoch,
                     "state": torch.get_rng_state()}
            save_checkpoint(out / "last.pth", core, args, meta=meta, **extra)
            if cfg["epoch_save"] and epoch % cfg["epoch_save"] == 0:
                save_checkpoint(out / f"epoch-{epoch}.pth", core, args, meta=meta, **extra)
            if improved:
                save_checkpoint(out / "best.pth", core, args, meta=meta, **extra)
            record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": losses,
                      "val_psnr": val, "best_psnr": best, "seconds": round(time.perf_counter() - t0, 3)}
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            loss_txt = ", ".join(f"{k} stage{'s' if k != '1' else ''} {v:.4f}" for k, v in losses.items())
            val_txt = f"  val PSNR {' / '.join(f'{v:.2f}' for v in val)} dB" if val else ""
            log(f"epoch {epoch}/{epoch_max}  loss {loss_txt}{val_txt}  {record['seconds']:.1f} s")
        if d.world > 1:
            dist.barrier()
        epochs_run += 1
    return {"epochs_run": epochs_run, "best_psnr": best, "out": str(out), "last": str(out / "last.pth")}
