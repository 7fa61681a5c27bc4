"""A file cache for built TensorRT engines (pure Python; the builder is passed in).

Key: sha256 of every input that changes an engine (graph sha256, TensorRT version, GPU
name and compute capability, precision, profiles, builder flags).  Each entry is
``NAME-KEY.plan`` plus ``NAME-KEY.json`` (the key fields and the plan's sha256), both
written atomically.  A lock file per key (``filelock``) keeps two processes from building the
same engine at once: the second waits, then finds the first one's engine.  A plan whose
checksum does not match, or that the loader rejects, is reported and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from ..atomic import atomic_write

T = TypeVar("T")
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clit" / "engines"


def cache_key(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``fields``."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` held for the ``with`` block (``filelock``: maintained and
    tested on Linux, macOS and Windows); a second process waits, however long a build takes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


class EngineCache:
    """Engines on disk under ``root`` (default ``~/.cache/clit/engines``)."""

    def __init__(self, root: str | os.PathLike | None = None, log: Callable[[str], None] | None = None):
        self.root = Path(root) if root is not None else DEFAULT_CACHE_DIR
        self.log = log or (lambda msg: print(msg, file=sys.stderr))

    def paths(self, name: str, key: str) -> tuple[Path, Path, Path]:
        stem = f"{name}-{key[:24]}"
        return self.root / f"{stem}.plan", self.root / f"{stem}.json", self.root / f"{stem}.lock"

    def get_or_build(self, name: str, fields: dict[str, Any], build: Callable[[], bytes],
                     load: Callable[[bytes], T | None]) -> tuple[T, str]:
        """The loaded engine for ``fields`` and how it was obtained ('cached' or 'built').

        ``build()`` returns a serialized engine; ``load(data)`` returns the usable engine or
        ``None`` when the data cannot be used (e.g. a TensorRT deserialisation failure)."""
        key = cache_key(fields)
        plan, meta, lock = self.paths(name, key)
        with file_lock(lock):
            if plan.is_file() or meta.is_file():
                problem = self._check(plan, meta, key)
                if problem is None:
                    engine = load(plan.read_bytes())
                    if engine is not None:
                        return engine, "cached"
                    problem = "cannot be deserialized (corrupt, or built by another TensorRT/GPU)"
                self.log(f"engine cache: {plan.name} {problem}; rebuilding")
            data = build()
            engine = load(data)
            if engine is None:
                raise RuntimeError(f"{name}: the freshly built engine cannot be loaded")
            atomic_write(plan, lambda f: f.write(data))
            record = {"key": key, "fields": fields, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            atomic_write(meta, lambda f: f.write(json.dumps(record, indent=1, sort_keys=True).encode()))
            return engine, "built"

    @staticmethod
    def _check(plan: Path, meta: Path, key: str) -> str | None:
        """None if ``plan`` is complete and belongs to ``key``, else what is wrong."""
        if not plan.is_file() or not meta.is_file():
            return "is incomplete (plan or metadata missing)"
        try:
            record = json.loads(meta.read_text())
        except (OSError, ValueError):
            return "has unreadable metadata"
        if record.get("key") != key:
            return "belongs to another configuration"
        if hashlib.sha256(plan.read_bytes()).hexdigest() != record.get("sha256"):
            return "does not match its checksum (corrupt or truncated)"
        return None
