"""``clit-serve``: serve a model directory on Triton Inference Server (or write its repository)."""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path

import click

from clit.runtime.cli import parse_memory
from clit.runtime.engines import PRECISIONS
from clit.runtime.errors import error_boundary
from clit.runtime.images import DEFAULT_MAX_PIXELS

from .repository import UNSAFE_PATH_CHARS, ServeOptions, model_names, write_repository
from .server import TritonServer, binary_at


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", required=False, type=click.Path(path_type=Path))
@click.option("--write-repo", type=click.Path(path_type=Path),
              help="Only write the Triton model repository to this folder (to mount into NVIDIA's Triton "
                   "container as --model-repository) and exit.")
@click.option("--force", is_flag=True, help="With --write-repo: replace a repository clit-serve wrote before.")
@click.option("--name", default="clit", show_default=True,
              help="Model name: NAME takes uint8 images, NAME_16bit uint16 ones.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model instances (processes) per model, each with its own engine.")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime"]), default="auto",
              show_default=True, help="Engine of each instance (auto: TensorRT when usable, else ONNX Runtime).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=None,
              help="ONNX Runtime threads per instance [default: the server's cores / instances].")
@click.option("--max-memory", callback=parse_memory, metavar="SIZE",
              help="Memory each instance plans for, e.g. 2G [default: 4G]; a request whose output "
                   "does not fit is refused.")
@click.option("--max-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest input image per request (0: no limit).")
@click.option("--tile", type=click.IntRange(min=0), default=None,
              help="LR tile side of each instance (the result is the same; memory and the time between "
                   "checks for a cancelled request follow it) [default: the memory plan's; 0: never tile].")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address the endpoints listen on.")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option("--tritonserver", "binary", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The tritonserver binary [default: the one on PATH, else nvidia-pytriton's].")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds to wait for the server to be ready.")
@click.option("--log-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Keep Triton's log (the server's and every model instance's output) in this file "
                   "[default: a temporary file; its error lines are shown when the server fails].")
@click.option("-v", "--verbose", is_flag=True, help="Triton's verbose log, on stderr.")
@error_boundary("clit-serve")
def main(model_dir, write_repo, force, name, instances, backend, precision, threads, max_memory, max_pixels, tile,
         host, http_port, grpc_port, metrics_port, binary, timeout, log_file, verbose):
    """Serve MODEL_DIR (default: the bundled model) on Triton Inference Server: KServe v2
    HTTP/gRPC, health (/v2/health/ready) and Prometheus metrics (/metrics).

    The server is the tritonserver on PATH (NVIDIA's container) or nvidia-pytriton's
    (pip install 'clit[serve]'); its Python backend runs clit.runtime in this Python
    environment.  Ctrl-C stops it.

    \b
    Examples:
      clit-serve                                   # bundled model, ports 8000/8001/8002
      clit-serve MODEL_DIR --instances 2 --backend onnxruntime
      clit-serve MODEL_DIR --write-repo repo/      # for: tritonserver --model-repository repo/
      clit-infer photo.png --scale 4 -o out.png --server localhost:8000
    """
    if len({http_port, grpc_port, metrics_port}) < 3:
        raise click.UsageError("--http-port, --grpc-port and --metrics-port must differ")
    if force and write_repo is None:
        raise click.UsageError("--force goes with --write-repo")
    opts = ServeOptions(backend=backend, precision=precision, instances=instances, threads=threads,
                        max_memory=max_memory, max_pixels=max_pixels, tile=tile)
    if write_repo is not None:
        write_repository(write_repo, model_dir, name=name, opts=opts, force=force)
        click.echo(f"wrote {write_repo} (models {', '.join(model_names(name).values())}): "
                   f"tritonserver --model-repository {Path(write_repo).resolve()}", err=True)
        return
    unsafe = set(tempfile.gettempdir()) & set(UNSAFE_PATH_CHARS)
    if unsafe:  # the repository and the backend links go there, and Triton starts the stub through bash -c
        raise click.UsageError(f"the temporary folder {tempfile.gettempdir()!r} has "
                               f"{' '.join(map(repr, sorted(unsafe)))}, which Triton cannot start a Python model "
                               "under: set TMPDIR to a plain path")
    with tempfile.TemporaryDirectory(prefix="clit-repo-") as tmp:
        repo = write_repository(Path(tmp) / "repository", model_dir, name=name, opts=opts)
        server = TritonServer(repo, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, host=host,
                              binary=None if binary is None else binary_at(binary), verbose=verbose,
                              log_file=log_file, passthrough=verbose and log_file is None)
        stop = {"signal": None}

        def on_signal(signum, frame):
            stop["signal"] = signum
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_signal)
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # a closed terminal stops it (not under nohup)
            signal.signal(signal.SIGHUP, on_signal)
        try:
            server.start(timeout=timeout)
            click.echo(f"serving {', '.join(model_names(name).values())} ({instances} instance"
                       f"{'s' if instances > 1 else ''} each): HTTP {server.url}, gRPC {host}:{grpc_port}, "
                       f"metrics http://{host}:{metrics_port}/metrics; Ctrl-C stops", err=True)
            code = server.wait()
            if code:
                raise RuntimeError(f"tritonserver exited with code {code}: {server.log_summary()}")
        except KeyboardInterrupt:
            click.echo("stopping", err=True)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not cut it short
                signal.signal(sig, signal.SIG_IGN)
            server.stop()
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
