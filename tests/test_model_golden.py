"""Parity with the official CLIT implementation on ../shared/golden (random-weight models)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import golden_cases, golden_index, scale_key
from PIL import Image

torch = pytest.importorskip("torch")
from clit.train import load_model  # noqa: E402

TOL = 1e-5  # max abs difference, float32 on the CPU


@pytest.fixture(scope="module")
def models():
    return {}


@pytest.mark.parametrize("chunk", [30000, 997])
@pytest.mark.parametrize("name, scale", golden_cases())
def test_golden_outputs(golden_dir, models, name, scale, chunk):
    if name not in models:
        models[name] = load_model(golden_dir / f"{name}.pth")
    model = models[name]
    ref = np.load(golden_dir / f"{name}.npz")
    lr_png = np.asarray(Image.open(golden_dir / f"{name}_lr.png").convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_array_equal(lr_png.transpose(2, 0, 1)[None], ref["lr"])

    key = scale_key(scale)
    plan = model.plan(ref["lr"].shape[-2:], scale=scale)
    np.testing.assert_allclose([s[0] for s in plan.stages], ref[f"stages_{key}"], rtol=1e-12)

    out = model.upscale(torch.from_numpy(ref["lr"]), scale=scale, chunk=chunk)
    expected = ref[f"s{key}"]
    assert tuple(out.shape) == (1, 3) + expected.shape[:2]
    got = out[0].permute(1, 2, 0).numpy()
    assert np.isfinite(got).all()
    assert np.abs(got - expected).max() <= TOL


def test_golden_covers_cascade(golden_dir):
    index = golden_index()
    stages = {len(np.load(golden_dir / f"{n}.npz")[f"stages_{scale_key(s)}"]) for n in index for s in index[n]["scales"]}
    assert stages >= {1, 2, 3}
