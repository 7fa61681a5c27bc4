"""The grouped decoder (first MLP layer once per feature pixel): exact against the official
outputs and the per-query decoder, whole and tiled, at every scale kind; and the runtime's
grouping of a tile's queries (blocks, runs, slots)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GOLDEN, GOLDEN_WEAK, golden_index, graphs_manifest, scale_key

from clit.runtime.geometry import axis_groups, block_groups, nearest_index, pixel_centres
from clit.runtime.pipeline import (
    DEFAULT_MAX_GROUPS,
    DEFAULT_MAX_RUN,
    NEVER,
    GroupingRule,
    group_blocks,
    grouping_threshold,
)

TOL_OFFICIAL = 1e-4  # max abs against the official outputs (observed <= 3e-7)
TOL_OLD = 1e-5  # max abs against the per-query decoder (observed <= 2e-7)


@pytest.mark.parametrize("max_run", [None, 1, 2, 5])
def test_axis_groups_and_slots(rng, max_run):
    for n, out in [(19, 44), (7, 7), (5, 23), (40, 61), (3, 100)]:
        coords = pixel_centres(out)[rng.integers(0, 5):]
        pixels, runs, group, slot = axis_groups(coords, n, max_run)
        idx = nearest_index(coords, n)
        assert np.array_equal(pixels[group], idx)  # every query's group has its nearest pixel
        assert np.array_equal(runs[group, slot], np.arange(len(coords)))  # and its slot points back at it
        assert np.all(np.diff(pixels) >= 0) and np.all(idx[runs] == pixels[:, None])  # padding repeats the run
        lengths = np.bincount(group)
        if max_run is None:
            assert np.all(np.diff(pixels) > 0)  # one group per pixel
        else:
            assert lengths.max() <= max_run and runs.shape[1] == lengths.max()
            for p in np.unique(pixels):  # a pixel's run is split into near-equal parts
                parts = lengths[pixels == p]
                assert parts.max() - parts.min() <= 1 and (len(parts) == 1 or parts.min() * 2 >= max_run - 1)


@pytest.mark.parametrize("max_run", [None, 2])
def test_block_sel_puts_every_query_in_its_slot(rng, max_run):
    grid, out = (13, 17), (41, 30)
    rows, cols = pixel_centres(out[0])[3:29], pixel_centres(out[1])[1:22]
    b = block_groups(rows, cols, grid, max_run)
    gy, gx, my, mx = len(b["gy"]), len(b["gx"]), b["ry"].shape[1], b["rx"].shape[1]
    slot = np.unravel_index(b["sel"], (gy, gx, my, mx))
    r = b["ry"][slot[0], slot[2]]
    c = b["rx"][slot[1], slot[3]]
    want_r, want_c = np.meshgrid(np.arange(len(rows)), np.arange(len(cols)), indexing="ij")
    assert np.array_equal(r, want_r.ravel()) and np.array_equal(c, want_c.ravel())


@pytest.mark.parametrize("chunk,max_run,max_groups", [(1, 5, 32), (50, 5, 32), (300, 2, 3), (100000, 5, 32),
                                                      (100000, 3, 4)])
def test_group_blocks_cover_each_query_once_between_groups(chunk, max_run, max_groups):
    """Blocks tile the queries exactly once, are cut only between groups (runs of one pixel, split
    at max_run), hold at most max_groups groups per axis and at most ``chunk`` queries (unless a
    single group is larger)."""
    grid, out = (11, 9), (170, 45)
    rows, cols = pixel_centres(out[0])[2:160], pixel_centres(out[1])[4:41]
    covered = np.zeros((len(rows), len(cols)), int)
    row_groups, col_groups = axis_groups(rows, grid[0], max_run)[2], axis_groups(cols, grid[1], max_run)[2]
    row_cuts = set(np.flatnonzero(np.diff(row_groups)) + 1) | {0, len(rows)}
    col_cuts = set(np.flatnonzero(np.diff(col_groups)) + 1) | {0, len(cols)}
    for (r0, r1), (c0, c1) in group_blocks(rows, cols, grid, chunk, max_run, max_groups):
        covered[r0:r1, c0:c1] += 1
        assert {r0, r1} <= row_cuts and {c0, c1} <= col_cuts  # cut between groups only
        n_rows, n_cols = len(set(row_groups[r0:r1])), len(set(col_groups[c0:c1]))
        assert n_rows <= max_groups and n_cols <= max_groups
        assert (r1 - r0) * (c1 - c0) <= chunk or n_rows == n_cols == 1
        b = block_groups(rows[r0:r1], cols[c0:c1], grid, max_run)  # what the graph is fed stays capped
        assert len(b["gy"]) <= max_groups and b["ry"].shape[1] <= max_run and b["rx"].shape[1] <= max_run
    assert (covered == 1).all()


torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from clit.export.onnx_export import export_graphs  # noqa: E402
from clit.runtime.manifest import Manifest  # noqa: E402
from clit.runtime.onnx_backend import OnnxRuntimeRunner  # noqa: E402
from clit.runtime.pipeline import Pipeline  # noqa: E402
from clit.train import load_model  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache = {}

    def get(root, name):
        if (root, name) not in cache:
            model = load_model(root / f"{name}.pth")
            out = tmp_path_factory.mktemp(name)
            graphs = export_graphs(model, out)
            manifest = graphs_manifest(out, model, graphs)
            cache[(root, name)] = (model, manifest, OnnxRuntimeRunner(manifest))
        return cache[(root, name)]

    return get


CASES = [pytest.param(root, name, s, id=f"{root.name}-{name}-{s}")
         for root in (GOLDEN, GOLDEN_WEAK) for name, info in golden_index(root).items() for s in info["scales"]]


@pytest.mark.parametrize("root, name, scale", CASES or [pytest.param(None, None, None, marks=pytest.mark.skip(
    reason=f"golden outputs not found at {GOLDEN}"))])
def test_grouped_reproduces_every_golden(exported, root, name, scale):
    """Every golden output (strong and first set) through the grouped decoders, whatever the
    rule would pick: within 1e-4 of the official outputs and 1e-5 of the per-query decoders."""
    _, manifest, runner = exported(root, name)
    ref = np.load(root / f"{name}.npz")
    img = ref["lr"][0].transpose(1, 2, 0)
    grouped = Pipeline(manifest, runner, grouping="on").upscale(img, scale=scale, chunk=1499)
    per_query = Pipeline(manifest, runner, grouping="off").upscale(img, scale=scale, chunk=1499)
    expected = ref[f"s{scale_key(scale)}"]
    assert grouped.shape == expected.shape and np.isfinite(grouped).all()
    assert np.abs(grouped - expected).max() <= TOL_OFFICIAL
    assert np.abs(grouped - per_query).max() <= TOL_OLD


SCALES = [1.5, 2, 2.5, 3.7, 4, 6, 12, 18, (2, 3.5)]


@pytest.mark.parametrize("name", ["edsr_clit3_small", "swinir_clit2_small"])
def test_grouped_equals_per_query_at_every_scale_kind(exported, name, rng):
    """x1.5 ... x18, anisotropic 2x3.5 and an exact size, whole and tiled (tiles not dividing
    the image): grouped == per-query within 1e-5, and == the PyTorch model within 1e-4."""
    model, manifest, runner = exported(GOLDEN, name)
    img = np.load(GOLDEN / f"{name}.npz")["lr"][0].transpose(1, 2, 0)[:12, :15]
    on, off = Pipeline(manifest, runner, grouping="on"), Pipeline(manifest, runner, grouping="off")
    cases = [{"scale": s} for s in SCALES if max(np.atleast_1d(s)) <= 4 ** model.n_branches] + [{"size": (47, 61)}]
    for kw in cases:
        want = off.upscale(img, **kw)
        for tile in (None, 5):
            got = on.upscale(img, tile=tile, chunk=613, **kw)
            assert got.shape == want.shape and np.abs(got - want).max() <= TOL_OLD, (kw, tile)
        with torch.no_grad():
            ref = model.upscale(torch.from_numpy(img.transpose(2, 0, 1).copy())[None], **kw)[0].permute(1, 2, 0)
        assert np.abs(got - ref.numpy()).max() <= TOL_OFFICIAL, kw


def test_the_rule_picks_the_cheaper_formulation(exported, rng):
    """auto: grouped where many queries share a pixel (x4: 16 per pixel), per-query where few do
    (x1.2: 1.44); the manifest's threshold decides."""
    _, manifest, runner = exported(GOLDEN, "edsr_lit_small")
    pipe = Pipeline(manifest, runner)
    rows4, cols4 = pixel_centres(76)[:40], pixel_centres(104)[:40]
    rows12, cols12 = pixel_centres(23)[:20], pixel_centres(31)[:20]
    assert pipe.use_grouped(0, rows4, cols4, (19, 26)) and not pipe.use_grouped(0, rows12, cols12, (19, 26))
    strict = Pipeline(Manifest(manifest.root, {**manifest.data, "decoder_grouping": {"min_queries_per_pixel": 20}}),
                      runner)
    assert not strict.use_grouped(0, rows4, cols4, (19, 26))
    assert strict.rule == GroupingRule(20.0, DEFAULT_MAX_RUN, DEFAULT_MAX_GROUPS)  # missing fields: the defaults
    # no decoder_grouping: the threshold of the architecture (C = 32, 8 heads: 12 per pixel)
    assert pipe.rule == GroupingRule.for_model(32, 8) and pipe.rule.min_queries_per_pixel == 12.0
    rows25, cols25 = pixel_centres(48)[:30], pixel_centres(65)[:30]  # x2.5: 6.25 per pixel
    assert not pipe.use_grouped(0, rows25, cols25, (19, 26))
    # measured on ONNX Runtime CPU (benchmarks/fast_decoder.py, README "Benchmarks"): bundled
    # (C = 64): x2 (4 per pixel) lost, x2.5 (6.25) won; full size (C = 256): 4 per pixel won
    assert 4 < grouping_threshold(64, 8) < 6.25 and grouping_threshold(256, 8) < 4
    assert grouping_threshold(24, 8) == NEVER  # 3 channels per head: never worth it
    from clit.runtime.bundled import bundled_model_dir
    from clit.runtime.manifest import load_manifest

    bundled = load_manifest(bundled_model_dir())
    assert GroupingRule.of(bundled) == GroupingRule.for_model(64, 8)  # exported with today's rule
    with pytest.raises(ValueError, match="grouping"):
        Pipeline(manifest, runner, grouping="sometimes")


