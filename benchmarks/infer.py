"""Inference speed and memory per backend, input size and scale (a benchmark, not a test).

For every (backend, LR size, scale) a fresh Python process upscales a random image: one
warm-up run on its 64x64 corner (same scale), then the median of ``--repeats`` timed runs; it reports output megapixels per
second, the process's peak RSS (VmHWM), the time per pipeline stage (graph backends), the
model's multiply-adds per output pixel (counted on the PyTorch model: every Conv2d and Linear,
plus the attention products; SwinIR's window attention is not counted) and the achieved
GFLOP/s (2 FLOPs per multiply-add).  Without ``--checkpoint``/``--model`` it measures the
bundled default model.  Cases whose output exceeds ``--max-out-mpix`` are listed as skipped.

    python benchmarks/infer.py [--checkpoint CKPT --model MODEL_DIR] [--int8-model DIR] \\
        [--backends torch,onnxruntime-fp32,onnxruntime-fp16,onnxruntime-int8] \\
        [--sizes 256x256,512x512,1280x720] [--scales 2,4,8] [--repeats 3] [--max-out-mpix 8] \\
        [--json out.json]

Growth with output size and scale: ``--sizes 64x64,128x128,256x256 --scales 4`` and
``--sizes 64x64 --scales 2,3,4,6,8,12,16``; beyond x16 (a third branch) on the random-weight
twin of ``benchmarks/random_twin.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CASE = r"""
import json, statistics, sys, time
import numpy as np
backend, model_dir, ckpt, w, h, scale, repeats, threads = sys.argv[1:9]
w, h, scale, repeats, threads = int(w), int(h), float(scale), int(repeats), int(threads)
img = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
if backend == "torch":
    import torch
    if threads > 0:
        torch.set_num_threads(threads)
    from clit.train.engine import TorchEngine
    engine, pipeline = TorchEngine(ckpt, chunk=8192), None
else:
    from clit.runtime.engines import OnnxEngine
    engine = OnnxEngine(model_dir, precision=backend.split("-")[1], threads=threads)
    pipeline = engine.pipeline
engine.upscale(img[:64, :64], scale=scale)  # warm-up: sessions, thread pools, first arena chunks
times, stages = [], {}
for _ in range(repeats):
    if pipeline is not None:
        pipeline.timings.clear()
    t = time.perf_counter()
    out = engine.upscale(img, scale=scale)
    times.append(time.perf_counter() - t)
    if pipeline is not None:
        stages = {k: round(v, 4) for k, v in pipeline.timings.items()}
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"seconds": statistics.median(times), "out_mpix": out.shape[0] * out.shape[1] / 1e6,
                  "peak_rss_mib": int(hwm.split()[1]) / 1024, "stages": stages}))
"""


def macs_per_output_pixel(checkpoint: Path, scale: float, lr: int = 48) -> float:
    """Multiply-adds per output pixel, counted with hooks on a ``lr`` x ``lr`` input."""
    import torch

    from clit.train.checkpoint import load_model

    model = load_model(checkpoint)
    total = [0]

    def conv(mod, inp, out):
        total[0] += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]

    def linear(mod, inp, out):
        total[0] += out.numel() * mod.in_features

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(conv)
        elif isinstance(m, torch.nn.Linear):
            m.register_forward_hook(linear)
    with torch.no_grad():
        out = model.upscale(torch.rand(1, 3, lr, lr), scale=scale)
    pixels = out.shape[-2] * out.shape[-1]
    area = (2 * model.r + 1) ** 2
    attention = 2 * area * model.dim * model.plan((lr, lr), scale=scale).n_branches  # q.k and attn*v
    return total[0] / pixels + attention


def stage_shares(stages: dict) -> str:
    """'encoder 3%, branch 1 maps 1%, ...' from one run's seconds per pipeline stage."""
    total = sum(stages.values())
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in stages.items()) if total else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="default: the bundled model's")
    ap.add_argument("--model", type=Path, help="FP32/FP16 model directory of the checkpoint (default: bundled)")
    ap.add_argument("--int8-model", type=Path, help="clit-calibrate output, for onnxruntime-int8")
    ap.add_argument("--backends", default="torch,onnxruntime-fp32,onnxruntime-fp16")
    ap.add_argument("--sizes", default="256x256,512x512,1280x720")
    ap.add_argument("--scales", default="2,4,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    ap.add_argument("--max-out-mpix", type=float, default=float("inf"), help="skip larger outputs")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if (args.checkpoint is None) != (args.model is None):
        ap.error("give both --checkpoint and --model, or neither (the bundled model)")
    if args.model is None:
        from clit.runtime.bundled import bundled_checkpoint, bundled_model_dir

        args.model, args.checkpoint = bundled_model_dir(), bundled_checkpoint()
        if args.model is None or args.checkpoint is None:
            ap.error("no bundled model in this installation: give --checkpoint and --model")
    results = []
    macs = {float(s): macs_per_output_pixel(args.checkpoint, float(s)) for s in args.scales.split(",")}
    head = (f"{'backend':<18}{'LR':>10}{'scale':>6}{'out MP':>8}{'seconds':>9}{'MP/s':>8}{'GFLOP/s':>9}"
            f"{'peak MiB':>9}  time per stage")
    print(head)
    for backend in args.backends.split(","):
        model = args.int8_model if backend.endswith("int8") else args.model
        for size in args.sizes.split(","):
            w, h = size.split("x")
            for s in args.scales.split(","):
                out_mpix = round(int(w) * float(s)) * round(int(h) * float(s)) / 1e6
                if out_mpix > args.max_out_mpix:
                    print(f"{backend:<18}{size:>10}{s:>6}{out_mpix:>8.2f}  skipped (> --max-out-mpix)")
                    continue
                done = subprocess.run([sys.executable, "-c", CASE, backend, str(model), str(args.checkpoint), w, h, s,
                                       str(args.repeats), str(args.threads)], capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{backend:<18}{size:>10}{s:>6}  failed: {done.stderr.strip().splitlines()[-1]}")
                    continue
                r = json.loads(done.stdout)
                mps = r["out_mpix"] / r["seconds"]
                gflops = 2 * macs[float(s)] * r["out_mpix"] * 1e6 / r["seconds"] / 1e9
                r.update(backend=backend, lr=size, scale=float(s), mpix_per_s=mps, macs_per_pixel=macs[float(s)],
                         gflops=gflops)
                results.append(r)
                print(f"{backend:<18}{size:>10}{s:>6}{r['out_mpix']:>8.2f}{r['seconds']:>9.2f}{mps:>8.3f}"
                      f"{gflops:>9.1f}{r['peak_rss_mib']:>9.0f}  {stage_shares(r['stages'])}")
    print("multiply-adds per output pixel: " + ", ".join(f"x{k:g}: {v / 1e3:.0f} k" for k, v in macs.items()))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "macs_per_output_pixel": macs}, indent=1))


if __name__ == "__main__":
    main()
