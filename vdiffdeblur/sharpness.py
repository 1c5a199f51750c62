"""Per-frame sharpness: variance of the Laplacian (fit-to-test-data paper, eq. 1) and sharp-frame selection."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .frames import as_frames_tensor

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def to_gray(frames: torch.Tensor) -> torch.Tensor:
    """(F, 3, H, W) or (F, 1, H, W) -> (F, 1, H, W) luma."""
    if frames.shape[1] == 1:
        return frames
    return (frames * _LUMA.to(frames)[None, :, None, None]).sum(1, keepdim=True)


def laplacian_variance(frames) -> torch.Tensor:
    """M_VL per frame: the variance of the Laplacian of the grey frame, on a 0..255 scale.

    Accepts uint8 (F, H, W, 3) arrays or float (F, 3, H, W) tensors in [0, 1]; returns (F,) float64.
    Only the interior (valid convolution) is used, so the frame border adds nothing.
    """
    x = to_gray(as_frames_tensor(frames)) * 255.0
    lap = F.conv2d(x, _LAPLACIAN.to(x)[None, None])
    return lap.flatten(1).double().var(dim=1, unbiased=False)


def select_sharp_frames(frames_or_scores, every: int = 20) -> list[int]:
    """Index of the sharpest frame (highest M_VL) in each run of ``every`` frames, one per run."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    s = frames_or_scores
    if not (isinstance(s, (np.ndarray, torch.Tensor)) and np.ndim(s) == 1):
        s = laplacian_variance(s)
    s = np.asarray(torch.as_tensor(s).cpu(), dtype=np.float64)
    return [int(i + np.argmax(s[i:i + every])) for i in range(0, len(s), every)]
