"""Peak memory of the ONNX Runtime pipeline as the output grows, whole vs tiled.

Each case runs in a fresh Python process (peak RSS = VmHWM on Linux), so cases do not share
allocations.  Prints a table and optionally writes JSON.  Uses a model directory
(``--model``) or exports one from a checkpoint (``--checkpoint``, default: the golden
``edsr_clit2_small`` from ../shared, random weights: memory and time do not depend on them).

    python benchmarks/memory.py [--model DIR | --checkpoint CKPT] [--tile 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from clit.runtime.pipeline import DEFAULT_CHUNK

CASE = r"""
import json, resource, sys, time
import numpy as np
from clit.runtime.manifest import load_manifest
from clit.runtime.onnx_backend import OnnxRuntimeRunner
from clit.runtime.pipeline import Pipeline
model, h, scale, tile, chunk = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
m = load_manifest(model)
pipe = Pipeline(m, OnnxRuntimeRunner(m, threads=2))
img = np.random.default_rng(0).random((h, h, 3), dtype=np.float32)
def peak_kib():  # this process's own peak (ru_maxrss would include the parent's, kept across exec)
    try:
        return int([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1])
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
base = peak_kib()
t = time.perf_counter()
out = pipe.upscale(img, scale=scale, chunk=chunk, tile=None if tile == "none" else int(tile))
seconds = time.perf_counter() - t
peak = peak_kib()
print(json.dumps({"lr": h, "scale": scale, "tile": tile, "out_mpix": out.shape[0] * out.shape[1] / 1e6,
                  "peak_rss_mib": peak / 1024, "before_mib": base / 1024, "seconds": seconds}))
"""

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--checkpoint", type=Path, default=REPO.parent / "shared" / "golden" / "edsr_clit2_small.pth")
    ap.add_argument("--tile", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model = args.model
    if model is None:
        model = Path(tempfile.mkdtemp()) / "model"
        subprocess.run([sys.executable, "-m", "clit.export.cli", str(args.checkpoint), "-o", str(model),
                        "--no-parity", "--precision", "fp32"], check=True, capture_output=True)
    cases = [(64, 4), (64, 8), (128, 4), (64, 16)]  # output pixels x1, x4, x4, x16
    rows = []
    for tile in ("none", str(args.tile)):
        for h, scale in cases:
            done = subprocess.run([sys.executable, "-c", CASE, str(model), str(h), str(scale), tile, str(args.chunk)],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"lr {r['lr']:4d}  x{r['scale']:<5g} tile {r['tile']:>4}  out {r['out_mpix']:6.2f} MP  "
                  f"peak RSS {r['peak_rss_mib']:7.1f} MiB (start {r['before_mib']:6.1f})  {r['seconds']:6.2f} s",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": str(model), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
