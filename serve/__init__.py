"""clit.serve: CLIT on Triton Inference Server (torch-free).

* :mod:`.repository`: a Triton model repository for a model directory (``clit-serve --write-repo``);
* :mod:`.triton_model`: the Python-backend model it runs (``clit.runtime`` inside Triton);
* :mod:`.server`: start and stop a real ``tritonserver`` (on PATH, or nvidia-pytriton's);
* :mod:`.client`: :class:`RemoteUpscaler`, ``Upscaler.upscale`` over HTTP/gRPC (``clit-infer --server``);
* :mod:`.cli`: ``clit-serve``.
"""
