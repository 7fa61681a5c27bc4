"""clit.serve: the Triton model repository, a real tritonserver serving it, and the client.

The server tests start nvidia-pytriton's tritonserver (or the one on PATH) on loopback ports
and stop it again; they skip when neither tritonserver nor tritonclient is installed, except
under ``CLIT_REQUIRE_TRITON=1`` (``make test-serve``, which CI runs), where that fails.
Every answer is compared bit for bit with :meth:`Upscaler.upscale` in this process (the
server's model instances run this same Python environment).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from clit.runtime.errors import describe
from clit.runtime.images import read_image, write_image
from clit.runtime.memory_plan import resident_memory
from clit.runtime.upscaler import Upscaler
from clit.serve.client import split_url
from clit.serve.repository import MARKER, ServeOptions, model_names, write_repository
from clit.serve.server import ServerError, TritonServer, find_tritonserver, free_ports
from clit.serve.triton_model import RequestError, RequestHandler, visible_device

REQUIRED = os.environ.get("CLIT_REQUIRE_TRITON") == "1"


def beyond_the_bundled_model() -> tuple[float, str]:
    """A scale one cascade stage past the bundled model's branches, and the start of its error."""
    from clit.runtime.bundled import bundled_model_dir
    from clit.runtime.geometry import STAGE_BASE
    from clit.runtime.manifest import load_manifest

    n = load_manifest(bundled_model_dir()).n_branches
    return STAGE_BASE**n + 4, f"needs {n + 1} cascade stages"


def _server_missing() -> str | None:
    if find_tritonserver() is None:
        return "no tritonserver (not on PATH, nvidia-pytriton not installed): make test-serve runs these"
    try:
        import tritonclient.grpc  # noqa: F401
        import tritonclient.http  # noqa: F401
    except ImportError:
        return "tritonclient not installed (pip install 'clit[client]'): make test-serve runs these"
    return None


