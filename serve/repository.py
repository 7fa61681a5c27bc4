"""A Triton model repository for a model directory (what ``clit-serve --write-repo`` writes).

Layout (mount the folder as Triton's ``--model-repository``)::

    REPO/clit/config.pbtxt          8-bit model:  image UINT8  (H, W, C) -> upscaled UINT8
    REPO/clit/1/model.py            the Python-backend model: clit.serve.triton_model
    REPO/clit/1/model/              the model directory (manifest, ONNX graphs, card)
    REPO/clit_16bit/config.pbtxt    16-bit model: image UINT16 (H, W, C) -> upscaled UINT16
    REPO/clit_16bit/1/model.py

Triton fixes one data type per input, hence one model per sample depth; both run the same
model directory (the 16-bit one names it by a path relative to the repository, so the
repository is used where it lies: a local folder or a mount, not an S3/GCS/Azure repository,
which Triton copies model by model).  Inputs
besides ``image``: ``scale`` (FP64, one value or (sh, sw)) or ``size`` (INT32, (H, W)), and
for the 16-bit model ``bits`` (INT32, 8 or 16: the output's quantisation, default 16), so
that 16-bit input written as 8-bit is quantised once, as ``clit-infer`` does.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from clit.runtime.atomic import check_replaceable, staged_dir
from clit.runtime.bundled import bundled_model_dir
from clit.runtime.engines import BACKENDS, PRECISIONS
from clit.runtime.images import DEFAULT_MAX_PIXELS
from clit.runtime.manifest import load_manifest

MARKER = "clit_repository.txt"  # what lets --force replace a repository this command wrote
MODEL_PY = '''"""Triton Python-backend model written by clit-serve: CLIT through clit.runtime.

The server's Python needs the clit package (pip install 'clit[serve]'); the model directory
is named by this model's config.pbtxt (parameter model_dir, relative to the repository).
"""

from clit.serve.triton_model import TritonPythonModel  # noqa: F401
'''
DEPTHS = {8: "TYPE_UINT8", 16: "TYPE_UINT16"}
UNSAFE_PATH_CHARS = " \t\n'\"\\$`;&|<>()*?[]{}!#~"


@dataclass(frozen=True)
class ServeOptions:
    """How each model instance runs: ``clit.runtime`` engine options, and limits per request."""

    backend: str = "auto"
    precision: str = "auto"
    instances: int = 1
    threads: int | None = None  # ONNX Runtime intra-op threads per instance; None: the server's cores / instances
    max_memory: int | None = None  # bytes per instance (the memory plan's target); None: 4 GiB
    max_pixels: int = DEFAULT_MAX_PIXELS  # input pixels per request
    tile: int | None = None  # LR tile side (None: the memory plan's); a cancelled request stops between tiles

    def __post_init__(self):
        if self.backend not in BACKENDS or self.backend == "torch":
            raise ValueError(f"the server runs a model directory: backend auto, tensorrt or onnxruntime, "
                             f"got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r} (one of {', '.join(PRECISIONS)})")
        if self.instances < 1:
            raise ValueError(f"instances must be >= 1, got {self.instances}")
        if self.threads is not None and self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.tile is not None and self.tile < 0:
            raise ValueError(f"tile must be >= 0, got {self.tile}")


def model_names(name: str) -> dict[int, str]:
    """Sample depth -> Triton model name: ``name`` for 8 bits, ``name_16bit`` for 16."""
    return {8: name, 16: f"{name}_16bit"}


def config_pbtxt(name: str, depth: int, model_dir: str, opts: ServeOptions) -> str:
    """The config.pbtxt of the ``depth``-bit model ``name``."""
    dtype = DEPTHS[depth]
    # KIND_GPU makes Triton give each instance a device id (the model selects it); it needs a
    # GPU visible to Triton, so only an explicit tensorrt backend asks for it.
    kind = "KIND_GPU" if opts.backend == "tensorrt" else "KIND_CPU"
    inputs = [f'{{ name: "image" data_type: {dtype} dims: [ -1, -1, -1 ] }}',
              '{ name: "scale" data_type: TYPE_FP64 dims: [ -1 ] optional: true }',
              '{ name: "size" data_type: TYPE_INT32 dims: [ 2 ] optional: true }']
    if depth == 16:
        inputs.append('{ name: "bits" data_type: TYPE_INT32 dims: [ 1 ] optional: true }')
    params = {"model_dir": model_dir, "depth": str(depth), "backend": opts.backend, "precision": opts.precision,
              "threads": "auto" if opts.threads is None else str(opts.threads), "max_pixels": str(opts.max_pixels),
              "max_memory": str(opts.max_memory or 0), "tile": "auto" if opts.tile is None else str(opts.tile)}
    params_text = [f'{{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()]
    return "\n".join([
        "# Written by clit-serve --write-repo (clit.serve.repository); instance_group may be edited.",
        f'name: "{name}"',
        'backend: "python"',
        "max_batch_size: 0",
        "input [\n  " + ",\n  ".join(inputs) + "\n]",
        f'output [\n  {{ name: "upscaled" data_type: {dtype} dims: [ -1, -1, -1 ] }}\n]',
        f"instance_group [ {{ count: {opts.instances} kind: {kind} }} ]",
        "version_policy: { latest: { num_versions: 1 } }",
        "parameters [\n  " + ",\n  ".join(params_text) + "\n]",
        ""])


def write_repository(out, model_dir=None, name: str = "clit", opts: ServeOptions | None = None,
                     force: bool = False) -> Path:
    """Write the repository for ``model_dir`` (default: the bundled model) at ``out``: built
    beside it and moved into place when complete; an existing ``out`` is replaced only with
    ``force`` and only if this function wrote it."""
    opts = opts or ServeOptions()
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(f"model name must be letters, digits, '_' or '-', got {name!r}")
    source = Path(model_dir) if model_dir is not None else bundled_model_dir()
    if source is None:
        raise ValueError("no model directory given and this installation has no bundled default model")
    load_manifest(source)  # a broken model directory is named now, not when Triton loads it
    out = Path(out)
    unsafe = set(str(out.resolve())) & set(UNSAFE_PATH_CHARS)
    if unsafe:  # Triton up to r25.06 starts the stub through an unquoted `bash -c` (stub_launcher.cc)
        raise ValueError(f"{out}: Triton cannot start a Python model under a path with "
                         f"{' '.join(repr(c) for c in sorted(unsafe))}; choose another folder")
    check_replaceable(out, force, MARKER)
    names = model_names(name)
    inside = f"{names[8]}/1/model"
    with staged_dir(out) as tmp:
        for depth, model in names.items():
            (tmp / model / "1").mkdir(parents=True)
            (tmp / model / "config.pbtxt").write_text(config_pbtxt(model, depth, inside, opts))
            (tmp / model / "1" / "model.py").write_text(MODEL_PY)
        shutil.copytree(source, tmp / inside, ignore=shutil.ignore_patterns("__pycache__", ".*"))
        (tmp / MARKER).write_text(f"Triton model repository written by clit-serve for {source.resolve()}\n")
    return out
