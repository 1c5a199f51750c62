"""Working resolution for the frame-to-frame methods (sharp-frame transfer, the do-no-harm guard).

Flows, sharpness measures, kernel fits and blend weights do not need every pixel of a large frame: above a cap on
the long side they are computed on a copy downscaled to the cap (INTER_AREA), and only the final blend runs at full
size, with the weights and flows brought back up. Frames at or below the cap take the exact full-size path.
"""

from __future__ import annotations

import cv2
import numpy as np


def working_scale(shape: tuple, long_side: int) -> float:
    """Scale (<= 1) that brings a frame of ``shape`` (H, W, ...) to ``long_side`` px; 1 at or below it (or cap 0)."""
    longest = max(shape[:2])
    return 1.0 if long_side <= 0 or longest <= long_side else long_side / longest


def downscale(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def upscale_map(weights: np.ndarray, shape: tuple) -> np.ndarray:
    """A (h, w) map bilinearly brought to ``shape`` (H, W, ...)."""
    return cv2.resize(weights, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def upscale_flow(flow: np.ndarray, shape: tuple) -> np.ndarray:
    """A flow (h, w, 2) in working pixels -> (H, W, 2) in full-size pixels."""
    h, w = flow.shape[:2]
    up = cv2.resize(flow, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    up[..., 0] *= shape[1] / w
    up[..., 1] *= shape[0] / h
    return up


def change_box(weights: np.ndarray, shape: tuple, threshold: float = 1 / 1024, margin: int = 2):
    """The full-size (rows, cols) slices holding every working pixel of ``weights`` above ``threshold`` (plus
    ``margin`` working px, for the bilinear spread), or None where there is none."""
    rows, cols = np.nonzero((weights > threshold).any(1)), np.nonzero((weights > threshold).any(0))
    if not len(rows[0]):
        return None
    h, w = weights.shape
    fy, fx = shape[0] / h, shape[1] / w
    r0, r1 = max(0, rows[0][0] - margin), min(h, rows[0][-1] + 1 + margin)
    c0, c1 = max(0, cols[0][0] - margin), min(w, cols[0][-1] + 1 + margin)
    return (slice(int(r0 * fy), min(shape[0], int(np.ceil(r1 * fy)))),
            slice(int(c0 * fx), min(shape[1], int(np.ceil(c1 * fx)))))


def warp_box(image: np.ndarray, flow: np.ndarray, box, interpolation=cv2.INTER_CUBIC) -> np.ndarray:
    """``image`` backward-warped by a full-size ``flow`` (H, W, 2), only inside ``box`` (rows, cols slices)."""
    rows, cols = box
    f = flow[rows, cols]
    map_x = f[..., 0] + np.arange(cols.start, cols.stop, dtype=np.float32)[None, :]
    map_y = f[..., 1] + np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
    return cv2.remap(image, map_x, map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)