def needs_server():
    reason = _server_missing()
    if reason and REQUIRED:
        pytest.fail(f"CLIT_REQUIRE_TRITON=1 but {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def local():
    return Upscaler()  # the bundled model, ONNX Runtime on the CPU: what each instance runs


# ------------------------------------------------------------------ repository (no server)
def test_repository_layout_and_configs(tmp_path):
    repo = write_repository(tmp_path / "repo", opts=ServeOptions(instances=3, threads=1, max_memory=1 << 30))
    names = model_names("clit")
    assert sorted(p.name for p in repo.iterdir()) == sorted([*names.values(), MARKER])
    assert (repo / "clit/1/model/manifest.json").is_file()  # the model directory, beside the model
    assert not (repo / "clit_16bit/1/model").exists()  # one copy, named by the 16-bit config
    for depth, name in names.items():
        text = (repo / name / "config.pbtxt").read_text()
        kind = "UINT8" if depth == 8 else "UINT16"
        assert f'name: "{name}"' in text and 'backend: "python"' in text
        assert f'{{ name: "image" data_type: TYPE_{kind} dims: [ -1, -1, -1 ] }}' in text
        assert f'{{ name: "upscaled" data_type: TYPE_{kind} dims: [ -1, -1, -1 ] }}' in text
        assert ('name: "bits"' in text) == (depth == 16)
        assert "count: 3 kind: KIND_CPU" in text
        assert '{ key: "model_dir" value: { string_value: "clit/1/model" } }' in text
        assert '{ key: "max_memory" value: { string_value: "1073741824" } }' in text
        assert "from clit.serve.triton_model import TritonPythonModel" in (repo / name / "1/model.py").read_text()
    gpu = write_repository(tmp_path / "gpu", opts=ServeOptions(backend="tensorrt"))
    assert "kind: KIND_GPU" in (gpu / "clit/config.pbtxt").read_text()


def test_repository_write_discipline(tmp_path):
    target = tmp_path / "repo"
    write_repository(target)
    with pytest.raises(FileExistsError, match="--force"):
        write_repository(target)
    write_repository(target, opts=ServeOptions(instances=2), force=True)
    assert "count: 2" in (target / "clit/config.pbtxt").read_text()
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="refusing"):
        write_repository(other, force=True)  # a folder clit-serve did not write is never replaced
    bad = tmp_path / "not_a_model"
    bad.mkdir()
    with pytest.raises(ValueError, match="not a model directory"):
        write_repository(tmp_path / "r2", bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_model", "other", "repo"]  # nothing half-written
    for opts in ({"backend": "torch"}, {"instances": 0}, {"precision": "fp8"}):
        with pytest.raises(ValueError):
            ServeOptions(**opts)


def test_repository_refuses_paths_triton_cannot_launch(tmp_path):
    # Triton <= r25.06 starts each stub with an unquoted `bash -c "exec stub <model path> ..."`
    # (python_backend src/stub_launcher.cc): a space would split the path
    with pytest.raises(ValueError, match="cannot start a Python model under a path with ' '"):
        write_repository(tmp_path / "my repo")
    assert not (tmp_path / "my repo").exists()
    odd = tmp_path / "tmp dir"
    odd.mkdir()
    done = _cli("clit.serve.cli", env={**os.environ, "TMPDIR": str(odd)})
    assert done.returncode == 2 and "set TMPDIR to a plain path" in done.stderr


def test_visible_device_follows_an_inherited_mask():
    # model_instance_device_id numbers the devices tritonserver sees (python_backend python_be.cc)
    assert visible_device("1", None) == "1"
    assert visible_device("1", "2,3") == "3"
    assert visible_device("0", "GPU-5f2e,GPU-77a1") == "GPU-5f2e"


def test_binary_layouts(tmp_path):
    from clit.serve.server import _backend_dir, binary_at

    release = tmp_path / "tritonserver"  # NVIDIA's archive / container: bin/ and backends/ side by side
    (release / "bin").mkdir(parents=True)
    (release / "backends" / "python").mkdir(parents=True)
    (release / "bin" / "tritonserver").write_text("")
    found = binary_at(release / "bin" / "tritonserver")
    assert found.python_backend is None and _backend_dir(found, tmp_path / "unused") == release / "backends"
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "tritonserver").write_text("")
    assert _backend_dir(binary_at(bare / "tritonserver"), tmp_path / "unused") is None  # Triton's default
    pytriton = find_tritonserver()
    if pytriton is not None and pytriton.stubs is not None:  # real stubs: the Python each one links
        from clit.serve.server import ServerError, stub_python

        assert {stub_python(d / "triton_python_backend_stub") for d in pytriton.stubs.iterdir()} == \
            {d.name for d in pytriton.stubs.iterdir()}
        other = "3.10" if sys.version_info[:2] != (3, 10) else "3.12"
        (release / "backends" / "python" / "triton_python_backend_stub").symlink_to(
            pytriton.stubs / other / "triton_python_backend_stub")
        with pytest.raises(ServerError, match=f"runs Python {other}"):
            _backend_dir(found, tmp_path / "unused")
    if pytriton is not None and pytriton.stubs is not None:  # pytriton's wheel: a folder for this Python
        made = _backend_dir(pytriton, tmp_path / "b")
        stub = made / "python" / "triton_python_backend_stub"
        assert stub.resolve().parent.name == f"{sys.version_info[0]}.{sys.version_info[1]}"
        assert (made / "python" / "libtriton_python.so").exists()


