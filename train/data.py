"""Training data: an HR image folder and the official cascaded sampling, made deterministic.

A training batch follows the official ``sr-implicit-downsampled-cascaded`` wrapper:

1. one scale per active cascade stage, ``s_i ~ U(scale_min[i], scale_max[i])``;
2. if ``inp_size * prod(s)`` exceeds the smallest side in the batch, ``s_1`` shrinks to fit;
3. each image is augmented (vertical flip, horizontal flip, transpose; each with p = 0.5),
   then an HR crop of ``round(inp_size * prod(s))`` pixels (square) is taken at random;
4. the LR is Pillow bicubic of the uint8 crop to ``inp_size`` x ``inp_size``;
5. ``sample_q`` pixels of the crop are drawn without replacement; their centres (in the
   [-1, 1] convention) are the queries and their values the ground truth.

Stage counts alternate as the official ``k``: with ``k`` (normally the number of branches
N) the steps of each epoch cycle through N, 1, 2, ..., k - 1 active stages.  The official code
keeps that counter inside each data-loader worker (so the cycle depends on the worker
count); here the stage count and the batch's scales are a function of (seed, epoch, step)
alone, and each image's augmentation, crop and queries of (seed, epoch, step, rank, slot).
Batches are therefore identical for any number of workers and across a resume, and under
DDP every rank trains the same stage count and scales on its own images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from clit.runtime.geometry import coord_grid, stage_sizes
from clit.runtime.images import list_images, read_uint8
from clit.runtime.resize import pil_bicubic


class DataError(ValueError):
    """Unusable training data or sampling settings; the message names the folder or file."""


class ImageFolder(Dataset):
    """HR images of a folder, ``repeat`` times per epoch, optionally cached in memory (uint8).

    ``first_k`` keeps the first k files, ``skip_k`` drops the first k (a held-out split:
    ``first_k: 8`` for validation and ``skip_k: 8`` for training on the same folder).
    """

    def __init__(self, root: str | os.PathLike, repeat: int = 1, cache: bool = True,
                 first_k: int | None = None, skip_k: int = 0):
        if repeat < 1:
            raise DataError(f"repeat must be >= 1, got {repeat}")
        files = list_images(root)[skip_k:]
        if first_k is not None:
            files = files[:first_k]
        if not files:
            raise DataError(f"{root}: no images left after skip_k={skip_k}, first_k={first_k}")
        self.files, self.repeat = files, repeat
        self._cache = [read_uint8(f) for f in files] if cache else None

    def __len__(self) -> int:
        return len(self.files) * self.repeat

    def __getitem__(self, i: int) -> np.ndarray:
        j = i % len(self.files)
        return self._cache[j] if self._cache is not None else read_uint8(self.files[j])


# ------------------------------------------------------------------ sampling primitives
def active_stages(step: int, n_branches: int, k: int) -> int:
    """Stages trained at global ``step``: the official cycle N, 1, 2, ..., k - 1."""
    return n_branches if step % k == 0 else step % k


def fit_scales(scales: Sequence[float], inp_size: int, min_side: int) -> list[float]:
    """Shrink the first scale so that ``inp_size * prod(scales) <= min_side`` (official rule)."""
    scales = list(scales)
    total = math.prod(scales) * inp_size
    if total > min_side:
        scales[0] *= min_side / total
    return scales


def augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random vertical flip, horizontal flip and transpose of an (H, W, C) image (official order)."""
    vflip, hflip, transpose = rng.random(3) < 0.5
    if vflip:
        img = img[::-1]
    if hflip:
        img = img[:, ::-1]
    if transpose:
        img = img.transpose(1, 0, 2)
    return img


def scale_ranges(scale_min: Sequence, scale_max: Sequence, n_branches: int) -> list[list[tuple[float, float]]]:
    """Per-branch (low, high) scale ranges, as a list of alternatives used in turn by the steps.

    ``scale_min: [1, 1]`` / ``scale_max: [4, 4]`` is one alternative for two branches; lists of
    lists alternate per step, e.g. ``[[1], [4]]`` / ``[[4], [12]]`` trains one branch on
    U(1, 4) and U(4, 12) on alternate steps (the paper's LIT fine-tuning).
    """
    lows, highs = list(scale_min), list(scale_max)
    nested = bool(lows) and isinstance(lows[0], (list, tuple))
    lows, highs = (lows, highs) if nested else ([lows], [highs])
    if len(lows) != len(highs) or not lows:
        raise ValueError(f"scale_min and scale_max must list the same alternatives, got {scale_min} / {scale_max}")
    out = []
    for lo, hi in zip(lows, highs):
        if not (len(lo) == len(hi) == n_branches):
            raise ValueError(f"scale_min/scale_max need {n_branches} entries (one per branch), got {lo} / {hi}")
        if any(a <= 0 or b < a for a, b in zip(lo, hi)):
            raise ValueError(f"need 0 < scale_min <= scale_max, got {lo} / {hi}")
        out.append([(float(a), float(b)) for a, b in zip(lo, hi)])
    return out


@dataclass
class Sample:
    """One training example: LR (inp, inp, 3) uint8, HR crop uint8, query indices into the crop."""

    lr: np.ndarray
    hr: np.ndarray
    index: np.ndarray  # flat indices (row-major) of the sampled HR pixels


