"""ONNX Runtime backend vs the torch backend on real images (../shared/data) at x2, x3.7, x6, x12."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from clit.runtime.engines import make_engine  # noqa: E402
from clit.runtime.images import read_rgb  # noqa: E402


@pytest.fixture
def exported(exported_clit2):
    return exported_clit2


@pytest.mark.parametrize("scale", [2, 3.7, 6, 12])
def test_onnxruntime_matches_torch_on_real_images(exported, data_dir, scale):
    ckpt, model_dir = exported
    torch_engine = make_engine("torch", checkpoint=ckpt)
    ort_engine = make_engine("onnxruntime", model_dir=model_dir, precision="fp32")
    h, w = (37, 45) if scale < 12 else (19, 23)  # x12: 228x276 out, both branches, odd sizes still
    for name, (y, x) in (("Set14/HR/baboon.png", (100, 150)), ("Urban100/HR/img_004.png", (300, 200))):
        lr = np.ascontiguousarray(read_rgb(data_dir / name)[y:y + h, x:x + w])
        ref = torch_engine.upscale(lr, scale=scale)
        got = ort_engine.upscale(lr, scale=scale)
        assert got.shape == ref.shape == (round(h * scale), round(w * scale), 3)
        assert np.isfinite(got).all()
        assert np.abs(got - ref).max() <= 1e-4, (name, scale)