class _TritonError:
    """The shape of python_backend's TritonError (src/pb_stub.cc r24.10:1640-1688: TritonError(message,
    code=INTERNAL) with class constants; the constants exist from r23.09)."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message, code=1):
        self.message, self.code = message, code


class _OldTritonError:  # r23.06 (JetPack 5's Triton): a message only
    def __init__(self, message):
        self.message, self.code = message, None


def test_error_answers_by_cause(capsys):
    from types import SimpleNamespace

    from clit.serve.triton_model import Cancelled, TritonPythonModel

    model = TritonPythonModel()
    for errors in (_TritonError, _OldTritonError):
        model.pb = SimpleNamespace(TritonError=errors)
        bad = model._error(RequestError("give exactly one of scale or size"))
        assert bad.message == "give exactly one of scale or size"
        gone = model._error(Cancelled("cancelled by the client after 2 of 16 tiles"))
        assert gone.message == "cancelled by the client after 2 of 16 tiles"
        try:
            {}["x"]
        except KeyError as exc:
            bug = model._error(exc)
        assert bug.message == "'x' (KeyError; the traceback is in the server's log)"  # no CLIT_TRACEBACK hint
        assert "Traceback" in capsys.readouterr().err  # printed to the stub's stderr: Triton's log
        oom = model._error(MemoryError())
        assert oom.message.startswith("out of memory")
        if errors is _TritonError:
            assert (bad.code, gone.code, bug.code, oom.code) == (errors.INVALID_ARG, errors.CANCELLED,
                                                                   errors.INTERNAL, errors.UNAVAILABLE)


def test_split_url():
    assert split_url("localhost:8000") == ("http", "localhost:8000")
    assert split_url("http://h:1/") == ("http", "h:1")
    assert split_url("grpc://10.0.0.2:8001") == ("grpc", "10.0.0.2:8001")
    for bad in ("https://h:1", "h:1/v2", "grpc://"):
        with pytest.raises(ValueError, match="host:port"):
            split_url(bad)


def test_request_handler_validates_before_work(local):
    gib_more = resident_memory() + (1 << 30)  # the plan counts what this (test) process already holds
    handler = RequestHandler(local, depth=8, max_pixels=1000, max_memory=gib_more)
    img = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    cases = [
        ((img.astype(np.uint16),), {"scale": [2.0]}, "must be uint8 for this model"),
        ((img[:, :, :2].repeat(3, axis=2),), {"scale": [2.0]}, "C in 1-4"),
        ((img[:0],), {"scale": [2.0]}, "zero size"),
        ((np.zeros((40, 40, 3), np.uint8),), {"scale": [2.0]}, "over the limit of 1,000 pixels"),
        ((img,), {}, "exactly one of scale or size"),
        ((img,), {"scale": [2.0], "size": [4, 4]}, "exactly one of scale or size"),
        ((img,), {"scale": [2.0, 3.0, 4.0]}, "one value or"),
        ((img,), {"size": [4]}, "size is (H, W)"),
        ((img,), {"scale": [2.0], "bits": [16]}, "bits must be 8 for this model"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(RequestError) as err:
            handler(*args, **kwargs)
        assert message in str(err.value), (message, err.value)
    too_large, message = beyond_the_bundled_model()
    with pytest.raises(ValueError, match=message):
        handler(img, scale=[too_large])
    with pytest.raises(RequestError, match="more than this instance's memory plan leaves"):
        RequestHandler(local, depth=8, max_memory=gib_more)(np.zeros((1000, 1000, 3), np.uint8), scale=[16.0])
    np.testing.assert_array_equal(handler(img, scale=[2.5]), local.upscale(img, scale=2.5))
    h16 = RequestHandler(local, depth=16)
    img16 = img.astype(np.uint16) * 257
    out = h16(img16, size=[30, 17], bits=[8])
    assert out.dtype == np.uint16 and out.max() <= 255
    np.testing.assert_array_equal(out, local.upscale(img16, size=(30, 17), dtype=np.uint8))


# ------------------------------------------------------------------ a real server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    needs_server()
    repo = write_repository(tmp_path_factory.mktemp("triton") / "repo",
                            opts=ServeOptions(backend="onnxruntime", instances=2, max_memory=1 << 30))
    http, grpc, metrics = free_ports(3)
    srv = TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics, host="127.0.0.1")
    srv.start(timeout=240)
    yield srv
    code = srv.stop()
    assert code == 0, f"tritonserver exit code {code}"


@pytest.fixture(scope="module", params=["http", "grpc"])
def remote(server, request):
    from clit.serve.client import RemoteUpscaler

    url = server.url if request.param == "http" else f"grpc://127.0.0.1:{server.grpc_port}"
    client = RemoteUpscaler(url)
    yield client
    client.close()


def _image(rng, shape, dtype):
    return rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


CASES = [  # shape, input dtype, output dtype (None: the input's), scale / size
    ((20, 23, 3), np.uint8, None, {"scale": 2.5}),
    ((17, 13, 3), np.uint16, None, {"scale": (2.0, 3.5)}),
    ((15, 14), np.uint8, None, {"scale": 3.7}),  # gray (H, W)
    ((14, 15, 1), np.uint16, None, {"size": (33, 41)}),  # gray (H, W, 1), an exact size
    ((16, 12, 4), np.uint8, None, {"scale": 4}),  # RGBA: alpha bicubic
    ((12, 16, 2), np.uint16, None, {"scale": 6}),  # gray + alpha, the two-branch cascade
    ((13, 11, 3), np.uint8, np.uint16, {"scale": 2}),  # 8-bit input written as 16-bit
    ((11, 13, 4), np.uint16, np.uint8, {"scale": 3}),  # 16-bit input written as 8-bit
]


def test_answers_equal_upscaler_bit_for_bit(remote, local):
    rng = np.random.default_rng(7)
    for shape, dtype, want, kwargs in CASES:
        img = _image(rng, shape, dtype)
        got = remote.upscale(img, dtype=want, **kwargs)
        expected = local.upscale(img, dtype=want, **kwargs)
        assert got.shape == expected.shape and got.dtype == expected.dtype, (shape, kwargs)
        assert np.array_equal(got, expected), (shape, dtype, want, kwargs)


def test_concurrent_clients_all_answers_correct(server, local):
    from clit.serve.client import RemoteUpscaler

    rng = np.random.default_rng(11)
    jobs = []
    for i in range(32):  # 4 clients x 8 requests, mixed sizes, depths and scales
        shape, dtype, want, kwargs = CASES[i % len(CASES)]
        shape = (shape[0] + i % 5, shape[1] + i % 3) + shape[2:]
        img = _image(rng, shape, dtype)
        jobs.append((img, want, kwargs, local.upscale(img, dtype=want, **kwargs)))
    results, errors = {}, []

    def client(k):
        try:
            up = RemoteUpscaler(server.url if k % 2 else f"grpc://127.0.0.1:{server.grpc_port}")
            for j in range(k, len(jobs), 4):
                img, want, kwargs, _ = jobs[j]
                results[j] = up.upscale(img, dtype=want, **kwargs)
            up.close()
        except Exception as exc:  # reported below, with the thread's request
            errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sorted(results) == list(range(len(jobs))), "answers lost"
    for j, (_, _, _, expected) in enumerate(jobs):
        assert np.array_equal(results[j], expected), j


def _raw_infer(server, model, tensors):
    """A request built by hand with tritonclient (bypassing RemoteUpscaler's own checks)."""
    import tritonclient.http as http

    client = http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    inputs = []
    for name, array, datatype in tensors:
        t = http.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array, binary_data=True)
        inputs.append(t)
    try:
        return client.infer(model, inputs)
    finally:
        client.close()


