"""Default tile and chunk sizes from the memory available (numpy-free, torch-free).

The graph backends' peak memory is, per image (``benchmarks/memory.py`` measures it):

* what the process already holds (interpreter, libraries, sessions: its resident size when
  the plan is made);
* the output: the (H, W, C) array at its final depth (uint8/uint16: each tile is quantised
  into it as it finishes, so no output-sized float buffer exists; float32 for float callers),
  and the image encoder's copy when it is written: ``OUTPUT_COPIES`` x the array;
* per decoder session (one per branch): ONNX Runtime's arena holds the largest chunk's
  intermediates, about ``DECODER_TENSORS`` tensors of N x 49 x C float32 (calibrated on the
  bundled model, C = 64: 4.9 such tensors at chunk 4096 and 8192, ~0.48 GB per session at
  8192; earlier exports, which encoded the bias on all 49 neighbours, needed 6.7);
* per tile: each branch's window of its grid (the tile times the grid's scale) costs about
  ``MAP_TENSORS`` C-channel float32 tensors: q/k/v, their cropped copies, the branch graph's
  and the decoder's arenas, which persist (calibrated on 256x256 -> x8 and, with three
  branches, 64x64 -> x18); plus the encoder's working set on the LR window
  (``ENCODER_CHANNELS`` float32 per pixel for the encoders supported).

The defaults pick the largest chunk (<= 8192) and tile whose estimate fits the budget:
``(min(4 GiB - resident, available memory)) * BUDGET_FRACTION``, and whose branch windows are
at most ``MAX_WINDOW`` grid pixels a side: the decoders slow down on larger maps (256x256 ->
x8: 377 s whole, 221 s in tiles of 64).  They are estimates with margins, not guarantees;
``--tile`` and ``--chunk`` override them.
"""

from __future__ import annotations

import os
import sys

from .geometry import CascadePlan
from .manifest import Manifest
from .pipeline import GroupingRule

GIB = 1 << 30
DECODER_TENSORS = 6
GROUPED_TENSORS = 8  # N x 49 x heads float32 tensors of the grouped decoder (logits, bias, weights; padded slots)
OUTPUT_COPIES = 2  # the output array and the image encoder's copy of it (OpenCV's BGR, Pillow's)
MAP_TENSORS = 16  # C-channel float32 tensors per grid pixel of a branch window
IO_COPIES = 2  # a TensorRT input or output: its device buffer and its page-locked host copy
MAX_WINDOW = 512  # grid pixels a side of a branch window before the plan tiles for speed
ENCODER_CHANNELS = 1024  # e.g. EDSR-baseline: 64 features x ~16 live tensors
BUDGET_FRACTION = 0.75
TILE_CHOICES = (1024, 768, 512, 384, 256, 192, 128, 96, 64, 48, 32)
CHUNK_CHOICES = (8192, 4096, 2048, 1024)


def available_memory() -> int:
    """Bytes the system can still give this process (Linux MemAvailable; else physical)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 * GIB


def resident_memory() -> int:
    """Bytes this process holds now (Linux ``/proc/self/statm``; elsewhere its peak so far
    where ``resource`` has it, else 0)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def memory_budget(limit: int | None = None, used: int | None = None) -> int:
    """Bytes the pipeline may plan for: the process target ``limit`` (default 4 GiB) less what
    it already ``used`` (default: its resident memory now), at most the memory available,
    times the fraction."""
    cap = (4 * GIB if limit is None else limit) - (resident_memory() if used is None else used)
    return max(0, int(min(cap, available_memory()) * BUDGET_FRACTION))


def decoder_bytes(manifest: Manifest, chunk: int) -> int:
    """Arena of one branch's decoder sessions for chunks of ``chunk`` queries: the larger of the
    per-query decoder's (``DECODER_TENSORS`` x N x 49 x C) and the grouped decoder's (T, 49 x
    heads x hidden per feature pixel, with at least the manifest's queries per pixel and at
    most its block caps, plus the attention tensors, ``GROUPED_TENSORS`` x N x 49 x heads); a
    tile uses one or the other."""
    area = (2 * manifest.radius + 1) ** 2
    c = int(manifest.data["base_dim"])
    per_query = DECODER_TENSORS * chunk * area * c * 4
    hidden, heads = int(manifest.data.get("mlp_hidden", 0)), int(manifest.data.get("heads", 1))
    if not hidden:
        return per_query
    rule = GroupingRule.of(manifest)
    pixels = min(chunk / rule.min_queries_per_pixel, rule.max_groups**2)
    grouped = int(area * 4 * (pixels * (heads * hidden + 2 * c) + chunk * GROUPED_TENSORS * heads))
    return max(per_query, grouped)


