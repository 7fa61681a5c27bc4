"""``manifest.json`` of an exported model directory: what the runtime needs to run it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

FORMAT_VERSION = 2  # 2: grouped decoders (decoder<k>.grouped.onnx) and the decoder_grouping rule
MANIFEST = "manifest.json"


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in blocks (graph, checkpoint and engine hashes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Bounds of the manifest's decoder_grouping caps: the grouped decoder's largest tensor at the
# TensorRT profile maxima, T = (P <= max_groups^2, heads x 49, hidden), stays below 2^31 elements
# (the volume limit of TensorRT 8.5/10.0's NvInfer.h; 11.x no longer states it) at max_groups 64
# for r = 3, heads <= 8 and hidden <= 1024 (the architecture is not checked against this here).
MAX_GROUPING_RUN = 16
MAX_GROUPING_GROUPS = 64


class ModelDirError(ValueError):
    """A model directory that cannot be used; one-line message naming the reason."""


@dataclass(frozen=True)
class GraphEntry:
    kind: str
    branch: int
    file: str
    sha256: str
    inputs: list
    outputs: list
    variants: dict = field(default_factory=dict)  # precision -> {"file", "sha256"}
    fp32_layers: list = field(default_factory=list)  # node names TensorRT keeps in FP32

    def file_for(self, precision: str) -> str:
        """The graph file for ``precision`` ('fp32' is the graph itself)."""
        if precision == "fp32":
            return self.file
        if precision not in self.variants:
            raise ModelDirError(f"no {precision} variant of {self.file} (exported precisions: "
                                f"{', '.join(['fp32', *self.variants])})")
        return self.variants[precision]["file"]


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict

    @property
    def n_branches(self) -> int:
        return int(self.data["n_branches"])

    @property
    def radius(self) -> int:
        return int(self.data["radius"])

    @property
    def encoder_halo(self) -> int:
        """LR context per side the encoder needs for exact tiles (0: cannot tile, run whole)."""
        return int(self.data.get("encoder_halo", 0))

    @property
    def window_size(self) -> int:
        return int(self.data.get("window_size", 1))

    @cached_property
    def graphs(self) -> list[GraphEntry]:
        return [GraphEntry(**{k: g[k] for k in GraphEntry.__dataclass_fields__ if k in g}) for g in self.data["graphs"]]

    def graph(self, kind: str, branch: int = 0) -> GraphEntry:
        for g in self.graphs:
            if g.kind == kind and g.branch == branch:
                return g
        raise ModelDirError(f"{self.root}: manifest has no {kind} graph for branch {branch + 1}")


_HEX = set("0123456789abcdef")
GRAPH_KINDS = ("encoder", "branch", "decoder", "grouped")
REEXPORT = "re-export it with clit-export CHECKPOINT -o MODEL_DIR"


def _check_schema(path: Path, data) -> None:
    """ModelDirError naming the first thing ``data`` lacks that the runtime needs."""
    def need(obj, key, kind, where, check=None):
        value = obj.get(key) if isinstance(obj, dict) else None
        ok = isinstance(value, kind) and not isinstance(value, bool) and (check is None or check(value))
        if not ok:
            raise ModelDirError(f"{path}: {where}{key!r} is missing or not {kind.__name__ if isinstance(kind, type) else 'valid'} "
                                f"({REEXPORT})")
        return value

    if not isinstance(data, dict):
        raise ModelDirError(f"{path}: not a JSON object")
    n = need(data, "n_branches", int, "", lambda v: v >= 1)
    need(data, "radius", int, "", lambda v: v >= 0)
    need(data, "base_dim", int, "", lambda v: v >= 1)
    graphs = need(data, "graphs", list, "", lambda v: len(v) > 0)
    for key, kind in (("window_size", int), ("encoder_halo", int), ("precisions", list)):
        if key in data:
            need(data, key, kind, "")
    if "decoder_grouping" in data:  # the grouped decoder's block caps size its TensorRT profiles
        rule = need(data, "decoder_grouping", dict, "")
        checks = {"min_queries_per_pixel": ((int, float), lambda v: 0 < v < float("inf")),
                  "max_run": (int, lambda v: 1 <= v <= MAX_GROUPING_RUN),
                  "max_groups": (int, lambda v: 1 <= v <= MAX_GROUPING_GROUPS)}
        for key, (kind, check) in checks.items():
            if key in rule:
                need(rule, key, kind, "decoder_grouping.", check)
    seen = set()
    for i, g in enumerate(graphs):
        where = f"graphs[{i}]."
        kind = need(g, "kind", str, where, lambda v: v in GRAPH_KINDS)
        seen.add((kind, need(g, "branch", int, where, lambda v: v >= 0)))
        need(g, "file", str, where, lambda v: bool(v))
        need(g, "sha256", str, where, lambda v: len(v) == 64 and set(v) <= _HEX)
        for io in ("inputs", "outputs"):
            for spec in need(g, io, list, where):
                need(spec, "name", str, f"{where}{io}[].")
                need(spec, "shape", list, f"{where}{io}[].")
        for precision, v in (g.get("variants") or {}).items():
            need(v, "file", str, f"{where}variants.{precision}.")
            need(v, "sha256", str, f"{where}variants.{precision}.", lambda x: len(x) == 64 and set(x) <= _HEX)
    wanted = ({("encoder", 0)} | {("decoder", k) for k in range(n)} | {("grouped", k) for k in range(n)}
              | {("branch", k) for k in range(1, n)})
    missing = sorted(wanted - seen)
    if missing:
        kind, k = missing[0]
        raise ModelDirError(f"{path}: no {kind} graph for branch {k + 1} of {n} ({REEXPORT})")


def load_manifest(model_dir: str | Path, verify: bool = True) -> Manifest:
    """Read and check ``MODEL_DIR/manifest.json``: format version, the fields the runtime
    reads, every listed graph file present inside the folder and (``verify``) matching its
    sha256, so a corrupt or swapped graph is named here instead of failing (or silently
    computing something else) later."""
    root = Path(model_dir)
    path = root / MANIFEST
    if not root.is_dir():
        raise ModelDirError(f"{root}: not a model directory ({'no such folder' if not root.exists() else 'a file'})")
    if not path.is_file():
        raise ModelDirError(f"{root}: not a model directory (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path}: unreadable manifest ({exc})") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ModelDirError(f"{path}: format version {version!r}, this clit reads version {FORMAT_VERSION} "
                            f"({'made by an earlier clit: ' if isinstance(version, int) and version < FORMAT_VERSION else ''}"
                            f"{REEXPORT})")
    _check_schema(path, data)
    manifest = Manifest(root, data)
    inside = root.resolve()
    for entry in manifest.graphs:
        for file, digest in [(entry.file, entry.sha256)] + [(v["file"], v["sha256"]) for v in entry.variants.values()]:
            target = (root / file).resolve()
            if inside not in target.parents:
                raise ModelDirError(f"{root}: graph file {file} lies outside the model directory")
            if not target.is_file():
                raise ModelDirError(f"{root}: graph file {file} listed in the manifest is missing")
            if verify and sha256_file(target) != digest:
                raise ModelDirError(f"{root / file}: does not match the manifest's sha256 (corrupt, or replaced by "
                                    f"another graph; {REEXPORT})")
    return manifest
