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

import ctypes
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# tritonserver APIs that clients of an upscaler never need and that could change the server
# (Triton's secure-deployment guide restricts them; PyTriton does by default): behind a
# header only this process knows, i.e. off.
RESTRICTED_HTTP = "shared-memory,model-repository,trace,logging"
RESTRICTED_GRPC = "shared-memory,model-repository,trace,logging"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
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
    backends: Path | None = None  # a release archive's backends folder beside bin/ (e.g. Triton for JetPack)


def find_tritonserver() -> TritonBinary | None:
    """The tritonserver on PATH, else nvidia-pytriton's (found without importing pytriton)."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return binary_at(Path(on_path))
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(list(spec.submodule_search_locations)[0]) / "tritonserver" / "bin" / "tritonserver"
    return binary_at(binary) if binary.is_file() else None


def binary_at(path: Path) -> TritonBinary:
    """``path`` as a TritonBinary: with pytriton's libraries and stubs when it is pytriton's
    (``pytriton/tritonserver/bin/tritonserver`` beside ``python_backend_stubs``)."""
    dist = Path(path).resolve().parent.parent
    if not (dist / "python_backend_stubs").is_dir():  # NVIDIA's layout: bin/ and backends/ side by side
        return TritonBinary(Path(path), backends=dist / "backends" if (dist / "backends").is_dir() else None)
    return TritonBinary(Path(path), libs=dist.parent.parent / "nvidia_pytriton.libs",
                        python_backend=dist / "backends" / "python", stubs=dist / "python_backend_stubs")


def _backend_dir(binary: TritonBinary, where: Path) -> Path | None:
    """For pytriton's binary: ``where/python`` holding the Python backend and this Python's stub;
    for NVIDIA's layout its own backends folder (Triton's default is /opt/tritonserver/backends,
    which an extracted release archive elsewhere does not have)."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if binary.python_backend is None:
        folder = binary.backends or Path("/opt/tritonserver/backends")
        linked = stub_python(folder / "python" / "triton_python_backend_stub")
        if linked is not None and linked != version:  # else the models fail with "No module named clit"
            raise ServerError(f"this tritonserver's Python backend runs Python {linked} ({folder}/python); "
                              f"clit-serve runs on {version}: start it with a Python {linked} that has clit installed")
        return binary.backends
    stub = binary.stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in binary.stubs.iterdir()) if binary.stubs.is_dir() else []
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version} (it has "
                          f"{', '.join(have) or 'none'}); run clit-serve with one of those")
    python = where / "python"
    python.mkdir(parents=True)
    for entry in binary.python_backend.iterdir():  # the backend as shipped, plus this Python's stub
        if entry.name not in ("__pycache__", "triton_python_backend_stub"):
            (python / entry.name).symlink_to(entry)
    (python / "triton_python_backend_stub").symlink_to(stub)
    return where


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` now (tests and benchmarks start servers on them)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


try:  # looked up here, in the parent: the child between fork and exec only calls it
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def stub_python(stub: Path) -> str | None:
    """The Python version ("3.10") a Python-backend stub is linked against (its libpython3.X
    dependency, read from the binary), or None when unknown."""
    try:
        data = stub.read_bytes()
    except OSError:
        return None
    found = re.search(rb"libpython(3\.\d+)", data)
    return found.group(1).decode() if found else None


def _death_signal(parent: int):
    """A preexec_fn: SIGTERM to the child when the thread that started it exits (prctl(2):
    PR_SET_PDEATHSIG follows the forking thread; as PyTriton does), so a killed clit-serve leaves
    no tritonserver holding the ports; if the parent already died, the child exits at once."""
    def preexec():
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:
                os._exit(1)
    return preexec


def supports(binary: Path, option: str, env: dict | None = None) -> bool:
    """Whether ``tritonserver --help`` lists ``option`` (e.g. --http-restricted-api, from 23.12)."""
    try:
        done = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in done.stdout + done.stderr


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
    log_file: Path | None = None  # where Triton's output goes (kept); None: a temporary file
    passthrough: bool = False  # Triton's output to this process's stderr instead
    restrict: bool = True  # the admin APIs off (where this tritonserver has the options: 23.12+)
    process: subprocess.Popen | None = field(default=None, init=False)
    _work: Path | None = field(default=None, init=False)
    _log_start: int = field(default=0, init=False)
    _id: str = field(default_factory=lambda: f"clit-{uuid.uuid4().hex[:12]}", init=False)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("::1" if self.host == "::" else self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.http_port}"

    @property
    def log_path(self) -> Path | None:
        if self.log_file is not None:
            return Path(self.log_file)
        return None if self._work is None else self._work / "tritonserver.log"

    @property
    def shm_prefix(self) -> str:
        return f"{self._id.replace('-', '_')}_"  # the Python backend's shared-memory regions of this server

    def command(self, backend_dir: Path | None) -> list[str]:
        cmd = [str(self.binary.path), f"--model-repository={Path(self.repository).resolve()}", f"--id={self._id}",
               f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
               f"--metrics-port={self.metrics_port}", f"--http-address={self.host}", f"--grpc-address={self.host}",
               f"--metrics-address={self.host}", f"--exit-timeout-secs={self.exit_timeout}",
               f"--log-verbose={1 if self.verbose else 0}", "--disable-auto-complete-config",
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
               f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT}",
               f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH}"]
        if backend_dir is not None:
            cmd.append(f"--backend-directory={backend_dir}")
        if self.restrict:
            token = uuid.uuid4().hex  # never given out: the restricted APIs are off
            cmd += [f"--http-restricted-api={RESTRICTED_HTTP}:clit-admin={token}",
                    f"--grpc-restricted-protocol={RESTRICTED_GRPC}:clit-admin={token}"]
        return cmd

    def environment(self) -> dict:
        """For pytriton's binary: its libraries appended to LD_LIBRARY_PATH (as PyTriton does),
        and this Python's libpython where the loader would not find it (pyenv, a python.org
        build; never a system library folder); this interpreter's bin first on PATH, so that
        the stub's embedded Python finds this environment.  A tritonserver on PATH (NVIDIA's
        container) keeps the environment as it is but for PATH."""
        env = dict(os.environ)
        extra = []
        if self.binary.libs is not None:
            extra.append(str(self.binary.libs))
            libdir = sysconfig.get_config_var("LIBDIR") or ""
            ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
            if libdir and ldlib and (Path(libdir) / ldlib).exists() and not libdir.startswith(("/usr/lib", "/lib")):
                extra.append(libdir)
        if extra:
            env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in [env.get("LD_LIBRARY_PATH", "")] + extra if p])
        env["PATH"] = os.pathsep.join(p for p in [str(Path(sys.executable).parent), env.get("PATH", "")] if p)
        return env

    def start(self, timeout: float = 180) -> TritonServer:
        self.binary = self.binary or find_tritonserver()
        if self.binary is None:
            raise ServerError("no tritonserver: none on PATH and nvidia-pytriton is not installed "
                              "(pip install 'clit[serve]', or run inside NVIDIA's Triton container)")
        self._work = Path(tempfile.mkdtemp(prefix="clit-triton-"))
        try:
            backend_dir = _backend_dir(self.binary, self._work / "backends")
            env = self.environment()
            if self.restrict and not supports(self.binary.path, "--http-restricted-api", env):
                print("notice: this tritonserver (before 23.12) cannot restrict its admin APIs: they stay open",
                      file=sys.stderr)
                self.restrict = False
            popen = {"env": env, "start_new_session": True,
                     "preexec_fn": _death_signal(os.getpid())}
            if self.log_path is not None and self.log_path.exists():
                self._log_start = self.log_path.stat().st_size  # a kept --log-file: this run's part only
            if self.passthrough:
                self.process = subprocess.Popen(self.command(backend_dir), stdout=sys.stderr, **popen)
            else:
                with open(self.log_path, "ab") as log:
                    self.process = subprocess.Popen(self.command(backend_dir), stdout=log, stderr=subprocess.STDOUT,
                                                    **popen)
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
        """``GET /v2/health/ready`` answers 200 and ``GET /v2`` names this server (not another
        one that held the port), without any proxy."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.url}/v2", timeout=2) as answer:
                if json.loads(answer.read().decode()).get("name") != self._id:
                    return False
            with opener.open(f"{self.url}/v2/health/ready", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def log_summary(self, lines: int = 3) -> str:
        """The log's error lines (the last few), for one-line failures."""
        if self.passthrough:
            return "see its output above"
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                text = f.read().decode(errors="replace").splitlines()
        except (OSError, TypeError):
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
                    try:
                        os.killpg(self.process.pid, signal.SIGKILL)
                    except ProcessLookupError:  # the group ended meanwhile
                        pass
                    self.process.wait()
            code = self.process.returncode
            if code is not None and code < 0:  # killed (by us or a crash): it did not remove its regions
                for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
                    region.unlink(missing_ok=True)
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
