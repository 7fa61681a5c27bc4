"""Peak memory and time of one ``clit-infer`` run with its default (memory-planned) settings.

Makes a WxH input from a real image of ../shared/data (Urban100 img_001, resized with PIL
bicubic: the content does not change time or memory), runs ``clit-infer --verbose`` on it in
a child process and reports the child's peak RSS (the issue's check: a 1920x1080 -> x4
upscale fits in 4 GB on the CPU path with the defaults).

    python benchmarks/cli_peak.py [--size 1920x1080] [--scale 4] [--tile T] [--model DIR] [--python PY] [--json out.json]

``--python`` runs another installation's clit-infer (e.g. an older version in its own venv)
on the same input, for a side-by-side comparison.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "Urban100" / "HR" / "img_001.png"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1920x1080", help="input WxH")
    ap.add_argument("--scale", default="4")
    ap.add_argument("--model", type=Path, help="model directory (default: the bundled model)")
    ap.add_argument("--tile", help="clit-infer --tile (default: the memory plan's)")
    ap.add_argument("--python", default=sys.executable, help="the Python whose clit-infer runs")
    ap.add_argument("--source", type=Path, default=SOURCE)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not args.source.exists():
        sys.exit(f"no source image {args.source} (../shared/data is needed)")
    w, h = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "input.png", Path(tmp) / "output.png"
        Image.open(args.source).convert("RGB").resize((w, h), Image.BICUBIC).save(src)
        cmd = [args.python, "-m", "clit.runtime.cli", str(src), "--scale", args.scale, "-o", str(dst),
               "--backend", "onnxruntime", "--verbose"]
        if args.model is not None:
            cmd += ["--model", str(args.model)]
        if args.tile is not None:
            cmd += ["--tile", args.tile]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(f"clit-infer failed:\n{done.stderr}")
        out_w, out_h = Image.open(dst).size
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux: the one child's peak
    report = {"input": f"{w}x{h}", "scale": args.scale, "output": f"{out_w}x{out_h}", "seconds": round(seconds, 1),
              "peak_rss_mib": round(peak / 1024), "verbose": [line for line in (raw.rsplit("\x1b[A", 1)[-1] for raw in done.stderr.splitlines())
                          if line.startswith(("    ", "backend", tmp))]}
    print("\n".join(report["verbose"]))
    print(f"{w}x{h} x{args.scale} -> {out_w}x{out_h}: {seconds:.1f} s, peak RSS {peak / 1024:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
