"""How many CPU threads a fit uses: on a machine shared with other jobs, more threads than free cores make
PyTorch's CPU kernels wait on each other (docs/fit.md)."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from ...threads import available_cores


def auto_threads() -> int:
    """CPU threads worth using now: the cores this process may run on minus the load already on them (at
    least one)."""
    cores = max(1, min(available_cores(), torch.get_num_threads()))
    try:
        busy = os.getloadavg()[0]
    except (OSError, AttributeError):
        return cores
    return max(1, min(cores, int(round(cores - busy))))


@contextmanager
def cpu_threads(n):
    """Run a block with ``n`` torch CPU threads (an int, "auto" or None for unchanged), then restore."""
    if n is None:
        yield
        return
    n = auto_threads() if n == "auto" else int(n)
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
