"""Package a trained checkpoint as the bundled default model (``runtime/models/default``).

    python tools/bundle_model.py runs/bundled_stage2/last.pth
    python tools/bundle_model.py runtime/models/default/checkpoint.pth   # re-export, same weights

1. writes ``checkpoint.pth`` with the weights and the training config only (no optimizer
   or RNG state: a third of the size), in the official outer format;
2. exports it with ``clit-export --precision fp32,fp16`` (the built-in parity checks run:
   ONNX Runtime FP32 vs PyTorch, and the FP16 variants on ``onnx.reference``).  The FP16
   variants are what TensorRT 10+ builds FP16 engines from (strongly typed; TensorRT 11 has no
   other way);
3. puts the checkpoint inside the model directory (``clit-parity`` finds it there by name and
   sha256, so the manifest records no path) and keeps
   the model card (``README.md``) of the directory it replaces;
4. replaces the bundled directory in one rename.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from clit.runtime.bundled import BUNDLED_DIR, CHECKPOINT_NAME
from clit.train.checkpoint import build_model, load_state, read_checkpoint, save_checkpoint

CARD = "README.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, help="clit-train checkpoint (last.pth of the final stage)")
    ap.add_argument("--out", type=Path, default=BUNDLED_DIR, help="model directory to (re)place")
    args = ap.parse_args()

    ckpt = read_checkpoint(args.checkpoint)
    model_args = ckpt["model"]["args"]
    model = build_model(model_args, where=str(args.checkpoint))
    load_state(model, ckpt["model"]["sd"], where=str(args.checkpoint))
    meta = ckpt.get("clit", {})
    keep = {"config": meta.get("config"), "epoch": ckpt.get("epoch"), "best": meta.get("best")}
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
        stripped = Path(tmp) / CHECKPOINT_NAME
        if args.checkpoint.resolve() == (args.out / CHECKPOINT_NAME).resolve():
            shutil.copy2(args.checkpoint, stripped)  # re-exporting the bundled model: the same bytes
        else:
            save_checkpoint(stripped, model, model_args, meta=keep)
        staged = Path(tmp) / "model"
        subprocess.run([sys.executable, "-m", "clit.export.cli", str(stripped), "-o", str(staged),
                        "--precision", "fp32,fp16"], check=True)
        shutil.copy2(stripped, staged / CHECKPOINT_NAME)
        manifest = json.loads((staged / "manifest.json").read_text())
        manifest["source"].pop("path", None)  # a temporary path; the checkpoint sits beside the manifest
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if (args.out / CARD).is_file():
            shutil.copy2(args.out / CARD, staged / CARD)
        old = Path(tmp) / "old"
        if args.out.exists():
            args.out.rename(old)
        staged.rename(args.out)
    size = sum(f.stat().st_size for f in args.out.iterdir()) / 2**20
    print(f"bundled {args.checkpoint} -> {args.out} ({size:.1f} MiB)")


if __name__ == "__main__":
    main()
