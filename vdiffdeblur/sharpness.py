"""Per-frame sharpness: variance of the Laplacian (fit-to-test-data paper, eq. 1), sharp-frame selection,
and a relative sharpness that does not depend on content.

Why relative: raw Laplacian variance measures content as much as blur, so while the camera pans it rises
and falls with whatever texture is in view. :func:`relative_sharpness` instead compares each frame with
its neighbours *on the same content*: a neighbour is warped onto the frame with optical flow and the
gradient energies of both are compared over the pixels the flow maps reliably. Pairwise log-ratios
(measured both ways, so the smoothing of the warp's interpolation cancels) are then solved jointly by
least squares into one log-sharpness per frame, so that a frame in a long blurry run is still compared,
through the chain, with the sharp frames beyond it.
"""

from __future__ import annotations

import cv2
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
    Only the interior (valid convolution) is used, so the frame border adds nothing (frames narrower than
    3 px are edge-padded to 3 px first).
    """
    x = to_gray(as_frames_tensor(frames)) * 255.0
    if min(x.shape[-2:]) < 3:  # frames under 3 px have no interior: measure them edge-padded to 3 px
        x = F.pad(x, (0, max(0, 3 - x.shape[-1]), 0, max(0, 3 - x.shape[-2])), mode="replicate")
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


# --------------------------------------------------------------------------------------- relative sharpness
def gray_float(frame: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 grey in [0, 1]."""
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0


def gradient_energy(gray: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    return gx * gx + gy * gy


def pooled_gradient_energy(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The gradient energy of a uint8 RGB frame at full size (as :func:`gradient_energy` of its
    :func:`gray_float`), averaged over the pixels of a (w, h) ``size`` grid: fine detail, on a coarse grid."""
    g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    e = cv2.accumulateSquare(gy, cv2.multiply(gx, gx))
    return cv2.resize(e, size, interpolation=cv2.INTER_AREA) * np.float32(1 / 255.0 ** 2)


class PairMeasure:
    """Aligns frame ``s`` onto frame ``t`` (and back) and measures how much sharper ``s`` is than ``t``.

    With ``energy_t`` and ``energy_s`` (:func:`pooled_gradient_energy` of the full-size frames on the grid of the
    grey frames) the sharpness compares those, aligned by the flow, instead of the grey frames' own gradients: the
    frames are aligned at a working size and their sharpness judged at full size."""

    def __init__(self, gray_t: np.ndarray, gray_s: np.ndarray, flow_scale: float = 0.5,
                 energy_t: np.ndarray | None = None, energy_s: np.ndarray | None = None):
        from .flow import consistency, inside_mask, robust_flow, warp

        self.flow_ts = robust_flow(gray_s, gray_t, scale=flow_scale)  # t(p) ~ s(p + flow_ts(p))
        self.flow_st = robust_flow(gray_t, gray_s, scale=flow_scale)
        self.conf_t = consistency(self.flow_ts, self.flow_st) * inside_mask(self.flow_ts, 2)
        conf_s = consistency(self.flow_st, self.flow_ts) * inside_mask(self.flow_st, 2)
        if energy_t is None:
            e_t, e_s = gradient_energy(gray_t), gradient_energy(gray_s)
            e_s_on_t = gradient_energy(warp(gray_s, self.flow_ts, cv2.INTER_CUBIC))
            e_t_on_s = gradient_energy(warp(gray_t, self.flow_st, cv2.INTER_CUBIC))
        else:  # pooled energies: warped as local means (linear interpolation keeps them >= 0)
            e_t, e_s = energy_t, energy_s
            e_s_on_t = warp(energy_s, self.flow_ts, cv2.INTER_LINEAR)
            e_t_on_s = warp(energy_t, self.flow_st, cv2.INTER_LINEAR)
        m_t, m_s = (self.conf_t > 0.5), (conf_s > 0.5)
        self.overlap = float(min(m_t.mean(), m_s.mean()))
        eps = 1e-6
        if self.overlap < 0.05:
            self.log_ratio = 0.0
        else:
            d1 = np.log((e_s_on_t[m_t].mean() + eps) / (e_t[m_t].mean() + eps))
            d2 = np.log((e_s[m_s].mean() + eps) / (e_t_on_s[m_s].mean() + eps))
            self.log_ratio = float(0.5 * (d1 + d2))  # > 0: s is sharper than t


def solve_log_sharpness(n: int, pairs: list[tuple[int, int, float, float]]) -> np.ndarray:
    """Least-squares a (n,) with a[s] - a[t] ~ d for each (t, s, d, weight); normalised so max(a) = 0."""
    if n == 1 or not pairs:
        return np.zeros(n)
    rows = np.zeros((len(pairs) + 1, n))
    rhs = np.zeros(len(pairs) + 1)
    for k, (t, s, d, w) in enumerate(pairs):
        rows[k, s], rows[k, t], rhs[k] = w, -w, w * d
    rows[-1, :] = 1e-3  # fixes the free constant
    a = np.linalg.lstsq(rows, rhs, rcond=None)[0]
    return a - a.max()


def relative_sharpness(frames: np.ndarray, offsets: tuple[int, ...] = (1, 2, 3), flow_scale: float = 0.5) -> np.ndarray:
    """Log gradient-energy sharpness per frame, comparable across the clip: 0 for the sharpest frame,
    negative for blurrier ones (-0.7 ~ half the gradient energy of the sharpest on the same content).

    ``frames``: uint8 (F, H, W, 3). Pairs (t, t + o) for o in ``offsets`` are measured.
    """
    frames = np.asarray(frames)
    n = len(frames)
    grays = [gray_float(f) for f in frames]
    pairs = []
    for t in range(n):
        for o in offsets:
            s = t + o
            if s < n:
                m = PairMeasure(grays[t], grays[s], flow_scale)
                if m.overlap >= 0.05:
                    pairs.append((t, s, m.log_ratio, m.overlap))
    return solve_log_sharpness(n, pairs)
