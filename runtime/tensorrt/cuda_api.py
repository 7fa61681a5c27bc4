"""Device memory, pinned host memory and a stream for the TensorRT backend.

One small interface over two libraries: cuda-python (``cuda.bindings.runtime``, or the
older ``cuda.cudart`` layout) and, where only that is installed (common on JetPack 5
images), pycuda.  Written against their documented APIs; not exercised on this project's
machines, which have no GPU (see README, "What is verified where").
"""

from __future__ import annotations

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
            from cuda.bindings import runtime as rt  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart as rt  # older layout
        self.rt = rt
        self.stream = self._call(rt.cudaStreamCreate())

    def _call(self, result: Any):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise CudaError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    def device_info(self) -> tuple[str, str]:
        props = self._call(self.rt.cudaGetDeviceProperties(self._call(self.rt.cudaGetDevice())))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return name.strip("\x00 "), f"{props.major}.{props.minor}"

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


class _PyCuda:
    """pycuda driver API; uses the device's primary context."""

    name = "pycuda"

    def __init__(self):
        import pycuda.driver as drv

        drv.init()
        self.drv = drv
        self.device = drv.Device(0)
        self.context = self.device.retain_primary_context()
        self.context.push()
        self.stream = drv.Stream()
        self._allocs: dict[int, Any] = {}

    def device_info(self) -> tuple[str, str]:
        major, minor = self.device.compute_capability()
        return self.device.name(), f"{major}.{minor}"

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


def open_cuda():
    """The first available CUDA binding: cuda-python, then pycuda.  RuntimeError if none."""
    errors = []
    for cls in (_CudaPython, _PyCuda):
        try:
            return cls()
        except ImportError as exc:
            errors.append(f"{cls.name}: {exc}")
    raise RuntimeError("the tensorrt backend needs cuda-python (pip install cuda-python) or pycuda; "
                       + "; ".join(errors))
