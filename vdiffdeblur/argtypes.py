"""argparse value types shared by the training scripts' generated options (``--name value`` per config field)."""

from __future__ import annotations

import argparse


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
