"""``RemoteUpscaler``: :meth:`Upscaler.upscale` on a Triton server (what ``clit-infer --server`` uses).

The request goes to the model for the input's depth (``clit`` for uint8, ``clit_16bit`` for
uint16; see :mod:`clit.serve.repository`).  The two depth changes ``clit-infer`` makes are
done so that the answer still equals a local call bit for bit: an 8-bit input wanted as
16-bit is sent as uint16 times 257 (v * 257 / 65535 is the same real number as v / 255, so
both divisions round to the same float32), and a 16-bit input wanted as 8-bit asks the
16-bit model for ``bits`` = 8.  URLs: ``host:port`` or ``http://host:port`` (HTTP),
``grpc://host:port`` (gRPC).  Needs ``tritonclient`` (``pip install 'clit[client]'``).
"""

from __future__ import annotations

import numpy as np

from .repository import model_names


class RemoteError(RuntimeError):
    """The server is unreachable, or its model is not ready."""


def split_url(url: str) -> tuple[str, str]:
    """(protocol, host:port) of ``url``: http unless it starts with grpc://."""
    for protocol in ("http", "grpc"):
        if url.startswith(f"{protocol}://"):
            rest = url[len(protocol) + 3:].rstrip("/")
            break
    else:
        if "://" in url:
            raise ValueError(f"{url}: the server URL is host:port, http://host:port or grpc://host:port")
        protocol, rest = "http", url.rstrip("/")
    if not rest or "/" in rest:
        raise ValueError(f"{url}: the server URL is host:port, http://host:port or grpc://host:port")
    return protocol, rest


class RemoteUpscaler:
    """``upscale(image, scale=, size=, dtype=)`` answered by the Triton server at ``url``."""

    def __init__(self, url: str, name: str = "clit", timeout: float = 3600.0):
        protocol, address = split_url(url)
        try:
            if protocol == "grpc":
                import tritonclient.grpc as client
            else:
                import tritonclient.http as client
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise RuntimeError("clit-infer --server needs tritonclient: pip install 'clit[client]'") from None
        self.client_module, self.protocol, self.url, self.timeout = client, protocol, url, timeout
        self.server_error = InferenceServerException
        self.models = model_names(name)
        # health first, with short timeouts (a hung server must not hold this for the request timeout)
        probe = client.InferenceServerClient(address, **({} if protocol == "grpc" else
                                                          {"network_timeout": 10.0, "connection_timeout": 10.0}))
        ask = {"client_timeout": 10.0} if protocol == "grpc" else {}
        try:
            live = probe.is_server_ready(**ask)
            ready = {m: live and probe.is_model_ready(m, **ask) for m in self.models.values()}
        except Exception as exc:  # refused, DNS, TLS, timeouts: the transport's own exceptions
            raise RemoteError(f"{url}: no Triton server answers ({str(exc).splitlines()[0] if str(exc) else exc!r})"
                              ) from None
        finally:
            probe.close()
        if not live:
            raise RemoteError(f"{url}: the Triton server is not ready")
        if not any(ready.values()):
            raise RemoteError(f"{url}: neither {' nor '.join(repr(m) for m in self.models.values())} is ready on the "
                              f"server (clit-serve serves {'/'.join(model_names('clit').values())} by default; "
                              "--server-model names others)")
        self.ready = ready  # a trimmed repository may serve one depth only: checked per request
        kwargs = {} if protocol == "grpc" else {"network_timeout": timeout, "connection_timeout": 10.0}
        self.client = client.InferenceServerClient(address, **kwargs)
        self.name = f"triton {url} (models {', '.join(self.models.values())})"

    def _input(self, name: str, array: np.ndarray, datatype: str):
        tensor = self.client_module.InferInput(name, list(array.shape), datatype)
        if self.protocol == "grpc":
            tensor.set_data_from_numpy(array)
        else:
            tensor.set_data_from_numpy(array, binary_data=True)
        return tensor

    def upscale(self, image: np.ndarray, scale=None, size=None, dtype=None) -> np.ndarray:
        """As :meth:`clit.runtime.upscaler.Upscaler.upscale` for uint8 and uint16 images (over
        HTTP the array is read-only: it is the answer's buffer).  gRPC carries at most 2 GiB per
        message; HTTP has no such limit for binary tensors."""
        arr = np.asarray(image)
        flat = arr.ndim == 2
        if flat:
            arr = arr[..., None]
        if arr.dtype not in (np.uint8, np.uint16):
            raise TypeError(f"the server takes uint8 or uint16 images, got {arr.dtype}")
        want = np.dtype(dtype if dtype is not None else arr.dtype)
        if want not in (np.uint8, np.uint16):
            raise TypeError(f"the server answers uint8 or uint16, got dtype {want}")
        bits = None
        if arr.dtype == np.uint8 and want == np.uint16:
            arr = arr.astype(np.uint16) * np.uint16(257)
        elif arr.dtype == np.uint16 and want == np.uint8:
            bits = 8
        depth = 8 if arr.dtype == np.uint8 else 16
        inputs = [self._input("image", np.ascontiguousarray(arr), "UINT8" if depth == 8 else "UINT16")]
        if (scale is None) == (size is None):
            raise ValueError("give exactly one of scale or size")
        if scale is not None:
            inputs.append(self._input("scale", np.atleast_1d(np.asarray(scale, dtype=np.float64)), "FP64"))
        else:
            inputs.append(self._input("size", np.asarray(size, dtype=np.int32).reshape(2), "INT32"))
        if bits is not None:
            inputs.append(self._input("bits", np.array([bits], dtype=np.int32), "INT32"))
        outputs = [self.client_module.InferRequestedOutput("upscaled", **({} if self.protocol == "grpc"
                                                                          else {"binary_data": True}))]
        if not self.ready[self.models[depth]]:
            raise RemoteError(f"{self.url}: model {self.models[depth]!r} for {depth}-bit images is not ready on the "
                              "server")
        extra = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            answer = self.client.infer(self.models[depth], inputs, outputs=outputs, **extra)
        except self.server_error as exc:  # the server's one-line reason
            raise ValueError(exc.message() or str(exc)) from None
        out = answer.as_numpy("upscaled")
        if bits == 8:
            out = out.astype(np.uint8)
        return out[..., 0] if flat else out

    def close(self) -> None:
        self.client.close()
