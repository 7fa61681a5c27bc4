"""Device memory, pinned host memory and a stream for the TensorRT backend.

One small interface over two libraries, opened once per process (:func:`open_cuda`):

* cuda-python's runtime API: ``cuda.bindings.runtime`` (cuda-python 12.6.1 and later; the
  only layout in 13.x, which removed ``cuda.cudart``) or ``cuda.cudart`` (up to 12.x).  Every
  call returns a tuple whose first element is the error code (NVIDIA/cuda-python, overview).
  A cuda-python built for another CUDA major than the driver's imports fine and fails on its
  first call (cudaErrorInsufficientDriver), so the probe makes a real call;
* pycuda (common on JetPack 5 images), on the device's primary context.  pycuda aborts the
  whole process at exit when a context is still pushed ("The context stack was not empty upon
  module cleanup ... Use Context.pop() to avoid this problem", pycuda src/cpp/cuda.hpp), so the
  context pushed here is popped by an ``atexit`` handler, as pycuda's own ``autoprimaryctx``
  does.

Any failure to initialise cuda-python (missing, wrong CUDA major, no device) falls back to
pycuda, and the reason is kept (:data:`FALLBACK_REASONS`) for the error or ``-v`` message.
Written against the libraries' sources; not run on this project's machines, which have no GPU
(see README, "What is verified where").
"""

from __future__ import annotations

import atexit
import ctypes
from typing import Any

import numpy as np


class CudaError(RuntimeError):
    pass


class _CudaPython:
    """cuda-python runtime API: every call returns (error, *results)."""

    name = "cuda-python"

    def __init__(self):
        try:
            from cuda.bindings import runtime as rt  # cuda-python >= 12.6.1 (13.x: the only layout)
        except ImportError:
            from cuda import cudart as rt  # cuda-python 11.x - 12.x
        self.rt = rt
        count = self._call(rt.cudaGetDeviceCount())  # a real call: fails on a driver/CUDA major mismatch
        if int(count) < 1:
            raise CudaError("no CUDA device")
        self.stream = self._call(rt.cudaStreamCreate())

    def _call(self, result: Any):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise CudaError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    def device_info(self) -> tuple:
        """(name, 'major.minor', integrated, multiprocessors): integrated GPUs (Jetson) share the
        system RAM."""
        props = self._call(self.rt.cudaGetDeviceProperties(self._call(self.rt.cudaGetDevice())))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return name.strip("\x00 "), f"{props.major}.{props.minor}", bool(props.integrated), int(props.multiProcessorCount)

    def mem_info(self) -> tuple:
        """(free, total) bytes of device memory (on integrated GPUs: of the shared RAM)."""
        free, total = self._call(self.rt.cudaMemGetInfo())
        return int(free), int(total)

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self._call(self.rt.cudaFree(ptr))

    def pinned(self, shape, dtype) -> np.ndarray:
        """A page-locked host array (freed with :meth:`free_pinned`)."""
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        ptr = int(self._call(self.rt.cudaMallocHost(nbytes)))
        buf = np.frombuffer((ctypes.c_byte * nbytes).from_address(ptr), dtype=np.uint8)
        return buf.view(dtype)[: int(np.prod(shape))].reshape(shape)

    def free_pinned(self, arr: np.ndarray) -> None:
        self._call(self.rt.cudaFreeHost(arr.ctypes.data))

    def htod(self, ptr: int, arr: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self.rt.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, kind, self.stream))

    def dtoh(self, arr: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self.rt.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, kind, self.stream))

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._call(self.rt.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        pass  # the runtime API's primary context needs no pop


class _PyCuda:
    """pycuda driver API on the device's primary context, popped at exit."""

    name = "pycuda"

    def __init__(self):
        import pycuda.driver as drv

        drv.init()
        if drv.Device.count() < 1:  # counts without creating a context (cuDeviceGetCount)
            raise CudaError("no CUDA device")
        self.drv = drv
        self.device = drv.Device(0)
        self.context = self.device.retain_primary_context()
        self.context.push()
        atexit.register(self.close)  # pycuda aborts at exit if the pushed context is still there
        self.stream = drv.Stream()
        self._allocs: dict = {}

    def device_info(self) -> tuple:
        major, minor = self.device.compute_capability()
        attr = self.drv.device_attribute
        return (self.device.name(), f"{major}.{minor}", bool(self.device.get_attribute(attr.INTEGRATED)),
                int(self.device.get_attribute(attr.MULTIPROCESSOR_COUNT)))

    def mem_info(self) -> tuple:
        free, total = self.drv.mem_get_info()
        return int(free), int(total)

    def malloc(self, nbytes: int) -> int:
        alloc = self.drv.mem_alloc(max(nbytes, 1))
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        self._allocs.pop(ptr).free()

    def pinned(self, shape, dtype) -> np.ndarray:
        return self.drv.pagelocked_empty(shape, dtype)

    def free_pinned(self, arr: np.ndarray) -> None:
        free = getattr(arr.base, "free", None)  # pycuda's HostAllocation
        if free is not None:
            free()

    def htod(self, ptr: int, arr: np.ndarray) -> None:
        self.drv.memcpy_htod_async(ptr, arr, self.stream)

    def dtoh(self, arr: np.ndarray, ptr: int) -> None:
        self.drv.memcpy_dtoh_async(arr, ptr, self.stream)

    @property
    def stream_handle(self) -> int:
        return self.stream.handle

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        """Free what we hold and pop our context (once; atexit calls it too)."""
        if self.context is None:
            return
        for alloc in self._allocs.values():
            alloc.free()
        self._allocs.clear()
        self.stream = None
        self.context.pop()
        self.context = None


_OPENED: list = []  # the process's one CUDA handle, once opened
FALLBACK_REASONS: list = []  # why earlier bindings were not used (for messages)


def open_cuda():
    """The process's CUDA handle: cuda-python if it initialises, else pycuda; opened once, so a
    probe and the runner share one context.  RuntimeError naming every reason if none works."""
    if _OPENED:
        return _OPENED[0]
    errors = []
    for cls in (_CudaPython, _PyCuda):
        try:
            handle = cls()
        except Exception as exc:  # ImportError, CudaError, the libraries' own errors: try the next one
            errors.append(f"{cls.name}: {type(exc).__name__}: {exc}")
            continue
        FALLBACK_REASONS[:] = errors
        _OPENED.append(handle)
        return handle
    raise RuntimeError("the tensorrt backend needs a working cuda-python (pip install 'clit[trt-cu12]') or pycuda; "
                       + "; ".join(errors))
