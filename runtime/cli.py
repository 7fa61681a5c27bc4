"""``clit-infer``: upscale images by any factor.

Backends: ``tensorrt`` and ``onnxruntime`` (a model directory from ``clit-export``, tiled
when memory asks for it) and ``torch`` (the PyTorch reference from ``clit.train``, imported
only when asked for, so this module stays torch-free).  Without ``--model`` or
``--checkpoint`` the bundled default model is used.  Inputs keep their channels (gray stays
gray, alpha is upscaled bicubically and re-attached), 16-bit depth and ICC profile.

With ``--server URL`` the upscale runs on a Triton server (``clit-serve``, :mod:`clit.serve`):
reading and writing stay here and the files are the same as a local run's.

Every input is processed inside one error boundary: whatever goes wrong with it (unreadable,
too large, a full disk, a read-only folder) is one line naming the file, and the next input
runs; the exit code is 1 if any failed.  Problems of the whole run (arguments, the model, two
inputs writing one output) are found before any image is processed.
"""

from __future__ import annotations

import glob
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from .atomic import refuse_overlap
from .engines import BACKENDS, PRECISIONS, make_engine
from .errors import error_boundary, for_input
from .images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, list_images, read_image, write_image
from .memory_plan import parse_bytes
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
    reading them reports the error; a folder without images is an error of the whole run."""
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


def output_is_folder(out: Path, inputs: list[Path]) -> bool:
    """``-o`` names a folder when it is one, ends with a separator, has no file suffix, or
    several inputs (a folder, a glob) are given; else it names the one output file."""
    single = len(inputs) == 1 and not inputs[0].is_dir() and not glob.has_magic(str(inputs[0]))
    text = str(out)
    return (not single or out.is_dir() or text.endswith((os.sep, "/"))
            or (out.suffix == "" and not out.exists()))


def output_paths(sources: list[tuple[Path, Path]], out: Path, folder: bool) -> list[Path]:
    """Each input's output: OUT itself, or NAME.png inside the folder OUT."""
    if not folder:
        return [out]
    return [out / name.with_suffix(".png") for _, name in sources]


def refuse_collisions(sources: list[tuple[Path, Path]], targets: list[Path]) -> None:
    """Before anything runs: two inputs writing one output, or an output that is an input."""
    by_target = defaultdict(list)
    for (src, _), dst in zip(sources, targets):
        by_target[os.path.normcase(os.path.realpath(dst))].append(src)
    for srcs in by_target.values():
        if len(srcs) > 1:
            dst = targets[[s for s, _ in sources].index(srcs[0])]
            raise click.UsageError(f"{srcs[0]} and {srcs[1]} would both be written to {dst} (same name): "
                                   "give them different names or run them separately")
    for (src, _), dst in zip(sources, targets):
        if src.exists():
            refuse_overlap(dst, [src])


def timing_summary(src: Path, shape, t_read: float, t_up: float, t_write: float, stages: dict[str, float]) -> str:
    """One block of text: the image's times, the upscale split by pipeline stage."""
    lines = [f"{src}: {shape[1]}x{shape[0]}  read {t_read:.3f} s  upscale {t_up:.3f} s  write {t_write:.3f} s"]
    for stage, seconds in sorted(stages.items()):
        lines.append(f"    {stage:<20} {seconds:8.3f} s  {100 * seconds / max(t_up, 1e-9):5.1f} %")
    if stages:
        rest = t_up - sum(stages.values())
        lines.append(f"    {'other (planning, I/O)':<20} {rest:8.3f} s  {100 * rest / max(t_up, 1e-9):5.1f} %")
    return "\n".join(lines)


def parse_memory(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_bytes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Output file (one input file) or folder: OUT is a folder when it is one, ends with '/', has no "
                   "suffix, or several inputs (a folder, a glob) are given; outputs are NAME.png inside it (a "
                   "folder's sub-folders kept).  Two inputs that would write the same output are refused.")
