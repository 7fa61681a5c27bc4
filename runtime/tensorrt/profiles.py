"""TensorRT optimisation profiles for a model directory (pure Python: no TensorRT needed).

A TensorRT engine accepts input shapes within the (min, opt, max) ranges it was built
for.  The runtime feeds each graph windows bounded by the LR tile (see
:mod:`clit.runtime.tiling`), so the ranges follow from four limits:

* ``tile``: the largest LR tile side the pipeline uses with this engine;
* ``max_window``: the largest side of a branch window (grid pixels) of branches 2 and up;
  the pipeline lowers the LR tile of scales that need more branches so that every window
  stays within it (:func:`plan_tile`): without it, branch 3's window at tile 512 would be
  8192 pixels a side, its q/k/v tensors over TensorRT's 2^31 elements;
* ``max_queries``: the largest decoder chunk N;
* ``max_image``: the largest LR image side (only the decoders' 1-D coordinate tables of a
  whole grid depend on it; they are cheap).

Branch k (0-based) reads a grid at most ``4**k`` times the LR per side (stage base 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple  # typing's alias: tuple[...] at module level needs Python 3.9

from ..geometry import STAGE_BASE, window_padded_size
from ..manifest import GraphEntry, Manifest, ModelDirError
from ..pipeline import GroupingRule

Range = Tuple[int, int, int]  # (min, opt, max) of one dimension


@dataclass(frozen=True)
class BuildLimits:
    tile: int = 512
    max_queries: int = 32768
    max_image: int = 4096
    opt_tile: int = 256
    opt_queries: int = 8192
    max_window: int = 2048  # = tile x 4: two-branch models' profiles do not depend on it at the defaults

    def __post_init__(self):
        if min(self.tile, self.max_queries, self.max_image, self.opt_tile, self.opt_queries, self.max_window) < 1:
            raise ValueError(f"build limits must be positive: {self}")


def window_scale(n_branches: int) -> int:
    """How many times the LR, per side, the grid of an ``n_branches`` cascade's last branch is."""
    return int(STAGE_BASE ** (n_branches - 1))


def default_window(tile: int) -> int:
    """The branch window limit that goes with an LR tile: what a second branch reads at it."""
    return int(STAGE_BASE * tile)


def limits_for(manifest: Manifest, tile: int, max_queries: int, max_image: int,
               max_window: int | None = None) -> BuildLimits:
    """Build limits for an LR tile (at most the LR side: no tile is larger than its image),
    chunk and LR side: the opt shapes at most 256 and 8192, the window ``max_window`` or what
    goes with the tile, at least the last branch's grid per LR pixel."""
    tile = min(tile, max_image)
    if max_window is None:
        max_window = max(default_window(tile), window_scale(manifest.n_branches))
    return BuildLimits(tile=tile, max_queries=max_queries, max_image=max_image, opt_tile=min(256, tile),
                       opt_queries=min(8192, max_queries), max_window=max_window)


def check_limits(manifest: Manifest, limits: BuildLimits) -> None:
    """ValueError unless an LR tile of at least one pixel keeps every branch window of the
    model within ``limits.max_window`` (its last branch reads a grid ``4**(n - 1)`` x the LR)."""
    need = window_scale(manifest.n_branches)
    if limits.max_window < need:
        raise ValueError(f"a branch window limit of {limits.max_window} is too small for a {manifest.n_branches}-branch "
                         f"model (its last branch reads a grid {need} x the LR): use at least {need}")


