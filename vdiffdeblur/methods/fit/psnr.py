"""How far a fit has got: the PSNR of a fit network's own output."""

from __future__ import annotations

import numpy as np
import torch

from ...frames import as_frames_tensor, to_uint8_frames
from ...metrics import psnr


@torch.no_grad()
def output_psnr(net, blurry: np.ndarray, sharp: np.ndarray, batch_size: int = 4) -> float:
    """Mean PSNR of ``net``'s own output (no per-frame strength) on uint8 ``blurry`` frames against ``sharp``,
    as measured along a fit by ``scripts/benchmark_fit.py curves`` and the slow tests."""
    was_training = net.training
    net.eval()
    x = as_frames_tensor(blurry, device=next(net.parameters()).device)
    out = torch.cat([net(x[i:i + batch_size]).float().clamp(0, 1) for i in range(0, len(x), batch_size)])
    net.train(was_training)
    return float(psnr(to_uint8_frames(out), sharp).mean())
