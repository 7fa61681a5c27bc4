"""Accuracy parity of a deployed model directory against the PyTorch reference.

The same LR inputs (crops of real HR images, made by the evaluation protocol) go through
the PyTorch model and through a backend; per scale and image we report the difference of
the two outputs and each one's PSNR/SSIM against the ground truth.  The reference outputs
can be saved with the inputs' hashes (a workstation with torch) and checked later on a
device without torch.  Torch is imported only to compute a reference or to localise.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clit.runtime.images import ImageError, list_images, read_uint8
from clit.runtime.manifest import Manifest, sha256_file
from clit.runtime.metrics import psnr, ssim_rgb
from clit.runtime.protocol import make_pair, sr_psnr

DEFAULT_SCALES = (2.0, 3.7, 6.0, 12.0)
DEFAULT_HR_CROP = 192  # HR pixels per side taken from each image (keeps x12 references small)


class ParityError(ValueError):
    """Unusable parity inputs (no images, mismatched reference, no checkpoint)."""


@dataclass
class Case:
    image: str
    scale: float
    lr: np.ndarray  # (h, w, 3) float32 in [0, 1]
    hr: np.ndarray  # (H, W, 3) float64 in [0, 1]

    @property
    def key(self) -> str:
        return f"{self.image}@x{self.scale:g}"

    @property
    def lr_sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.lr).tobytes()).hexdigest()


def make_cases(folder: Path, scales, max_images: int | None = None, hr_crop: int = DEFAULT_HR_CROP) -> list[Case]:
    """LR/HR pairs from the centre ``hr_crop`` square of each image at each scale."""
    try:
        files = list_images(folder)[:max_images]
    except ImageError as exc:
        raise ParityError(str(exc)) from None
    cases = []
    for path in files:
        img = read_uint8(path)
        h, w = img.shape[:2]
        y, x = max((h - hr_crop) // 2, 0), max((w - hr_crop) // 2, 0)
        crop = np.ascontiguousarray(img[y:y + hr_crop, x:x + hr_crop])
        for s in scales:
            hr, lr = make_pair(crop, s)
            cases.append(Case(path.name, float(s), lr.astype(np.float32) / 255, hr.astype(np.float64) / 255))
    return cases


# ------------------------------------------------------------------ references
def find_checkpoint(manifest: Manifest) -> Path:
    """The checkpoint the model directory was exported from (recorded path, inside the model
    directory, or beside it), verified by its sha256."""
    src = manifest.data.get("source", {})
    name, digest = src.get("checkpoint"), src.get("sha256")
    candidates = [Path(p) for p in (src.get("path"),) if p] + [manifest.root / str(name), manifest.root.parent / str(name)]
    for path in candidates:
        if name and path.is_file() and sha256_file(path) == digest:
            return path
    raise ParityError(f"{manifest.root}: the checkpoint it was exported from ({name}) was not found "
                      f"(looked at {', '.join(str(p) for p in candidates)}); give --checkpoint or --reference")


def torch_reference(checkpoint: Path, cases: list[Case]) -> list[np.ndarray]:
    """The PyTorch model's outputs (not clamped) for every case."""
    try:
        from clit.train.engine import TorchEngine
    except ImportError:
        raise ParityError("computing the reference needs PyTorch (pip install 'clit[train]'); "
                          "on a device without it use --reference REF.npz saved on a workstation") from None
    engine = TorchEngine(checkpoint)
    return [engine.upscale(c.lr, scale=c.scale) for c in cases]


