"""The evaluation protocol: MATLAB bicubic, LR making, PSNR/SSIM variants, and the bicubic anchor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clit.runtime.metrics import rgb_to_y, ssim_rgb, ssim_y
from clit.runtime.protocol import Y_DIFF_WEIGHTS, lr_size, make_pair, shave, sr_psnr, uses_matlab_bicubic
from clit.runtime.resize import imresize, pil_bicubic

# Published bicubic results (Y PSNR, MATLAB imresize both ways); Set14 deliberately absent.
PUBLISHED_BICUBIC = {("Set5", 2): 33.66, ("Set5", 3): 30.39, ("Set5", 4): 28.42,
                     ("B100", 2): 29.56, ("B100", 3): 27.21, ("B100", 4): 25.96}


def test_lr_size_and_crop(rng):
    hr = rng.integers(0, 256, (321, 480, 3), dtype=np.uint8)
    assert lr_size((321, 480), 3) == (107, 160)
    assert lr_size((300, 300), 3) == (100, 100)  # exact division is not floored below by float error
    crop, lr = make_pair(hr, 3.7)
    assert lr.shape == (86, 129, 3) and crop.shape == (round(86 * 3.7), round(129 * 3.7), 3)
    assert np.array_equal(crop, hr[: crop.shape[0], : crop.shape[1]])
    assert np.array_equal(lr, pil_bicubic(crop, (86, 129)))  # non-integer scale: Pillow
    crop, lr = make_pair(hr, 4)
    assert np.array_equal(lr, imresize(crop, scale=0.25))  # integer <= 4: MATLAB
    assert uses_matlab_bicubic(2.0) and not uses_matlab_bicubic(6) and not uses_matlab_bicubic(2.5)
    with pytest.raises(ValueError, match="too small"):
        make_pair(hr[:5, :5], 6)


def test_imresize_properties(rng):
    flat = np.full((24, 30, 3), 77, np.uint8)
    assert np.array_equal(imresize(flat, scale=0.5), np.full((12, 15, 3), 77, np.uint8))
    img = rng.random((17, 23))
    up = imresize(img, size=(34, 46))
    assert up.shape == (34, 46)
    # bicubic interpolation reproduces linear ramps away from the borders
    ramp = np.add.outer(np.arange(20.0), 2 * np.arange(20.0))
    assert np.allclose(imresize(ramp, scale=2)[6:-6, 6:-6], np.add.outer(np.arange(40) / 2 - 0.25,
                                                                      np.arange(40) - 0.5)[6:-6, 6:-6])
    # downscaling by 2 with antialiasing = the 8-tap kernel cubic(x / 2) / 2 at half-pixel offsets
    x = rng.random(64)
    taps = np.arange(-3.5, 4.0)
    a = np.abs(taps / 2)
    w = np.where(a <= 1, 1.5 * a**3 - 2.5 * a**2 + 1, -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2)
    w /= w.sum()
    expect = np.array([np.dot(w, x[2 * i - 3: 2 * i + 5]) for i in range(2, 30)])
    assert np.allclose(imresize(x[:, None], size=(32, 1))[2:30, 0], expect, atol=1e-12)


def test_psnr_protocols(rng):
    hr = rng.random((40, 40, 3))
    pred = hr.copy()
    pred[:3] += 0.5  # only inside the x3 benchmark shave band
    assert sr_psnr(pred, hr, 3, "benchmark") == math.inf
    assert sr_psnr(pred, hr, 2.5, "benchmark") == math.inf  # ceil(2.5) = 3
    assert sr_psnr(pred, hr, 2, "benchmark") < 40
    d = np.array([0.01, -0.02, 0.03])
    got = sr_psnr(hr + d, hr, 2, "benchmark")
    assert got == pytest.approx(-10 * math.log10(float(d @ Y_DIFF_WEIGHTS) ** 2), abs=1e-9)
    got = sr_psnr(hr + d, hr, 2, "div2k")
    assert got == pytest.approx(-10 * math.log10(float(np.mean(d**2))), abs=1e-9)
    assert shave(4, "div2k") == 10 and shave(3.7, "benchmark") == 4


def _official_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """The official utils.ssim (torch conv2d, zero padding) on (H, W, 3) arrays."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    g = torch.tensor([math.exp(-((x - 5) ** 2) / (2 * 1.5**2)) for x in range(11)], dtype=torch.float64)
    g = g / g.sum()
    win = (g[:, None] @ g[None, :]).expand(3, 1, 11, 11).contiguous()
    x = torch.from_numpy(a).permute(2, 0, 1)[None]
    y = torch.from_numpy(b).permute(2, 0, 1)[None]

    def conv(t):
        return F.conv2d(t, win, padding=5, groups=3)

    mu1, mu2 = conv(x), conv(y)
    s1, s2, s12 = conv(x * x) - mu1**2, conv(y * y) - mu2**2, conv(x * y) - mu1 * mu2
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return float(m.mean())


def test_ssim_rgb_matches_official_formula(rng):
    a = rng.random((37, 29, 3))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    assert ssim_rgb(a, b) == pytest.approx(_official_ssim(a, b), abs=1e-10)
    assert ssim_rgb(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_y_brute_force(rng):
    a = rng.random((24, 22, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    ya, yb = rgb_to_y(a)[2:-2, 2:-2], rgb_to_y(b)[2:-2, 2:-2]
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    vals = []
    for i in range(ya.shape[0] - 10):
        for j in range(ya.shape[1] - 10):
            pa, pb = ya[i:i + 11, j:j + 11], yb[i:i + 11, j:j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * pa * pa).sum() - ma**2, (w * pb * pb).sum() - mb**2
            cov = (w * pa * pb).sum() - ma * mb
            c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    assert ssim_y(a, b, shave=2) == pytest.approx(np.mean(vals), abs=1e-10)


@pytest.mark.parametrize("dataset", ["Set5", "B100"])
def test_bicubic_anchor(data_dir, dataset):
    """MATLAB-compatible bicubic down and up reproduces the published PSNRs within 0.03 dB."""
    from clit.train.evaluate import BicubicEngine, evaluate

    for scale in (2, 3, 4):
        res = evaluate(BicubicEngine(), data_dir / dataset / "HR", scale, "benchmark")
        assert res.images == (5 if dataset == "Set5" else 100)
        assert abs(res.psnr - PUBLISHED_BICUBIC[dataset, scale]) <= 0.03, (dataset, scale, res.psnr)
