"""Optical flow with OpenCV DIS: estimation between frames of different blur, backward warping and the
forward-backward consistency check. Used by E_warp, relative sharpness and sharp-frame transfer."""

from __future__ import annotations

import cv2
import numpy as np


def _gray_u8(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


#: DIS refuses frames smaller than this on either side (OpenCV checks its pyramid), so smaller ones are padded
DIS_MIN_SIDE = 16


def dis_flow(src: np.ndarray, dst: np.ndarray, preset=cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> np.ndarray:
    """Dense flow (H, W, 2) such that ``dst(p) ~ src(p + flow(p))`` (OpenCV DIS on grey uint8 frames).

    Frames smaller than ``DIS_MIN_SIDE`` px are edge-padded for DIS and the flow cropped back."""
    dis = cv2.DISOpticalFlow_create(preset)
    a = _gray_u8(dst) if dst.ndim == 3 else dst
    b = _gray_u8(src) if src.ndim == 3 else src
    h, w = a.shape[:2]
    ph, pw = max(0, DIS_MIN_SIDE - h), max(0, DIS_MIN_SIDE - w)
    if not (ph or pw):
        return dis.calc(a, b, None)
    # edge padding: mirrored content would move against the frame's own motion and pull the flow the wrong way
    pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    a, b = (cv2.copyMakeBorder(np.ascontiguousarray(g), *pads, cv2.BORDER_REPLICATE) for g in (a, b))
    return np.ascontiguousarray(dis.calc(a, b, None)[pads[0]:pads[0] + h, pads[2]:pads[2] + w])


def robust_flow(src_gray: np.ndarray, dst_gray: np.ndarray, sigma: float = 1.5, scale: float = 0.5,
                preset=cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> np.ndarray:
    """Flow (H, W, 2) with ``dst(p) ~ src(p + flow(p))`` between grey frames (uint8, or float in [0, 1])
    that may differ in blur: both are low-passed (blur hides the fine texture
    that only the sharper frame has) and downscaled, then the flow is brought back to full size."""
    h, w = dst_gray.shape[:2]

    def prep(g):
        g = cv2.GaussianBlur(g, (0, 0), sigma) if sigma > 0 else g
        if scale != 1:
            g = cv2.resize(g, (max(8, int(round(w * scale))), max(8, int(round(h * scale)))),
                           interpolation=cv2.INTER_AREA)
        if g.dtype != np.uint8:  # DIS takes 8-bit grey; float input is in [0, 1]
            g = np.clip(g * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return g

    f = dis_flow(prep(src_gray), prep(dst_gray), preset)
    if scale != 1:
        f = cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)
        f[..., 0] *= 1.0 / scale
        f[..., 1] *= 1.0 / scale
    return f


def warp(image: np.ndarray, flow: np.ndarray, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    """Backward-warp ``image`` by ``flow``: out(p) = image(p + flow(p))."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, gx + flow[..., 0], gy + flow[..., 1], interpolation, borderMode=cv2.BORDER_REPLICATE)


def occlusion_mask(fwd: np.ndarray, bwd: np.ndarray, alpha: float = 0.01, beta: float = 0.5) -> np.ndarray:
    """Forward-backward consistency (Sundaram et al., as Lai et al. 2018 use it): 1 where the flow is
    trusted. ``fwd`` maps frame t to t-1 (t(p) ~ t-1(p + fwd(p))), ``bwd`` maps t-1 to t."""
    bwd_at = warp(bwd, fwd)
    diff = fwd + bwd_at
    lhs = (diff ** 2).sum(-1)
    rhs = alpha * ((fwd ** 2).sum(-1) + (bwd_at ** 2).sum(-1)) + beta
    return (lhs < rhs).astype(np.float32)


def inside_mask(flow: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """1 where ``p + flow(p)`` falls inside the source frame (minus ``margin`` px), else 0."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    x, y = gx + flow[..., 0], gy + flow[..., 1]
    return ((x >= margin) & (x <= w - 1 - margin) & (y >= margin) & (y <= h - 1 - margin)).astype(np.float32)


def consistency(fwd: np.ndarray, bwd: np.ndarray, sigma_px: float = 1.0) -> np.ndarray:
    """Soft forward-backward consistency in [0, 1]: exp(-|fwd + bwd(p + fwd)|^2 / (2 sigma^2))."""
    d = fwd + warp(bwd, fwd)
    dx, dy = d[..., 0], d[..., 1]
    return np.exp(-(dx * dx + dy * dy) / (2 * sigma_px ** 2)).astype(np.float32)  # = (d ** 2).sum(-1), 10x faster