def save_reference(path: Path, cases: list[Case], outputs: list[np.ndarray], checkpoint_sha256: str) -> None:
    """Reference outputs plus the inputs' hashes, for ``load_reference`` on another machine."""
    from clit.runtime.atomic import atomic_write

    arrays = {f"out{i}": o.astype(np.float32) for i, o in enumerate(outputs)}
    meta = {"keys": [c.key for c in cases], "lr_sha256": [c.lr_sha256 for c in cases],
            "checkpoint_sha256": checkpoint_sha256}
    arrays["meta"] = np.frombuffer(repr(meta).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load_reference(path: Path, cases: list[Case], checkpoint_sha256: str | None) -> list[np.ndarray]:
    """Reference outputs for ``cases``; a reference of other inputs or another model is an error."""
    import ast

    try:
        data = np.load(path)
        meta = ast.literal_eval(bytes(data["meta"]).decode())
    except (OSError, ValueError, KeyError, SyntaxError) as exc:
        raise ParityError(f"{path}: not a clit-parity reference ({exc})") from None
    if checkpoint_sha256 and meta["checkpoint_sha256"] != checkpoint_sha256:
        raise ParityError(f"{path}: the reference was computed from another checkpoint than this model's")
    index = {k: i for i, k in enumerate(meta["keys"])}
    out = []
    for c in cases:
        i = index.get(c.key)
        if i is None:
            raise ParityError(f"{path}: no reference for {c.key} (made with other --data/--scales/--max-images?)")
        if meta["lr_sha256"][i] != c.lr_sha256:
            raise ParityError(f"{path}: the LR input of {c.key} differs from the one the reference was made from")
        out.append(data[f"out{i}"])
    return out


# ------------------------------------------------------------------ comparison
@dataclass
class Row:
    image: str
    scale: float
    max_abs: float
    mean_abs: float
    psnr_vs_reference: float
    psnr_reference: float
    psnr_backend: float
    ssim_reference: float
    ssim_backend: float

    @property
    def delta_psnr(self) -> float:
        return self.psnr_backend - self.psnr_reference


@dataclass(frozen=True)
class Thresholds:
    max_abs: float | None = None
    min_psnr: float | None = None
    max_delta: float | None = None


DEFAULT_THRESHOLDS = {
    "fp32": Thresholds(max_abs=1e-4),
    "fp16": Thresholds(min_psnr=45.0, max_delta=0.02),
    "int8": Thresholds(max_delta=0.15),
}


def compare(cases: list[Case], reference: list[np.ndarray], backend) -> list[Row]:
    """Run ``backend`` (an engine) on every case and compare with ``reference``."""
    rows = []
    for c, ref in zip(cases, reference):
        got = backend.upscale(c.lr, scale=c.scale)
        if got.shape != ref.shape:
            raise ParityError(f"{c.key}: backend output {got.shape} but reference {ref.shape}")
        diff = np.abs(got.astype(np.float64) - ref)
        ref_c, got_c = np.clip(ref, 0, 1), np.clip(got, 0, 1)
        rows.append(Row(c.image, c.scale, float(diff.max()), float(diff.mean()), psnr(got_c, ref_c),
                        sr_psnr(ref_c, c.hr, c.scale, "benchmark"), sr_psnr(got_c, c.hr, c.scale, "benchmark"),
                        ssim_rgb(ref_c, c.hr), ssim_rgb(got_c, c.hr)))
    return rows


def violations(rows: list[Row], t: Thresholds) -> list[str]:
    """One line per row and threshold that fails."""
    bad = []
    for r in rows:
        where = f"{r.image} x{r.scale:g}"
        if t.max_abs is not None and not r.max_abs <= t.max_abs:
            bad.append(f"{where}: max abs diff {r.max_abs:.3g} > {t.max_abs:g}")
        if t.min_psnr is not None and not r.psnr_vs_reference >= t.min_psnr:
            bad.append(f"{where}: PSNR vs reference {r.psnr_vs_reference:.2f} dB < {t.min_psnr:g}")
        if t.max_delta is not None and not abs(r.delta_psnr) <= t.max_delta:
            bad.append(f"{where}: |delta PSNR vs ground truth| {abs(r.delta_psnr):.3f} dB > {t.max_delta:g}")
    return bad


# ------------------------------------------------------------------ localisation
STAGE_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "int8": 1e-1}


