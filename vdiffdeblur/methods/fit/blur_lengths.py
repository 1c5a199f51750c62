"""How blurred each frame is: its M_VL against that of its reference sharp frame blurred by known lengths,
and the video's sensor-noise level that the calibration blurs are given."""

from __future__ import annotations

import math

import numpy as np
import torch

from ...blur import fft_blur, kernel_size_for, linear_motion_kernel, linear_to_srgb, noise_and_quantise, srgb_to_linear
from ...frames import as_frames_tensor
from ...sharpness import laplacian_variance

#: blur lengths (px) at which a frame's sharpness is calibrated
LENGTH_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.5, 7.5, 10.0, 13.0, 17.0, 22.0, 28.0, 36.0, 46.0)


def estimate_noise_sigma(frame: np.ndarray, block: int = 8, quantile: float = 0.1) -> float:
    """Sensor-noise standard deviation of a uint8 frame on the 0..1 scale.

    Immerkaer's mask (1996) cancels smooth image content; texture still leaks through it, so the estimate
    is taken in the flattest blocks: the ``quantile`` of per-block estimates (median over channels).
    """
    x = as_frames_tensor(frame)[0]  # (3, H, W)
    if min(x.shape[-2:]) < 3:  # the 3x3 mask needs 3 px: edge-pad tiny frames (flat padding adds no noise)
        x = torch.nn.functional.pad(x[None], (0, max(0, 3 - x.shape[-1]), 0, max(0, 3 - x.shape[-2])),
                                    mode="replicate")[0]
    mask = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    r = torch.nn.functional.conv2d(x[:, None], mask[None, None]).abs()  # (3, 1, H-2, W-2)
    if min(r.shape[-2:]) >= block:
        r = torch.nn.functional.avg_pool2d(r, block)
    per_block = math.sqrt(math.pi / 2) / 6 * r.flatten(1)
    return float(torch.quantile(per_block, quantile, dim=1).median())


def blur_length_curve(frame: np.ndarray, lengths=LENGTH_GRID, angles=(0, 45, 90, 135), noise_sigma: float = 0.0,
                      inverse_gamma: bool = True, max_side: int = 384, seed: int = 0) -> np.ndarray:
    """M_VL of a sharp frame blurred by symmetric linear kernels of each length (mean over ``angles``).

    It decreases with length and calibrates a frame's M_VL against the blur of the same content. Large
    frames are measured on a central crop of at most ``max_side`` px.
    """
    x = as_frames_tensor(frame)
    h, w = x.shape[-2:]
    ch, cw = min(h, max_side), min(w, max_side)
    x = x[..., (h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
    g = torch.Generator().manual_seed(seed)
    lin = srgb_to_linear(x) if inverse_gamma else x
    size = kernel_size_for(max(lengths), "symmetric")
    pad = size // 2
    xp = torch.nn.functional.pad(lin, (pad, pad, pad, pad), mode="reflect" if pad < min(ch, cw) else "replicate")
    xf = torch.fft.rfft2(xp)  # one transform of the frame for every kernel
    out = []
    for length in lengths:
        vals = []
        for a in angles:
            b = fft_blur(xp, linear_motion_kernel(length, a, size=size), pad, spectrum=xf)
            b = linear_to_srgb(b) if inverse_gamma else b
            vals.append(float(laplacian_variance(noise_and_quantise(b, noise_sigma, g))[0]))
        out.append(np.mean(vals))
    return np.minimum.accumulate(np.asarray(out))  # monotone: more blur never reads sharper


def lengths_from_scores(scores, curve, lengths=LENGTH_GRID) -> np.ndarray:
    """Invert :func:`blur_length_curve`: the blur length whose M_VL matches each score (0 if sharper)."""
    c = np.asarray(curve, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    # np.interp wants increasing x: walk the curve from the most blurred end
    return np.interp(s, c[::-1], np.asarray(lengths, dtype=np.float64)[::-1])
