"""``clit-export``: turn a checkpoint into a self-describing ONNX model directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np
import torch

from clit.runtime.atomic import check_replaceable, refuse_overlap, staged_dir
from clit.runtime.errors import error_boundary
from clit.runtime.geometry import CASCADE_DISCOUNT, NORM_MEAN, NORM_STD, STAGE_BASE
from clit.runtime.images import read_rgb
from clit.runtime.manifest import FORMAT_VERSION, MANIFEST, load_manifest, sha256_file
from clit.runtime.metrics import psnr
from clit.runtime.onnx_backend import OnnxRuntimeRunner
from clit.runtime.pipeline import DEFAULT_CHUNK, GroupingRule, Pipeline
from clit.train.checkpoint import load_model_and_args

from .audit import TARGETS, audit_file
from .onnx_export import OPSET_DEFAULT, OPSETS_ALLOWED, PRECISIONS, encoder_halo, export_graphs

PARITY_SCALES = (2.0, 3.7, 6.0, 12.0)
PARITY_TOL_FP32 = 1e-4
PARITY_FP16_MIN_PSNR = 45.0  # dB against the FP32 pipeline
FP16_NOTE = ("FP16 variants evaluated by onnx.reference (float16 ops in float16, as a GPU rounds; ONNX Runtime's "
             "CPU provider would drop the fp32->fp16->fp32 casts) on the centre {side}x{side} of the parity crop")
PARITY_LR = 32  # side of the LR crop used for the built-in parity check
PARITY_LR_FP16 = 12  # the reference evaluator is slow: a smaller crop for the FP16 check
REPO_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def max_safe_queries(base_dim: int, radius: int) -> int:
    """Largest N keeping every decoder tensor below 2^31 elements.  Per query, the widest
    tensors of the per-query decoder are the gathered keys and values and the MLP input,
    49 x C each (the sinusoidal encoding is taken per axis, 7 x enc_dims).  The grouped
    decoder's blocks are capped by the grouping rule whatever N is (checked on the exported
    graphs at their TensorRT profile maxima, tests/test_tensorrt.py)."""
    return (2**31 - 1) // ((2 * radius + 1) ** 2 * base_dim)


def default_parity_image() -> Path | None:
    for root in (Path.cwd().parent / "shared" / "data", REPO_SHARED):
        candidate = root / "Set5" / "HR" / "baby.png"
        if candidate.is_file():
            return candidate
    return None


def parity_input(image: Path | None) -> tuple[np.ndarray, str]:
    """A PARITY_LR-square crop (centre) of a real image, float32 (h, w, 3) in [0, 1]."""
    path = image or default_parity_image()
    if path is None:
        raise click.UsageError("no parity image: pass --image (../shared/data was not found)")
    img = read_rgb(path)
    h, w = img.shape[:2]
    side = min(PARITY_LR, h, w)
    y, x = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(img[y:y + side, x:x + side]), str(path)


def run_parity(model, manifest, img: np.ndarray, precisions) -> list[dict]:
    """FP32 ONNX Runtime pipeline vs the PyTorch model at PARITY_SCALES (max abs diff);
    FP16 (where exported), run by onnx.reference on a centre crop, vs the FP32 pipeline (PSNR of
    the clamped images)."""
    from .fp16_check import ReferenceRunner

    pipes = {"fp32": Pipeline(manifest, OnnxRuntimeRunner(manifest))}
    if "fp16" in precisions:
        pipes["fp16"] = Pipeline(manifest, ReferenceRunner(manifest), precision="fp16")
    lr = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    side = min(PARITY_LR_FP16, *img.shape[:2])
    y, x = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    small = np.ascontiguousarray(img[y:y + side, x:x + side])
    results = []
    for s in PARITY_SCALES:
        entry = {"scale": s, "backend": "onnxruntime-cpu"}
        try:
            plan = pipes["fp32"].plan(img.shape[:2], scale=s)
        except ValueError as exc:
            results += [{**entry, "precision": p, "status": "skipped", "reason": str(exc)} for p in precisions]
            continue
        stages = [list(st) for st in plan.stages]
        ours = pipes["fp32"].upscale(img, scale=s)
        ref = model.upscale(lr, scale=s)[0].permute(1, 2, 0).numpy()
        diff = float(np.abs(ours - ref).max())
        results.append({**entry, "precision": "fp32", "stages": stages, "max_abs_diff": diff,
                        "tolerance": PARITY_TOL_FP32, "status": "pass" if diff <= PARITY_TOL_FP32 else "fail"})
        if "fp16" in pipes:
            half = pipes["fp16"].upscale(small, scale=s)
            value = psnr(np.clip(half, 0, 1), np.clip(pipes["fp32"].upscale(small, scale=s), 0, 1))
            results.append({**entry, "backend": "onnx.reference", "precision": "fp16", "stages": stages,
                            "lr_size": [side, side], "psnr_vs_fp32": value, "min_psnr": PARITY_FP16_MIN_PSNR,
                            "note": FP16_NOTE.format(side=side),
                            "status": "pass" if value >= PARITY_FP16_MIN_PSNR else "fail"})
    return results


def build_manifest(ckpt_path: Path, args: dict, model, graphs: list[dict], opset: int, max_queries: int,
                   precisions) -> dict:
    hidden = max(layer.out_features for net in model.imnets for layer in net.layers
                 if isinstance(layer, torch.nn.Linear))
    safe = max_safe_queries(model.dim, model.r)
    return {
        "format_version": FORMAT_VERSION,
        "source": {"checkpoint": ckpt_path.name, "path": str(ckpt_path.resolve()), "sha256": sha256_file(ckpt_path)},
        "model_args": args,
        "n_branches": model.n_branches,
        "radius": model.r,
        "base_dim": model.dim,
        "heads": model.head,
        "mlp_hidden": hidden,  # widest MLP layer (the grouped decoder's T is 49 x heads x this per pixel)
        "window_size": model.window_size,
        "encoder_halo": encoder_halo(model),  # LR context per side for exact tiles; 0 = run whole
        "stage_base": STAGE_BASE,
        "cascade_discount": CASCADE_DISCOUNT,
        "normalisation": {"input": f"(x - {NORM_MEAN}) / {NORM_STD}", "output": f"y * {NORM_STD} + {NORM_MEAN}"},
        "accumulation": "runtime",  # discount, bilinear skip, de-normalisation and clamping: clit.runtime.pipeline
        "opset": opset,
        "precisions": list(precisions),
        "fp16": {"tensorrt_8.5-10": "FP32 graph + BuilderFlag.FP16 + each graph's fp32_layers pinned to FP32",
                 "tensorrt_11_and_onnxruntime": "the graph's 'fp16' variant (explicitly mixed precision)"},
        "max_safe_queries": safe,
        "decoder_grouping": {**GroupingRule.for_model(model.dim, model.head)._asdict(),
                             "rule": "a branch's queries of a tile go through its grouped decoder when on average at "
                                     "least min_queries_per_pixel of them share a feature pixel, else the per-query "
                                     "decoder (both exact; the threshold is where the grouped first layer needs 3x "
                                     "fewer multiply-adds, calibrated on ONNX Runtime CPU); blocks hold at most "
                                     "max_groups groups per axis of at most max_run queries per axis"},
        "profiles": {
            "H": {"min": 1, "opt": 256, "max": 1024},
            "W": {"min": 1, "opt": 256, "max": 1024},
            "N": {"min": 1, "opt": min(DEFAULT_CHUNK, safe), "max": min(max_queries, safe)},
            # branch/decoder windows (Hw, Ww, hq, wq, h, w): a branch k >= 2 grid is up to 4x the LR per side
            "window": {"min": 1, "opt": 256, "max": 1024},
        },
        "graphs": graphs,
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Model directory to create.")
@click.option("--opset", type=int, default=OPSET_DEFAULT, show_default=True,
              help=f"ONNX opset ({', '.join(map(str, OPSETS_ALLOWED))}; never 20).")
@click.option("--precision", "precision", default="fp32,fp16", show_default=True,
              help="Comma-separated precisions to export (fp32 always; fp16 adds mixed-precision variants).")
@click.option("--max-queries", type=click.IntRange(min=1), default=DEFAULT_CHUNK * 4, show_default=True,
              help="Largest query chunk N the profiles allow (capped at the largest safe N).")
@click.option("--image", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Image for the built-in parity check (default: Set5 baby from ../shared/data).")
@click.option("--target-trt", type=click.Choice(TARGETS), default="8.5", show_default=True,
              help="TensorRT version the op audit enforces with --check (8.5 = JetPack 5).")
@click.option("--check", is_flag=True, help="Fail (exit 1, nothing written) if the audit finds unsupported ops.")
@click.option("--no-parity", is_flag=True, help="Skip the built-in ONNX Runtime vs PyTorch check.")
@click.option("--force", is_flag=True, help="Replace an existing model directory (never a file or another folder).")
@error_boundary("clit-export")
def main(checkpoint, out, opset, precision, max_queries, image, target_trt, check, no_parity, force):
    """Export CHECKPOINT (official or ours) to ONNX graphs plus manifest.json in OUTPUT.

    Every graph is audited against TensorRT's ONNX op support (8.5, 8.6, 10, 11); the
    findings go into the manifest, and with --check any finding for --target-trt fails.
    The directory is written atomically (a temporary sibling, renamed at the end). After
    writing, the graphs run through the runtime's numpy pipeline on ONNX Runtime and are
    compared with the PyTorch model at x2, x3.7, x6 and x12 (FP32: max abs diff <= 1e-4;
    FP16: PSNR >= 45 dB against FP32); the results go into the manifest and a failure
    gives exit code 1.
    """

    if opset not in OPSETS_ALLOWED:
        raise click.BadParameter(f"{opset} is not supported (allowed {', '.join(map(str, OPSETS_ALLOWED))}; "
                                 "20 is refused: TensorRT mis-parses opset-20 GridSample)", param_hint="--opset")
    precisions = tuple(dict.fromkeys(p.strip().lower() for p in precision.split(",") if p.strip()))
    if "fp32" not in precisions or set(precisions) - set(PRECISIONS):
        raise click.BadParameter(f"{precision!r}: choose from {', '.join(PRECISIONS)}, fp32 included",
                                 param_hint="--precision")
    refuse_overlap(out, [checkpoint, image])  # inputs and the target are checked before any work
    check_replaceable(out, force, marker=MANIFEST)
    model, args = load_model_and_args(checkpoint)
    img, img_name = (None, None) if no_parity else parity_input(image)

    with staged_dir(out) as tmp:  # built beside OUT, put in place only when complete
        graphs = export_graphs(model, tmp, opset=opset, precisions=precisions)
        manifest = build_manifest(Path(checkpoint), args, model, graphs, opset, max_queries, precisions)
        found = {t: [f for g in graphs for f in audit_file(tmp / g["file"], t, notes=True)] for t in TARGETS}
        audits = {t: [str(f) for f in fs if not f.note] for t, fs in found.items()}
        manifest["tensorrt_audit"] = {"target": target_trt, "findings": audits,
                                      "notes": {t: [str(f) for f in fs if f.note] for t, fs in found.items()}}
        for finding in audits[target_trt]:
            click.echo(f"unsupported on TensorRT {target_trt}: {finding}", err=True)
        if check and audits[target_trt]:
            raise click.ClickException(f"{len(audits[target_trt])} finding(s) for TensorRT {target_trt}; "
                                       f"nothing written to {out}")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        parity = []
        if img is not None:
            parity = run_parity(model, load_manifest(tmp), img, precisions)
            manifest["parity"] = {"image": img_name, "lr_size": list(img.shape[:2]), "results": parity}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    failed = [p for p in parity if p["status"] == "fail"]
    for p in parity:
        if "max_abs_diff" in p:
            detail = f"max abs diff {p['max_abs_diff']:.2e}"
        elif "psnr_vs_fp32" in p:
            detail = f"PSNR vs fp32 {p['psnr_vs_fp32']:.2f} dB"
        else:
            detail = p.get("reason", "")
        click.echo(f"parity {p['precision']} x{p.get('scale', '-')}: {p['status']} {detail}".rstrip())
    click.echo(f"wrote {out} ({len(graphs)} graphs)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
