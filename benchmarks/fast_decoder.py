"""The grouped decoder against the per-query one, side by side in one run (a benchmark).

For every (LR size, scale) a fresh process builds two pipelines over the same model
directory, ``grouping="off"`` (every query through the per-query decoders: the previous
behaviour) and ``grouping="auto"`` (the manifest's rule picks the grouped decoder where enough
queries share a feature pixel), and times them alternately on the same random image (a
warm-up on its 64x64 corner, then ``--repeats`` runs each, medians).  It reports both times,
their ratio, the decoders' share, the largest difference of the outputs, and the
multiply-adds per output pixel of both (counted from the architecture: every Conv2d and
Linear of the model on a 48x48 input, as benchmarks/infer.py does, with the first MLP
layer and the attention products of the grouped blocks replaced by what the grouped decoder
computes: 49 C hidden per feature pixel, 49 heads hidden and 49 C per query slot).

    python benchmarks/fast_decoder.py [--checkpoint CKPT --model DIR] [--sizes 256x256,512x512,1280x720] \\
        [--scales 2,4,8] [--repeats 3] [--json out.json]
    python benchmarks/fast_decoder.py --full-size OUT --sizes 64x64 --scales 4,8   # random official-size model
    python benchmarks/fast_decoder.py --baseline /path/to/old-venv/bin/python       # also vs an older release
    python benchmarks/fast_decoder.py --full-size OUT --baseline PY --baseline-model DIR  # DIR: PY's export
    python benchmarks/fast_decoder.py --official CLIT_CHECKOUT   # also vs the official chop_forward

With ``--baseline``, each case first runs the other installation (its bundled model, or
``--baseline-model``: the same checkpoint exported by that installation; its own pipeline and
memory plan; same random image) and reports this version's end-to-end speed-up over it (its
time / the grouped time) and the largest difference of the two outputs.  ``--official`` does the
same with the official implementation's ``chop_forward`` (PyTorch, this process's threads; see
benchmarks/official_chop.py) on the same checkpoint, after this version's runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer import macs_per_output_pixel  # noqa: E402

CASE = r"""
import json, statistics, sys, time
import numpy as np
from clit.runtime.manifest import load_manifest
from clit.runtime.memory_plan import choose, memory_budget
from clit.runtime.onnx_backend import OnnxRuntimeRunner
from clit.runtime.pipeline import Pipeline
model_dir, w, h, scale, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
save = sys.argv[6] if len(sys.argv) > 6 else None
if model_dir.startswith("baseline"):  # another installation (--baseline): its model, its own pipeline
    from clit.runtime.bundled import bundled_model_dir
    manifest = load_manifest(model_dir[len("baseline="):] or bundled_model_dir())
    runner = OnnxRuntimeRunner(manifest)
    pipes = {"baseline": Pipeline(manifest, runner)}
else:
    manifest = load_manifest(model_dir)
    runner = OnnxRuntimeRunner(manifest)
    pipes = {g: Pipeline(manifest, runner, grouping=g) for g in ("off", "auto")}
img = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
tile, chunk = choose(manifest, next(iter(pipes.values())).plan((h, w), scale=scale), memory_budget(), None)
for p in pipes.values():
    p.upscale(img[:64, :64], scale=scale, chunk=chunk)  # warm-up: sessions, arenas
times, decoder, outs = {g: [] for g in pipes}, {g: 0.0 for g in pipes}, {}
for _ in range(repeats):
    for g, p in pipes.items():
        p.timings.clear()
        t = time.perf_counter()
        outs[g] = p.upscale(img, scale=scale, chunk=chunk, tile=tile)
        times[g].append(time.perf_counter() - t)
        decoder[g] = sum(v for k, v in p.timings.items() if "decoder" in k)
last = outs[list(pipes)[-1]]
if save:
    np.save(save, last)
print(json.dumps({"seconds": {g: statistics.median(v) for g, v in times.items()}, "decoder_seconds": decoder,
                  "max_diff": float(np.abs(last - outs[list(pipes)[0]]).max()), "tile": tile, "chunk": chunk,
                  "out_mpix": last.shape[0] * last.shape[1] / 1e6}))
