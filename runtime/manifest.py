"""``manifest.json`` of an exported model directory: what the runtime needs to run it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in blocks (graph, checkpoint and engine hashes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def load_manifest(model_dir: str | Path) -> Manifest:
    """Read and check ``MODEL_DIR/manifest.json`` (format version, listed files present)."""
    root = Path(model_dir)
    path = root / MANIFEST
    if not path.is_file():
        raise ModelDirError(f"{root}: not a model directory (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path}: unreadable manifest ({exc})") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ModelDirError(f"{path}: format version {version!r}, this clit reads version {FORMAT_VERSION}")
    manifest = Manifest(root, data)
    for entry in manifest.graphs:
        for file in [entry.file] + [v["file"] for v in entry.variants.values()]:
            if not (root / file).is_file():
                raise ModelDirError(f"{root}: graph file {file} listed in the manifest is missing")
    return manifest
