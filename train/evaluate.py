"""``clit-eval``: PSNR/SSIM tables under the LIIF/LTE/CLIT protocol, for any backend or bicubic.

The protocol (LR making, shave, Y weights, SSIM variants) lives in
:mod:`clit.runtime.protocol`; this module runs it over folders and scales and reports.  It
needs torch only for ``--checkpoint`` (the torch backend); exported models and the bicubic
baseline run on numpy and ONNX Runtime.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from clit.runtime.atomic import atomic_write
from clit.runtime.engines import BACKENDS, PRECISIONS, make_engine
from clit.runtime.errors import describe, error_boundary, for_input
from clit.runtime.geometry import plan_cascade
from clit.runtime.images import list_images, read_uint8
from clit.runtime.manifest import sha256_file
from clit.runtime.protocol import PROTOCOLS, make_pair, score
from clit.runtime.resize import imresize


class BicubicEngine:
    """The bicubic baseline: MATLAB-compatible ``imresize`` up to ``round(h * s)``."""

    name = "bicubic (MATLAB imresize)"
    source = None  # no model file

    def upscale(self, img: np.ndarray, scale=None, size=None) -> np.ndarray:
        h, w = img.shape[:2]
        if size is None:
            sh, sw = scale if isinstance(scale, (tuple, list)) else (scale, scale)
            size = (round(h * sh), round(w * sw))
        return imresize(img, size=size).astype(np.float32)


@dataclass
class ImageScore:
    psnr: float
    ssim: float
    ssim_y: float
    seconds: float


@dataclass
class Result:
    dataset: str
    scale: float
    psnr: float
    ssim: float
    ssim_y: float
    images: int  # images the figures cover
    seconds: float
    failed: dict = field(default_factory=dict)  # image -> one-line reason, for images that could not be scored

    @property
    def coverage(self) -> str:
        return f"{self.images}/{self.images + len(self.failed)}" if self.failed else str(self.images)


def dataset_name(folder: Path) -> str:
    """``.../Set5/HR`` -> ``Set5``; otherwise the folder's own name."""
    folder = Path(folder)
    return folder.parent.name if folder.name.upper() == "HR" and folder.parent.name else folder.name


def check_scale(engine, scale: float) -> None:
    """ValueError (for the whole dataset/scale pair) if the engine's model cannot reach ``scale``."""
    pipeline, model = getattr(engine, "pipeline", None), getattr(engine, "model", None)
    branches = pipeline.manifest.n_branches if pipeline is not None else getattr(model, "n_branches", None)
    if branches is not None:
        plan_cascade((64, 64), scale=scale, max_branches=branches)


def evaluate(engine, folder: Path, scale: float, protocol: str, quantize: bool = False,
             max_images: int | None = None, progress: bool = False,
             scores: dict[str, ImageScore] | None = None, on_image=None, on_error=None) -> Result:
    """Mean PSNR / SSIM of ``engine`` over the HR images of ``folder`` at ``scale``.

    ``scores`` (image path relative to ``folder`` -> score) holds images scored earlier, which
    are not run again, and receives each new score; ``on_image()`` is called after each.  An
    image that cannot be scored (unreadable, too large, ...) is reported through
    ``on_error(path, exc)``, listed in the result's ``failed`` and left out of the means; the
    others still count.  ``seconds`` is the total time spent in ``engine.upscale``."""
    folder = Path(folder)
    check_scale(engine, scale)
    files = list_images(folder)[:max_images]
    names = [p.relative_to(folder).as_posix() for p in files]
    scores = {} if scores is None else scores
    failed: dict = {}
    todo = [(n, p) for n, p in zip(names, files) if n not in scores]
    for name, path in tqdm(todo, desc=f"{dataset_name(folder)} x{scale:g}", disable=not progress, leave=False,
                           initial=len(files) - len(todo), total=len(files)):
        try:
            scores[name] = score_image(engine, path, scale, protocol, quantize)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # the per-image boundary: reported, the others still scored
            failed[name] = for_input(path, exc)
            if on_error is not None:
                on_error(path, exc)
            continue
        if on_image is not None:
            on_image()
    rows = [scores[n] for n in names if n in scores]
    if not rows:
        raise ValueError(f"{folder} x{scale:g}: no image could be scored ({len(failed)} failed)")
    return Result(dataset_name(folder), float(scale), float(np.mean([r.psnr for r in rows])),
                  float(np.mean([r.ssim for r in rows])), float(np.mean([r.ssim_y for r in rows])), len(rows),
                  round(sum(r.seconds for r in rows), 3), failed)


