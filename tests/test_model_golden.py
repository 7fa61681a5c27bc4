"""Parity with the official CLIT implementation on ../shared/golden/strong (random-weight models
with amplified decoders, SwinIR included) and on the first set, ../shared/golden."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GOLDEN, GOLDEN_WEAK, golden_cases, golden_index, scale_key
from PIL import Image

torch = pytest.importorskip("torch")
from clit.train import load_model  # noqa: E402

TOL = 1e-5  # max abs difference, float32 on the CPU


@pytest.fixture(scope="module")
def models():
    return {}


CASES = [pytest.param(root, name, s, id=f"{root.name}-{name}-{s}")
         for root in (GOLDEN, GOLDEN_WEAK) for name, info in golden_index(root).items() for s in info["scales"]]
CASES = CASES or golden_cases()  # one skipped case when ../shared is absent


@pytest.mark.parametrize("chunk", [30000, 997])
@pytest.mark.parametrize("root, name, scale", CASES)
def test_golden_outputs(golden_dir, models, root, name, scale, chunk):
    if (root, name) not in models:
        models[(root, name)] = load_model(root / f"{name}.pth")
    model = models[(root, name)]
    ref = np.load(root / f"{name}.npz")
    lr_png = np.asarray(Image.open(root / f"{name}_lr.png").convert("RGB"), dtype=np.float32) / 255
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
