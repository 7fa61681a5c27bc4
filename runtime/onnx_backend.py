"""ONNX Runtime backend: one InferenceSession per graph file, created on first use.

Execution providers, best first, among those the installed onnxruntime has
(:func:`default_providers`):

* ``TensorrtExecutionProvider`` (GPU builds with TensorRT): ``trt_fp16_enable`` for FP16,
  ``trt_engine_cache_enable`` with ``trt_engine_cache_path`` (our engine cache folder,
  sub-folder ``ort-trt``) so engines are built once, ``trt_timing_cache_enable``;
* ``CUDAExecutionProvider``: ``cudnn_conv_algo_search = HEURISTIC`` (no per-shape
  benchmarking: the windows change size from tile to tile);
* ``CPUExecutionProvider``: ``intra_op_num_threads`` = ``threads`` (0 = all cores), the
  memory arena on (it keeps each session's peak, see README, Benchmarks).

The ORT TensorRT provider is only used when asked for (``use_tensorrt=True``): it builds
its own engines per input shape, which a tiled pipeline with varying windows triggers often;
our ``tensorrt`` backend with fixed profiles is the recommended TensorRT path.
"""

from __future__ import annotations

import numpy as np

from .manifest import Manifest


def default_providers(available: list[str], precision: str = "fp32", cache_dir: str | None = None,
                      use_tensorrt: bool = False) -> list:
    """The provider list (names or (name, options) pairs) for ``InferenceSession``."""
    out: list = []
    if use_tensorrt and "TensorrtExecutionProvider" in available:
        opts = {"trt_fp16_enable": precision == "fp16", "trt_timing_cache_enable": True}
        if cache_dir is not None:
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
        out.append(("TensorrtExecutionProvider", opts))
    if "CUDAExecutionProvider" in available:
        out.append(("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}))
    out.append("CPUExecutionProvider")
    return out


class OnnxRuntimeRunner:
    """Runs the manifest's graphs with ONNX Runtime.

    ``providers`` defaults to CPU; pass e.g. ``["CUDAExecutionProvider",
    "CPUExecutionProvider"]`` where the GPU build of onnxruntime is installed.
    ``threads`` sets intra-op threads (0 = ONNX Runtime's default, all cores).  With
    ``profile_dir``, every session records ONNX Runtime's profile there (see
    :meth:`end_profiling`; ``benchmarks/decoder_profile.py``).
    """

    def __init__(self, manifest: Manifest, providers=None, threads: int = 0, profile_dir: str | None = None):
        import onnxruntime as ort

        self._ort = ort
        self.manifest = manifest
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.threads = threads
        self.profile_dir = profile_dir
        self._sessions: dict[str, object] = {}

    def session(self, file: str):
        if file not in self._sessions:
            opts = self._ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.log_severity_level = 3
            if self.profile_dir is not None:
                opts.enable_profiling = True
                opts.profile_file_prefix = f"{self.profile_dir}/{file.rsplit('.onnx', 1)[0]}"
            self._sessions[file] = self._ort.InferenceSession(
                str(self.manifest.root / file), sess_options=opts, providers=self.providers
            )
        return self._sessions[file]

    def end_profiling(self) -> dict[str, str]:
        """Graph file -> its profile (JSON) for every session created with ``profile_dir``."""
        return {file: sess.end_profiling() for file, sess in self._sessions.items()} if self.profile_dir else {}

    def run(self, file: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        sess = self.session(file)
        wanted = {i.name for i in sess.get_inputs()}
        return sess.run(None, {k: v for k, v in feeds.items() if k in wanted})
