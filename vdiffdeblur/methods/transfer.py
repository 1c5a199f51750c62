"""Sharp-frame transfer: repair a blurry frame with the texture of sharper neighbours ("lucky frames",
Matsushita et al. 2006, Cho et al. 2012, cited by both seed papers).

For each frame, the neighbours within +-radius frames that look sharper are aligned onto it with DIS
optical flow, estimated on low-passed copies so the difference in blur does not derail it. Each aligned
neighbour gets a per-pixel weight: how much sharper it measurably is on the same content (see
:class:`vdiffdeblur.sharpness.PairMeasure`), times the forward-backward consistency of the flow, times how
well the neighbour, blurred by the frame's own motion kernel (fitted against it), reproduces the frame
there. Blending happens in linear light. A frame with no sharper neighbour comes out
unchanged, bit for bit. Streams with ``radius`` frames of look-ahead; memory holds 2 * radius + 1 frames.

Frames whose long side exceeds ``work_size`` are measured, aligned and weighted on a copy downscaled to it
(:mod:`vdiffdeblur.workres`); the full-size neighbours are then warped with the upscaled flows and blended with the
upscaled weights, only inside the box where a weight is non-zero.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from ..blur import (
    DEFAULT_FIT_LENGTHS,
    blur_image,
    fit_linear_kernel,
    linear_to_srgb,
    srgb_to_linear,
)
from ..flow import consistency, inside_mask, robust_flow, warp
from ..pair_cache import SHARED
from ..sharpness import PairMeasure, gradient_energy, gray_float
from ..workres import (
    MAX_WORKERS,
    InOrder,
    bytes_to_linear,
    change_box,
    upscale_flow,
    upscale_map,
    warp_box,
    working_scale,
)
from .stream import OneByOne, run


@dataclass
class TransferConfig:
    radius: int = 5  # neighbours considered on each side
    max_sources: int = 3  # aligned per frame, the sharpest-looking first
    min_gain: float = 0.2  # log gradient-energy ratio below which a neighbour is not "sharper"
    full_gain: float = 0.7  # ratio at which a neighbour is fully trusted
    agree_tol: float = 0.03  # tolerated mismatch (linear light) of the re-blurred neighbour and the frame
    agree_sigma: float = 2.0
    flow_scale: float = 0.5
    fit_scale: float = 0.5  # scale at which the frame's blur kernel is fitted
    smooth_sigma: float = 1.5  # softens the blend map so no seams show
    # long side (px) above which flows, measures, kernel fits and weights are computed on a copy downscaled to it;
    # 0: always at full size
    work_size: int = 480

    def __post_init__(self):
        if self.radius < 1 or self.max_sources < 1:
            raise ValueError(f"radius and max_sources must be >= 1, got {self.radius}, {self.max_sources}")
        if not 0 <= self.min_gain < self.full_gain:
            raise ValueError(f"need 0 <= min_gain < full_gain, got {self.min_gain}, {self.full_gain}")


class _Frame:
    """A frame with what every pairing needs, computed once: its working copy (``small``; the frame itself at or
    below the working size), that copy's grey and the frame's sharpness score (``work``: the
    :class:`~vdiffdeblur.pair_cache.WorkingFrame` above the working size); the copy in [0, 1] (``unit``) and in
    linear light (``lin``) on first use (a frame is the target once and a neighbour of up to 2 * radius others)."""

    __slots__ = ("rgb", "scale", "small", "gray", "score", "work", "_unit", "_lin")

    def __init__(self, rgb: np.ndarray, work_size: int = 0):
        self.rgb = rgb
        self.scale = working_scale(rgb.shape, work_size)
        if self.scale == 1:
            self.small, self.gray, self.work = rgb, gray_float(rgb), None
            self.score = float(gradient_energy(self.gray).mean())
        else:
            self.work = SHARED.frame(rgb, self.scale)
            self.small, self.gray, self.score = self.work.small, self.work.gray, self.work.score
        self._unit = self._lin = None

    @property
    def unit(self) -> np.ndarray:
        if self._unit is None:
            self._unit = self.small.astype(np.float32) / 255.0
        return self._unit

    @property
    def lin(self) -> np.ndarray:
        if self._lin is None:
            self._lin = bytes_to_linear(self.small)
        return self._lin


def _gray_lin(rgb01: np.ndarray) -> np.ndarray:
    return srgb_to_linear(rgb01).mean(-1)


def _plan(target: _Frame, neighbours: list[_Frame], cfg: TransferConfig):
    """At the working size: the target in linear light and, per neighbour used, (neighbour, flow onto the target,
    the neighbour warped in linear light, blend weight map); None where no neighbour is sharper."""
    s = target.scale
    # pairs are aligned at flow_scale of the working copy; kernel fits keep their full-size scale and lengths
    # (a coarser fit misjudges short blurs)
    fit_scale = cfg.fit_scale if s == 1 else min(1.0, cfg.fit_scale / s)
    lengths = DEFAULT_FIT_LENGTHS if s == 1 else tuple(length * s for length in DEFAULT_FIT_LENGTHS)
    # the sharpest-looking neighbours first; only those that look sharper at all are aligned
    cands = sorted((n for n in neighbours if n.score > target.score), key=lambda n: -n.score)[: cfg.max_sources]
    found = []
    for n in cands:
        m = (PairMeasure(target.gray, n.gray, cfg.flow_scale) if s == 1
             else SHARED.measure(target.work, n.work, cfg.flow_scale))
        gain = (m.log_ratio - cfg.min_gain) / (cfg.full_gain - cfg.min_gain)
        if gain > 0:
            found.append((min(gain, 1.0), n, m))
    if not found:
        return None
    t_lin = target.lin
    # 1. The target's own blur kernel, fitted against the best neighbour aligned on low-passed copies.
    g0, n0, m0 = max(found, key=lambda f: f[0])
    rough = warp(n0.unit, m0.flow_ts, cv2.INTER_LINEAR)
    _, _, k = fit_linear_kernel(_gray_lin(rough), t_lin.mean(-1), lengths, scale=fit_scale, fast=s != 1)
    sources = []
    for gain, n, _ in found:
        # 2. Re-align each neighbour after blurring it like the target: same blur, so the flow is not
        #    pulled by the blur's direction.
        src_blur = linear_to_srgb(blur_image(n.lin, k))
        sb = cv2.cvtColor(src_blur, cv2.COLOR_RGB2GRAY)
        fwd = robust_flow(sb, target.gray, sigma=0.7, scale=1.0)
        bwd = robust_flow(target.gray, sb, sigma=0.7, scale=1.0)
        conf = consistency(fwd, bwd) * inside_mask(fwd, 1)
        lin = srgb_to_linear(np.clip(warp(n.unit, fwd, cv2.INTER_CUBIC), 0, 1))
        # 3. Trust it where, blurred by the target's kernel, it reproduces the target.
        res = cv2.GaussianBlur(np.abs(blur_image(lin, k) - t_lin).mean(-1), (0, 0), cfg.agree_sigma)
        w = gain * conf * np.exp(-((res / cfg.agree_tol) ** 2))
        if cfg.smooth_sigma > 0:
            w = cv2.GaussianBlur(w, (0, 0), cfg.smooth_sigma)
        sources.append((n, fwd, lin, w.astype(np.float32)))
    return t_lin, sources


def _blend_full(target: _Frame, sources, alpha: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """The blend at full size: neighbours warped by the upscaled flows, mixed by the upscaled weights, inside the
    box where any weight is non-zero; the rest of the frame is the target's own pixels. The weights were decided in
    linear light; the full-size mix is of sRGB values, so no full-size frame is converted to linear light and back."""
    shape = target.rgb.shape
    box = change_box(alpha, shape)
    if box is None:
        return target.rgb
    mix, mix_w = None, None
    for (n, fwd, _, _), sw in zip(sources, soft):
        warped = warp_box(n.rgb, upscale_flow(fwd, shape), box, flow_is_scratch=True)
        w = upscale_map(sw, shape)[box] + np.float32(1e-6)  # where every soft weight is 0 (alpha is 0 there too)
        if mix is None:
            mix, mix_w = warped, w
        else:  # running soft-weighted mean of the neighbours
            mix = cv2.blendLinear(mix, warped, mix_w, w)
            mix_w = mix_w + w
    a = upscale_map(alpha, shape)[box]
    out = target.rgb.copy()
    out[box] = cv2.blendLinear(mix, target.rgb[box], a, 1.0 - a)
    return out


def transfer_frame(target: _Frame, neighbours: list[_Frame], cfg: TransferConfig) -> tuple[np.ndarray, float]:
    """The repaired target frame (uint8) and the mean blend weight used (0 = unchanged)."""
    plan = _plan(target, neighbours, cfg)
    if plan is None:
        return target.rgb, 0.0
    t_lin, sources = plan
    W = np.stack([w for *_, w in sources])
    alpha = W.max(0)
    soft = W ** 4
    soft /= soft.sum(0, keepdims=True) + 1e-12
    if target.scale != 1:
        return _blend_full(target, sources, alpha, soft), float(alpha.mean())
    mix = (soft[..., None] * np.stack([lin for _, _, lin, _ in sources])).sum(0)
    out = linear_to_srgb(t_lin + alpha[..., None] * (mix - t_lin))
    return (np.clip(out, 0, 1) * 255.0 + 0.5).astype(np.uint8), float(alpha.mean())


class SharpTransfer(OneByOne):
    """Streaming sharp-frame transfer (a FrameStream): output frame t is ready once frame t + radius is in.

    Frames above the working size are repaired ``workers`` at a time in worker threads (each repair depends only on
    the input frames, so the output is the same); each then comes out ``workers - 1`` pushes later. None: as many as
    OpenCV's thread count (:func:`vdiffdeblur.threads.set_threads`), at most ``MAX_WORKERS``. Smaller frames take
    milliseconds each and are repaired one by one, as they come.
    """

    def __init__(self, config: TransferConfig | None = None, workers: int | None = None):
        self.cfg = config or TransferConfig()
        self.max_workers = max(1, min(MAX_WORKERS, cv2.getNumThreads() if workers is None else int(workers)))
        self.workers = 1  # set by the first frame's size
        self.buf: deque[_Frame] = deque(maxlen=2 * self.cfg.radius + 1)
        self.n_in = 0  # frames received
        self.n_out = 0  # frames whose repair has started
        self.running = InOrder()  # repairs started and not yet emitted, in frame order
        self.weights: list[float] = []  # mean blend weight per emitted frame, for reporting

    def _start(self, t: int) -> None:
        first = self.n_in - len(self.buf)  # absolute index of buf[0]
        target = self.buf[t - first]
        neighbours = [f for i, f in enumerate(self.buf) if i + first != t and abs(i + first - t) <= self.cfg.radius]
        self.running.start(self.workers == 1, transfer_frame, target, neighbours, self.cfg)
        self.n_out += 1

    def _push_one(self, frame: np.ndarray) -> list[np.ndarray]:
        if self.buf and frame.shape != self.buf[-1].rgb.shape:
            raise ValueError(f"frame {self.n_in} has shape {frame.shape}, earlier frames {self.buf[-1].rgb.shape}")
        self.buf.append(_Frame(np.ascontiguousarray(frame), self.cfg.work_size))
        if self.n_in == 0:
            self.workers = 1 if self.buf[-1].scale == 1 else self.max_workers
        self.n_in += 1
        while self.n_out <= self.n_in - 1 - self.cfg.radius:
            self._start(self.n_out)
        return self.running.ready(self.workers - 1, self.weights)

    def flush(self) -> list[np.ndarray]:
        while self.n_out < self.n_in:
            self._start(self.n_out)
        return self.running.ready(0, self.weights)


def sharp_frame_transfer(frames: np.ndarray, config: TransferConfig | None = None) -> np.ndarray:
    """Frames in, frames out: uint8 (F, H, W, 3) -> uint8 (F, H, W, 3). Usable after any method."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (F, H, W, 3), got {frames.dtype} {frames.shape}")
    return run(SharpTransfer(config), frames)


def make_stream(source, info, run, opts) -> SharpTransfer:
    """``--method transfer`` / ``--transfer``: ``opts`` is a :class:`~vdiffdeblur.methods.options.TransferOptions`."""
    return SharpTransfer(TransferConfig(radius=opts.transfer_radius))