def make_sample(img: np.ndarray, hr_size: tuple[int, int], inp_size: int, sample_q: int | None,
                rng: np.random.Generator, do_augment: bool) -> Sample:
    """Augment, crop ``hr_size`` at random, make the bicubic LR and draw the query pixels."""
    if do_augment:
        img = augment(img, rng)
    hh, hw = hr_size
    if img.shape[0] < hh or img.shape[1] < hw:
        raise DataError(f"image {img.shape[1]}x{img.shape[0]} is smaller than the crop {hw}x{hh}")
    y0 = int(rng.integers(0, img.shape[0] - hh + 1))
    x0 = int(rng.integers(0, img.shape[1] - hw + 1))
    hr = np.ascontiguousarray(img[y0:y0 + hh, x0:x0 + hw])
    lr = pil_bicubic(hr, (inp_size, inp_size))
    n = hh * hw
    if sample_q is None:
        index = np.arange(n)
    elif sample_q > n:
        raise DataError(f"sample_q={sample_q} exceeds the {hw}x{hh} crop's {n} pixels")
    else:
        index = rng.choice(n, sample_q, replace=False)
    return Sample(lr=lr, hr=hr, index=index)


# ------------------------------------------------------------------ batches
@dataclass(frozen=True)
class BatchRequest:
    """What a sampler hands the dataset: the step and the images of this rank's share."""

    epoch: int
    step: int
    indices: tuple[int, ...]


class CascadedBatches(Dataset):
    """Builds whole batches (official cascaded sampling) from :class:`BatchRequest` s.

    Each item is a dict: ``lr`` (B, 3, inp, inp) float in [0, 1]; ``coord`` (B, Q, 2);
    ``gt`` (B, Q, 3) in [0, 1]; ``cell`` (B, 2); ``grids``, the feature-grid size each active
    branch reads (the model's ``forward`` argument); ``scales`` and ``stages``.
    """

    def __init__(self, images: ImageFolder, n_branches: int, scale_min: Sequence[float],
                 scale_max: Sequence[float], inp_size: int = 48, sample_q: int | None = 2304,
                 k: int | None = None, augment: bool = True, seed: int = 0, rank: int = 0):
        self.images, self.n = images, n_branches
        self.ranges = scale_ranges(scale_min, scale_max, n_branches)
        self.inp_size, self.sample_q = inp_size, sample_q
        self.k = n_branches if k is None else k  # k = 1: every step trains all stages
        if not 1 <= self.k <= n_branches:
            raise ValueError(f"k must be in 1..{n_branches}, got {k}")
        self.augment, self.seed, self.rank = augment, seed, rank

    def batch_scales(self, epoch: int, step: int) -> list[float]:
        """The scales of the active stages of a step (before fitting to the images)."""
        rng = np.random.default_rng([self.seed, epoch, step])
        scales = [float(rng.uniform(lo, hi)) for lo, hi in self.ranges[step % len(self.ranges)]]
        return scales[: active_stages(step, self.n, self.k)]

    def __len__(self) -> int:  # map-style only through BatchRequest
        return len(self.images)

    def __getitem__(self, req: BatchRequest) -> dict:
        imgs = [self.images[i] for i in req.indices]
        scales = fit_scales(self.batch_scales(req.epoch, req.step), self.inp_size,
                            min(min(im.shape[:2]) for im in imgs))
        sizes = stage_sizes((self.inp_size, self.inp_size), scales)
        hr_size = sizes[-1]
        coords = coord_grid(*hr_size).reshape(-1, 2)
        lrs, gts, qs = [], [], []
        for slot, img in enumerate(imgs):
            rng = np.random.default_rng([self.seed, req.epoch, req.step, self.rank, slot])
            s = make_sample(img, hr_size, self.inp_size, self.sample_q, rng, self.augment)
            lrs.append(s.lr)
            gts.append(s.hr.reshape(-1, 3)[s.index])
            qs.append(coords[s.index])
        b = len(imgs)
        cell = np.array([2.0 / hr_size[0], 2.0 / hr_size[1]], dtype=np.float32)
        return {
            "lr": torch.from_numpy(np.stack(lrs)).permute(0, 3, 1, 2).float().div_(255),
            "gt": torch.from_numpy(np.stack(gts)).float().div_(255),
            "coord": torch.from_numpy(np.stack(qs)),
            "cell": torch.from_numpy(cell).expand(b, 2).clone(),
            "grids": [(self.inp_size, self.inp_size), *sizes[:-1]],
            "scales": scales,
            "stages": len(scales),
        }


class StepSampler(Sampler):
    """Yields one :class:`BatchRequest` per step: a shuffled epoch of image indices split
    across ranks by :class:`DistributedSampler`, cut into per-rank batches (last partial dropped).

    ``batch_size`` is the global batch; each of ``world`` ranks gets ``batch_size // world``.
    ``fixed=True`` (validation) gives the same batches every epoch.
    """

    def __init__(self, n_images: int, batch_size: int, world: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, fixed: bool = False):
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world} processes")
        self.local = batch_size // world
        self.dist = DistributedSampler(range(n_images), num_replicas=world, rank=rank, shuffle=shuffle,
                                       seed=seed, drop_last=True)
        self.fixed, self.epoch = fixed, 0
        if len(self) == 0:
            raise DataError(f"{n_images} images (with repeat) make no batch of {batch_size}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dist.set_epoch(0 if self.fixed else epoch)

    def __len__(self) -> int:
        return len(self.dist) // self.local

    def __iter__(self) -> Iterator[BatchRequest]:
        idx = list(self.dist)
        epoch = 0 if self.fixed else self.epoch
        for step in range(len(self)):
            yield BatchRequest(epoch, step, tuple(idx[step * self.local:(step + 1) * self.local]))
