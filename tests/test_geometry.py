"""Coordinates and the stage plan (clit.runtime.geometry), no torch needed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clit.runtime.geometry import (
    coord_grid,
    nearest_index,
    pixel_centres,
    plan_cascade,
    stage_plan,
    unnormalize,
    window_padded_size,
)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000])
def test_pixel_centres_formula(n):
    c = pixel_centres(n)
    assert c.dtype == np.float32 and c.shape == (n,)
    expected = -1 + (2 * np.arange(n) + 1) / n
    np.testing.assert_allclose(c, expected, rtol=0, atol=2e-7)
    np.testing.assert_allclose(c, -c[::-1], atol=2e-7)  # symmetric around 0


def test_pixel_centres_match_torch_make_coord_bitwise():
    torch = pytest.importorskip("torch")
    for n in (1, 5, 19, 26, 57, 113, 342, 1023):
        r = (1 - -1) / (2 * n)
        ref = (-1 + r + (2 * r) * torch.arange(n).float()).numpy()
        assert np.array_equal(pixel_centres(n), ref)


def test_coord_grid_layout():
    g = coord_grid(3, 5)
    assert g.shape == (3, 5, 2) and g.dtype == np.float32
    assert np.array_equal(g[:, 0, 0], pixel_centres(3))
    assert np.array_equal(g[0, :, 1], pixel_centres(5))
    assert np.all(g[:, :, 0] == g[:, :1, 0]) and np.all(g[:, :, 1] == g[:1, :, 1])


def test_unnormalize_pixel_centres_are_integers():
    for n in (1, 4, 19, 300):
        np.testing.assert_allclose(unnormalize(pixel_centres(n), n), np.arange(n), atol=1e-4)
        assert np.array_equal(nearest_index(pixel_centres(n), n), np.arange(n))


def test_nearest_index_matches_grid_sample_including_ties():
    """Half-way coordinates (x1.5, x2.5 grids) must break ties as PyTorch's CPU grid_sample."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    ties = 0
    for h in range(3, 41):
        for s in (1.5, 2.5, 3.5, 1.125, 3.7):
            out = round(h * s)
            x = pixel_centres(out)
            feat = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
            grid = torch.stack([torch.zeros(out), torch.from_numpy(x)], -1).view(1, out, 1, 2)
            ref = F.grid_sample(feat, grid, mode="nearest", align_corners=False).view(-1).numpy()
            assert np.array_equal(nearest_index(x, h), ref.astype(np.int64)), (h, s)
            u = (x.astype(np.float64) + 1) * h / 2 - 0.5
            ties += int(np.sum(np.abs(u - np.floor(u) - 0.5) < 1e-6))
    assert ties > 100  # the test really exercised half-way cases


@pytest.mark.parametrize(
    "scale, plan",
    [
        (1, [1]),
        (0.5, [0.5]),
        (2.5, [2.5]),
        (4, [4]),
        (4.0001, [4, 4.0001 / 4]),
        (6, [4, 1.5]),
        (12, [4, 3.0]),
        (16, [4, 4]),
        (18, [4, 4, 1.125]),
        (64, [4, 4, 4]),
        (65, [4, 4, 4, 65 / 64]),
    ],
)
def test_stage_plan(scale, plan):
    got = stage_plan(scale)
    assert got == pytest.approx(plan, rel=1e-12)
    assert math.prod(got) == pytest.approx(scale, rel=1e-12)


def test_stage_plan_x4_is_exactly_one_stage():
    assert stage_plan(4) == [4] and stage_plan(4.0) == [4.0]


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), -float("inf")])
def test_stage_plan_rejects_bad_scales(bad):
    with pytest.raises(ValueError):
        stage_plan(bad)


def test_plan_cascade_official_sizes():
    p = plan_cascade((19, 26), scale=18)
    assert p.out_size == (342, 468)
    assert p.grids == ((19, 26), (76, 104), (304, 416))
    assert p.stages == ((4, 4), (4, 4), (1.125, 1.125))
    assert p.n_branches == 3
    np.testing.assert_array_equal(p.cell, np.float32([2 / 342, 2 / 468]))


def test_plan_cascade_rounding_is_python_round():
    # 19 * 2.5 = 47.5 -> 48 (half to even), 25 * 2.5 = 62.5 -> 62
    assert plan_cascade((19, 25), scale=2.5).out_size == (48, 62)


def test_plan_cascade_too_many_stages():
    assert plan_cascade((8, 8), scale=64, max_branches=3).n_branches == 3
    with pytest.raises(ValueError, match="4 cascade stages.*3 branches.*x64"):
        plan_cascade((8, 8), scale=65, max_branches=3)
    with pytest.raises(ValueError, match="x4"):
        plan_cascade((8, 8), scale=4.0001, max_branches=1)


def test_plan_cascade_anisotropic_pads_short_axis_with_unit_stages():
    p = plan_cascade((10, 20), scale=(8, 2))
    assert p.stages == ((4, 2), (2.0, 1.0))
    assert p.grids == ((10, 20), (40, 40))
    assert p.out_size == (80, 40)
    q = plan_cascade((10, 20), scale=(2, 8))
    assert q.stages == ((2, 4), (1.0, 2.0))


def test_plan_cascade_exact_size():
    p = plan_cascade((19, 26), size=(100, 31))
    assert p.out_size == (100, 31)
    assert p.scale == pytest.approx((100 / 19, 31 / 26))
    assert p.n_branches == 2 and p.grids[1] == (76, 31)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(scale=2, size=(4, 4)),
        dict(scale=(2, 3, 4)),
        dict(scale="2"),
        dict(scale=0.01),  # 19 * 0.01 rounds to 0 rows
        dict(size=(0, 5)),
    ],
)
def test_plan_cascade_errors(kwargs):
    with pytest.raises((ValueError, TypeError)):
        plan_cascade((19, 26), **kwargs)


def test_window_padded_size_always_pads():
    assert window_padded_size((7, 8), 4) == (8, 12)  # a multiple still gets a full extra window
    assert window_padded_size((19, 26), 8) == (24, 32)