"""


def grouped_macs(manifest, plan, chunk: int) -> float:
    """Multiply-adds per output pixel the grouped decoders save, on a whole-image plan: per
    branch that the rule sends through them, the per-query first layer and attention products
    (49 C hidden + 2 x 49 C per query) less the grouped ones (49 C hidden per pixel, 49 heads
    hidden and 49 C per query slot)."""
    from clit.runtime.geometry import block_groups, pixel_centres
    from clit.runtime.pipeline import Pipeline, group_blocks

    area = (2 * manifest.radius + 1) ** 2
    c, heads, hidden = (int(manifest.data[k]) for k in ("base_dim", "heads", "mlp_hidden"))
    pipe = Pipeline(manifest, runner=None)
    rows, cols = pixel_centres(plan.out_size[0]), pixel_centres(plan.out_size[1])
    saved = 0.0
    for k, grid in enumerate(plan.grids):
        if not pipe.use_grouped(k, rows, cols, grid):
            continue
        pixels = slots = 0
        for (r0, r1), (c0, c1) in group_blocks(rows, cols, grid, chunk, pipe.rule.max_run, pipe.rule.max_groups):
            b = block_groups(rows[r0:r1], cols[c0:c1], grid, pipe.rule.max_run)
            p = len(b["gy"]) * len(b["gx"])
            pixels, slots = pixels + p, slots + p * b["ry"].shape[1] * b["rx"].shape[1]
        n = len(rows) * len(cols)
        saved += n * (area * c * hidden + 2 * area * c) - (pixels * area * c * hidden + slots * area * (heads * hidden + c))
    return saved / (len(rows) * len(cols))


def full_size_model(out: Path) -> tuple[Path, Path]:
    """A random-weight model of the official full size (EDSR-baseline, base_dim 256, MLP 4 x 256,
    three branches: configs/train_edsr_baseline_clit3.yaml), exported FP32."""
    import torch
    import yaml

    from clit.train.checkpoint import build_model, save_checkpoint

    ckpt, model_dir = out / "full.pth", out / "model"
    if not (model_dir / "manifest.json").is_file():
        config = Path(__file__).resolve().parents[1] / "configs" / "train_edsr_baseline_clit3.yaml"
        args = yaml.safe_load(config.read_text())["model"]["args"]
        torch.manual_seed(0)
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(ckpt, build_model(args), args, meta={"note": "random weights, timing only"})
        subprocess.run([sys.executable, "-m", "clit.export.cli", str(ckpt), "-o", str(model_dir), "--precision",
                        "fp32", "--no-parity", "--force"], check=True, capture_output=True)
    return ckpt, model_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="default: the bundled model's")
    ap.add_argument("--model", type=Path, help="its model directory (default: the bundled one)")
    ap.add_argument("--full-size", type=Path, metavar="OUT", help="make (once, in OUT) and time a random-weight "
                                                                   "model of the official full size instead")
    ap.add_argument("--sizes", default="256x256,512x512,1280x720")
    ap.add_argument("--scales", default="2,4,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", metavar="PYTHON", help="also time another installation of clit (e.g. the "
                    "release before the grouped decoder, in its own venv) on its bundled model, per case just "
                    "before this one: its time, this version's speed-up over it and the outputs' difference")
    ap.add_argument("--baseline-model", type=Path, help="the baseline's model directory (default: its bundled one)")
    ap.add_argument("--official", type=Path, metavar="DIR", help="also time the official implementation's "
                    "chop_forward (a checkout of github.com/jaroslaw1007/CLIT; benchmarks/official_chop.py) on the "
                    "same checkpoint and image, per case after this one: its time, this version's speed-up over it "
                    "and the outputs' difference")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.baseline and args.full_size is not None and args.baseline_model is None:
        ap.error("--full-size with --baseline needs --baseline-model (the full-size checkpoint exported by it)")
    if args.full_size is not None:
        args.checkpoint, args.model = full_size_model(args.full_size)
    elif args.model is None:
        from clit.runtime.bundled import bundled_checkpoint, bundled_model_dir

        args.model, args.checkpoint = bundled_model_dir(), bundled_checkpoint()
    from clit.runtime.manifest import load_manifest
    from clit.runtime.pipeline import Pipeline

    manifest = load_manifest(args.model)
    print(f"{'LR':>10}{'scale':>6}{'out MP':>8}{'per-query s':>13}{'grouped s':>11}{'ratio':>7}{'decoders':>17}"
          f"{'MACs/px old':>13}{'new':>8}{'max diff':>10}" + (f"{'baseline s':>12}{'speed-up':>9}{'diff':>9}"
                                                              if args.baseline else "")
          + (f"{'official s':>12}{'speed-up':>9}{'diff':>9}" if args.official else ""))
    results = []
    tmp = tempfile.TemporaryDirectory()
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        for s in args.scales.split(","):
            base_model = "baseline" + (f"={args.baseline_model}" if args.baseline_model else "")
            runs = ([(base_model, args.baseline)] if args.baseline else []) + [(str(args.model), sys.executable)]
            out = {}
            for model, python in runs:
                done = subprocess.run([python, "-c", CASE, model, str(w), str(h), s, str(args.repeats),
                                       f"{tmp.name}/{len(out)}.npy"], capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{size:>10}{s:>6}  failed ({python}): {done.stderr.strip().splitlines()[-1]}")
                    break
                out[model] = json.loads(done.stdout)
            if len(out) < len(runs):
                continue
            r = out[str(args.model)]
            old = macs_per_output_pixel(args.checkpoint, float(s))
            plan = Pipeline(manifest, runner=None).plan((h, w), scale=float(s))
            new = old - grouped_macs(manifest, plan, r["chunk"])
            sec, dec = r["seconds"], r["decoder_seconds"]
            r.update(lr=size, scale=float(s), macs_per_pixel={"per_query": old, "grouped": new},
                     ratio=sec["off"] / sec["auto"])
            line = (f"{size:>10}{s:>6}{r['out_mpix']:>8.2f}{sec['off']:>13.2f}{sec['auto']:>11.2f}{r['ratio']:>7.2f}"
                    f"{dec['off']:>8.1f} ->{dec['auto']:>6.1f}{old / 1e3:>12.0f}k{new / 1e3:>7.0f}k{r['max_diff']:>10.1e}")
            if args.baseline:
                base = out[base_model]["seconds"]["baseline"]
                diff = float(np.abs(np.load(f"{tmp.name}/0.npy") - np.load(f"{tmp.name}/1.npy")).max())
                r.update(baseline_seconds=base, speedup_vs_baseline=base / sec["auto"], max_diff_vs_baseline=diff)
                line += f"{base:>12.2f}{base / sec['auto']:>9.2f}{diff:>9.1e}"
            if args.official:
                done = subprocess.run([sys.executable, str(Path(__file__).with_name("official_chop.py")),
                                       str(args.official), str(args.checkpoint), str(w), str(h), s,
                                       str(args.repeats), f"{tmp.name}/official.npy"], capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{size:>10}{s:>6}  official failed: {done.stderr.strip().splitlines()[-1]}")
                    continue
                official = json.loads(done.stdout)["seconds"]
                mine = np.load(f"{tmp.name}/{len(runs) - 1}.npy")
                diff = float(np.abs(np.load(f"{tmp.name}/official.npy") - mine).max())
                r.update(official_seconds=official, speedup_vs_official=official / sec["auto"],
                         max_diff_vs_official=diff)
                line += f"{official:>12.2f}{official / sec['auto']:>9.2f}{diff:>9.1e}"
            results.append(r)
            print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "results": results}, indent=1))
    if results:
        print(f"largest output difference {max(r['max_diff'] for r in results):.1e}; ratios "
              f"{min(r['ratio'] for r in results):.2f}-{max(r['ratio'] for r in results):.2f}" +
              (f"; vs the baseline: largest difference {max(r['max_diff_vs_baseline'] for r in results):.1e}, "
               f"speed-ups {min(r['speedup_vs_baseline'] for r in results):.2f}-"
               f"{max(r['speedup_vs_baseline'] for r in results):.2f}" if args.baseline else "") +
              (f"; vs the official chop_forward: largest difference "
               f"{max(r['max_diff_vs_official'] for r in results):.1e}, speed-ups "
               f"{min(r['speedup_vs_official'] for r in results):.2f}-"
               f"{max(r['speedup_vs_official'] for r in results):.2f}" if args.official else ""))


if __name__ == "__main__":
    main()