def score_image(engine, path: Path, scale: float, protocol: str, quantize: bool) -> ImageScore:
    """One image: LR made by the protocol, upscaled, clamped (and quantised), scored."""
    hr, lr = make_pair(read_uint8(path), scale)
    t0 = time.perf_counter()
    pred = engine.upscale(lr.astype(np.float32) / 255, scale=scale)
    seconds = time.perf_counter() - t0
    if pred.shape != hr.shape:
        raise AssertionError(f"{path}: prediction {pred.shape} but HR crop {hr.shape}")
    pred = np.clip(pred, 0, 1)
    if quantize:
        pred = np.rint(pred * 255) / 255
    s = score(pred, hr.astype(np.float64) / 255, scale, protocol)
    return ImageScore(float(s.psnr), float(s.ssim), float(s.ssim_y), seconds)


def format_table(results: list[Result]) -> str:
    """A plain-text table, one row per dataset and scale."""
    head = f"{'dataset':<12}{'scale':>7}{'images':>8}{'PSNR dB':>10}{'SSIM':>9}{'SSIM-Y':>9}{'seconds':>10}"
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(f"{r.dataset:<12}{r.scale:>7g}{r.coverage:>8}{r.psnr:>10.3f}{r.ssim:>9.4f}{r.ssim_y:>9.4f}"
                    f"{r.seconds:>10.2f}")
    if any(r.failed for r in results):
        rows.append("(images: scored/total where some could not be scored; the figures cover the scored ones)")
    return "\n".join(rows)


def markdown_rows(results: list[Result], label: str, scales: list[float], header: bool = True) -> str:
    """README-style rows ``| dataset | label | PSNR / SSIM-Y | ...`` over ``scales`` (blank where
    a scale was not run); with ``header``, the table head first."""
    lines = []
    if header:
        lines += ["| dataset | method | " + " | ".join(f"x{s:g}" for s in scales) + " |",
                  "|---|---|" + "---|" * len(scales)]
    for name in dict.fromkeys(r.dataset for r in results):
        cell = {r.scale: f"{r.psnr:.2f} / {r.ssim_y:.4f}" + (f" ({r.coverage} images)" if r.failed else "")
                for r in results if r.dataset == name}
        lines.append(f"| {name} | {label} | " + " | ".join(cell.get(float(s), "") for s in scales) + " |")
    return "\n".join(lines)


def parse_scales(text: str) -> list[float]:
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: scales are comma-separated numbers, e.g. 2,3,4,6") from None
    if not scales or any(not math.isfinite(s) or s < 1 for s in scales):
        raise click.BadParameter(f"{text!r}: every scale must be a finite number >= 1")
    return scales


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(path_type=Path), help="CLIT checkpoint (torch backend).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path),
              help="Model directory made by clit-export [default: the bundled model].")
@click.option("--method", type=click.Choice(["model", "bicubic"]), default="model", show_default=True,
              help="bicubic: the MATLAB-compatible bicubic baseline instead of a model.")