def tile_bytes(manifest: Manifest, plan: CascadePlan, tile: int) -> int:
    """Encoder working set and every active branch's q/k/v window for LR tiles of ``tile``."""
    c, r = int(manifest.data["base_dim"]), manifest.radius
    margin = 2 * (r + 3 + manifest.encoder_halo)
    whole = manifest.encoder_halo == 0  # SwinIR: the encoder always sees the whole image
    side = (max(plan.lr_size) if whole else min(tile, max(plan.lr_size))) + margin
    total = ENCODER_CHANNELS * side * side * 4
    for (gh, gw) in plan.grids:
        fh = min(gh, tile * gh / plan.lr_size[0] + 2 * r + 6)
        fw = min(gw, tile * gw / plan.lr_size[1] + 2 * r + 6)
        total += int(MAP_TENSORS * c * fh * fw * 4)
    return total


def output_bytes(plan: CascadePlan, itemsize: int = 4) -> int:
    """The output kept as ``itemsize`` bytes per sample (1, 2: quantised tile by tile as the
    tiles finish; 4: float32) and the image encoder's copy of it."""
    h, w = plan.out_size
    return 3 * h * w * OUTPUT_COPIES * itemsize


def fast_tile(plan: CascadePlan, tile: int | None) -> bool:
    """Whether every branch window of LR tiles of ``tile`` (``None``: the whole image) stays
    within ``MAX_WINDOW`` grid pixels a side."""
    return all(g * (1 if tile is None else min(tile, side) / side) <= MAX_WINDOW
               for grid in plan.grids for g, side in zip(grid, plan.lr_size))


def choose(manifest: Manifest, plan: CascadePlan, budget: int, chunk: int | None = None,
           out_itemsize: int = 4) -> tuple[int | None, int]:
    """(tile, chunk) for ``plan`` within ``budget`` bytes: tile ``None`` when the whole image
    fits with small enough branch windows.  A given ``chunk`` is kept; otherwise the largest
    that leaves room for tiles."""
    sessions = plan.n_branches
    room = budget - output_bytes(plan, out_itemsize)
    if chunk is None:
        chunk = next((c for c in CHUNK_CHOICES if sessions * decoder_bytes(manifest, c) <= room / 2), CHUNK_CHOICES[-1])
    room -= sessions * decoder_bytes(manifest, chunk)
    side = max(plan.lr_size)
    if fast_tile(plan, None) and tile_bytes(manifest, plan, side) <= room:
        return None, chunk
    tile = next((t for t in TILE_CHOICES if t < side and fast_tile(plan, t) and tile_bytes(manifest, plan, t) <= room),
                TILE_CHOICES[-1])
    return tile, chunk


def tensorrt_bytes(manifest: Manifest, limits) -> int:
    """Estimated working memory of a model's TensorRT engines built for ``limits``
    (:class:`~clit.runtime.tensorrt.profiles.BuildLimits`).  TensorRT sizes a context's
    activation memory for its profile's largest shapes; the backend's contexts run one after
    another and share one such buffer (``TensorRTRunner._share_scratch``), so the estimate is the
    largest graph's working set plus every graph's input and output buffers, which persist
    (``IO_COPIES``: on the device and page-locked on the host), each at its maximum: the
    encoder on the largest LR window, each branch graph on its largest grid window, each
    decoder's largest chunk and q/k/v window.  The constants are the ONNX Runtime plan's
    (calibrated there, not on a GPU: an estimate)."""
    from .tensorrt.profiles import encoder_window, grid_window

    c = int(manifest.data["base_dim"])
    area, heads = (2 * manifest.radius + 1) ** 2, int(manifest.data.get("heads", 1))
    hidden = int(manifest.data.get("mlp_hidden", 0))
    _, run, groups = GroupingRule.of(manifest)
    pixels, slots = groups * groups, run * run  # a grouped block's largest P and M
    enc = encoder_window(manifest, limits) ** 2
    working = [ENCODER_CHANNELS * 4 * enc]
    io = (3 + 4 * c) * 4 * enc  # the image; feat, q, k, v
    for g in manifest.graphs:
        side = grid_window(manifest, limits, g.branch)
        window = side * side
        maps = 3 * c * 4 * window  # a q/k/v window: a branch graph's outputs, a decoder's inputs
        if g.kind == "branch":
            working.append((MAP_TENSORS - 3) * c * 4 * window)
            io += maps + c * 4 * enc
        elif g.kind == "decoder":
            working.append(DECODER_TENSORS * limits.max_queries * area * c * 4)
            io += maps
        elif g.kind == "grouped":  # T, the attention tensors of every slot, the gathered keys and values
            reach = min(side, groups + 2 * manifest.radius)  # what one block reads
            working.append(4 * pixels * area * (heads * hidden + GROUPED_TENSORS * slots * heads + 2 * c))
            io += 3 * c * 4 * reach**2
    return max(working) + IO_COPIES * io


