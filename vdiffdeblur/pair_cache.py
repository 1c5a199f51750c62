"""Measures between large frames remembered by content, so that sharp-frame transfer and the guard around it
(which look at the same input frames) compute each frame's features and each pair's flows once, whichever of them
asks first. Used on the working-size path only (:mod:`vdiffdeblur.workres`)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

from .sharpness import PairMeasure, gray_float, pooled_gradient_energy
from .workres import downscale


class WorkingFrame:
    """A frame's working copy (``small``), its grey, content key, and the full-size gradient energy pooled on the
    working grid (``energy``; ``score`` is its mean: the frame's mean full-size gradient energy)."""

    __slots__ = ("scale", "small", "gray", "key", "energy", "score")


class Oriented:
    """What a :class:`~vdiffdeblur.sharpness.PairMeasure` of (t, s) holds, for either order of the pair."""

    __slots__ = ("log_ratio", "overlap", "flow_ts")

    def __init__(self, log_ratio: float, overlap: float, flow_ts: np.ndarray):
        self.log_ratio, self.overlap, self.flow_ts = log_ratio, overlap, flow_ts


class PairCache:
    """The last ``max_frames`` frames' pooled energies and ``max_pairs`` pair measures (both flows each), keyed by
    the frames' content and the flow scale."""

    def __init__(self, max_pairs: int = 32, max_frames: int = 24):
        self.max_pairs, self.max_frames = max_pairs, max_frames
        self._pairs: OrderedDict = OrderedDict()
        self._energy: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def _get(self, table: OrderedDict, key):
        with self._lock:
            v = table.get(key)
            if v is not None:
                table.move_to_end(key)
            return v

    def _put(self, table: OrderedDict, key, value, limit: int) -> None:
        with self._lock:
            table[key] = value
            while len(table) > limit:
                table.popitem(last=False)

    def frame(self, rgb: np.ndarray, scale: float) -> WorkingFrame:
        """The :class:`WorkingFrame` of a uint8 RGB frame at ``scale`` (< 1)."""
        f = WorkingFrame()
        f.scale, f.small = scale, downscale(rgb, scale)
        f.gray = gray_float(f.small)
        h = hashlib.blake2b(digest_size=16)
        h.update(np.asarray(f.gray.shape, np.int64).tobytes())
        h.update(f.gray.tobytes())
        f.key = h.digest()
        f.energy = self._get(self._energy, f.key)
        if f.energy is None:
            f.energy = pooled_gradient_energy(rgb, f.gray.shape[::-1])
            self._put(self._energy, f.key, f.energy, self.max_frames)
        f.score = float(f.energy.mean())
        return f

    def measure(self, t: WorkingFrame, s: WorkingFrame, flow_scale: float) -> Oriented:
        """PairMeasure of (t, s) on the working copies with the pooled energies, from memory when this pair (in
        either order) was measured."""
        swap = s.key < t.key
        a, b = (s, t) if swap else (t, s)
        key = (a.key, b.key, flow_scale)
        m = self._get(self._pairs, key)
        if m is None:
            self.misses += 1
            pm = PairMeasure(a.gray, b.gray, flow_scale, a.energy, b.energy)
            m = (pm.log_ratio, pm.overlap, pm.flow_ts, pm.flow_st)
            self._put(self._pairs, key, m, self.max_pairs)
        else:
            self.hits += 1
        log_ratio, overlap, flow_ts, flow_st = m
        # the measure is antisymmetric: (s, t) has the opposite log-ratio and the flows swapped
        return Oriented(-log_ratio, overlap, flow_st) if swap else Oriented(log_ratio, overlap, flow_ts)


#: one per process: every transfer and guard stream of the process shares it (keys are the frames' content)
SHARED = PairCache()
