"""``clit-build``: build (and cache) the TensorRT engines of a model directory ahead of time."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..bundled import bundled_model_dir
from ..errors import error_boundary
from ..manifest import Manifest, ModelDirError, load_manifest
from .engine_cache import DEFAULT_CACHE_DIR
from .profiles import BuildLimits, check_limits, input_profiles, limits_for

DEFAULT_LR, DEFAULT_QUERIES = 512, 32768  # BuildLimits' defaults, for --help and --print-profiles


def parse_lr(text: str) -> int:
    """'1024x768' (WxH) or '1024' -> the largest side, the tile the engines are built for."""
    try:
        sides = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not WxH or N") from None
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise click.BadParameter(f"{text!r}: sides must be >= 1")
    return max(sides)


def given_limits(max_lr, max_queries, max_image, max_window) -> dict:
    """The build limits the options set (BuildLimits field -> value); clit-build fits the
    others to the GPU's memory."""
    given = {"tile": parse_lr(max_lr) if max_lr else None, "max_queries": max_queries, "max_window": max_window,
             "max_image": max_image}
    return {k: v for k, v in given.items() if v is not None}


def limits_from(given: dict, manifest: Manifest) -> BuildLimits:
    """``given`` with the defaults for the others (what --print-profiles shows: no GPU to fit
    them to)."""
    return limits_for(manifest, given.get("tile", DEFAULT_LR), given.get("max_queries", DEFAULT_QUERIES),
                      given.get("max_image", 4096), given.get("max_window"))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path(path_type=Path), required=False)
@click.option("--precision", type=click.Choice(["fp16", "fp32", "int8"]), default="fp16", show_default=True,
              help="fp16: FP16 with the coordinate path in FP32 (TensorRT 8.5/8.6: precision constraints; 10+: the "
                   "mixed-precision graph, strongly typed); fp32: FP32 with TF32 off; int8: the Q/DQ graphs of a "
                   "clit-calibrate model directory.")
@click.option("--max-lr", help=f"Largest LR tile the engines take (WxH); larger images are tiled, with identical "
                                f"results.  [default: the largest that fits the GPU's memory (a Jetson's: its "
                                f"shared RAM) with the other limits, at most {DEFAULT_LR}x{DEFAULT_LR}]")
@click.option("--max-window", type=click.IntRange(min=1),
              help=f"Largest side of a branch window (feature-grid pixels) of branches 2 and up: scales that need more "
                   f"branches get smaller LR tiles (x17-x64 on a three-branch model: at most a sixteenth of it).  "
                   f"[default: 4 x the LR tile, e.g. {4 * DEFAULT_LR} at {DEFAULT_LR}]")
@click.option("--max-queries", type=click.IntRange(min=1),
              help=f"Largest decoder chunk N (clit-infer --chunk is capped to it).  [default: the largest that "
                   f"fits with the other limits, at most {DEFAULT_QUERIES}]")
@click.option("--max-image", type=click.IntRange(min=1),
              help="Largest LR image side (the decoders' 1-D coordinate tables; for encoders that run on the whole "
                   "image, SwinIR, the encoder too).  [default: 4096; for those encoders the largest that fits]  "
                   "Limits not given are fitted to the GPU's memory around those given; --print-profiles shows "
                   "the defaults instead.")
@click.option("--workspace", type=click.IntRange(min=64), default=1024, show_default=True,
              help="Builder workspace limit in MiB.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help=f"Engine cache folder [default: {DEFAULT_CACHE_DIR}].")
@click.option("--print-profiles", is_flag=True,
              help="Only print each graph's (min, opt, max) input shapes as JSON (needs no TensorRT).")
@error_boundary("clit-build", code=1)
def main(model_dir, precision, max_lr, max_window, max_queries, max_image, workspace, cache_dir, print_profiles):
    """Build the TensorRT engines of MODEL_DIR (default: the bundled model) into the engine
    cache (what a Jetson user runs once on the device).  clit-infer --backend tensorrt then
    finds them; the limits used here are remembered per model and cache folder."""
    if model_dir is None:
        model_dir = bundled_model_dir()
        if model_dir is None:
            raise ModelDirError("no MODEL_DIR given and this installation has no bundled model")
    manifest = load_manifest(model_dir)
    given = given_limits(max_lr, max_queries, max_image, max_window)
    limits = limits_from(given, manifest)
    check_limits(manifest, limits)
    if print_profiles:
        doc = {g.file: {name: [list(s) for s in shapes] for name, shapes in input_profiles(manifest, g, limits).items()}
               for g in manifest.graphs}
        click.echo(json.dumps(doc, indent=1))
        return
    from .backend import TensorRTRunner, save_limits

    runner = TensorRTRunner(manifest, precision=precision, given=given, use_saved=False, cache_dir=cache_dir,
                            workspace=workspace << 20)
    limits = runner.limits
    click.echo(f"limits: LR tile {limits.tile}, branch windows {limits.max_window}, {limits.max_queries} queries, "
               f"LR side {limits.max_image}", err=True)
    for line in runner.build_all():
        click.echo(line)
    save_limits(runner.cache, manifest, limits)
    click.echo(f"engines for {model_dir} ({'/'.join(sorted(runner.precisions))}, TensorRT "
               f"{runner.trt.__version__}, {runner.gpu}) in {runner.cache.root}")


if __name__ == "__main__":  # pragma: no cover
    main()
