"""Training configuration: YAML in the official CLIT layout, without data paths.

The keys mirror the official ``configs/train/*.yaml`` (``train_dataset``/``val_dataset`` with
``dataset`` and ``wrapper`` args and ``batch_size``, ``model``, ``optimizer``, ``epoch_max``,
``multi_step_lr``, ``epoch_val``, ``epoch_save``) so the two are easy to compare.  Folders
come from the command line.  Ours adds ``seed`` and ``init_from`` (the cumulative strategy's
previous stage).  Unknown keys are errors, so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from clit.runtime.geometry import NORM_MEAN, NORM_STD

from .data import scale_ranges


class ConfigError(ValueError):
    """A configuration that cannot be trained; the message is one line."""


TOP_KEYS = {"train_dataset", "val_dataset", "data_norm", "model", "optimizer", "epoch_max", "multi_step_lr",
            "epoch_val", "epoch_save", "seed", "init_from", "resume", "pre_train"}
DATASET_KEYS = {"repeat", "cache", "first_k", "skip_k"}
WRAPPER_KEYS = {"inp_size", "scale_min", "scale_max", "sample_q", "augment", "k", "batch_size", "phase"}
DEFAULTS = {"epoch_val": 1, "epoch_save": 100, "seed": 0, "init_from": None, "multi_step_lr": None}


def _check_keys(section: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _split(split: dict, where: str, required: bool) -> dict | None:
    if split is None:
        if required:
            raise ConfigError(f"{where} is missing")
        return None
    _check_keys(split, {"dataset", "wrapper", "batch_size"}, where)
    dataset = dict(split.get("dataset") or {})
    dataset = dict(dataset.get("args", dataset))  # accept the official {name, args} form
    dataset.pop("root_path", None)
    dataset.pop("name", None)
    _check_keys(dataset, DATASET_KEYS, f"{where}.dataset")
    wrapper = dict(split.get("wrapper") or {})
    wrapper = dict(wrapper.get("args", wrapper))
    wrapper.pop("name", None)
    _check_keys(wrapper, WRAPPER_KEYS, f"{where}.wrapper")
    for key in ("scale_min", "scale_max"):
        if not isinstance(wrapper.get(key), list):
            raise ConfigError(f"{where}.wrapper.{key} must be a list (one entry per branch, or a list of such lists)")
    batch = split.get("batch_size", wrapper.get("batch_size"))
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"{where}.batch_size must be a positive integer, got {batch!r}")
    cache = dataset.get("cache", True)
    dataset["cache"] = cache in (True, "in_memory")
    return {"dataset": dataset, "wrapper": wrapper, "batch_size": batch}


def normalize_config(raw: dict, where: str = "config") -> dict:
    """Validate a config dict and fill defaults; returns a new dict."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: not a mapping")
    _check_keys(raw, TOP_KEYS, where)
    cfg = {**DEFAULTS, **copy.deepcopy(raw)}
    for key in ("resume", "pre_train"):
        if cfg.pop(key, None) is not None:
            raise ConfigError(f"{where}: '{key}' is given on the command line here (--resume / --init-from)")
    norm = cfg.pop("data_norm", None)
    if norm is not None:
        for part in ("inp", "gt"):
            if norm.get(part, {}).get("sub") != [NORM_MEAN] or norm.get(part, {}).get("div") != [NORM_STD]:
                raise ConfigError(f"{where}: data_norm must be sub {NORM_MEAN} / div {NORM_STD} (the model's convention)")
    model = cfg.get("model")
    if not isinstance(model, dict) or model.get("name") != "clit" or not isinstance(model.get("args"), dict):
        raise ConfigError(f"{where}: model must be {{name: clit, args: {{...}}}}")
    n = int(model["args"].get("imnet_num", 1))
    cfg["train_dataset"] = _split(cfg.get("train_dataset"), f"{where}: train_dataset", required=True)
    cfg["val_dataset"] = _split(cfg.get("val_dataset"), f"{where}: val_dataset", required=False)
    for name in ("train_dataset", "val_dataset"):
        split = cfg[name]
        if split:
            try:
                scale_ranges(split["wrapper"]["scale_min"], split["wrapper"]["scale_max"], n)
            except ValueError as exc:
                raise ConfigError(f"{where}: {name}: {exc} (the model has imnet_num={n})") from None
    opt = cfg.get("optimizer") or {}
    if opt.get("name") != "adam" or "lr" not in (opt.get("args") or {}):
        raise ConfigError(f"{where}: optimizer must be {{name: adam, args: {{lr: ...}}}}")
    if not isinstance(cfg.get("epoch_max"), int) or cfg["epoch_max"] < 1:
        raise ConfigError(f"{where}: epoch_max must be a positive integer")
    return cfg


def load_config(path: str | os.PathLike) -> dict:
    """Read and validate a YAML training config."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a training config is YAML)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a training config is a YAML mapping (train_dataset, model, ...), "
                          f"got {type(raw).__name__}")
    return normalize_config(raw, where=str(path))
