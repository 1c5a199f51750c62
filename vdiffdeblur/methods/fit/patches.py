"""Training pairs for the fit: random patches of the selected sharp frames, each blurred by its own kernel."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...blur import blur_crops, cut_patches, random_kernels


@dataclass
class PatchBatch:
    blurry: torch.Tensor  # (N, 3, P, P) network input
    sharp: torch.Tensor  # (N, 3, P, P) ground truth
    frame_ids: list[int]  # which training frame each patch comes from (index into the list given)
    positions: list[tuple[int, int]]  # (y, x) of each patch's top-left corner in its frame
    lengths: list[float] = field(default_factory=list)


def sample_patches(frames: list[torch.Tensor], n: int, patch_size: int, rng: np.random.Generator,
                   lengths=None, kind: str = "symmetric", inverse_gamma: bool = True, noise_sigma: float = 0.0,
                   max_length: float = 30.0, generator: torch.Generator | None = None) -> PatchBatch:
    """``n`` random patches of the training frames (3, H, W) in [0, 1], each blurred by its own random kernel
    (:func:`~vdiffdeblur.blur.cut_patches`, :func:`~vdiffdeblur.blur.random_kernels`,
    :func:`~vdiffdeblur.blur.blur_crops`).

    ``lengths``: a callable ``rng -> length`` (capped at ``max_length``) or None (uniform in 0..max_length).
    """
    lens = [min(float(lengths(rng)) if lengths is not None else float(rng.uniform(0, max_length)), max_length)
            for _ in range(n)]
    kernels = random_kernels(lens, kind, rng)
    m = kernels.shape[-1] // 2
    crops, ids, pos = cut_patches(frames, n, patch_size, m, rng)
    blurry = blur_crops(crops, kernels, m, inverse_gamma, noise_sigma, generator)
    sharp = crops[:, :, m:crops.shape[-2] - m, m:crops.shape[-1] - m]
    return PatchBatch(blurry=blurry, sharp=sharp, frame_ids=ids, positions=pos, lengths=lens)