def test_each_decoder_run_gets_only_the_window_it_reads(exported, rng):
    """The pipeline crops the tile's q/k/v maps to each chunk's or block's neighbourhood: a
    grouped block reads at most max_groups pixels + the radius on each side (what the TensorRT
    profiles assume), a per-query chunk of a few output rows a few grid rows; same output."""
    _, manifest, runner = exported(GOLDEN, "edsr_lit_small")
    seen = []

    class Recorder:
        def run(self, file, feeds):
            if "decoder" in file:
                seen.append((file, feeds["q"].shape[2:], feeds["offset"].tolist()))
            return runner.run(file, feeds)

    img = rng.random((40, 48, 3), dtype=np.float32)
    outs = {g: Pipeline(manifest, Recorder(), grouping=g).upscale(img, scale=4, chunk=400) for g in ("on", "off")}
    assert np.abs(outs["on"] - outs["off"]).max() <= TOL_OLD
    rule, r = GroupingRule.of(manifest), manifest.radius
    grouped = [s for f, s, _ in seen if "grouped" in f]
    per_query = [s for f, s, _ in seen if "grouped" not in f]
    assert grouped and per_query and len({tuple(o) for _, _, o in seen}) > 2  # windows move
    assert all(h <= rule.max_groups + 2 * r and w <= rule.max_groups + 2 * r for h, w in grouped)
    # 400 queries are at most 3 rows of the 192-wide output: at most 2 grid rows + the radius
    assert all(h <= 2 + 2 * r and w == 48 for h, w in per_query)


def test_grouping_only_where_blocks_fit_their_profile(exported, rng):
    """An axis downscaled (nearest pixels stepping by 2) is never grouped, even when forced: a
    block's q/k/v window would exceed max_groups + 2 radius (found by an independent review)."""
    _, manifest, runner = exported(GOLDEN, "edsr_lit_small")
    pipe = Pipeline(manifest, runner, grouping="on")
    rows, cols = pixel_centres(10)[:8], pixel_centres(104)[:40]  # 19 -> 10 rows, 26 -> 104 columns
    assert not pipe.use_grouped(0, rows, cols, (19, 26))
    assert pipe.use_grouped(0, pixel_centres(76)[:40], cols, (19, 26))