@click.option("--scale", help="Scale factor, e.g. 3.7, or anisotropic SHxSW, e.g. 2x3.")
@click.option("--size", help="Exact output size WxH, e.g. 1920x1080 (instead of --scale).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path),
              help="Model directory made by clit-export (ONNX graphs + manifest.json).  "
                   "Default: the bundled model (EDSR-baseline CLIT, two branches; see README).")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="CLIT checkpoint (.pth, official or ours).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: tensorrt when usable, else onnxruntime for a model directory; torch for --checkpoint.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: fp16 on a GPU (TensorRT, ONNX Runtime's CUDA provider), fp32 on the CPU; int8 needs a "
                   "clit-calibrate model directory.")
@click.option("--device", default="cpu", show_default=True, help="torch device for --backend torch, e.g. cpu or cuda.")
@click.option("--chunk", type=click.IntRange(min=1), default=None,
              help="Queries evaluated at once; bounds memory, does not change the result.  "
                   "Default: from the memory plan (at most 8192).")
@click.option("--tile", type=click.IntRange(min=0), default=None,
              help="Evaluate in tiles of this many LR pixels per side (graph backends): memory follows the tile, "
                   "not the image; the result is the same.  Default: chosen per image by the memory plan; "
                   "0: never tile.")
@click.option("--max-memory", callback=parse_memory, metavar="SIZE",
              help="Process size the memory plan aims at, e.g. 2G or 1500M (a Jetson Orin Nano shares 8 GB "
                   "between CPU and GPU).  [default: 4G, at most what the system has available]")
@click.option("--max-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest input (width x height, checked in the header before decoding); 0: no limit.")
@click.option("--bit-depth", type=click.Choice(["auto", "8", "16"]), default="auto", show_default=True,
              help="Output bits per channel; auto: 16 for 16-bit inputs written as PNG, else 8.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files (without it an existing output "
                                                "is kept, even one another run writes meanwhile).")
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="TensorRT engine cache [default: ~/.cache/clit/engines].")
@click.option("--server", metavar="URL",
              help="Upscale on a Triton server (clit-serve) instead: host:port or http://host:port (HTTP), "
                   "grpc://host:port.  Reading and writing stay here; the outputs are the same.  Needs "
                   "tritonclient (pip install 'clit[client]').")
@click.option("--server-model", default="clit", show_default=True,
              help="With --server: the served model's name (clit-serve --name).")
@click.option("-v", "--verbose", is_flag=True,
              help="Per-image timings split by pipeline stage, and the tile, chunk and memory budget used.")
@click.option("-q", "--quiet", is_flag=True, help="Errors only: no progress bars, no backend line.")
@error_boundary("clit-infer")
def main(inputs, out, scale, size, model_dir, checkpoint, backend, precision, device, chunk, tile, max_memory,
         max_pixels, bit_depth, overwrite, cache_dir, server, server_model, verbose, quiet):
    """Upscale INPUT images (files, folders, or glob patterns) by any factor with a CLIT model.

    Gray images stay gray, alpha is upscaled bicubically and re-attached, 16-bit PNGs give
    16-bit PNGs (--bit-depth auto), ICC profiles and EXIF orientation are honoured.  Outputs
    are written atomically.  A failing input is reported on one line and the others are
    still processed (exit code 1).  Progress bars appear on a terminal only.

    \b
    Examples:
      clit-infer photo.png --scale 4 -o photo_x4.png          # bundled model
      clit-infer photo.png --model MODEL_DIR --scale 3.7 -o photo_x3.7.png
      clit-infer a.png b.jpg --checkpoint model.pth --size 1920x1080 -o out/
      clit-infer photos/ --scale 2 -o out/ --server localhost:8000    # a clit-serve server
    """
    if (scale is None) == (size is None):
        raise click.UsageError("give exactly one of --scale or --size")
    scale_v = parse_scale(scale) if scale is not None else None
    size_v = parse_size(size) if size is not None else None
    sources = expand_inputs(list(inputs))
    targets = output_paths(sources, out, output_is_folder(out, list(inputs)))
    refuse_collisions(sources, targets)
    for item in inputs:
        if item.is_dir():
            refuse_overlap(out, [item])
    if server is not None:
        engine = upscaler = remote_upscaler(server, server_model, model_dir=model_dir, checkpoint=checkpoint,
                                            backend=backend, precision=precision, device=device, chunk=chunk,
                                            tile=tile, max_memory=max_memory, cache_dir=cache_dir)
    else:
        engine = make_engine(backend, model_dir=model_dir, checkpoint=checkpoint, precision=precision, chunk=chunk,
                             device=device, tile=tile, cache_dir=cache_dir, memory_limit=max_memory)
        upscaler = Upscaler.from_engine(engine)
    if not quiet:
        click.echo(f"backend: {engine.name}", err=True)
    bars = not quiet and sys.stderr.isatty()  # no control characters in logs and CI output
    pipeline = getattr(engine, "pipeline", None)  # graph backends report stages and tile progress
    failed = 0
    overall = tqdm(total=len(sources), desc="images", unit="img", disable=not bars or len(sources) < 2, position=0)
    for (src, _), dst in zip(sources, targets):
        try:
            process(src, dst, upscaler, pipeline, engine, scale_v, size_v, bit_depth, overwrite, max_pixels,
                    verbose, bars)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # the per-input boundary: one line, then the next input
            failed += 1
            tqdm.write(f"error: {for_input(src, exc)}", file=sys.stderr)
        overall.update(1)
    overall.close()
    sys.exit(1 if failed else 0)


