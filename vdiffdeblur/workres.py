"""Working resolution for the frame-to-frame methods (sharp-frame transfer, the do-no-harm guard).

Flows, sharpness measures, kernel fits and blend weights do not need every pixel of a large frame: above a cap on
the long side they are computed on a copy downscaled to the cap (INTER_AREA), and only the final blend runs at full
size, with the weights and flows brought back up. Frames at or below the cap take the exact full-size path.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache

import cv2
import numpy as np

from .blur import srgb_to_linear

#: sRGB byte -> linear light, the values ``srgb_to_linear(byte / 255)`` gives (a lookup instead of a power per pixel)
_LINEAR = srgb_to_linear(np.arange(256, dtype=np.float32) / 255.0)


def bytes_to_linear(image: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> float32 linear light, equal to ``srgb_to_linear(image.astype(np.float32) / 255)``."""
    return _LINEAR[image]


#: frames the working-size path works on at once, at most (each holds its window of frames while it runs)
MAX_WORKERS = 2
_POOL: list = []  # the process's worker threads for it, made on first use


def pool() -> ThreadPoolExecutor:
    """The worker threads that transfer and the guard hand their per-frame full-size work to."""
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="vdiffdeblur-workres"))
    return _POOL[0]


class InOrder:
    """Per-frame jobs run in `pool()` (or at once, in this thread, with `inline`), their results taken back in the
    order they were started."""

    def __init__(self):
        self.running: deque = deque()

    def __len__(self) -> int:
        return len(self.running)

    def start(self, inline: bool, fn, *args) -> None:
        if inline:
            done: Future = Future()
            done.set_result(fn(*args))
            self.running.append(done)
        else:
            self.running.append(pool().submit(fn, *args))

    def ready(self, keep: int, notes: list) -> list:
        """Jobs return ``(output, note)``: the outputs at the front, in order, all but the last ``keep`` (waited
        for); their notes are appended to ``notes``."""
        out = []
        for _ in range(len(self.running) - keep):
            output, note = self.running.popleft().result()
            notes.append(note)
            out.append(output)
        return out


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
    return np.multiply(up, np.array([shape[1] / w, shape[0] / h], np.float32), out=up)  # both channels in one pass


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


@lru_cache(maxsize=2)
def pixel_grid(h: int, w: int) -> np.ndarray:
    """(h, w, 2) float32: each pixel's (x, y), for turning flows into remap's coordinate maps (read-only, kept)."""
    g = np.empty((h, w, 2), np.float32)
    g[..., 0] = np.arange(w, dtype=np.float32)[None, :]
    g[..., 1] = np.arange(h, dtype=np.float32)[:, None]
    g.flags.writeable = False
    return g


def warp_box(image: np.ndarray, flow: np.ndarray, box, interpolation=cv2.INTER_CUBIC,
             flow_is_scratch: bool = False) -> np.ndarray:
    """``image`` backward-warped by a full-size ``flow`` (H, W, 2), only inside ``box`` (rows, cols slices).
    ``flow_is_scratch``: ``flow`` is the caller's to discard, and becomes the coordinate map (no new full-size map)."""
    rows, cols = box
    grid = pixel_grid(*flow.shape[:2])[rows, cols]
    if flow_is_scratch:
        coords = np.add(flow[rows, cols], grid, out=flow[rows, cols])
    else:
        coords = flow[rows, cols] + grid
    return cv2.remap(image, coords, None, interpolation, borderMode=cv2.BORDER_REPLICATE)
