"""Do-no-harm guard: decide, per frame and per region, how much of a method's change to keep.

Every learned method measured here made some already-sharp frames worse, and users notice a ruined sharp
frame more than a blurry frame left alone. The guard keeps ``x + beta * (y - x)`` of a method's output ``y``
for input ``x``, with ``beta`` in [0, 1] from two independent pieces of evidence:

* **Is the input frame blurry?** Its relative sharpness against its motion-aligned neighbours
  (:func:`vdiffdeblur.sharpness.relative_sharpness`, solved over a window of +-radius frames): a frame as
  sharp as the sharpest around it keeps its input. A frame in a blurry run longer than the window can
  still be let through by the second test's blur estimate.
* **Is the output consistent with the input?** The linear motion kernel that best re-blurs the output
  into the input is fitted (length, angle; in linear light). Its length is a second blur estimate of the
  frame, and where the re-blurred output does not match the input (invented texture, halos, colour
  shifts) the change is dropped locally.

Frames whose long side exceeds ``work_size`` are measured (pairs, kernel fit, local consistency) on copies
downscaled to it (:mod:`vdiffdeblur.workres`, lengths kept in full-size pixels); the weights are upscaled and the
blend runs at full size. The pair measures come from :data:`vdiffdeblur.pair_cache.SHARED`, which the sharp-frame
transfer fills with the same pairs of the same input frames.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from ..blur import blur_image, fit_linear_kernel
from ..pair_cache import SHARED
from ..sharpness import PairMeasure, gray_float, solve_log_sharpness
from ..workres import MAX_WORKERS, InOrder, bytes_to_linear, change_box, downscale, upscale_map, working_scale
from .stream import FrameStream, frame_list, run


@dataclass
class GuardConfig:
    radius: int = 6  # window (+- frames) over which relative sharpness is solved
    offsets: tuple = (1, 2, 3)  # frame pairs measured for relative sharpness
    sharp_margin: float = 0.12  # log-sharpness below the window's sharpest at which changes start to be kept
    blur_full: float = 0.45  # ... and are fully kept
    kernel_lengths: tuple = (0, 1, 2, 3, 4, 6, 8, 11, 15, 20, 26)  # px, searched when fitting the re-blur
    kernel_angles: int = 12  # angles in [0, 180)
    blur_len_min: float = 4.0  # fitted blur length from which the re-blur alone lets a change through
    blur_len_full: float = 7.0  # (short fitted blurs are what over-sharpening looks like: not enough)
    residual_tol: float = 0.035  # local re-blur mismatch (linear light) at which a change is dropped
    residual_sigma: float = 3.0
    fit_scale: float = 0.5  # the kernel is fitted at this scale, for speed
    flow_scale: float = 0.5  # pairs are aligned at this scale
    work_size: int = 480  # long side (px) above which frames are measured on a copy downscaled to it; 0: never


def guard_weights(x: np.ndarray, y: np.ndarray, rel_sharpness: float, cfg: GuardConfig,
                  scale: float = 1.0) -> tuple[np.ndarray, dict]:
    """Per-pixel share (H, W) of the change ``y - x`` to keep, and the evidence behind it. ``scale``: ``x`` and
    ``y`` are copies of the frames downscaled by it (blur lengths stay in full-size pixels)."""
    x_lin, y_lin = bytes_to_linear(x), bytes_to_linear(y)
    xg, yg = x_lin.mean(-1), y_lin.mean(-1)
    if scale == 1:
        length, angle, k = fit_linear_kernel(yg, xg, cfg.kernel_lengths, cfg.kernel_angles, cfg.fit_scale)
    else:
        lengths = tuple(length * scale for length in cfg.kernel_lengths)
        length, angle, k = fit_linear_kernel(yg, xg, lengths, cfg.kernel_angles, min(1.0, cfg.fit_scale / scale),
                                             fast=True)
        length /= scale
    beta_rel = np.clip((-rel_sharpness - cfg.sharp_margin) / (cfg.blur_full - cfg.sharp_margin), 0, 1)
    beta_len = np.clip((length - cfg.blur_len_min) / (cfg.blur_len_full - cfg.blur_len_min), 0, 1)
    beta = float(max(beta_rel, beta_len))
    info = {"rel_sharpness": float(rel_sharpness), "blur_len": length, "angle": angle, "beta_frame": beta}
    if beta == 0:
        return np.zeros(x.shape[:2], np.float32), info
    # local consistency: the output, re-blurred by the fitted kernel, must explain the input, at least as
    # well as the input explains itself re-blurred (so the test is fair where the kernel is only approximate)
    res_y = np.abs(blur_image(y_lin, k) - x_lin).mean(-1)
    res_x = np.abs(blur_image(x_lin, k) - x_lin).mean(-1)
    excess = cv2.GaussianBlur(np.maximum(res_y - res_x, 0), (0, 0), cfg.residual_sigma)
    local = np.exp(-((excess / cfg.residual_tol) ** 2)).astype(np.float32)
    info["local_mean"] = float(local.mean())
    return beta * local, info


def _blend_box(x: np.ndarray, y: np.ndarray, w_small: np.ndarray) -> np.ndarray:
    """x + w * (y - x) at full size with the working-size weights upscaled, only where they are non-zero."""
    box = change_box(w_small, x.shape)
    if box is None:
        return x
    w = upscale_map(w_small, x.shape)[box]
    out = x.copy()
    out[box] = cv2.blendLinear(y[box], x[box], w, 1.0 - w)
    return out


def _output(x: np.ndarray, y: np.ndarray, work, rel_sharpness: float, cfg: GuardConfig) -> tuple[np.ndarray, dict]:
    """One frame's guarded output and the evidence behind it (``work``: the input's WorkingFrame above the working
    size, else None)."""
    if work is None:
        w, info = guard_weights(x, y, rel_sharpness, cfg)
        out = (x if not w.any()
               else np.clip(x + w[..., None] * (y.astype(np.float32) - x) + 0.5, 0, 255).astype(np.uint8))
    elif y is x or cv2.norm(x, y, cv2.NORM_INF) == 0:  # nothing to keep or drop (transfer left it unchanged)
        w, info, out = np.zeros((1, 1), np.float32), {"rel_sharpness": rel_sharpness, "unchanged": True}, x
    else:
        w, info = guard_weights(work.small, downscale(y, work.scale), rel_sharpness, cfg, work.scale)
        out = _blend_box(x, y, w)
    info["kept"] = float(w.mean())
    return out, info


class DoNoHarmGuard:
    """A FrameStream around a method's stream: each frame that comes out is the method's output for it, kept only
    as far as the evidence supports (``radius`` frames of look-ahead on top of the method's own)."""

    def __init__(self, method: FrameStream, config: GuardConfig | None = None, workers: int | None = None):
        self.method = method
        self.cfg = config or GuardConfig()
        # above the working size, outputs are computed in worker threads, up to this many at once (as the transfer)
        self.max_workers = max(1, min(MAX_WORKERS, cv2.getNumThreads() if workers is None else int(workers)))
        self.workers = 1  # set by the first frame's size
        self.running = InOrder()  # outputs started and not yet returned, in frame order
        self.inputs: deque = deque()  # input frames whose method output has not come out yet
        self.frames: deque = deque()  # (index, x, y, grey x, WorkingFrame of x above the working size)
        self.pairs: dict[tuple[int, int], tuple[float, float]] = {}
        self.n_in = self.n_out = 0
        self.log: list[dict] = []
        self.ahead: deque = deque(maxlen=max(self.cfg.offsets, default=1))  # (input index, future WorkingFrame)
        self.n_seen = 0  # inputs pushed

    def _measure_new(self) -> None:
        j, _, _, gj, wj = self.frames[-1]
        for i, _, _, gi, wi in list(self.frames)[:-1]:
            if j - i in self.cfg.offsets:
                m = (PairMeasure(gi, gj, self.cfg.flow_scale) if wj is None
                     else SHARED.measure(wi, wj, self.cfg.flow_scale))
                if m.overlap >= 0.05:
                    self.pairs[(i, j)] = (m.log_ratio, m.overlap)

    def _emit(self) -> None:
        """Start frame ``n_out``'s output: decided here, computed in a worker thread on the working-size path (the
        output is the same, one push later)."""
        t = self.n_out
        idx = [f[0] for f in self.frames if abs(f[0] - t) <= self.cfg.radius]
        lo = idx[0]
        pairs = [(i - lo, j - lo, d, w) for (i, j), (d, w) in self.pairs.items() if i in idx and j in idx]
        a = solve_log_sharpness(len(idx), pairs)
        _, x, y, _, work = next(f for f in self.frames if f[0] == t)
        self.running.start(self.workers == 1, _output, x, y, work, float(a[t - lo]), self.cfg)
        self.n_out += 1
        while self.frames and self.frames[0][0] < self.n_out - self.cfg.radius:  # no longer needed
            old = self.frames.popleft()[0]
            self.pairs = {k: v for k, v in self.pairs.items() if k[0] != old}

    def _add(self, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
        if x.shape != y.shape:
            raise ValueError(f"guard: output frame {self.n_in} has shape {y.shape}, input {x.shape}")
        s = working_scale(x.shape, self.cfg.work_size)
        if s == 1:
            self.frames.append((self.n_in, x, y, gray_float(x), None))
        else:
            work = SHARED.frame(x, s)
            self.frames.append((self.n_in, x, y, work.gray, work))
        if self.n_in == 0:
            self.workers = 1 if s == 1 else self.max_workers
        self._measure_new()
        self.n_in += 1
        while self.n_out <= self.n_in - 1 - self.cfg.radius:
            self._emit()
        return self.running.ready(self.workers - 1, self.log)

    def _pair(self, outputs) -> list[np.ndarray]:
        return [o for y in outputs for o in self._add(self.inputs.popleft(), y)]

    def _ahead(self, frames: list) -> None:
        """Above the working size: each input's working copy and its pair measures, computed in the background
        while the method works (they are needed only once its output for the frame comes back). Not with one thread
        (``set_threads(1)``): then everything runs in the calling thread."""
        if self.max_workers == 1:
            return
        for x in frames:
            k, s = self.n_seen, working_scale(x.shape, self.cfg.work_size)
            self.n_seen += 1
            if s == 1:
                continue
            if len(self.ahead) == self.ahead.maxlen:
                self.ahead[0][1].exception()  # waits: at most that many frames queued for the background thread
            previous = [f for i, f in self.ahead if k - i in self.cfg.offsets]
            self.ahead.append((k, SHARED.ahead(x, s, previous, self.cfg.flow_scale)))

    def push(self, frames) -> list[np.ndarray]:
        frames = frame_list(frames)
        self.inputs.extend(frames)
        self._ahead(frames)
        return self._pair(self.method.push(frames))

    def flush(self) -> list[np.ndarray]:
        ready = self._pair(self.method.flush())
        while self.n_out < self.n_in:
            self._emit()
        return ready + self.running.ready(0, self.log)


class _Given:
    """A FrameStream that answers with outputs computed beforehand (to guard a whole clip at once)."""

    def __init__(self, outputs):
        self.outputs = deque(outputs)

    def push(self, frames) -> list:
        return [self.outputs.popleft() for _ in frame_list(frames)]

    def flush(self) -> list:
        return []


def guard(inputs: np.ndarray, outputs: np.ndarray, config: GuardConfig | None = None) -> np.ndarray:
    """Frames in, frames out: keep only the changes of ``outputs`` that the evidence supports."""
    inputs, outputs = np.asarray(inputs), np.asarray(outputs)
    if inputs.shape != outputs.shape or inputs.dtype != np.uint8 or outputs.dtype != np.uint8 or inputs.ndim != 4:
        raise ValueError(f"guard needs uint8 (F, H, W, 3) inputs and outputs of one shape, got {inputs.shape} "
                         f"{inputs.dtype} and {outputs.shape} {outputs.dtype}")
    return run(DoNoHarmGuard(_Given(outputs), config), inputs)