FIT_SIDES = (4096, 2048, 1024, 512, 256)  # largest LR sides tried for whole-image encoders (SwinIR)
FIT_TILES = (512, 384, 256, 192, 128, 96, 64, 32)  # LR tiles tried, largest first
FIT_QUERIES = (32768, 16384, 8192, 4096, 2048)  # decoder chunks tried, largest first


def fitting_limits(manifest: Manifest, budget: int, given: dict | None = None):
    """The largest build limits (tile, then chunk) whose :func:`tensorrt_bytes` fits ``budget``
    (the default limits of the TensorRT engines, sized to the GPU's free memory, or on boards
    whose GPU shares the system RAM to the process's budget), with branch windows of 4 x the
    tile (what a second branch needs; scales that need a third branch get a quarter of the
    tile).  Encoders that run on the whole image (halo 0: SwinIR) are bounded by the largest
    LR side, so that is lowered first.  ``given`` (``tile``, ``max_queries``, ``max_window``,
    ``max_image``: what the user set) is kept as it is (a ``tile`` above a given ``max_image``
    is lowered to it: no tile is larger than its image) and only the others are fitted: the
    tile and chunk, the window with the tile, the LR side for whole-image encoders (at least a
    given tile); if nothing fits, the smallest limits with those given."""
    from .tensorrt.profiles import limits_for

    given = dict(given or {})
    unknown = set(given) - {"tile", "max_queries", "max_window", "max_image"}
    if unknown:
        raise ValueError(f"unknown build limits {sorted(unknown)}")
    if "max_image" in given:
        sides = (given["max_image"],)
    else:
        sides = FIT_SIDES if manifest.encoder_halo == 0 else FIT_SIDES[:1]
    tiles = (given["tile"],) if "tile" in given else FIT_TILES
    chunks = (given["max_queries"],) if "max_queries" in given else FIT_QUERIES

    def limits(side, tile, queries):
        if "tile" in given and "max_image" not in given:
            side = max(side, tile)  # a fitted side does not shrink a given tile
        return limits_for(manifest, tile, queries, side, given.get("max_window"))

    for side in sides:
        for tile in tiles:
            for queries in chunks:
                candidate = limits(side, tile, queries)
                if tensorrt_bytes(manifest, candidate) <= budget:
                    return candidate
    return limits(sides[-1], tiles[-1], chunks[-1])


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """'4G', '512M', '1.5GiB', '2GB' or a plain byte count -> bytes (binary units: 1G = 2^30)."""
    t = str(text).strip().lower().replace(" ", "")
    for suffix in ("ib", "b"):
        if t.endswith(suffix) and t[:-len(suffix)][-1:].isalpha():
            t = t[:-len(suffix)]
            break
    unit = t[-1:] if t[-1:].isalpha() else ""
    if unit not in _UNITS:
        raise ValueError(f"{text!r}: a size like 4G, 512M or 3000000000")
    try:
        value = float(t[:-1] if unit else t)
    except ValueError:
        raise ValueError(f"{text!r}: a size like 4G, 512M or 3000000000") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{text!r}: a size must be a finite number > 0")
    return int(value * _UNITS[unit])
