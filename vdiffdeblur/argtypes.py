"""argparse value types shared by the command line, the scripts and the training scripts' generated options."""

from __future__ import annotations

import argparse
import math


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case); anything else is an argparse error."""
    v = str(text).lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def optional(kind):
    """A type that reads ``none``/``null``/empty as None and anything else with ``kind``."""
    def parse(text: str):
        return None if str(text).lower() in ("none", "null", "") else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def int_in(lo: int, hi: int | None = None):
    """An argparse type: a whole number in [lo, hi] (no upper bound when hi is None)."""
    def parse(text: str) -> int:
        v = int(text)  # a ValueError is argparse's "invalid int value"
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {v}" if hi is not None
                                             else f"must be at least {lo}, got {v}")
        return v

    parse.__name__ = "int"
    return parse


def float_from(lo: float, inclusive: bool = True):
    """An argparse type: a finite number >= lo (> lo unless ``inclusive``)."""
    def parse(text: str) -> float:
        v = float(text)
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if not (v >= lo if inclusive else v > lo):
            bound = "at least" if inclusive else "greater than"
            raise argparse.ArgumentTypeError(f"must be {bound} {lo:g}, got {text}")
        return v

    parse.__name__ = "float"
    return parse


def device_name(text: str) -> str:
    """auto, cpu, cuda, cuda:N or mps, and present on this machine (auto is resolved by the method)."""
    if text.strip().lower() == "auto":
        return "auto"  # without importing torch: argparse converts the default too
    from .devices import check_device

    try:
        return str(check_device(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
