"""clit.runtime must work without torch: import every module with torch unimportable."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import importlib, pkgutil, sys
sys.modules["torch"] = None  # any 'import torch' now raises ImportError
import clit.runtime
names = [m.name for m in pkgutil.walk_packages(clit.runtime.__path__, "clit.runtime.")]
for name in names:
    importlib.import_module(name)
assert "torch" not in {k for k, v in sys.modules.items() if v is not None}
print(len(names))
"""


def test_runtime_imports_without_torch():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= 3  # geometry, images, cli at least


def test_the_blocker_really_blocks_torch():
    done = subprocess.run([sys.executable, "-c", 'import sys; sys.modules["torch"] = None; import torch'],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "import of torch halted" in done.stderr