def test_bad_requests_get_one_line_errors_and_the_server_stays_up(server, local, remote):
    from tritonclient.utils import InferenceServerException

    rng = np.random.default_rng(3)
    img = _image(rng, (10, 12, 3), np.uint8)
    scale = ("scale", np.array([2.0]), "FP64")

    def refused(model, tensors):
        with pytest.raises(InferenceServerException) as err:
            _raw_infer(server, model, tensors)
        assert err.value.status() == "400", (err.value.status(), err.value.message())  # the request's fault
        return err.value.message()

    def local_line(**kwargs):  # what clit-infer prints for the same input (after "error: FILE: ")
        with pytest.raises(Exception) as err:
            local.upscale(kwargs.pop("image", img), **kwargs)
        return describe(err.value)

    # bad dtype: Triton itself checks the input's type against config.pbtxt
    assert "FP32" in refused("clit", [("image", img.astype(np.float32), "FP32"), scale])
    assert "INT16" in refused("clit_16bit", [("image", img.astype(np.int16), "INT16"), scale])
    # the model's own checks: the same one line as clit-infer
    too_large, message = beyond_the_bundled_model()
    assert refused("clit", [("image", img, "UINT8"), ("scale", np.array([too_large]), "FP64")]) == \
        local_line(scale=too_large)
    assert refused("clit", [("image", img, "UINT8"), ("scale", np.array([-2.0]), "FP64")]) == local_line(scale=-2.0)
    assert refused("clit", [("image", img, "UINT8"), ("size", np.array([0, 5], np.int32), "INT32")]) == \
        local_line(size=(0, 5))
    assert refused("clit", [("image", img, "UINT8")]) == local_line()
    assert refused("clit", [("image", np.zeros((0, 4, 3), np.uint8), "UINT8"), scale]) == "image has zero size"
    five = _image(rng, (6, 6, 5), np.uint8)
    assert "C in 1-4" in refused("clit", [("image", five, "UINT8"), scale])
    assert "bits must be 8 or 16" in refused("clit_16bit", [("image", img.astype(np.uint16), "UINT16"), scale,
                                                            ("bits", np.array([12], np.int32), "INT32")])
    big = np.zeros((1000, 1000, 3), np.uint8)  # x16: 16000x16000, 1.4 GiB with its copy, over the 1 GiB plan
    assert "memory plan" in refused("clit", [("image", big, "UINT8"), ("scale", np.array([16.0]), "FP64")])
    with pytest.raises(ValueError, match=message):  # through the client: the same line
        remote.upscale(img, scale=too_large)
    good = _image(rng, (9, 8, 3), np.uint8)
    assert np.array_equal(remote.upscale(good, scale=3), local.upscale(good, scale=3))
    assert server.ready() and server.process.poll() is None


