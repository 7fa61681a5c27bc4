"""Times the official CLIT implementation's ``chop_forward`` on a checkpoint (a benchmark helper).

    python benchmarks/official_chop.py OFFICIAL_DIR CKPT W H SCALE [REPEATS [SAVE.npy]]

OFFICIAL_DIR is a checkout of github.com/jaroslaw1007/CLIT (read from there, never copied into
this project).  Its code is run as it is, with three accommodations for a CPU machine without
its training dependencies: ``.cuda()`` returns the tensor or module unchanged, and the modules
``timm`` (SwinIR only) and ``tensorboardX`` (its training logger) are empty stand-ins, since
the EDSR-baseline CLIT path imports but never uses them.  The input is the same random image
as ``benchmarks/fast_decoder.py``'s (``default_rng(0)``, HxWx3 in [0, 1)), fed as the official
test does: normalised (x - 0.5) / 0.5, one coordinate grid per cascade stage (the official stage
plan, base 4), cell 2 / H, 2 / W of the final grid, ``eval_bsize`` 30000 (its test scripts').
Prints one JSON line: the median seconds and the output size; SAVE gets the output (H, W, 3),
de-normalised (y * 0.5 + 0.5), not clamped (as clit's pipeline returns it).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import types

import numpy as np
import torch

from clit.runtime.geometry import stage_plan, stage_sizes


def official_modules(official_dir: str):
    """The official ``models`` and ``utils`` modules, importable on a CPU-only machine."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    for name in ("timm", "timm.models", "timm.models.layers"):
        sys.modules.setdefault(name, types.ModuleType(name))
    layers = sys.modules["timm.models.layers"]
    for name in ("DropPath", "to_2tuple", "trunc_normal_"):
        setattr(layers, name, None)
    tb = sys.modules.setdefault("tensorboardX", types.ModuleType("tensorboardX"))
    tb.SummaryWriter = None
    sys.path.insert(0, official_dir)
    import models  # noqa: PLC0415 - the official package, from official_dir
    import utils  # noqa: PLC0415

    return models, utils


def grid_coords(utils, h: int, w: int, plan: list[float]) -> list[torch.Tensor]:
    """One (1, H_k, W_k, 2) pixel-centre grid per cascade stage, as the official test feeds them."""
    return [utils.make_coord(size, flatten=False)[None] for size in stage_sizes((h, w), plan)]


def main() -> None:
    official_dir, ckpt = sys.argv[1], sys.argv[2]
    w, h, scale = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    repeats = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    save = sys.argv[7] if len(sys.argv) > 7 else None
    models, utils = official_modules(official_dir)
    model = models.make(torch.load(ckpt, map_location="cpu", weights_only=False)["model"], load_sd=True).eval()

    img = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
    inp = (torch.from_numpy(img).permute(2, 0, 1)[None] - 0.5) / 0.5
    plan = stage_plan(scale)  # the official sample_system_scale (base 4); the goldens hold it equal

    def run(x: torch.Tensor) -> torch.Tensor:
        coords = grid_coords(utils, x.shape[2], x.shape[3], plan)
        cell = torch.tensor([[2.0 / coords[-1].shape[1], 2.0 / coords[-1].shape[2]]])
        return model.chop_forward(x, coords, cell, 30000)[0].reshape(*coords[-1].shape[1:3], 3)

    times = []
    with torch.no_grad():
        run(inp[..., :16, :16])  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            pred = run(inp)
            times.append(time.perf_counter() - t)
    out = (pred * 0.5 + 0.5).numpy()
    if save:
        np.save(save, out)
    print(json.dumps({"seconds": statistics.median(times), "out_mpix": out.shape[0] * out.shape[1] / 1e6,
                      "stages": plan, "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
