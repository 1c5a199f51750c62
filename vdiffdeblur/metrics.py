"""Quality metrics: PSNR, SSIM (as scikit-image computes it), warping error E_warp, and LPIPS from local weights.

Frames are uint8 (F, H, W, 3) arrays (data range 255) or float (F, 3, H, W) tensors in [0, 1]
(data range 1). Per-frame values come back as float64 numpy arrays; averages are means of per-frame values.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np
import torch

from .flow import dis_flow, occlusion_mask, warp
from .frames import as_frames_tensor


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_frames_tensor(a, dtype=torch.float64), as_frames_tensor(b, dtype=torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"frames differ in shape: {tuple(x.shape)} vs {tuple(y.shape)} (F, C, H, W)")
    return x, y


def psnr(result, target) -> np.ndarray:
    """Per-frame PSNR in dB (inf for identical frames)."""
    x, y = _pair(result, target)
    mse = ((x - y) ** 2).flatten(1).mean(1)
    with np.errstate(divide="ignore"):
        return (10 * np.log10(1.0 / mse.numpy())).astype(np.float64)


@lru_cache(maxsize=4)
def _gauss(sigma: float, truncate: float) -> np.ndarray:
    r = int(truncate * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(result, target, sigma: float = 1.5) -> np.ndarray:
    """Per-frame SSIM, as ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=-1, data_range=...)``: the mean over the valid interior and
    over the colour channels. (Separable float64 filtering in OpenCV: torch's float64 convolutions are
    two orders of magnitude slower on CPU.)"""
    x, y = _pair(result, target)
    g = _gauss(sigma, 3.5)
    r = len(g) // 2
    n, c, h, w = x.shape
    if h <= 2 * r or w <= 2 * r:
        raise ValueError(f"frames of {w}x{h} are too small for SSIM's {2 * r + 1}px window")
    xs, ys = x.numpy(), y.numpy()

    def filt(z):  # 'valid' part only, like skimage's crop of its reflect-padded filter
        return cv2.sepFilter2D(z, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)[r:h - r, r:w - r]

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    out = np.empty(n)
    for i in range(n):
        vals = []
        for ch in range(c):
            a, b = xs[i, ch], ys[i, ch]
            ux, uy = filt(a), filt(b)
            vx, vy, vxy = filt(a * a) - ux * ux, filt(b * b) - uy * uy, filt(a * b) - ux * uy
            s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
            vals.append(s.mean())
        out[i] = np.mean(vals)
    return out


# --------------------------------------------------------------------------------------- E_warp
def warping_error(frames: np.ndarray, flow_frames: np.ndarray | None = None) -> float:
    """E_warp (Lai et al. 2018): mean over consecutive pairs of the occlusion-masked mean squared difference
    between frame t and frame t-1 warped onto it (RGB in [0, 1]).

    The flow is estimated on ``flow_frames`` (e.g. the ground truth or the input clip) when given, so
    that different results for the same clip are compared under the same motion; else on ``frames``.
    Returns 0.0 for a single frame.
    """
    frames = np.asarray(frames)
    ref = frames if flow_frames is None else np.asarray(flow_frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or ref.shape != frames.shape:
        raise ValueError(f"warping_error needs uint8 (F, H, W, 3) frames of equal shapes, got {frames.shape} "
                         f"and {ref.shape}")
    if len(frames) < 2:
        return 0.0
    errs = []
    for t in range(1, len(frames)):
        fwd = dis_flow(ref[t - 1], ref[t])  # frame t from t-1
        bwd = dis_flow(ref[t], ref[t - 1])
        m = occlusion_mask(fwd, bwd)
        prev = warp(frames[t - 1].astype(np.float32) / 255.0, fwd)
        cur = frames[t].astype(np.float32) / 255.0
        d = ((cur - prev) ** 2).sum(-1) / 3.0
        errs.append(float((d * m).sum() / max(m.sum(), 1.0)))
    return float(np.mean(errs))


# --------------------------------------------------------------------------------------- LPIPS
def lpips(result, target, weights: str | None = None, device=None) -> np.ndarray:
    """Per-frame LPIPS (VGG variant, Zhang et al. 2018) from a local weights file; nothing downloads.

    ``weights``: a safetensors or ``.pth`` file holding the VGG-16 feature weights (torchvision key names,
    ``features.N.weight``) and the LPIPS linear heads (``lin0.model.1.weight`` ... ``lin4...``), e.g.
    torchvision's vgg16 state dict merged with the lpips package's ``vgg.pth``.
    """
    if not weights:
        raise ValueError("LPIPS needs local weights (VGG-16 features + LPIPS linear heads): pass weights=PATH; "
                         "nothing is downloaded")
    from .models.vgg import LPIPSVGG

    net = LPIPSVGG.from_weights_file(weights).to(device or "cpu").eval()
    x, y = _pair(result, target)
    with torch.no_grad():
        return net(x.float().to(net.device), y.float().to(net.device)).cpu().double().numpy()


def summarize(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.inf
