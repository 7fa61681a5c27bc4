"""``clit-train``: train CLIT with the official recipe (one CPU, one GPU, or torchrun DDP)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from clit.runtime.atomic import refuse_overlap
from clit.runtime.errors import error_boundary

from .config import load_config
from .trainer import TrainOptions, train


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Training YAML (see configs/). Optional with --resume (the run's own config is used).")
@click.option("--train-dir", required=True, type=click.Path(path_type=Path),
              help="Folder of HR training images (searched recursively), e.g. DIV2K_train_HR.")
@click.option("--val-dir", type=click.Path(path_type=Path),
              help="Folder of HR validation images (e.g. DIV2K_valid_HR); without it there is no "
                   "validation and no best.pth.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Run folder: last.pth, best.pth, epoch-E.pth, log.jsonl, config.yaml.")
@click.option("--init-from", type=click.Path(path_type=Path),
              help="Start from the matching weights of this checkpoint (cumulative training: the previous stage).")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue a run from its last.pth.")
@click.option("--epochs", type=click.IntRange(min=1), help="Total epochs (overrides epoch_max).")
@click.option("--device", default="cpu", show_default=True,
              help="cpu or cuda (under torchrun each process takes cuda:LOCAL_RANK).")
@click.option("--amp", type=click.Choice(["bf16", "fp16"]), help="Mixed precision autocast (fp16 uses a grad scaler).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Data-loader worker processes (batches do not depend on it).")
@click.option("--no-progress", is_flag=True, help="No progress bar (log lines only; also when stderr is no terminal).")
@error_boundary("clit-train")
def main(config_path, train_dir, val_dir, out, init_from, resume, epochs, device, amp, workers, no_progress):
    """Train a CLIT model on a folder of HR images.

    Batches follow the official cascaded sampling (random per-stage scales, 48x48 bicubic LR
    crops, 2304 sampled queries); see README "Training" for the paper's cumulative recipe.
    Multi-GPU: torchrun --nproc_per_node=G $(which clit-train) ... --device cuda
    """
    if config_path is None and resume is None:
        raise click.UsageError("give --config (or --resume a run)")
    if init_from is not None and resume is not None:
        raise click.UsageError("--init-from starts a new run; --resume continues one: give one")
    refuse_overlap(out, [train_dir, val_dir], what="run folder --out")
    config = load_config(config_path) if config_path is not None else None
    summary = train(TrainOptions(config=config, train_dir=train_dir, out=out, val_dir=val_dir,
                                 init_from=init_from, resume=resume, epochs=epochs, device=device,
                                 amp=amp, workers=workers, progress=not no_progress and sys.stderr.isatty()))
    best = summary["best_psnr"]
    click.echo(f"done: {summary['epochs_run']} epoch(s) run, last checkpoint {summary['last']}"
               + (f", best validation PSNR {best:.2f} dB" if best is not None else ""), err=True)


if __name__ == "__main__":
    main()
