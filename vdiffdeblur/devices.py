"""What ``--device`` and ``--dtype`` mean, in one place: a name is checked before any work (a typo or a missing GPU
is then a one-line error, not a traceback from deep inside a model), and ``auto`` has one meaning for every method."""

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


def resolve_device(name="auto"):
    """``auto`` (or None), for every method: cuda if available, else mps if available, else cpu; any other name as
    :func:`check_device` checks it."""
    import torch

    if name is None or str(name).strip().lower() == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available(torch):
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(name, torch.device):
        name = str(name)
    return check_device(name)


def bf16_native(device) -> bool:
    """Whether bfloat16 runs natively on ``device`` (CUDA: the device says so; CPU: AVX512-BF16 or AMX)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(c()) for c in checks if c is not None)


PRECISIONS = {"dtb": ("float32", "bfloat16", "float16"), "fit": ("float32", "bfloat16"),
              "diffusion": ("float32", "float16", "bfloat16")}
_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


def resolve_precision(name, device, method: str) -> str:
    """The precision ``name`` (``float32``, ``float16``, ``bfloat16`` or ``auto``) means for ``method`` on ``device``.

    ``auto``, for every method: bfloat16 where the device runs it natively, except the diffusion pipeline on the
    CPU (float32: it loses detail there in bfloat16); float16 for the diffusion pipeline on CUDA devices without
    bfloat16; float32 everywhere else.
    """
    import torch

    name = _ALIASES.get(str(name or "auto").lower(), str(name or "auto").lower())
    if name != "auto":
        if name not in PRECISIONS[method]:
            raise ValueError(f"{method} precision must be {', '.join(PRECISIONS[method])} or auto, got {name!r}")
        return name
    device = torch.device(device)
    diffusion = method == "diffusion"
    if bf16_native(device) and not (diffusion and device.type == "cpu"):
        return "bfloat16"
    return "float16" if diffusion and device.type == "cuda" else "float32"