def localise(checkpoint: Path, pipeline, case: Case, tol: float) -> list[dict]:
    """Polygraphy-style: compare the encoder features, each branch's q/k/v maps and each
    branch's residuals of ``pipeline`` with the PyTorch model on one case (whole image).
    Returns one entry per stage with the relative error max|a-b| / max|b|; ``first`` marks
    the first stage over ``tol``."""
    import torch

    from clit.train.checkpoint import load_model

    model = load_model(checkpoint)
    plan = pipeline.plan(case.lr.shape[:2], scale=case.scale)
    x = np.ascontiguousarray(case.lr.transpose(2, 0, 1)[None])
    out_h, out_w = plan.out_size
    rng = np.random.default_rng(0)
    n = min(2048, out_h * out_w)
    flat = rng.choice(out_h * out_w, n, replace=False)
    from clit.runtime.geometry import pixel_centres

    coord = np.stack([pixel_centres(out_h)[flat // out_w], pixel_centres(out_w)[flat % out_w]], -1).astype(np.float32)
    entries = []

    def record(stage: str, got: np.ndarray, ref: np.ndarray) -> None:
        err = float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-6))
        entries.append({"stage": stage, "relative_error": err, "over": err > tol})

    with torch.no_grad():
        lr_t = torch.from_numpy(x)
        feat_t = model.encode(lr_t)
        feat, *maps0 = pipeline.encode(x)
        record("encoder features", feat, feat_t.numpy())
        coord_t, cell_t = torch.from_numpy(coord)[None], torch.from_numpy(plan.cell)[None]
        for k, grid in enumerate(plan.grids):
            inp_t = feat_t if k == 0 else model.branch_input(feat_t, grid)
            maps_t = model.branch_maps(inp_t, k)
            if k == 0:
                maps = maps0
            else:
                maps = pipeline.branch_maps(feat, (0, 0), k, grid, plan.lr_size, (0, grid[0]), (0, grid[1]))
            for name, a, b in zip("qkv", maps, maps_t):
                record(f"branch {k + 1} {name} map", a, b.numpy())
            res_t = model.query(k, maps_t, coord_t, cell_t)[0].numpy()
            res = pipeline.decode(k, maps, grid, coord, plan.cell)
            record(f"branch {k + 1} residual", res, res_t)
    first = next((e for e in entries if e["over"]), None)
    for e in entries:
        e["first"] = e is first
    return entries


# ------------------------------------------------------------------ reports
def summary_by_scale(rows: list[Row]) -> list[dict]:
    out = []
    for s in sorted({r.scale for r in rows}):
        rs = [r for r in rows if r.scale == s]
        out.append({"scale": s, "images": len(rs), "max_abs": max(r.max_abs for r in rs),
                    "mean_abs": float(np.mean([r.mean_abs for r in rs])),
                    "psnr_vs_reference": min(r.psnr_vs_reference for r in rs),
                    "psnr_reference": float(np.mean([r.psnr_reference for r in rs])),
                    "psnr_backend": float(np.mean([r.psnr_backend for r in rs])),
                    "delta_psnr": float(np.mean([r.delta_psnr for r in rs])),
                    "ssim_reference": float(np.mean([r.ssim_reference for r in rs])),
                    "ssim_backend": float(np.mean([r.ssim_backend for r in rs]))})
    return out


COLUMNS = [("scale", "scale", "{:g}"), ("images", "images", "{}"), ("max_abs", "max abs diff", "{:.2e}"),
           ("mean_abs", "mean abs diff", "{:.2e}"), ("psnr_vs_reference", "PSNR vs ref", "{:.2f}"),
           ("psnr_reference", "PSNR ref", "{:.3f}"), ("psnr_backend", "PSNR backend", "{:.3f}"),
           ("delta_psnr", "delta", "{:+.4f}"), ("ssim_reference", "SSIM ref", "{:.4f}"),
           ("ssim_backend", "SSIM backend", "{:.4f}")]


def _fmt(value, spec: str) -> str:
    return "inf" if isinstance(value, float) and math.isinf(value) else spec.format(value)


def table(summary: list[dict]) -> str:
    """Terminal table, one row per scale (PSNR in dB; min PSNR vs reference, mean of the rest)."""
    widths = [max(len(h), 10) for _, h, _ in COLUMNS]
    lines = ["  ".join(h.rjust(w) for (_, h, _), w in zip(COLUMNS, widths))]
    for row in summary:
        lines.append("  ".join(_fmt(row[k], f).rjust(w) for (k, _, f), w in zip(COLUMNS, widths)))
    return "\n".join(lines)


def markdown(summary: list[dict], title: str, failures: list[str], stages: list[dict] | None) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row[k], f) for k, _, f in COLUMNS) + " |" for row in summary]
    lines += ["", f"**{'FAIL' if failures else 'PASS'}**" + (f": {len(failures)} violation(s)" if failures else "")]
    lines += [f"- {f}" for f in failures[:20]]
    if stages:
        lines += ["", "| stage | relative error |", "|---|---|"]
        lines += [f"| {'**' + s['stage'] + '** (first over tolerance)' if s['first'] else s['stage']} | "
                  f"{s['relative_error']:.2e} |" for s in stages]
    return "\n".join(lines) + "\n"


def rows_json(rows: list[Row]) -> list[dict]:
    return [{**asdict(r), "delta_psnr": r.delta_psnr} for r in rows]