def plan_tile(limits: BuildLimits, n_branches: int, tile: int) -> int:
    """The LR tile (at most ``tile``) for an upscale whose cascade has ``n_branches``
    branches: small enough that branch k's window (``tile x 4**k``) stays within
    ``limits.max_window``."""
    if n_branches < 2:  # branch 1 reads the LR grid: its window is the encoder's, bounded by the tile
        return tile
    return max(1, min(tile, limits.max_window // window_scale(n_branches)))


def encoder_window(manifest: Manifest, limits: BuildLimits) -> int:
    """Largest LR window the encoder sees: the tile, the decoders' neighbourhood and the
    branch inputs' bilinear reach, plus the receptive-field halo on each side.  Encoders
    that cannot be tiled (halo 0, SwinIR) see the whole (window-padded) image."""
    if manifest.encoder_halo == 0:
        return max(window_padded_size((limits.max_image, limits.max_image), max(manifest.window_size, 1)))
    return limits.tile + 2 * (manifest.radius + 3 + manifest.encoder_halo)


def grid_window(manifest: Manifest, limits: BuildLimits, branch: int) -> int:
    """Largest window of branch ``branch``'s grid that one tile's queries read (plus the
    branch convs' one-pixel halo): the tile times the grid's scale, at most ``max_window``."""
    if branch == 0:
        return encoder_window(manifest, limits)
    return int(min(limits.tile * STAGE_BASE**branch, limits.max_window)) + 2 * manifest.radius + 6


def dim_ranges(manifest: Manifest, graph: GraphEntry, limits: BuildLimits) -> dict[str, Range]:
    """(min, opt, max) of every symbolic dimension of ``graph``'s inputs."""
    enc = encoder_window(manifest, limits)
    opt = min(limits.opt_tile, enc)
    k = graph.branch
    if graph.kind == "encoder":
        return {"H": (1, opt, enc), "W": (1, opt, enc)}
    win = grid_window(manifest, limits, k)
    side = limits.max_image  # SwinIR: the image is padded to whole windows first
    if manifest.window_size > 1:
        side = max(window_padded_size((side, side), manifest.window_size))
    table = int(side * STAGE_BASE**k)
    if graph.kind == "branch":
        return {"hf": (1, opt, enc), "wf": (1, opt, enc), "Hw": (1, min(opt, win), win),
                "Ww": (1, min(opt, win), win)}
    queries = (1, min(limits.opt_queries, limits.max_queries), limits.max_queries)
    if graph.kind in ("decoder", "grouped"):
        dims = {"hq": (1, min(opt, win), win), "wq": (1, min(opt, win), win), "h": (1, min(opt, table), table),
                "w": (1, min(opt, table), table), "N": queries}
        if graph.kind == "grouped":  # a block: groups per axis and queries per group per axis are capped
            _, run, groups = GroupingRule.of(manifest)
            side, reach = groups * run, min(win, groups + 2 * manifest.radius)  # a block reads <= groups pixels + radius
            dims.update(hq=(1, reach, reach), wq=(1, reach, reach),
                        Gy=(1, min(16, groups), groups), Gx=(1, min(16, groups), groups),
                        My=(1, min(4, run), run), Mx=(1, min(4, run), run),
                        R=(1, min(64, side), side), S=(1, min(64, side), side))
            # a block holds at least one whole group (up to run^2 queries) whatever the chunk; its
            # queries are R x S, so N is tuned for the block that R and S are tuned for
            n_max = min(max(limits.max_queries, run * run), side * side)
            dims["N"] = (1, min(dims["R"][1] * dims["S"][1], n_max), n_max)
        return dims
    raise ModelDirError(f"unknown graph kind {graph.kind!r}")


def input_profiles(manifest: Manifest, graph: GraphEntry, limits: BuildLimits) -> dict[str, tuple[tuple, tuple, tuple]]:
    """Input name -> (min shape, opt shape, max shape) for every input with a symbolic dim."""
    dims = dim_ranges(manifest, graph, limits)
    out = {}
    for spec in graph.inputs:
        shape = spec["shape"]
        if all(isinstance(d, int) for d in shape):
            continue
        unknown = [d for d in shape if isinstance(d, str) and d not in dims]
        if unknown:
            raise ModelDirError(f"{graph.file}: input {spec['name']} has dimension(s) {unknown} this runtime "
                                "does not know how to bound (model directory from another version?)")
        out[spec["name"]] = tuple(tuple(d if isinstance(d, int) else dims[d][i] for d in shape) for i in range(3))
    return out


# the clit-build option that bounds each symbolic dimension (see dim_ranges)
LIMIT_OPTION = {"H": "--max-lr", "W": "--max-lr", "hf": "--max-lr", "wf": "--max-lr", "Hw": "--max-lr",
                "Ww": "--max-lr", "hq": "--max-lr", "wq": "--max-lr", "h": "--max-image", "w": "--max-image",
                "N": "--max-queries"}
WINDOW_DIMS = ("Hw", "Ww", "hq", "wq")  # of branches 2+: bounded by --max-window where it is below tile x 4^k
# a grouped block's dimensions are capped by the manifest's decoder_grouping, not by an option
GROUPING_DIMS = ("R", "S", "Gy", "Gx", "My", "Mx")


def outside_profile(manifest: Manifest, graph: GraphEntry, limits: BuildLimits, name: str, shape) -> str | None:
    """None if input ``name`` of ``shape`` fits ``graph``'s profile, else a one-line reason
    naming the dimension and the clit-build option that bounds it."""
    spec = next((s for s in graph.inputs if s["name"] == name), None)
    if spec is None:
        return None
    dims = dim_ranges(manifest, graph, limits)
    for axis, (sym, size) in enumerate(zip(spec["shape"], shape)):
        if isinstance(sym, str) and sym in dims:
            lo, _, hi = dims[sym]
            if not lo <= int(size) <= hi:
                option = LIMIT_OPTION.get(sym, "--max-lr")
                if sym in WINDOW_DIMS and graph.branch > 0 and limits.max_window < limits.tile * STAGE_BASE**graph.branch:
                    option = "--max-window"
                fix = ("the pipeline cuts grouped blocks to the manifest's decoder_grouping caps: this runtime and "
                       "the engine disagree, rebuild the engine" if sym in GROUPING_DIMS else
                       f"rebuild with a larger clit-build {option}")
                return f"{graph.file}: input {name} has {sym} = {size} (axis {axis}) but the engine was built for {lo}..{hi}; {fix}"
    return None
