"""Shared fixtures: paths to ../shared (skipped with a reason when absent), seeded RNGs.

Parity tests use ``../shared/golden/strong`` (``GOLDEN``): the official outputs of random-weight
models whose decoders are amplified, so that a wrong decoder shows (in the first set,
``GOLDEN_WEAK``, the decoder's output varies by 5e-6 to 2e-4 only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN_WEAK = SHARED / "golden"
GOLDEN = GOLDEN_WEAK / "strong"
DATA = SHARED / "data"


def graphs_manifest(out: Path, model, graphs: list, **fields):
    """A Manifest over graphs exported by ``export_graphs`` (what the pipeline reads of one
    written by clit-export), without the export's parity run."""
    from clit.export.onnx_export import encoder_halo
    from clit.runtime.manifest import FORMAT_VERSION, Manifest

    return Manifest(out, {"format_version": FORMAT_VERSION, "n_branches": model.n_branches, "radius": model.r,
                          "window_size": model.window_size, "encoder_halo": encoder_halo(model),
                          "base_dim": model.dim, "heads": model.head, "graphs": graphs, **fields})


def golden_index(root: Path = GOLDEN) -> dict:
    path = root / "index.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def golden_cases(root: Path = GOLDEN) -> list:
    """(model name, scale) for every golden output; one skipped case when ../shared is absent."""
    cases = [(name, s) for name, info in golden_index(root).items() for s in info["scales"]]
    return cases or [pytest.param(None, None, marks=pytest.mark.skip(reason=f"golden outputs not found at {root}"))]


def scale_key(scale: float) -> str:
    """The npz key suffix of a scale: 3.7 -> '3p7', 6 -> '6'."""
    return str(scale).replace(".", "p")


@pytest.fixture
def golden_dir() -> Path:
    if not (GOLDEN / "index.json").is_file():
        pytest.skip(f"golden reference outputs not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture
def data_dir() -> Path:
    if not (DATA / "MANIFEST.json").is_file():
        pytest.skip(f"real images not found at {DATA}")
    return DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _tensorrt_available() -> bool:
    """TensorRT and a GPU through the runtime's own CUDA shim (cuda-python or pycuda): a
    Jetson with JetPack's TensorRT needs no CUDA build of torch for the trt tests."""
    from clit.runtime.engines import tensorrt_usable

    return tensorrt_usable()


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests without a CUDA GPU and `trt` tests without TensorRT + GPU."""
    need = {"gpu": _cuda_available, "trt": _tensorrt_available}
    cache: dict[str, bool] = {}
    for item in items:
        for marker, probe in need.items():
            if marker in item.keywords:
                if marker not in cache:
                    cache[marker] = probe()
                if not cache[marker]:
                    item.add_marker(pytest.mark.skip(reason="needs TensorRT and a GPU (cuda-python or pycuda)"
                                                    if marker == "trt" else "needs a CUDA GPU (torch)"))


@pytest.fixture(scope="session")
def exported_clit2(tmp_path_factory):
    """(checkpoint, model directory) of the golden edsr_clit2_small, exported once per session
    (FP32 graphs plus the FP16 variants, no built-in parity run)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from click.testing import CliRunner

    from clit.export.cli import main as export_cli

    ckpt = GOLDEN / "edsr_clit2_small.pth"
    if not ckpt.is_file():
        pytest.skip(f"golden models not found at {GOLDEN}")
    out = tmp_path_factory.mktemp("exported") / "edsr_clit2_small"
    res = CliRunner().invoke(export_cli, [str(ckpt), "-o", str(out), "--no-parity"])
    assert res.exit_code == 0, res.output
    return ckpt, out


@pytest.fixture
def photo(tmp_path, rng) -> Path:
    """A small random RGB PNG (14 x 18) in tmp_path."""
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (14, 18, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def strong_fp16(tmp_path_factory):
    """name -> Manifest of a strong golden model exported with FP16 variants (once per session)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from clit.export.onnx_export import export_graphs
    from clit.train import load_model

    cache = {}

    def get(name):
        if name not in cache:
            if not (GOLDEN / f"{name}.pth").is_file():
                pytest.skip(f"golden models not found at {GOLDEN}")
            model = load_model(GOLDEN / f"{name}.pth")
            out = tmp_path_factory.mktemp(name)
            graphs = export_graphs(model, out, precisions=("fp32", "fp16"))
            cache[name] = graphs_manifest(out, model, graphs)
        return cache[name]

    return get


@pytest.fixture
def lit_checkpoint(tmp_path) -> Path:
    """A copy of the golden one-branch checkpoint in tmp_path (for export tests; needs torch, onnx)."""
    import shutil

    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    src = GOLDEN / "edsr_lit_small.pth"
    if not src.is_file():
        pytest.skip(f"golden models not found at {GOLDEN}")
    shutil.copy(src, tmp_path / "ckpt.pth")
    return tmp_path / "ckpt.pth"



@pytest.fixture(scope="session")
def bundled_with_branches(tmp_path_factory):
    """n -> Manifest of the bundled model's graphs as an n-branch model directory (copies of its
    graphs, a manifest of its own).  Fewer branches drop the last ones; more repeat the last
    branch's graphs under new file names (a branch's graphs do not depend on its index, only the
    grid they read does, which the pipeline plans and the TensorRT profiles bound), so shape,
    profile and memory checks see a real n-branch model.  Never an accuracy test: a repeated branch's weights were
    not trained for its grid."""
    import copy
    import shutil

    from clit.runtime.bundled import bundled_model_dir
    from clit.runtime.manifest import Manifest, load_manifest

    src = bundled_model_dir()
    if src is None:
        pytest.skip("this installation has no bundled model")
    base = load_manifest(src)
    cache = {}

    def get(n: int) -> Manifest:
        if n in cache:
            return cache[n]
        last = base.n_branches - 1
        if n > base.n_branches and last < 1:
            pytest.skip("a one-branch model has no branch graph to repeat")
        out = tmp_path_factory.mktemp(f"bundled_{n}_branches")
        for f in src.glob("*.onnx"):  # copies: model directories refuse links that leave them
            shutil.copyfile(f, out / f.name)
        graphs = [g for g in base.data["graphs"] if g["branch"] < n]
        for k in range(base.n_branches, n):
            for g in base.data["graphs"]:
                if g["branch"] != last:
                    continue
                g = copy.deepcopy(g)
                names = {g["file"]: None, **{v["file"]: None for v in g.get("variants", {}).values()}}
                for name in names:  # decoder2.grouped.fp16.onnx -> decoder3.grouped.fp16.onnx
                    new = name.replace(str(last + 1), str(k + 1), 1)
                    shutil.copyfile(src / name, out / new)
                    names[name] = new
                g.update(branch=k, file=names[g["file"]])
                for v in g.get("variants", {}).values():
                    v["file"] = names[v["file"]]
                graphs.append(g)
        data = {**base.data, "n_branches": n, "graphs": graphs}
        (out / "manifest.json").write_text(json.dumps(data))  # a model directory the CLIs can load
        cache[n] = Manifest(out, data)
        return cache[n]

    return get
