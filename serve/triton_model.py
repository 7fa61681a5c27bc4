"""The Triton Python-backend model (``TritonPythonModel``) and its request handling.

Each model instance is one stub process holding one ``clit.runtime`` engine (TensorRT where
usable, else ONNX Runtime).  A request is ``image`` (H, W, C) at the model's sample depth,
exactly one of ``scale`` (one value, or (sh, sw)) and ``size`` ((H, W)), and for the 16-bit
model optionally ``bits`` (8: the output's values quantised to 8 bits, still in UINT16).  The
answer is ``upscaled`` (H', W', C), computed by :meth:`Upscaler.upscale`, so it equals a
local call bit for bit.  A bad request gets an error answer with the one line ``clit-infer``
would print for it (:func:`clit.runtime.errors.describe`); the instance goes on serving.

:class:`RequestHandler` is the part that does not need Triton (tested directly);
``triton_python_backend_utils`` exists only inside Triton's stub and is imported there.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

from clit.runtime.engines import make_engine
from clit.runtime.errors import describe
from clit.runtime.memory_plan import memory_budget, output_bytes, resident_memory
from clit.runtime.upscaler import Upscaler

DTYPES = {8: np.uint8, 16: np.uint16}


class RequestError(ValueError):
    """A request the model refuses (its message is the error answer)."""


class Cancelled(RuntimeError):
    """The client gave up on the request (a gRPC deadline or cancel, an HTTP disconnect):
    stopped between tiles."""


class RequestHandler:
    """Validate one request's tensors and upscale: ``handler(image, scale, size, bits)``.

    ``max_pixels`` bounds the input as ``clit-infer --max-pixels`` does; ``max_memory``
    (bytes, None: 4 GiB) is the instance's memory target: a request whose output (with the
    copy that goes into the response) does not fit what is left of it is refused before any
    work, since an output cannot be tiled away."""

    def __init__(self, upscaler: Upscaler, depth: int, max_pixels: int | None = None, max_memory: int | None = None):
        if depth not in DTYPES:
            raise ValueError(f"depth must be 8 or 16, got {depth}")
        self.upscaler, self.depth = upscaler, depth
        self.max_pixels, self.max_memory = max_pixels, max_memory
        self.resident = resident_memory()

    def parse(self, image, scale=None, size=None, bits=None):
        """(image, scale, size, output dtype) of a request, or :class:`RequestError`."""
        image = np.asarray(image)
        want = DTYPES[self.depth]
        if image.dtype != want:
            raise RequestError(f"image must be {np.dtype(want).name} for this model, got {image.dtype}")
        if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
            raise RequestError(f"image must be (H, W, C) with C in 1-4, got {image.shape}")
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            raise RequestError("image has zero size")
        if self.max_pixels and h * w > self.max_pixels:
            raise RequestError(f"{w}x{h} is {w * h:,} pixels, over the limit of {self.max_pixels:,} pixels "
                               "(clit-serve --max-pixels raises it)")
        if (scale is None) == (size is None):
            raise RequestError("give exactly one of scale or size")
        if scale is not None:
            values = [float(v) for v in np.asarray(scale, dtype=np.float64).reshape(-1)]
            if len(values) not in (1, 2):
                raise RequestError(f"scale is one value or (sh, sw), got {len(values)} values")
            scale = values[0] if len(values) == 1 else (values[0], values[1])
        if size is not None:
            values = [int(v) for v in np.asarray(size).reshape(-1)]
            if len(values) != 2:
                raise RequestError(f"size is (H, W), got {len(values)} values")
            size = (values[0], values[1])
        out_dtype = want
        if bits is not None:
            b = [int(v) for v in np.asarray(bits).reshape(-1)]
            allowed = sorted({8, self.depth})
            if len(b) != 1 or b[0] not in allowed:
                raise RequestError(f"bits must be {' or '.join(map(str, allowed))} for this model, got {b}")
            out_dtype = DTYPES[b[0]]
        return image, scale, size, out_dtype

    def __call__(self, image, scale=None, size=None, bits=None, cancelled=None) -> np.ndarray:
        """The answer; ``cancelled()`` (Triton's ``request.is_cancelled``) is asked after every
        tile, and True stops the work there (:class:`Cancelled`)."""
        image, scale, size, out_dtype = self.parse(image, scale, size, bits)
        pipeline = self.upscaler.engine.pipeline  # the graph backends' (a server runs a model directory)
        try:
            plan = pipeline.plan(image.shape[:2], scale=scale, size=size)
        except ValueError as exc:  # a scale beyond the model's branches, a bad size: the request's fault
            raise RequestError(str(exc)) from None
        need = output_bytes(plan, np.dtype(out_dtype).itemsize) * image.shape[2] // 3
        room = memory_budget(self.max_memory, self.resident)
        if need > room:
            h, w = plan.out_size
            raise RequestError(f"the output {w}x{h} needs {need / 2**20:,.0f} MiB with its copy for the answer, "
                               f"more than this instance's memory plan leaves ({room / 2**20:,.0f} MiB; "
                               "clit-serve --max-memory raises it)")
        def check(done, total):
            if cancelled is not None and done < total and cancelled():
                raise Cancelled(f"cancelled by the client after {done} of {total} tiles")

        saved, pipeline.on_tile = pipeline.on_tile, check
        try:
            out = self.upscaler.upscale(image, scale=scale, size=size, dtype=out_dtype)
        finally:
            pipeline.on_tile = saved
        return out.astype(DTYPES[self.depth], copy=False)


def _instance_threads(config: dict, value: str) -> int:
    """ONNX Runtime threads of one instance: the parameter, or the cores this process may use
    (its affinity: a container's CPU set) shared by the model's instances.  The other depth's
    model has its own instances on the same cores; both are rarely busy at once."""
    if value != "auto":
        return int(value)
    count = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // count)


def visible_device(device_id: str, inherited: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for the instance on Triton's device ``device_id``: Triton numbers
    the devices it sees, so under an inherited mask ("2,3") id 1 is the mask's second entry."""
    if inherited:
        devices = [d.strip() for d in inherited.split(",") if d.strip()]
        if int(device_id) < len(devices):
            return devices[int(device_id)]
    return str(device_id)


class TritonPythonModel:
    """Triton's Python-backend interface (initialize / execute / finalize)."""

    def initialize(self, args):
        import triton_python_backend_utils as pb_utils  # only inside Triton's stub

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # args["model_repository"] is this model's folder; model_dir is relative to the repository
        model_dir = Path(args["model_repository"]).parent / params["model_dir"]
        if args.get("model_instance_kind") == "GPU":  # one device per instance, before CUDA starts
            os.environ["CUDA_VISIBLE_DEVICES"] = visible_device(args["model_instance_device_id"],
                                                                os.environ.get("CUDA_VISIBLE_DEVICES"))
        max_memory = int(params.get("max_memory", "0")) or None
        tile = params.get("tile", "auto")
        engine = make_engine(params.get("backend", "auto"), model_dir=model_dir,
                             precision=params.get("precision", "auto"), memory_limit=max_memory,
                             tile=None if tile == "auto" else int(tile),
                             threads=_instance_threads(config, params.get("threads", "auto")))
        self.handler = RequestHandler(Upscaler.from_engine(engine), int(params["depth"]),
                                      max_pixels=int(params.get("max_pixels", "0")) or None, max_memory=max_memory)
        print(f"clit: {args['model_name']} instance {args['model_instance_name']}: {engine.name}, {model_dir}",
              flush=True)

    def _input(self, request, name):
        tensor = self.pb.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    def execute(self, requests):
        responses = []
        for request in requests:
            cancelled = getattr(request, "is_cancelled", None)  # Python backend 23.10+
            try:
                if cancelled is not None and cancelled():
                    raise Cancelled("cancelled by the client before it started")
                out = self.handler(self._input(request, "image"), self._input(request, "scale"),
                                   self._input(request, "size"), self._input(request, "bits"), cancelled=cancelled)
                responses.append(self.pb.InferenceResponse(output_tensors=[self.pb.Tensor("upscaled", out)]))
            except Exception as exc:  # one answer per request; the instance keeps serving
                responses.append(self.pb.InferenceResponse(error=self._error(exc)))
        return responses

    def _error(self, exc: Exception):
        """The request's fault (bad input, beyond the model or the memory plan): INVALID_ARG
        (HTTP 400) with clit-infer's line; cancelled: CANCELLED; anything else INTERNAL (HTTP 500),
        its traceback in Triton's log.  The codes exist from python_backend r23.09 (CANCELLED
        r23.10); older stubs take the message alone."""
        errors = self.pb.TritonError
        if isinstance(exc, RequestError):
            text, code = describe(exc), getattr(errors, "INVALID_ARG", None)
        elif isinstance(exc, MemoryError):
            text = "out of memory: the request did not fit (clit-serve --max-memory, --tile, fewer --instances)"
            code = getattr(errors, "UNAVAILABLE", None)
        elif isinstance(exc, Cancelled):
            print(f"clit: {exc}", flush=True)
            text, code = str(exc), getattr(errors, "CANCELLED", None)
        else:
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()] or [type(exc).__name__]
            text, code = f"{lines[0].strip()} ({type(exc).__name__}; the traceback is in the server's log)", \
                getattr(errors, "INTERNAL", None)
        return errors(text) if code is None else errors(text, code)

    def finalize(self):
        self.handler = None
