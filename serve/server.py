"""Start and stop a real ``tritonserver`` on a model repository.

The binary is the ``tritonserver`` on PATH (NVIDIA's container: /opt/tritonserver/bin), else
the one the ``nvidia-pytriton`` wheel ships (Triton 2.51 in pytriton 0.7).  That wheel keeps
the Python backend apart from the per-Python-version stubs (``python_backend_stubs/3.X``); as
PyTriton itself does (``pytriton/triton.py``, ``_prepare_triton_inference_server``), a
backend folder is assembled for this interpreter's version (here from symlinks), the wheel's
``nvidia_pytriton.libs`` go on LD_LIBRARY_PATH, and this interpreter's ``bin`` goes first on
PATH so that the stub's embedded Python finds this environment's site-packages (numpy,
onnxruntime, clit).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

STUB_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
SHM_DEFAULT = 16 << 20  # the Python backend's first shared-memory region per instance
SHM_GROWTH = 64 << 20  # and its growth steps (an x4 1080p answer is ~100 MB)


class ServerError(RuntimeError):
    """tritonserver missing, failing to start, or not answering."""


@dataclass(frozen=True)
class TritonBinary:
    """A tritonserver and what it needs beside it (None: its own defaults)."""

    path: Path
    libs: Path | None = None  # extra LD_LIBRARY_PATH entry (pytriton's bundled libraries)
    python_backend: Path | None = None  # pytriton's backends/python
    stubs: Path | None = None  # pytriton's python_backend_stubs


def find_tritonserver() -> TritonBinary | None:
    """The tritonserver on PATH, else nvidia-pytriton's (found without importing pytriton)."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonBinary(Path(on_path))
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    dist = root / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    if not binary.is_file():
        return None
    return TritonBinary(binary, libs=root.parent / "nvidia_pytriton.libs", python_backend=dist / "backends" / "python",
                        stubs=dist / "python_backend_stubs")


def _backend_dir(binary: TritonBinary, where: Path) -> Path | None:
    """For pytriton's binary: ``where/python`` holding the Python backend and this Python's stub."""
    if binary.python_backend is None:
        return None
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = binary.stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in binary.stubs.iterdir()) if binary.stubs.is_dir() else []
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version} (it has "
                          f"{', '.join(have) or 'none'}); run clit-serve with one of those")
    python = where / "python"
    python.mkdir(parents=True)
    for name in STUB_FILES:
        (python / name).symlink_to(binary.python_backend / name)
    (python / "triton_python_backend_stub").symlink_to(stub)
    return where


@dataclass
class TritonServer:
    """A tritonserver process on ``repository``: ``start()`` waits until it is ready,
    ``stop()`` ends it (SIGTERM, then SIGKILL after ``exit_timeout`` + 5 s).  A context manager."""

    repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "0.0.0.0"
    binary: TritonBinary | None = None
    exit_timeout: int = 10
    verbose: bool = False
    process: subprocess.Popen | None = field(default=None, init=False)
    _work: Path | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.http_port}"

    @property
    def log_path(self) -> Path | None:
        return None if self._work is None else self._work / "tritonserver.log"

    def command(self, backend_dir: Path | None) -> list[str]:
        prefix = f"clit{os.getpid()}_{self.http_port}_"  # Python-backend shared memory, per server
        cmd = [str(self.binary.path), f"--model-repository={Path(self.repository).resolve()}",
               f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
               f"--metrics-port={self.metrics_port}", f"--http-address={self.host}", f"--grpc-address={self.host}",
               f"--metrics-address={self.host}", f"--exit-timeout-secs={self.exit_timeout}",
               f"--log-verbose={1 if self.verbose else 0}",
               f"--backend-config=python,shm-region-prefix-name={prefix}",
               f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT}",
               f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH}"]
        if backend_dir is not None:
            cmd.append(f"--backend-directory={backend_dir}")
        return cmd

    def environment(self) -> dict:
        env = dict(os.environ)
        libs = [sysconfig.get_config_var("LIBDIR") or ""]  # the stub links this Python's libpython first
        if self.binary.libs is not None:
            libs.append(str(self.binary.libs))
        env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(
            os.pathsep)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def start(self, timeout: float = 180) -> TritonServer:
        self.binary = self.binary or find_tritonserver()
        if self.binary is None:
            raise ServerError("no tritonserver: none on PATH and nvidia-pytriton is not installed "
                              "(pip install 'clit[serve]', or run inside NVIDIA's Triton container)")
        self._work = Path(tempfile.mkdtemp(prefix="clit-triton-"))
        try:
            backend_dir = _backend_dir(self.binary, self._work / "backends")
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(self.command(backend_dir), stdout=log, stderr=subprocess.STDOUT,
                                                env=self.environment(), start_new_session=True)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode}: {self.log_summary()}")
            if self.ready():
                return
            time.sleep(0.25)
        raise ServerError(f"tritonserver not ready after {timeout:.0f} s: {self.log_summary()}")

    def ready(self) -> bool:
        """``GET /v2/health/ready`` answers 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_summary(self, lines: int = 3) -> str:
        """The log's error lines (the last few), for one-line failures."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except (OSError, AttributeError):
            return "no log"
        errors = [ln.strip() for ln in text if ln[:1] == "E" or ln.lower().startswith("error")]
        return " | ".join((errors or [ln.strip() for ln in text if ln.strip()])[-lines:]) or "empty log"

    def wait(self) -> int:
        return self.process.wait()

    def stop(self) -> int | None:
        """End the server (SIGTERM first) and remove its working folder (backend links, log);
        the exit code, or None if it never started."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(self.exit_timeout + 5)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            code = self.process.returncode
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
