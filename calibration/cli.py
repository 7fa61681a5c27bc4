"""``clit-parity`` (does a deployed model compute what PyTorch computes?) and ``clit-calibrate`` (INT8)."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import click

from clit.runtime.atomic import atomic_write
from clit.runtime.engines import make_engine
from clit.runtime.errors import error_boundary
from clit.runtime.manifest import ModelDirError, load_manifest, sha256_file

from .parity import (
    DEFAULT_HR_CROP,
    DEFAULT_SCALES,
    DEFAULT_THRESHOLDS,
    STAGE_TOLERANCE,
    ParityError,
    Thresholds,
    compare,
    find_checkpoint,
    load_reference,
    localise,
    make_cases,
    markdown,
    rows_json,
    summary_by_scale,
    table,
    torch_reference,
    violations,
)
from .parity import (
    save_reference as write_reference,
)


def _scales(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: comma-separated numbers, e.g. 2,3.7,6,12") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise click.BadParameter(f"{text!r}: scales must be finite numbers > 0", param_hint="--scales")
    return values


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Model directory (clit-export or clit-calibrate output).")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="PyTorch reference checkpoint [default: the one the manifest records].")
@click.option("--reference", type=click.Path(path_type=Path),
              help="Reference outputs saved with --save-reference (no torch needed).")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True,
              help="The backend under test (tensorrt: engines built and cached as clit-build does).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="Precision under test; it also picks the default thresholds (int8 needs a clit-calibrate "
                   "model directory).")
@click.option("--data", "folder", required=True, type=click.Path(path_type=Path), help="Folder of HR images.")
@click.option("--scales", default=",".join(f"{s:g}" for s in DEFAULT_SCALES), show_default=True,
              help="Comma-separated scales to compare at (finite, > 0; up to the model's largest).")
@click.option("--max-images", type=click.IntRange(min=1), default=4, show_default=True,
              help="Only the first N images of --data (sorted by name).")
@click.option("--hr-crop", type=click.IntRange(min=16), default=DEFAULT_HR_CROP, show_default=True,
              help="HR pixels per side taken from the centre of each image.")
@click.option("--max-abs", type=float, help="Override: largest allowed max |backend - reference|.")
@click.option("--min-psnr", type=float, help="Override: smallest allowed PSNR of backend vs reference (dB).")
@click.option("--max-delta", type=float, help="Override: largest allowed |PSNR change vs ground truth| (dB).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the full report as JSON.")
@click.option("--markdown", "md_out", type=click.Path(path_type=Path), help="Write the report as Markdown.")
@click.option("--save-reference", type=click.Path(path_type=Path),
              help="Store the PyTorch outputs and the inputs' hashes here for a later --reference check.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="TensorRT engine cache.")
@error_boundary("clit-parity")
def main(model_dir, checkpoint, reference, backend, precision, folder, scales, max_images, hr_crop, max_abs,
         min_psnr, max_delta, json_out, md_out, save_reference, cache_dir):
    """Compare a backend on MODEL_DIR with the PyTorch reference on real images.

    Defaults: FP32 max |diff| <= 1e-4; FP16 PSNR vs reference >= 45 dB and |delta PSNR vs
    ground truth| <= 0.02 dB; INT8 |delta| <= 0.15 dB.  Exit code 1 when a threshold fails; the
    first diverging stage (encoder, branch maps, branch residuals) is named when the
    checkpoint and torch are available.
    """
    if checkpoint and reference:
        raise click.UsageError("give --checkpoint or --reference, not both")
    if reference and save_reference:
        raise click.UsageError("--save-reference needs the PyTorch reference, not --reference")
    try:
        manifest = load_manifest(model_dir)
        cases = make_cases(folder, _scales(scales), max_images, hr_crop)
        model_sha = manifest.data.get("source", {}).get("sha256")
        if reference:
            ref = load_reference(reference, cases, model_sha)
            ckpt = None
        else:
            ckpt = checkpoint or find_checkpoint(manifest)
            ref = torch_reference(ckpt, cases)
            if save_reference:
                write_reference(save_reference, cases, ref, sha256_file(ckpt))
                click.echo(f"reference saved to {save_reference}", err=True)
        engine = make_engine(backend, model_dir=model_dir, precision=precision, cache_dir=cache_dir)
        click.echo(f"backend: {engine.name}; reference: {reference or ckpt}; {len(cases)} cases", err=True)
        rows = compare(cases, ref, engine)
    except (ParityError, ModelDirError, ValueError, RuntimeError) as exc:
        click.echo(f"clit-parity: error: {exc}", err=True)
        sys.exit(2)
    base = DEFAULT_THRESHOLDS[precision]
    thr = Thresholds(max_abs=max_abs if max_abs is not None else base.max_abs,
                     min_psnr=min_psnr if min_psnr is not None else base.min_psnr,
                     max_delta=max_delta if max_delta is not None else base.max_delta)
    failures = violations(rows, thr)
    summary = summary_by_scale(rows)
    click.echo(table(summary))
    stages = None
    if failures:
        for line in failures[:10]:
            click.echo(f"FAIL {line}")
        worst = max(range(len(rows)), key=lambda i: rows[i].max_abs)
        if ckpt is not None and hasattr(engine, "pipeline"):
            stages = localise(ckpt, engine.pipeline, cases[worst], STAGE_TOLERANCE[precision])
            first = next((s for s in stages if s["first"]), None)
            click.echo(f"first diverging stage on {cases[worst].key}: "
                       + (f"{first['stage']} (relative error {first['relative_error']:.2e})" if first
                          else "none over tolerance (the difference builds up across stages)"))
        else:
            click.echo("(localising the failure needs the checkpoint and PyTorch)")
    else:
        click.echo("PASS")
    title = f"clit-parity: {engine.name} vs PyTorch, {folder}"
    if json_out:
        doc = {"backend": engine.name, "precision": precision, "thresholds": asdict(thr), "pass": not failures,
               "failures": failures, "by_scale": summary, "rows": rows_json(rows), "stages": stages}
        atomic_write(json_out, lambda f: f.write(json.dumps(doc, indent=1).encode()))
    if md_out:
        atomic_write(md_out, lambda f: f.write(markdown(summary, title, failures, stages).encode()))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":  # pragma: no cover
    main()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="INT8 model directory to create (a copy of MODEL_DIR plus *.int8.onnx variants); must not be, "
                   "contain or lie inside MODEL_DIR or the --data folder.")
@click.option("--data", "folder", required=True, type=click.Path(path_type=Path),
              help="Folder of real HR images for calibration (not the evaluation images).")
@click.option("--images", type=click.IntRange(min=1), default=16, show_default=True,
              help="Calibration images (the first N of the folder).")
@click.option("--scales", help="Scales the calibration runs at; together they must run every branch of the model.  "
                                "[default: 2,4 and the middle of each further branch's range: 2,4,8 for two "
                                "branches (up to x16), 2,4,8,32 for three (up to x64)]")
@click.option("--hr-crop", type=click.IntRange(min=16), default=128, show_default=True,
              help="HR pixels per side taken from the centre of each calibration image (its LR input is this "
                   "crop downscaled by each scale).")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="Range calibration method.")
@click.option("--keep-fp32", default="", help="Comma-separated extra ONNX node names to keep in floating point.")
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="Reuse (or create) tensor-range caches here instead of OUT/calibration.")
@click.option("--force", is_flag=True, help="Replace an existing INT8 model directory (never a file, another "
                                            "folder or an input).")
@error_boundary("clit-calibrate")
def calibrate_main(model_dir, out, folder, images, scales, hr_crop, method, keep_fp32, cache_dir, force):
    """Make an INT8 (Q/DQ) model directory from MODEL_DIR with ONNX Runtime's quantisation.

    Everything is checked before any work; the result is built beside OUT and replaces it
    only when complete.  Check it with: clit-parity --model OUT --precision int8 --data ...
    """
    from .int8 import calibrate

    calibrate(model_dir, out, folder, scales=_scales(scales) if scales else None, max_images=images, hr_crop=hr_crop,
              method=method, keep_fp32=tuple(n for n in keep_fp32.split(",") if n), cache_dir=cache_dir,
              log=lambda msg: click.echo(msg, err=True), force=force)
    click.echo(f"wrote {out}")