def remote_upscaler(url: str, name: str, **local):
    """The Triton client for ``--server``; the options of a local engine are the server's then."""
    given = [f"--{k.replace('_', '-')}" for k, v in local.items()
             if v is not None and v != {"backend": "auto", "precision": "auto", "device": "cpu"}.get(k)]
    if given:
        raise click.UsageError(f"--server runs the server's model and engine: {', '.join(given)} "
                               "belong to clit-serve there")
    from clit.serve.client import RemoteUpscaler  # tritonclient only when asked for

    return RemoteUpscaler(url, name=name)


def process(src: Path, dst: Path, upscaler, pipeline, engine, scale, size, bit_depth, overwrite, max_pixels,
            verbose, bars) -> None:
    """Read, upscale and write one image."""
    if dst.exists() and not overwrite:  # early, to skip the work; the write checks again, atomically
        raise FileExistsError(17, "exists (use --overwrite)", str(dst))
    t0 = time.perf_counter()
    pic = read_image(src, max_pixels=max_pixels)
    t_read = time.perf_counter() - t0
    depth = int(bit_depth) if bit_depth != "auto" else (16 if pic.bit_depth == 16 and dst.suffix.lower() == ".png"
                                                        else 8)
    with tqdm(total=0, desc=src.name, unit="tile", leave=False, position=1,
              disable=pipeline is None or not bars) as bar:
        if pipeline is not None:
            pipeline.timings.clear()
            pipeline.on_tile = lambda done, total, bar=bar: (setattr(bar, "total", total), bar.update(1))
        t1 = time.perf_counter()
        result = upscaler.upscale(pic.pixels, scale=scale, size=size, dtype=np.uint16 if depth == 16 else np.uint8)
        t_up = time.perf_counter() - t1
    t2 = time.perf_counter()
    write_image(dst, result, bit_depth=depth, icc=pic.icc, overwrite=overwrite)
    if verbose:
        stages = dict(pipeline.timings) if pipeline is not None else {}
        tqdm.write(timing_summary(src, result.shape, t_read, t_up, time.perf_counter() - t2, stages), file=sys.stderr)
        if pipeline is not None:  # the tile and chunk the graph backends ran with
            tile_used, chunk_used = pipeline.last_tiling
            budget = getattr(engine, "budget", None)
            plan = f", memory plan budget {budget / 2**20:.0f} MiB" if budget else ""
            tqdm.write(f"    tile {tile_used or 'none (whole image)'}, chunk {chunk_used}{plan}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    main()