def test_restriction_options_detected(server):
    from clit.serve.server import supports

    env = server.environment()
    assert supports(server.binary.path, "--http-restricted-api", env)  # 2.51 has it (added in 23.12)
    assert not supports(server.binary.path, "--no-such-option-here", env)


def test_ready_means_this_server_not_another_on_the_port(server):
    """A second server on the running one's ports must fail, not pass as ready because the
    first one answers /v2/health/ready (readiness checks GET /v2's name, the server's --id)."""
    repo = write_repository(Path(server.repository).parent / "second")
    other = TritonServer(repo, http_port=server.http_port, grpc_port=server.grpc_port,
                         metrics_port=server.metrics_port, host="127.0.0.1")
    with pytest.raises(ServerError, match="exited with code"):
        other.start(timeout=120)
    assert server.ready()


def test_health_and_metrics(server, remote):
    remote.upscale(np.full((8, 8, 3), 100, np.uint8), scale=2)
    with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=10) as answer:
        assert answer.status == 200
    with urllib.request.urlopen(f"{server.url}/v2/health/live", timeout=10) as answer:
        assert answer.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    counts = [line for line in text.splitlines() if line.startswith('nv_inference_request_success{model="clit"')]
    assert counts and float(counts[0].rsplit(" ", 1)[1]) >= 1, counts
    # the APIs that could change the server (model loading, shared memory, trace, logging) are off
    for path in ("/v2/repository/index", "/v2/systemsharedmemory/status", "/v2/logging"):
        req = urllib.request.Request(f"{server.url}{path}", data=b"{}" if "index" in path else None)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code in (401, 403), (path, err.value.code)


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, **kwargs)


def test_clit_infer_server_writes_the_same_files(server, tmp_path):
    rng = np.random.default_rng(5)
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "rgb.png", _image(rng, (21, 18, 3), np.uint8))
    write_image(src / "deep.png", _image(rng, (14, 17, 3), np.uint16), bit_depth=16)
    write_image(src / "gray.png", _image(rng, (15, 12), np.uint8))
    write_image(src / "rgba.png", _image(rng, (12, 13, 4), np.uint8))
    outs = {}
    for mode, extra in (("local", []), ("http", ["--server", server.url]),
                        ("grpc", ["--server", f"grpc://127.0.0.1:{server.grpc_port}"])):
        done = _cli("clit.runtime.cli", str(src), "--scale", "2.5", "-o", str(tmp_path / mode) + "/", *extra)
        assert done.returncode == 0, done.stderr
        outs[mode] = {p.name: p.read_bytes() for p in sorted((tmp_path / mode).iterdir())}
    assert sorted(outs["local"]) == ["deep.png", "gray.png", "rgb.png", "rgba.png"]
    assert read_image(tmp_path / "http" / "deep.png").bit_depth == 16
    assert outs["http"] == outs["local"] and outs["grpc"] == outs["local"]
    too_far, message = beyond_the_bundled_model()
    done = _cli("clit.runtime.cli", str(src / "rgb.png"), "--scale", f"{too_far:g}", "-o", str(tmp_path / "far.png"),
                "--server", server.url)
    assert done.returncode == 1 and message in done.stderr and not (tmp_path / "far.png").exists()
    done = _cli("clit.runtime.cli", str(src / "rgb.png"), "--scale", "2", "-o", str(tmp_path / "t.png"),
                "--server", server.url, "--tile", "64")
    assert done.returncode == 2 and "--tile belong to clit-serve" in done.stderr


def test_clit_infer_server_unreachable(tmp_path):
    needs_server()
    (port,) = free_ports(1)
    write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    done = _cli("clit.runtime.cli", str(tmp_path / "a.png"), "--scale", "2", "-o", str(tmp_path / "b.png"),
                "--server", f"127.0.0.1:{port}")
    assert done.returncode == 2 and f"127.0.0.1:{port}: no Triton server answers" in done.stderr


