# ruff: noqa: E402  (torch is imported through pytest.importorskip first)
"""Training data: the official cascaded sampling on small real crops, made deterministic."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from PIL import Image
from torch.utils.data import DataLoader

from clit.runtime.geometry import coord_grid, nearest_index, stage_sizes
from clit.runtime.images import ImageError
from clit.runtime.resize import pil_bicubic
from clit.train.data import (
    CascadedBatches,
    DataError,
    ImageFolder,
    StepSampler,
    active_stages,
    fit_scales,
    make_sample,
    scale_ranges,
)


@pytest.fixture
def crops(data_dir, tmp_path):
    """Six real crops (different sizes) from ../shared/data/train, as PNGs in a temp folder."""
    src = sorted((data_dir / "train" / "HR").glob("*.webp"))[:6]
    sizes = [(260, 300), (250, 240), (300, 270), (230, 280), (320, 260), (240, 250)]
    for i, (path, (h, w)) in enumerate(zip(src, sizes)):
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        sub = tmp_path / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(arr[100:100 + h, 50:50 + w]).save(sub / f"{i}.png")
    return tmp_path


def test_active_stage_cycle():
    assert [active_stages(s, 3, 3) for s in range(7)] == [3, 1, 2, 3, 1, 2, 3]
    assert [active_stages(s, 2, 2) for s in range(4)] == [2, 1, 2, 1]
    assert {active_stages(s, 3, 1) for s in range(5)} == {3}


def test_fit_scales():
    assert fit_scales([2.0, 3.0], 48, 400) == [2.0, 3.0]
    shrunk = fit_scales([4.0, 4.0], 48, 300)
    assert shrunk[1] == 4.0 and 48 * shrunk[0] * shrunk[1] == pytest.approx(300)
    assert stage_sizes((48, 48), shrunk)[-1] == (300, 300)


def test_scale_ranges_alternatives():
    assert scale_ranges([1, 1], [4, 4], 2) == [[(1.0, 4.0), (1.0, 4.0)]]
    assert scale_ranges([[1], [4]], [[4], [12]], 1) == [[(1.0, 4.0)], [(4.0, 12.0)]]
    with pytest.raises(ValueError, match="2 entries"):
        scale_ranges([1], [4], 2)
    with pytest.raises(ValueError, match="scale_min <= scale_max"):
        scale_ranges([3], [2], 1)


def test_image_folder(crops, tmp_path):
    folder = ImageFolder(crops, repeat=3)
    assert len(folder) == 18
    assert [p.relative_to(crops).as_posix() for p in folder.files][:2] == ["a/1.png", "a/3.png"]
    assert np.array_equal(folder[7], folder[1]) and folder[0].dtype == np.uint8
    assert len(ImageFolder(crops, skip_k=2).files) == 4 and len(ImageFolder(crops, first_k=2).files) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="no images"):
        ImageFolder(empty)
    (empty / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError, match="broken.png"):
        ImageFolder(empty)


def test_sample_ground_truth_is_the_hr_pixels(crops, rng):
    img = ImageFolder(crops)[0]
    s = make_sample(img, (130, 130), 48, 700, rng, do_augment=True)
    assert s.hr.shape == (130, 130, 3) and s.lr.shape == (48, 48, 3) and len(set(s.index)) == 700
    assert np.array_equal(s.lr, pil_bicubic(s.hr, (48, 48)))
    coord = coord_grid(130, 130).reshape(-1, 2)[s.index]
    rows, cols = nearest_index(coord[:, 0], 130), nearest_index(coord[:, 1], 130)
    assert np.array_equal(s.hr[rows, cols], s.hr.reshape(-1, 3)[s.index])
    # the crop is a window of one of the eight flips/transposes of the image
    views = [v for t in (img, img.transpose(1, 0, 2)) for v in (t, t[::-1], t[:, ::-1], t[::-1, ::-1])]
    assert any(_contains(v, s.hr) for v in views)
    with pytest.raises(DataError, match="exceeds"):
        make_sample(img, (48, 48), 48, 48 * 48 + 1, rng, do_augment=False)


def _contains(big: np.ndarray, small: np.ndarray) -> bool:
    h, w = small.shape[:2]
    ys, xs = np.nonzero((big[: big.shape[0] - h + 1, : big.shape[1] - w + 1] == small[0, 0]).all(-1))
    return any(np.array_equal(big[y:y + h, x:x + w], small) for y, x in zip(ys, xs))


def _batches(crops, **kw) -> CascadedBatches:
    return CascadedBatches(ImageFolder(crops, repeat=4), 2, [1, 1], [4, 4], inp_size=48, sample_q=500, k=2, seed=7,
                           **kw)


def test_batches_shapes_stage_cycle_and_gt(crops):
    ds = _batches(crops)
    sampler = StepSampler(len(ds.images), 4, seed=7)
    sampler.set_epoch(3)
    seen = []
    for req in sampler:
        b = ds[req]
        n = b["stages"]
        seen.append(n)
        assert b["lr"].shape == (4, 3, 48, 48) and b["coord"].shape == (4, 500, 2) and b["gt"].shape == (4, 500, 3)
        assert b["cell"].shape == (4, 2) and len(b["grids"]) == n == len(b["scales"])
        final = stage_sizes((48, 48), b["scales"])[-1]
        assert b["grids"][0] == (48, 48) and list(b["grids"][1:]) == stage_sizes((48, 48), b["scales"])[:-1]
        assert torch.allclose(b["cell"][0], torch.tensor([2 / final[0], 2 / final[1]]))
        assert final[0] <= 230  # s_1 shrunk to the smallest crop side
        assert 0 <= b["lr"].min() and b["lr"].max() <= 1 and b["gt"].std() > 0.01
    assert seen == [2, 1] * 3


def test_batches_deterministic_for_workers_and_resume(crops):
    ds = _batches(crops)

    def run(workers: int, epoch: int) -> list:
        sampler = StepSampler(len(ds.images), 4, seed=7)
        sampler.set_epoch(epoch)
        loader = DataLoader(ds, sampler=sampler, batch_size=None, num_workers=workers, collate_fn=lambda x: x)
        return [(b["lr"], b["gt"], b["coord"], b["scales"]) for b in loader]

    a, b = run(0, 2), run(2, 2)
    assert len(a) == 6
    for x, y in zip(a, b):
        assert all(torch.equal(u, v) for u, v in zip(x[:3], y[:3])) and x[3] == y[3]
    assert not torch.equal(run(0, 3)[0][0], a[0][0])  # another epoch, other crops


def test_ranks_share_stage_and_scales_not_images(crops):
    ranks = []
    for rank in (0, 1):
        ds = _batches(crops, rank=rank)
        sampler = StepSampler(len(ds.images), 4, world=2, rank=rank, seed=7)
        sampler.set_epoch(1)
        ranks.append([(req.indices, ds[req]) for req in sampler])
    assert len(ranks[0]) == len(ranks[1]) == 6
    for (i0, b0), (i1, b1) in zip(*ranks):
        assert len(i0) == len(i1) == 2 and not set(i0) & set(i1)
        assert b0["stages"] == b1["stages"] and b0["lr"].shape[0] == 2
    with pytest.raises(ValueError, match="not divisible"):
        StepSampler(24, 5, world=2)
