"""ONNX Runtime backend: one InferenceSession per graph file, created on first use."""

from __future__ import annotations

import numpy as np

from .manifest import Manifest


class OnnxRuntimeRunner:
    """Runs the manifest's graphs with ONNX Runtime.

    ``providers`` defaults to CPU; pass e.g. ``["CUDAExecutionProvider",
    "CPUExecutionProvider"]`` where the GPU build of onnxruntime is installed.
    ``threads`` sets intra-op threads (0 = ONNX Runtime's default, all cores).
    """

    def __init__(self, manifest: Manifest, providers=None, threads: int = 0):
        import onnxruntime as ort

        self._ort = ort
        self.manifest = manifest
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.threads = threads
        self._sessions: dict[str, object] = {}

    def session(self, file: str):
        if file not in self._sessions:
            opts = self._ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.log_severity_level = 3
            self._sessions[file] = self._ort.InferenceSession(
                str(self.manifest.root / file), sess_options=opts, providers=self.providers
            )
        return self._sessions[file]

    def run(self, file: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        sess = self.session(file)
        wanted = {i.name for i in sess.get_inputs()}
        return sess.run(None, {k: v for k, v in feeds.items() if k in wanted})
