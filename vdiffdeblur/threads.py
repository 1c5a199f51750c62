"""How many CPU threads PyTorch and OpenCV use by default, in one place.

The rule: the cores this process may run on (its CPU affinity, capped by a cgroup CPU quota), shared evenly
among the processes of one launch on this machine (``LOCAL_WORLD_SIZE`` under ``accelerate launch`` or
``torchrun``), at least one. ``OMP_NUM_THREADS``, when set, and ``--threads`` override it. Decoding and encoding run
beside these in one reader and one writer thread (the decoder and x264 with one thread each, inside them), so the
method's threads fill the cores while frames are decoded and encoded (:mod:`vdiffdeblur.io_threads`).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def _cgroup_quota() -> float | None:
    """Cores a cgroup v2 CPU quota allows (``cpu.max``), or None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return float(quota) / float(period)
    except (ValueError, ZeroDivisionError):
        return None


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (rounded up)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _launch_count(name: str) -> int:
    try:
        return max(1, int(os.environ.get(name, "1")))
    except ValueError:
        return 1


def local_processes() -> int:
    """Processes of this launch on this machine (``LOCAL_WORLD_SIZE``; 1 outside a launcher)."""
    return _launch_count("LOCAL_WORLD_SIZE")


def world_size() -> int:
    """Processes of this launch on every machine (``WORLD_SIZE``; 1 outside a launcher)."""
    return _launch_count("WORLD_SIZE")


def default_threads() -> int:
    """The documented rule: ``OMP_NUM_THREADS`` when set, else the available cores shared among local processes."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    return max(1, available_cores() // local_processes())


def set_threads(threads: int | None = None) -> int:
    """Give PyTorch and OpenCV ``threads`` CPU threads (None: :func:`default_threads`); returns the number set."""
    import cv2
    import torch

    n = default_threads() if threads is None else max(1, int(threads))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    cv2.setNumThreads(n)
    logger.debug("CPU threads: %d for PyTorch and OpenCV", n)
    return n
