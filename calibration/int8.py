"""INT8 model directories by explicit quantisation (Q/DQ nodes) with ONNX Runtime's tools.

Calibration data are the graphs' real inputs: LR crops of real images (the evaluation
protocol's LR making, see :func:`clit.calibration.parity.make_cases`) pushed through the FP32
pipeline at several scales, recorded per graph.  Each graph is then quantised by
``onnxruntime.quantization.quantize_static`` in QDQ format, symmetric INT8 weights
(per channel) and activations, the form ONNX Runtime and TensorRT (8.5 on; required from 11)
both consume.  Kept in floating point: the manifest's ``fp32_layers`` (coordinate math,
positional encoding, softmax) and the last layer of each decoder; ``keep_fp32`` adds more.
Tensor ranges are saved per graph (``calibration/*.json`` in the output directory, ORT's
calibration cache) and reused when the same cache folder is given again.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from clit.runtime.atomic import check_replaceable, refuse_overlap, staged_dir
from clit.runtime.geometry import STAGE_BASE, stage_plan
from clit.runtime.manifest import MANIFEST, Manifest, load_manifest, sha256_file
from clit.runtime.onnx_backend import OnnxRuntimeRunner
from clit.runtime.pipeline import Pipeline

from .parity import make_cases

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


class RecordingRunner(OnnxRuntimeRunner):
    """The FP32 ONNX Runtime runner, keeping up to ``per_graph`` input sets per graph file
    (decoder query sets subsampled to ``max_queries``)."""

    def __init__(self, manifest: Manifest, per_graph: int, max_queries: int, seed: int = 0):
        super().__init__(manifest)
        self.per_graph, self.max_queries = per_graph, max_queries
        self.rng = np.random.default_rng(seed)
        self.feeds: dict[str, list[dict[str, np.ndarray]]] = {}
        self.seen: dict[str, int] = {}

    def run(self, file, feeds):
        names = {i.name for i in self.session(file).get_inputs()}
        kept = {k: np.array(v, copy=True) for k, v in feeds.items() if k in names}
        if "coord" in kept and kept["coord"].shape[1] > self.max_queries:
            pick = np.sort(self.rng.choice(kept["coord"].shape[1], self.max_queries, replace=False))
            kept["coord"] = np.ascontiguousarray(kept["coord"][:, pick])
        n = self.seen.get(file, 0)
        self.seen[file] = n + 1
        bucket = self.feeds.setdefault(file, [])
        if len(bucket) < self.per_graph:
            bucket.append(kept)
        else:  # reservoir sampling: every call equally likely to be kept
            j = int(self.rng.integers(0, n + 1))
            if j < self.per_graph:
                bucket[j] = kept
        return super().run(file, feeds)


def default_scales(n_branches: int) -> list[float]:
    """Calibration scales that run every branch of an ``n_branches`` model: x2 and x4 (branch
    1 alone), then for each branch k >= 2 the middle of its range, 2 x 4^(k-1) (x8, x32, ...)."""
    return [2.0, 4.0] + [2.0 * STAGE_BASE ** (k - 1) for k in range(2, n_branches + 1)]


def check_scales(manifest: Manifest, scales) -> None:
    """ValueError unless ``scales`` stay within the model and, together, run every branch (a
    branch no scale reaches would get no calibration data)."""
    if not scales:
        raise ValueError("no calibration scales given")
    n = manifest.n_branches
    stages = [len(stage_plan(s)) for s in scales]
    beyond = [s for s, k in zip(scales, stages) if k > n]
    if beyond:
        raise ValueError(f"scale x{beyond[0]:g} is beyond the model's largest (x{STAGE_BASE ** n:g}, {n} branches)")
    reached = max(stages)
    if reached < n:
        raise ValueError(f"the scales {','.join(f'{s:g}' for s in scales)} run branches 1-{reached} of the model's "
                         f"{n}: add one in (x{STAGE_BASE ** reached:g}, x{STAGE_BASE ** (reached + 1):g}] "
                         f"(e.g. {default_scales(reached + 1)[-1]:g}) for branch {reached + 1}, or leave --scales out")


def collect_inputs(manifest: Manifest, folder: Path, scales, max_images: int, hr_crop: int,
                   per_graph: int = 16, max_queries: int = 4096) -> dict[str, list[dict]]:
    """Each graph's real inputs from the FP32 pipeline on real images at ``scales``, run once
    with the per-query and once with the grouped decoders, so that both have inputs whatever
    the scales."""
    runner = RecordingRunner(manifest, per_graph, max_queries)
    cases = make_cases(folder, scales, max_images, hr_crop)
    for grouping in ("off", "on"):
        pipe = Pipeline(manifest, runner, grouping=grouping)
        for case in cases:
            pipe.upscale(case.lr, scale=case.scale)
    return runner.feeds


def last_linear(model_path: Path) -> list[str]:
    """Name of the last MatMul/Gemm node (the decoder MLP's output layer)."""
    import onnx

    nodes = [n for n in onnx.load(str(model_path), load_external_data=False).graph.node if n.op_type in ("MatMul", "Gemm")]
    return [nodes[-1].name] if nodes else []


def per_image_products(model_path: Path) -> list[str]:
    """Names of the MatMul/Gemm nodes computed only from constants and the fixed-size graph
    inputs (cell, size, offsets): per-image terms such as the decoders' cell bias, the same for
    every query, where INT8 would only add rounding."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    tainted = {i.name for i in graph.input if any(d.dim_param for d in i.type.tensor_type.shape.dim)}
    out = []
    for n in graph.node:  # topologically sorted
        if any(i in tainted for i in n.input):
            tainted.update(n.output)
        elif n.op_type in QUANTIZED_OPS:
            out.append(n.name)
    return out


def quantize_graph(src: Path, dst: Path, feeds: list[dict], method: str, exclude: list[str], cache: Path) -> None:
    """Write the QDQ INT8 version of ``src`` to ``dst`` (ranges cached in ``cache``)."""
    from onnxruntime import quantization as q

    if "calibration_cache_path" not in inspect.signature(q.quantize_static).parameters:
        raise RuntimeError("clit-calibrate needs an onnxruntime whose quantize_static has calibration caches "
                           "(calibration_cache_path); upgrade onnxruntime")

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    hint = _DropHint()  # ORT's "consider pre-processing" warning (the graphs are already shape-inferred)
    logging.getLogger().addFilter(hint)
    try:
        q.quantize_static(
            str(src), str(dst), Reader(), quant_format=q.QuantFormat.QDQ, op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True, activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
            nodes_to_exclude=exclude, calibrate_method=getattr(q.CalibrationMethod, METHODS[method]),
            # QuantizeBias False: ORT's default INT32 bias DequantizeLinear cannot be built by any TensorRT
            # (IDequantizeLayer takes INT8 only on 8.5; INT8/FP8/INT4 on 10-11); TensorRT fuses float biases
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
            calibration_cache_path=str(cache),
        )
    finally:
        logging.getLogger().removeFilter(hint)


def check_tensorrt_clean(src: Path, dst: Path) -> None:
    """Refuse a quantised graph with TensorRT audit findings (any target) that its FP32 graph has
    not (:mod:`clit.export.audit`): quantisation must not add anything TensorRT cannot build."""
    from clit.export.audit import TARGETS, audit_file

    def keyed(path, target):
        return {(f.op, f.problem.replace(path.name, "")) for f in audit_file(path, target)}

    for target in TARGETS:
        new = keyed(dst, target) - keyed(src, target)
        if new:
            op, problem = sorted(new)[0]
            raise RuntimeError(f"{dst.name}: quantisation made {len(new)} node(s) TensorRT {target} cannot build, "
                               f"e.g. {op}: {problem}")


class _DropHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


def calibrate(model_dir: Path, out: Path, folder: Path, scales=None, max_images: int = 16,
              hr_crop: int = 128, method: str = "minmax", keep_fp32: tuple[str, ...] = (),
              cache_dir: Path | None = None, log=print, force: bool = False) -> Manifest:
    """Write ``out``: a copy of ``model_dir`` with an ``int8`` variant of every graph.

    Everything is checked first (``out`` is not, does not contain and does not lie inside
    ``model_dir``, ``folder`` or ``cache_dir``; an existing ``out`` is replaced only with
    ``force`` and only if it is a model directory); the result is built beside ``out`` and
    put in place when complete.  ``scales`` default to :func:`default_scales`; given ones
    must run every branch."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}")
    out = Path(out)
    refuse_overlap(out, [model_dir, folder, cache_dir])
    check_replaceable(out, force, marker=MANIFEST)
    manifest = load_manifest(model_dir)
    scales = default_scales(manifest.n_branches) if scales is None else list(scales)
    check_scales(manifest, scales)
    feeds = collect_inputs(manifest, folder, scales, max_images, hr_crop)
    with staged_dir(out) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        cache_root = cache_dir or tmp / "calibration"
        cache_root.mkdir(parents=True, exist_ok=True)
        data = json.loads((tmp / MANIFEST).read_text())
        excluded = {}
        for g in data["graphs"]:
            src = tmp / g["file"]
            dst = src.with_name(src.stem + ".int8.onnx")
            exclude = list(g.get("fp32_layers", [])) + list(keep_fp32)
            if g["kind"] in ("decoder", "grouped"):  # the output layer and per-image terms stay in float
                exclude += last_linear(src) + per_image_products(src)
            if g["file"] not in feeds:
                raise RuntimeError(f"{g['file']} never ran on the calibration images (add scales that use it)")
            log(f"quantising {g['file']} ({len(feeds[g['file']])} calibration inputs, {method})")
            quantize_graph(src, dst, feeds[g["file"]], method, exclude, cache_root / f"{src.stem}.json")
            check_tensorrt_clean(src, dst)
            g.setdefault("variants", {})["int8"] = {"file": dst.name,
                                                    "sha256": sha256_file(dst)}
            excluded[g["file"]] = len(exclude)
        data["precisions"] = sorted(set(data.get("precisions", ["fp32"])) | {"int8"})
        data["int8"] = {"method": method, "scales": list(scales), "images": max_images, "hr_crop": hr_crop,
                        "data": str(folder), "quantized_ops": QUANTIZED_OPS, "format": "QDQ, symmetric INT8",
                        "kept_in_float": excluded, "keep_fp32": list(keep_fp32)}
        (tmp / MANIFEST).write_text(json.dumps(data, indent=1))
    return load_manifest(out)
