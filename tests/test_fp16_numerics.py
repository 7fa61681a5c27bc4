"""FP16 numerics that round like FP16: the mixed-precision graphs run by ``onnx.reference``
(float16 ops in float16; ONNX Runtime's CPU provider would drop the Casts, see
clit.export.fp16_check), on the strong golden models, against ONNX Runtime FP32."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, GOLDEN

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from clit.export.fp16_check import ReferenceRunner, index_tensors, psnr_contribution  # noqa: E402
from clit.runtime.geometry import pixel_centres, plan_cascade  # noqa: E402
from clit.runtime.images import read_uint8  # noqa: E402
from clit.runtime.metrics import psnr  # noqa: E402
from clit.runtime.onnx_backend import OnnxRuntimeRunner  # noqa: E402
from clit.runtime.pipeline import Pipeline  # noqa: E402
from clit.runtime.resize import pil_bicubic  # noqa: E402
from clit.runtime.tiling import neighbourhood_span  # noqa: E402

MIN_PSNR = 45.0  # dB against FP32, the FP16 threshold of clit-parity


@pytest.mark.parametrize("width", [480, 1100])
def test_decoders_on_wide_grids_keep_indices_and_accuracy(strong_fp16, width):
    """x16 with two branches on LR strips 480 and 1100 pixels wide: branch 2 reads grids 1920
    and 4400 wide, where FP16 coordinates would be off by pixels.  On the last 3200 output
    pixels of the strip (the largest coordinates) both decoders' FP16 variants give the same
    neighbour and bilinear indices as FP32 and a residual within 45 dB of it."""
    if not (DATA / "Urban100" / "HR" / "img_001.png").is_file():
        pytest.skip(f"real images not found at {DATA}")
    manifest = strong_fp16("edsr_clit2_small")
    photo = read_uint8(DATA / "Urban100" / "HR" / "img_001.png")  # 1024 x 644
    lr = pil_bicubic(photo, (round(photo.shape[0] * width / photo.shape[1]), width))[-24:]
    lr = np.ascontiguousarray(lr, dtype=np.float32) / 255
    pipe = Pipeline(manifest, OnnxRuntimeRunner(manifest))
    plan = plan_cascade(lr.shape[:2], scale=16, max_branches=2)
    assert plan.grids[1][1] == 4 * width
    (out_h, out_w), radius = plan.out_size, manifest.radius
    rows, cols = pixel_centres(out_h)[:40], pixel_centres(out_w)[-80:]
    coord = np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
    feat, *maps0 = pipe.encode(np.ascontiguousarray(lr.transpose(2, 0, 1)[None]))
    fp32, fp16 = ReferenceRunner(manifest), ReferenceRunner(manifest)
    for k, grid in enumerate(plan.grids):
        if k == 0:
            maps, offset = maps0, (0, 0)
        else:
            gy, gx = neighbourhood_span(rows, grid[0], radius), neighbourhood_span(cols, grid[1], radius)
            maps = pipe.branch_maps(feat, (0, 0), k, grid, plan.lr_size, gy, gx)
            offset = (gy[0], gx[0])
        feeds = {"q": maps[0], "k": maps[1], "v": maps[2], "offset": np.asarray(offset, np.int32),
                 "size": np.asarray(grid, np.float32), "rows": pixel_centres(grid[0]), "cols": pixel_centres(grid[1]),
                 "drow": np.arange(-radius, radius + 1, dtype=np.float32) * np.float32(2 / grid[0]),
                 "dcol": np.arange(-radius, radius + 1, dtype=np.float32) * np.float32(2 / grid[1]),
                 "coord": coord[None], "cell": plan.cell}
        graph = manifest.graph("decoder", k)
        ref = fp32.intermediate(graph.file, feeds)
        half = fp16.intermediate(graph.variants["fp16"]["file"], feeds)
        names = index_tensors(onnx.load(str(manifest.root / graph.file)))
        assert len(names) == 4  # nearest row and column; the bilinear q sample's lower row and column
        for name in names:
            np.testing.assert_array_equal(half[name], ref[name], err_msg=name)
        ort = pipe.decode(k, maps, grid, coord, plan.cell, offset)
        assert np.abs(ref["residual"][0] - ort).max() <= 1e-4  # the FP32 reference evaluator is ONNX Runtime
        assert half["residual"].dtype == np.float32 and np.isfinite(half["residual"]).all()
        value = psnr_contribution(half["residual"][0], ort)
        assert MIN_PSNR <= value < 200, (k, value)  # not bit-identical: it really rounded


@pytest.mark.parametrize("name, scale, crop", [("edsr_lit_small", 3.7, None), ("edsr_clit2_small", 12, 12),
                                               ("edsr_clit3_small", 18, 8), ("rdn_clit2_small", 6, None),
                                               ("swinir_clit2_small", 3.5, None)])
def test_fp16_pipeline_on_strong_models(strong_fp16, name, scale, crop):
    """The whole FP16 pipeline (every graph in float16 where the variant says so) against
    ONNX Runtime FP32 on the golden LR inputs (a corner of them at x12 and x18, to keep the
    reference evaluator quick): >= 45 dB (observed 75-87 dB)."""
    manifest = strong_fp16(name)
    lr = np.ascontiguousarray(np.load(GOLDEN / f"{name}.npz")["lr"][0].transpose(1, 2, 0)[:crop, :crop])
    full = Pipeline(manifest, OnnxRuntimeRunner(manifest)).upscale(lr, scale=scale)
    half = Pipeline(manifest, ReferenceRunner(manifest), precision="fp16").upscale(lr, scale=scale, chunk=8192)
    assert half.shape == full.shape and np.isfinite(half).all()
    value = psnr(np.clip(half, 0, 1), np.clip(full, 0, 1))
    assert MIN_PSNR <= value < 200, value
