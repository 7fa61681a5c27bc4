"""A random-weight twin of the bundled model with more cascade branches, for timing only.

The bundled model has two branches, so it stops at x16 (4^2).  Time and memory do not depend
on the weights, so the x18-x30 part of the scale sweep runs on this twin: the bundled
architecture (EDSR-baseline, base_dim 64, MLP 4x128) with ``--branches`` branches and random
weights, saved as an official-format checkpoint and exported (FP32) to ``OUT/model``.  Its
outputs are meaningless as images.

    python benchmarks/random_twin.py OUT [--branches 3]
    python benchmarks/infer.py --checkpoint OUT/twin.pth --model OUT/model \\
        --backends onnxruntime-fp32 --sizes 64x64 --scales 16,18,24,30 --repeats 1
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from clit.runtime.bundled import bundled_checkpoint
from clit.train.checkpoint import build_model, read_checkpoint, save_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--branches", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model_args = dict(read_checkpoint(bundled_checkpoint())["model"]["args"], imnet_num=args.branches,
                      conv_num=args.branches)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "twin.pth"
    save_checkpoint(ckpt, build_model(model_args), model_args, meta={"note": "random weights, timing only"})
    subprocess.run([sys.executable, "-m", "clit.export.cli", str(ckpt), "-o", str(args.out / "model"),
                    "--precision", "fp32", "--no-parity", "--force"], check=True)
    print(f"{ckpt}\n{args.out / 'model'}")


if __name__ == "__main__":
    main()
