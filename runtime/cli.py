"""``clit-infer``: upscale images by any factor.

Backends: ``tensorrt`` and ``onnxruntime`` (a model directory from ``clit-export``, tiled
when memory asks for it) and ``torch`` (the PyTorch reference from ``clit.train``, imported
only when asked for, so this module stays torch-free).  Without ``--model`` or
``--checkpoint`` the bundled default model is used.  Inputs keep their channels (gray stays
gray, alpha is upscaled bicubically and re-attached), 16-bit depth and ICC profile.
"""

from __future__ import annotations

import glob
import math
import sys
import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from .engines import BACKENDS, PRECISIONS, make_engine
from .images import IMAGE_SUFFIXES, ImageError, list_images, read_image, write_image
from .upscaler import Upscaler


def parse_scale(text: str) -> float | tuple[float, float]:
    """'3.5' -> 3.5; '2x3' (SHxSW) -> (2.0, 3.0).  Rejects non-positive and non-finite."""
    parts = text.lower().split("x")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number or SHxSW") from None
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in values):
        raise click.BadParameter(f"{text!r}: a scale must be a finite number > 0, or SHxSW")
    return values[0] if len(values) == 1 else (values[0], values[1])


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' (WxH) -> (H, W) = (1080, 1920)."""
    try:
        w, h = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not WxH, e.g. 1920x1080") from None
    if w < 1 or h < 1:
        raise click.BadParameter(f"{text!r}: width and height must be >= 1")
    return h, w


def expand_inputs(inputs: list[Path]) -> list[tuple[Path, Path]]:
    """Files, folders (their images, recursively) and glob patterns -> (path, name for the
    output) pairs; the name keeps a folder's sub-folders.  Unmatched entries stay, so that
    reading them reports the error."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        if item.is_dir():
            found += [(p, p.relative_to(item)) for p in list_images(item)]
        elif not item.exists() and glob.has_magic(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            found += [(m, Path(m.name)) for m in matches if m.suffix.lower() in IMAGE_SUFFIXES] or [(item, item)]
        else:
            found.append((item, Path(item.name)))
    return found


def output_paths(inputs: list[tuple[Path, Path]], out: Path, single: bool) -> list[Path]:
    """One file given -> OUT is the file (or a folder that exists); otherwise OUT is a folder
    and each output is NAME.png inside it."""
    if single and len(inputs) == 1 and not out.is_dir():
        return [out]
    return [out / name.with_suffix(".png") for _, name in inputs]


def timing_summary(src: Path, shape, t_read: float, t_up: float, t_write: float, stages: dict[str, float]) -> str:
    """One block of text: the image's times, the upscale split by pipeline stage."""
    lines = [f"{src}: {shape[1]}x{shape[0]}  read {t_read:.3f} s  upscale {t_up:.3f} s  write {t_write:.3f} s"]
    for stage, seconds in sorted(stages.items()):
        lines.append(f"    {stage:<20} {seconds:8.3f} s  {100 * seconds / max(t_up, 1e-9):5.1f} %")
    if stages:
        rest = t_up - sum(stages.values())
        lines.append(f"    {'other (planning, I/O)':<20} {rest:8.3f} s  {100 * rest / max(t_up, 1e-9):5.1f} %")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Output file (one input file) or folder (several inputs, a folder or a glob).")
@click.option("--scale", help="Scale factor, e.g. 3.7, or anisotropic SHxSW, e.g. 2x3.")
@click.option("--size", help="Exact output size WxH, e.g. 1920x1080 (instead of --scale).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path),
              help="Model directory made by clit-export (ONNX graphs + manifest.json).  "
                   "Default: the bundled model (EDSR-baseline CLIT, two branches; see README).")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="CLIT checkpoint (.pth, official or ours).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: tensorrt when usable, else onnxruntime for a model directory; torch for --checkpoint.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Graph precision for onnxruntime (auto: fp16 on a GPU provider, fp32 on the CPU).")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option("--chunk", type=click.IntRange(min=1), default=None,
              help="Queries evaluated at once; bounds memory, does not change the result.  "
                   "Default: from the memory available (at most 8192).")
