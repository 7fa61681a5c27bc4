"""Serving throughput and latency on Triton against clit-infer, in one run (a benchmark, not a test).

Requests: ``--requests`` crops of the Set14 HR images (``../shared/data``; random images when
absent), sizes cycling through ``--sizes``, scales through ``--scales``, uint8 RGB.  Measured
in this order, on the same requests:

* ``clit-infer``: the CLI as a user runs it on the crops written as PNG files (one process:
  model loading, reading, writing included), and ``Upscaler.upscale`` in this process
  (what clit-infer runs per image: the upscale alone, one request at a time);
* a real tritonserver (``clit.serve``) with 1 and with 2 model instances (ONNX Runtime threads:
  the cores shared among the instances), ``--clients`` concurrent gRPC clients sending the
  requests; every answer is checked against the local output bit for bit.

Reported: output megapixels per second (sum of output pixels / wall time) and per-request
latency percentiles (p50 / p90 / p99) of the median of ``--rounds`` rounds, each running every
path once in turn (so that a slow spell of the shared machine hits every path alike).  Run on
an idle machine: a training run or the test suite on the same cores spoils every figure.

    .venv-serve/bin/python benchmarks/serve.py [--model MODEL_DIR] [--requests 24] \\
        [--sizes 64x64,96x96,128x96] [--scales 2,3,4] [--clients 4] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from clit.runtime.images import list_images, read_uint8, write_image
from clit.runtime.upscaler import Upscaler
from clit.serve.client import RemoteUpscaler
from clit.serve.repository import ServeOptions, write_repository
from clit.serve.server import TritonServer, free_ports

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "Set14" / "HR"


def requests_for(n: int, sizes, scales, seed: int = 0):
    """(image, scale) pairs: crops of Set14 (random pixels when absent)."""
    rng = np.random.default_rng(seed)
    files = list_images(DATA) if DATA.is_dir() else []
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        if files:
            img = read_uint8(files[i % len(files)])
            y, x = (int(rng.integers(0, img.shape[k] - (h, w)[k] + 1)) for k in (0, 1))
            img = np.ascontiguousarray(img[y:y + h, x:x + w])
        else:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out.append((img, scales[i % len(scales)]))
    return out


def percentiles(latencies):
    q = np.percentile(np.asarray(latencies) * 1000, [50, 90, 99])
    return {"p50_ms": round(float(q[0]), 1), "p90_ms": round(float(q[1]), 1), "p99_ms": round(float(q[2]), 1)}


def run_local(up, reqs):
    lat, outs = [], []
    t0 = time.perf_counter()
    for img, scale in reqs:
        t = time.perf_counter()
        outs.append(up.upscale(img, scale=scale))
        lat.append(time.perf_counter() - t)
    return time.perf_counter() - t0, lat, outs


def run_cli(model_dir, reqs, tmp: Path):
    """clit-infer on the requests as PNG files: one process per scale (the CLI takes one scale)."""
    tmp.mkdir()
    total = 0.0
    for scale in sorted({s for _, s in reqs}):
        src, dst = tmp / f"in_{scale}", tmp / f"out_{scale}"
        src.mkdir()
        for i, (img, s) in enumerate(reqs):
            if s == scale:
                write_image(src / f"{i:03d}.png", img)
        cmd = [sys.executable, "-m", "clit.runtime.cli", str(src), "--scale", str(scale), "-o", f"{dst}/", "-q",
               "--backend", "onnxruntime"] + ([] if model_dir is None else ["--model", str(model_dir)])
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        total += time.perf_counter() - t
    return total


def run_server(model_dir, reqs, expected, instances: int, clients: int, tmp: Path):
    tmp.mkdir(exist_ok=True)
    repo = write_repository(tmp / f"repo{instances}", model_dir,
                            opts=ServeOptions(backend="onnxruntime", instances=instances))
    http, grpc, metrics = free_ports(3)
    with TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics, host="127.0.0.1") as server:
        warm = RemoteUpscaler(f"grpc://127.0.0.1:{server.grpc_port}")
        for _ in range(2 * instances):  # every instance's sessions and arenas, once
            warm.upscale(reqs[0][0][:32, :32], scale=reqs[0][1])
        warm.close()
        lat, wrong, lock = [], [], threading.Lock()
        order = list(range(len(reqs)))

        def client():
            up = RemoteUpscaler(f"grpc://127.0.0.1:{server.grpc_port}")
            while True:
                with lock:
                    if not order:
                        break
                    j = order.pop(0)
                t = time.perf_counter()
                got = up.upscale(reqs[j][0], scale=reqs[j][1])
                dt = time.perf_counter() - t
                with lock:
                    lat.append(dt)
                    if not np.array_equal(got, expected[j]):
                        wrong.append(j)
            up.close()

        threads = [threading.Thread(target=client) for _ in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    if wrong:
        raise SystemExit(f"{len(wrong)} answers differ from the local outputs: {wrong}")
    return wall, lat


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model directory (default: the bundled model)")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--sizes", default="64x64,96x96,128x96", help="WxH list")
    ap.add_argument("--scales", default="2,3,4")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="every path once per round; the median round is shown")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    scales = [float(s) for s in args.scales.split(",")]
    reqs = requests_for(args.requests, sizes, scales)
    cores = os.cpu_count()
    up = Upscaler(args.model, backend="onnxruntime")
    up.upscale(reqs[0][0][:32, :32], scale=reqs[0][1])
    runs = {}  # path -> one (seconds, latencies) per round; the paths alternate within each round

    def record(name, wall, lat=None):
        runs.setdefault(name, []).append((wall, lat))

    expected = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            wall, lat, outs = run_local(up, reqs)
            expected = outs if expected is None else expected
            assert all(np.array_equal(a, b) for a, b in zip(outs, expected))
            record("Upscaler.upscale (in process, sequential)", wall, lat)
            record("clit-infer CLI (files, model load included)", run_cli(args.model, reqs, Path(tmp) / f"cli{r}"))
            for instances in (1, 2):
                wall, lat = run_server(args.model, reqs, expected, instances, args.clients, Path(tmp) / f"s{r}")
                record(f"Triton, {instances} instance{'s' if instances > 1 else ''}, {args.clients} gRPC clients",
                       wall, lat)
    mpix = sum(o.shape[0] * o.shape[1] for o in expected) / 1e6
    rows = {}
    for name, results in runs.items():  # the round with the median wall time
        wall, lat = sorted(results, key=lambda x: x[0])[len(results) // 2]
        rows[name] = {"seconds": wall, "all_seconds": [round(w, 2) for w, _ in results],
                      **(percentiles(lat) if lat else {})}
    print(f"{args.requests} requests, sizes {args.sizes}, scales {args.scales}: {mpix:.2f} output MP; "
          f"{cores} cores; every server answer equal to the local output")
    base = rows["Upscaler.upscale (in process, sequential)"]["seconds"]
    print("| path | wall s (rounds) | output MP/s | vs in-process | p50 ms | p90 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        r["mpix_per_s"] = mpix / r["seconds"]
        lat_cols = " | ".join(str(r.get(k, "-")) for k in ("p50_ms", "p90_ms", "p99_ms"))
        rounds = "/".join(f"{w:.1f}" for w in r["all_seconds"])
        print(f"| {name} | {r['seconds']:.2f} ({rounds}) | {r['mpix_per_s']:.3f} | {base / r['seconds']:.2f}x "
              f"| {lat_cols} |")
    if args.json:
        args.json.write_text(json.dumps({"output_mpix": mpix, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
