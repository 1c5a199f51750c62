"""Classical baselines for the benchmark: unsharp masking, and Richardson-Lucy deconvolution with the true
(translation-only) blur kernel of each synthetic frame, an oracle no real method has."""

from __future__ import annotations

import cv2
import numpy as np

from .blur import blur_image, linear_to_srgb, srgb_to_linear


def unsharp_mask(frames: np.ndarray, amount: float = 1.0, sigma: float = 1.5) -> np.ndarray:
    """uint8 (F, H, W, 3) -> the same, sharpened: x + amount * (x - gaussian(x))."""
    out = []
    for f in frames:
        x = f.astype(np.float32)
        out.append(np.clip(x + amount * (x - cv2.GaussianBlur(x, (0, 0), sigma)), 0, 255).round().astype(np.uint8))
    return np.stack(out)


def richardson_lucy(frame: np.ndarray, kernel: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Non-blind Richardson-Lucy in linear light (blur is linear there), one uint8 (H, W, 3) frame."""
    x = srgb_to_linear(frame.astype(np.float32) / 255.0)
    k = np.asarray(kernel, np.float32)
    k = k / k.sum()
    pad = k.shape[0]
    obs = cv2.copyMakeBorder(x, pad, pad, pad, pad, cv2.BORDER_REFLECT) + 1e-4
    est = obs.copy()
    for _ in range(iterations):
        ratio = obs / np.maximum(blur_image(est, k), 1e-6)
        est = est * blur_image(ratio, k[::-1, ::-1])  # the blur's adjoint: correlation with k
    est = est[pad:-pad, pad:-pad] - 1e-4
    return (np.clip(linear_to_srgb(est), 0, 1) * 255 + 0.5).astype(np.uint8)
