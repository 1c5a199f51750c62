"""Which torch device a ``--device`` name means, checked before any work: a typo or a missing GPU is then a
one-line error, not a traceback from deep inside a model."""

from __future__ import annotations

import re

DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"
_NAME = re.compile(r"^(?:auto|cpu|mps|cuda(?::(?P<index>\d+))?)$")


def _mps_available(torch) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def check_device(name):
    """The ``torch.device`` an explicit name (``cpu``, ``cuda``, ``cuda:N``, ``mps``) means on this machine.

    Raises ``ValueError`` for any other name and for a device this machine does not have. ``auto`` is not
    resolved here (methods differ in what they prefer): it is returned as the string ``"auto"``.
    """
    text = str(name).strip().lower()
    m = _NAME.match(text)
    if not m:
        raise ValueError(f"unknown device {str(name)!r}; use {DEVICE_FORMS}")
    if text == "auto":
        return "auto"
    import torch

    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r} requested but CUDA is not available on this machine; use cpu or auto")
        count = torch.cuda.device_count()
        if m["index"] is not None and int(m["index"]) >= count:
            raise ValueError(f"device {text!r} requested but this machine has {count} CUDA device"
                             f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
    elif text == "mps" and not _mps_available(torch):
        raise ValueError(f"device {text!r} requested but MPS is not available on this machine; use cpu or auto")
    return torch.device(text)


def resolve_device(name="auto", prefer_mps: bool = False):
    """``auto`` (or None): cuda if available (then mps if ``prefer_mps`` and available), else cpu; any other
    name as :func:`check_device` checks it."""
    import torch

    if name is None or str(name).strip().lower() == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if prefer_mps and _mps_available(torch):
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(name, torch.device):
        name = str(name)
    return check_device(name)
