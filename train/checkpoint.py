"""Checkpoints in the official CLIT format, plus our metadata.

Official: ``{'model': {'name': 'clit', 'args': {...}, 'sd': state_dict}, ...}`` (optionally
with ``optimizer`` / ``epoch``).  Ours use the same outer structure (so the official code can
read them) and add a ``clit`` entry with metadata.  Loading is ``weights_only`` (no pickled
code is executed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from clit.runtime.atomic import atomic_write

from .model import CLIT

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable CLIT checkpoint; the message is one line."""


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict (weights only), with one-line errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for non-checkpoints
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({reason[:200]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: not a CLIT checkpoint (no 'model' entry)")
    spec = ckpt["model"]
    if spec.get("name") != "clit":
        raise CheckpointError(f"{path}: model is {spec.get('name')!r}, not 'clit'")
    if not isinstance(spec.get("args"), dict) or not isinstance(spec.get("sd"), dict):
        raise CheckpointError(f"{path}: CLIT checkpoint without 'args' and 'sd'")
    return ckpt


def build_model(args: dict, where: str = "model args") -> CLIT:
    """Construct a CLIT from official ``model.args``; bad args give a one-line error."""
    try:
        return CLIT(**args)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def load_state(model: CLIT, sd: dict, where: str = "checkpoint") -> None:
    """Load a state dict strictly; report the first few missing/unexpected keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{label} keys {', '.join(keys[:3])}{more}")
    if problems:
        raise CheckpointError(f"{where}: state dict does not match the model: {'; '.join(problems)}")
    model.load_state_dict(sd, strict=True)


def load_model_and_args(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[CLIT, dict]:
    """Load an official or our CLIT checkpoint: the model in eval mode and its ``args``."""
    spec = read_checkpoint(path)["model"]
    model = build_model(spec["args"], where=str(path))
    load_state(model, spec["sd"], where=str(path))
    return model.to(device).eval(), spec["args"]


def torch_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch device that exists here; ValueError in one line otherwise (e.g.
    ``cuda`` with a CPU-only torch or no GPU visible)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown torch device {name!r} (cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no GPU visible"
            raise ValueError(f"--device {name}: CUDA is not available ({build}, torch {torch.__version__}); "
                             "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> CLIT:
    """Load an official or our CLIT checkpoint; returns the model in eval mode."""
    return load_model_and_args(path, device)[0]


def model_spec(model: CLIT, args: dict) -> dict:
    """The official ``model`` entry for ``model`` built from ``args``."""
    return {"name": "clit", "args": args, "sd": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def save_checkpoint(path: str | os.PathLike, model: CLIT, args: dict, meta: dict | None = None,
                    **extra: Any) -> None:
    """Write an official-format checkpoint atomically (temp file, then rename).

    ``extra`` entries (official ``optimizer``, ``epoch``, ``state``) are stored beside
    ``model``; ``meta`` goes into our ``clit`` entry next to the format version.
    """
    path = Path(path)
    ckpt = {"model": model_spec(model, args), "clit": {"format_version": FORMAT_VERSION, **(meta or {})}, **extra}
    atomic_write(path, lambda f: torch.save(ckpt, f))