@click.option("--tile", type=click.IntRange(min=0), default=None,
              help="Evaluate in tiles of this many LR pixels per side (graph backends): memory follows the tile, "
                   "not the image; the result is the same.  Default: chosen per image so that the run fits "
                   "min(available memory, 4 GiB); 0: never tile.")
@click.option("--bit-depth", type=click.Choice(["auto", "8", "16"]), default="auto", show_default=True,
              help="Output bits per channel; auto: 16 for 16-bit inputs written as PNG, else 8.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="TensorRT engine cache [default: ~/.cache/clit/engines].")
@click.option("-v", "--verbose", is_flag=True, help="Per-image timings, split by pipeline stage.")
def main(inputs, out, scale, size, model_dir, checkpoint, backend, precision, device, chunk, tile, bit_depth,
         overwrite, cache_dir, verbose):
    """Upscale INPUT images (files, folders, or glob patterns) by any factor with a CLIT model.

    Gray images stay gray, alpha is upscaled bicubically and re-attached, 16-bit PNGs give
    16-bit PNGs (--bit-depth auto), ICC profiles and EXIF orientation are honoured.  A bad
    input is reported on one line and the others are still processed (exit code 1).

    \b
    Examples:
      clit-infer photo.png --scale 4 -o photo_x4.png          # bundled model
      clit-infer photo.png --model MODEL_DIR --scale 3.7 -o photo_x3.7.png
      clit-infer a.png b.jpg --checkpoint model.pth --size 1920x1080 -o out/
    """
    if (scale is None) == (size is None):
        raise click.UsageError("give exactly one of --scale or --size")
    scale_v = parse_scale(scale) if scale is not None else None
    size_v = parse_size(size) if size is not None else None
    try:
        engine = make_engine(backend, model_dir=model_dir, checkpoint=checkpoint, precision=precision,
                             chunk=chunk, device=device, tile=tile, cache_dir=cache_dir)
    except (ValueError, RuntimeError) as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"backend: {engine.name}", err=True)
    sources = expand_inputs(list(inputs))
    single = len(inputs) == 1 and not inputs[0].is_dir() and not glob.has_magic(str(inputs[0]))
    targets = output_paths(sources, out, single)
    upscaler = Upscaler.from_engine(engine)
    pipeline = getattr(engine, "pipeline", None)  # graph backends report stages and tile progress
    failed = 0
    overall = tqdm(total=len(sources), desc="images", unit="img", disable=len(sources) < 2, position=0)
    for (src, _), dst in zip(sources, targets):
        try:
            if dst.exists() and not overwrite:
                raise ImageError(f"output {dst} exists (use --overwrite)")
            t0 = time.perf_counter()
            pic = read_image(src)
            t_read = time.perf_counter() - t0
            with tqdm(total=0, desc=src.name, unit="tile", leave=False, position=1, disable=pipeline is None) as bar:
                if pipeline is not None:
                    pipeline.timings.clear()
                    pipeline.on_tile = lambda done, total, bar=bar: (setattr(bar, "total", total), bar.update(1))
                depth = int(bit_depth) if bit_depth != "auto" else (16 if pic.bit_depth == 16 and
                                                                     dst.suffix.lower() == ".png" else 8)
                t1 = time.perf_counter()
                result = upscaler.upscale(pic.pixels, scale=scale_v, size=size_v,
                                          dtype=np.uint16 if depth == 16 else np.uint8)
                t_up = time.perf_counter() - t1
            t2 = time.perf_counter()
            write_image(dst, result, bit_depth=depth, icc=pic.icc)
            if verbose:
                stages = dict(pipeline.timings) if pipeline is not None else {}
                tqdm.write(timing_summary(src, result.shape, t_read, t_up, time.perf_counter() - t2, stages),
                           file=sys.stderr)
                if pipeline is not None:  # the tile and chunk the graph backends ran with
                    tile_used, chunk_used = pipeline.last_tiling
                    tqdm.write(f"    tile {tile_used or 'none (whole image)'}, chunk {chunk_used}", file=sys.stderr)
        except (ImageError, ValueError) as exc:
            failed += 1
            text = str(exc) if str(exc).startswith(str(src)) else f"{src}: {exc}"
            tqdm.write(f"error: {text}", file=sys.stderr)
        overall.update(1)
    overall.close()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
