"""Encoders by their official names: ``make_encoder({'name': ..., 'args': {...}})``."""

from __future__ import annotations

from torch import nn

from .edsr import make_edsr, make_edsr_baseline
from .rdn import make_rdn
from .swinir import make_swinir

ENCODERS = {
    "edsr-baseline": make_edsr_baseline,
    "edsr": make_edsr,
    "rdn": make_rdn,
    "swinir": make_swinir,
}


def make_encoder(spec: dict) -> nn.Module:
    """Build an encoder from an official ``encoder_spec``; features only (no upsampling).

    ``no_upsampling`` must be true (or absent): CLIT never uses the encoders' tails.
    """
    name = spec.get("name")
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r} (known: {', '.join(sorted(ENCODERS))})")
    args = dict(spec.get("args") or {})
    if not args.pop("no_upsampling", True):
        raise ValueError(f"encoder {name!r}: no_upsampling must be true for CLIT")
    args.pop("scale", None)  # only used by the upsampling tails
    args.pop("rgb_range", None)
    return ENCODERS[name](**args)