def test_clit_serve_starts_serves_and_stops_on_ctrl_c(tmp_path, local):
    needs_server()
    from clit.serve.client import RemoteUpscaler

    http, grpc, metrics = free_ports(3)
    proc = subprocess.Popen([sys.executable, "-m", "clit.serve.cli", "--host", "127.0.0.1", "--http-port", str(http),
                             "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--backend", "onnxruntime"],
                            stderr=subprocess.PIPE, text=True,
                            # Ctrl-C as a terminal gives it, even when the suite itself was started with `&` from a
                            # script, which leaves SIGINT ignored (inherited, and Python keeps an ignored SIGINT)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        up = None
        while up is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                up = RemoteUpscaler(f"127.0.0.1:{http}")
            except Exception:
                time.sleep(0.5)
        assert up is not None, proc.stderr.read() if proc.poll() is not None else "not ready in time"
        img = _image(np.random.default_rng(2), (9, 10, 3), np.uint8)
        assert np.array_equal(up.upscale(img, scale=2), local.upscale(img, scale=2))
        up.close()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "serving clit, clit_16bit" in err and "stopping" in err
    with pytest.raises(OSError):  # the port is closed: the server is gone
        socket.create_connection(("127.0.0.1", http), timeout=2).close()


def test_cancelled_request_stops_between_tiles(tmp_path):
    """A gRPC deadline cancels the request in Triton; the instance sees request.is_cancelled()
    after a tile and stops there, instead of finishing an answer nobody waits for."""
    needs_server()
    import tritonclient.grpc as grpc_client
    from tritonclient.utils import InferenceServerException

    repo = write_repository(tmp_path / "repo", opts=ServeOptions(backend="onnxruntime", tile=16))
    http, grpc, metrics = free_ports(3)
    with TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics, host="127.0.0.1") as server:
        client = grpc_client.InferenceServerClient(f"127.0.0.1:{grpc}")
        img = _image(np.random.default_rng(4), (64, 64, 3), np.uint8)  # x8 in 16 tiles: seconds of work
        tensors = []
        for name, array, datatype in (("image", img, "UINT8"), ("scale", np.array([8.0]), "FP64")):
            tensors.append(grpc_client.InferInput(name, list(array.shape), datatype))
            tensors[-1].set_data_from_numpy(array)
        with pytest.raises(InferenceServerException, match="Deadline"):
            client.infer("clit", tensors, client_timeout=0.5)
        small = [grpc_client.InferInput("image", [6, 6, 3], "UINT8"), tensors[1]]
        small[0].set_data_from_numpy(img[:6, :6].copy())
        client.infer("clit", small)  # queued behind the cancelled one on the single instance
        client.close()
        lines = [ln for ln in server.log_path.read_text().splitlines() if "cancelled by the client" in ln]
    assert lines, "the instance did not see the cancellation"
    done, total = (int(v) for v in lines[0].split("after ")[1].split(" tiles")[0].split(" of "))
    assert total == 16 and done < total, lines


def _tritonservers_on(port: int) -> list[int]:
    """Pids of tritonserver processes started with --http-port=port."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"tritonserver") and f"--http-port={port}".encode() in cmd:
            pids.append(int(d.name))
    return pids


def test_killed_clit_serve_leaves_no_tritonserver(tmp_path):
    """SIGKILL gives clit-serve no chance to stop the server: the parent-death signal does."""
    needs_server()
    from clit.serve.client import RemoteUpscaler

    http, grpc, metrics = free_ports(3)
    proc = subprocess.Popen([sys.executable, "-m", "clit.serve.cli", "--host", "127.0.0.1", "--http-port", str(http),
                             "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--backend", "onnxruntime",
                             "--log-file", str(tmp_path / "triton.log")], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                RemoteUpscaler(f"127.0.0.1:{http}").close()
                break
            except Exception:
                time.sleep(0.5)
        assert _tritonservers_on(http), "tritonserver did not start"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 60
    while _tritonservers_on(http) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _tritonservers_on(http), "tritonserver outlived clit-serve"
    log = (tmp_path / "triton.log").read_text()
    assert "clit: clit instance" in log  # --log-file keeps the instances' output


def test_clit_serve_write_repo(tmp_path):
    done = _cli("clit.serve.cli", "--write-repo", str(tmp_path / "repo"), "--instances", "2")
    assert done.returncode == 0, done.stderr
    assert "count: 2" in (tmp_path / "repo/clit/config.pbtxt").read_text()
    again = _cli("clit.serve.cli", "--write-repo", str(tmp_path / "repo"))
    assert again.returncode == 2 and "--force" in again.stderr
    assert Path(tmp_path / "repo" / MARKER).is_file()