@click.option("--data", "folders", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Folder of HR images, e.g. ../shared/data/Set5/HR (repeatable).")
@click.option("--scales", default="2,3,4", show_default=True, help="Comma-separated scales, e.g. 2,3,4,6,8,12,2.5.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="benchmark", show_default=True,
              help="benchmark: Y PSNR, shave ceil(s); div2k: RGB PSNR, shave ceil(s) + 6.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: tensorrt when usable, else onnxruntime for a model directory; torch for --checkpoint.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: fp16 on a GPU, fp32 on the CPU (the README tables are fp32).")
@click.option("--device", default="cpu", show_default=True, help="torch device for --checkpoint.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="CPU intra-op threads of ONNX Runtime or torch (0: every core); e.g. 1 each for two "
                   "evaluations side by side on two cores.")
@click.option("--quantize", is_flag=True, help="Round predictions to 8 bits first (what a saved PNG scores).")
@click.option("--max-images", type=click.IntRange(min=1), help="Only the first N images of each folder.")
@click.option("--json", "json_out", type=click.Path(path_type=Path),
              help="Also write the results as JSON here (rewritten after every image, 'complete' false "
                   "until the end; the scores of a dataset/scale pair still running are under 'partial').")
@click.option("--resume", is_flag=True,
              help="Keep the results already in --json from the same setup (same model files too) and "
                   "run only what is missing, down to single images (long evaluations over several "
                   "sittings).")
@click.option("--markdown", "markdown_label", metavar="LABEL",
              help="Also print the results as README table rows (PSNR / SSIM-Y per scale) labelled LABEL.")
@error_boundary("clit-eval")
def main(checkpoint, model_dir, method, folders, scales, protocol, backend, precision, device, threads, quantize,
         max_images, json_out, resume, markdown_label):
    """Evaluate a model (or bicubic) on folders of HR images at several scales.

    LR inputs are made from the HR images as LIIF/LTE/CLIT do (MATLAB bicubic for integer
    scales <= 4, Pillow bicubic otherwise).  PSNR follows --protocol; SSIM is the official
    RGB Gaussian SSIM (no shave), SSIM-Y the common luma SSIM with the protocol's shave.
    Without --checkpoint or --model the bundled default model is evaluated.  An image that
    cannot be scored is reported in one line and left out; the table says how many images
    each figure covers; the exit code is then 1.
    """
    scale_list = parse_scales(scales)
    if resume and json_out is None:
        raise click.UsageError("--resume needs --json (the results to continue)")
    if method == "bicubic":
        if checkpoint or model_dir:
            raise click.UsageError("--method bicubic takes no --checkpoint or --model")
        engine = BicubicEngine()
    else:
        if checkpoint and model_dir:
            raise click.UsageError("give at most one of --checkpoint and --model")
        engine = make_engine(backend, model_dir=model_dir, checkpoint=checkpoint, precision=precision, device=device,
                             threads=threads)
    click.echo(f"method: {engine.name}; protocol: {protocol}", err=True)
    setup = {"method": engine.name, "protocol": protocol, "quantize": quantize,
             "checkpoint": str(checkpoint) if checkpoint else None, "model": str(model_dir) if model_dir else None,
             "model_sha256": sha256_file(engine.source) if engine.source else None, "max_images": max_images}
    done, partial = previous_results(json_out, setup) if resume else ({}, {})
    results, failed = [], []
    asked = {(dataset_name(f), float(s)) for f in folders for s in scale_list}
    others = [r for key, r in done.items() if key not in asked]  # finished before, not asked now: kept in --json

    def save(complete: bool = False) -> None:
        if json_out is not None:
            write_json(json_out, setup, others + results, failed, partial, complete=complete)

    save()  # an unwritable --json is an error now, not after hours of evaluation

    for folder in folders:
        for s in scale_list:
            key = (dataset_name(folder), float(s))
            if key in done:
                results.append(done[key])
                click.echo(f"{key[0]} x{s:g}: kept from {json_out}", err=True)
                continue
            running = f"{key[0]} x{s:g}"
            scores = partial.setdefault(running, {})
            if scores:
                click.echo(f"{running}: {len(scores)} images kept from {json_out}", err=True)
            def image_failed(path, exc, s=s):
                failed.append(f"{for_input(path, exc)} (x{s:g})")
                tqdm.write(f"clit-eval: error: {failed[-1]}", file=sys.stderr)
                save()

            try:
                r = evaluate(engine, folder, s, protocol, quantize=quantize, max_images=max_images,
                             progress=sys.stderr.isatty(), scores=scores, on_image=save, on_error=image_failed)
            except ValueError as exc:  # no images, a scale beyond the model, nothing scorable
                if not scores:
                    del partial[running]
                failed.append(f"{folder} x{s:g}: {describe(exc)}")  # finished scores stay under 'partial'
                click.echo(f"clit-eval: error: {failed[-1]}", err=True)
                save()
                continue
            del partial[running]
            results.append(r)
            click.echo(f"{r.dataset} x{r.scale:g}: PSNR {r.psnr:.3f} dB, SSIM-Y {r.ssim_y:.4f} "
                       f"({r.coverage} images, {r.seconds:.1f} s)", err=True)
            save()
    click.echo(format_table(results))
    if markdown_label:
        click.echo("\n" + markdown_rows(results, markdown_label, scale_list))
    save(complete=True)
    sys.exit(1 if failed else 0)


METRICS = {"psnr": "Y (benchmark) or RGB (div2k), shaved", "ssim": "official RGB Gaussian SSIM, no shave",
           "ssim_y": "Y-channel Gaussian SSIM, shaved like PSNR"}


def write_json(path: Path, setup: dict, results: list[Result], failed: list[str],
               partial: dict[str, dict[str, ImageScore]], complete: bool) -> None:
    """The results document, written atomically: the setup, one entry per finished dataset and
    scale, the per-image scores of the pair still running ('partial'), the errors, and whether
    the run had finished."""
    doc = {"results": [asdict(r) for r in results], **setup, "metrics": METRICS, "errors": failed,
           "partial": {pair: {name: asdict(v) for name, v in scores.items()} for pair, scores in partial.items()},
           "complete": complete}
    atomic_write(path, lambda f: f.write(json.dumps(doc, indent=2).encode()))


def previous_results(path: Path, setup: dict) -> tuple[dict[tuple[str, float], Result],
                                                       dict[str, dict[str, ImageScore]]]:
    """From an earlier ``--json`` document of the same setup: (dataset, scale) -> Result of the
    finished pairs, and 'DATASET xSCALE' -> image -> score of an unfinished one (both empty if
    the file does not exist); a different setup is an error."""
    if not path.is_file():
        return {}, {}
    try:
        doc = json.loads(path.read_text())
        rows = [Result(**r) for r in doc["results"]]
        partial = {pair: {name: ImageScore(**v) for name, v in scores.items()}
                   for pair, scores in doc.get("partial", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise click.UsageError(f"--resume: {path} is not a clit-eval results file ({exc})") from None
    differs = [k for k, v in setup.items() if doc.get(k) != v]
    if differs:
        raise click.UsageError(f"--resume: {path} was made with another setup ({', '.join(differs)} differ)")
    return {(r.dataset, r.scale): r for r in rows}, partial


if __name__ == "__main__":  # pragma: no cover
    main()
