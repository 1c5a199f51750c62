"""Measures between large frames remembered by content, so that sharp-frame transfer and the guard around it
(which look at the same input frames) compute each frame's features and each pair's flows once, whichever of them
asks first. Used on the working-size path only (:mod:`vdiffdeblur.workres`).

A measure can also be computed ahead in a background thread (:meth:`PairCache.ahead`): the guard asks for the pairs
it will need as soon as a frame comes in, and they are computed while the method works on earlier frames. A measure
asked for while it is being computed is waited for, not computed twice; the values are the same whichever thread
computes them.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

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
    """The last ``max_frames`` frames' working copies (by array identity) and pooled energies (by content), and
    ``max_pairs`` pair measures (both flows each), keyed by the frames' content and the flow scale."""

    def __init__(self, max_pairs: int = 32, max_frames: int = 24):
        self.max_pairs, self.max_frames = max_pairs, max_frames
        self._pairs: OrderedDict = OrderedDict()
        self._energy: OrderedDict = OrderedDict()
        self._frames: OrderedDict = OrderedDict()  # (id(rgb), scale) -> (weakref to rgb, WorkingFrame)
        self._running: dict = {}  # key -> Event, for what a thread is computing now
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.hits = self.misses = 0

    def _put(self, table: OrderedDict, key, value, limit: int) -> None:
        with self._lock:
            table[key] = value
            while len(table) > limit:
                table.popitem(last=False)

    def _once(self, table: OrderedDict, key, compute, limit: int):
        """``table[key]``, computed by ``compute()`` unless present; a key another thread is computing is waited
        for. Returns (value, computed here)."""
        while True:
            with self._lock:
                v = table.get(key)
                if v is not None:
                    table.move_to_end(key)
                    return v, False
                running = self._running.get(key)
                if running is None:
                    self._running[key] = done = threading.Event()
                    break
            running.wait()  # then look again (gone again only if evicted meanwhile: computed once more)
        try:
            v = compute()
            self._put(table, key, v, limit)
            return v, True
        finally:
            with self._lock:
                del self._running[key]
            done.set()

    def frame(self, rgb: np.ndarray, scale: float) -> WorkingFrame:
        """The :class:`WorkingFrame` of a uint8 RGB frame at ``scale`` (< 1); the same object for the same array."""
        key = ("frame", id(rgb), scale)
        while True:
            ref, f = self._once(self._frames, key, lambda: (weakref.ref(rgb), self._working(rgb, scale)),
                                self.max_frames)[0]
            if ref() is rgb:
                return f
            with self._lock:  # an array that is gone, whose id was reused
                if self._frames.get(key, (None,))[0] is ref:
                    del self._frames[key]

    def _working(self, rgb: np.ndarray, scale: float) -> WorkingFrame:
        f = WorkingFrame()
        f.scale, f.small = scale, downscale(rgb, scale)
        f.gray = gray_float(f.small)
        h = hashlib.blake2b(digest_size=16)
        h.update(np.asarray(f.gray.shape, np.int64).tobytes())
        h.update(f.gray.tobytes())
        f.key = h.digest()
        f.energy = self._once(self._energy, f.key, lambda: pooled_gradient_energy(rgb, f.gray.shape[::-1]),
                              self.max_frames)[0]
        f.score = float(f.energy.mean())
        return f

    def measure(self, t: WorkingFrame, s: WorkingFrame, flow_scale: float) -> Oriented:
        """PairMeasure of (t, s) on the working copies with the pooled energies, from memory when this pair (in
        either order) was measured."""
        swap = s.key < t.key
        a, b = (s, t) if swap else (t, s)

        def compute():
            pm = PairMeasure(a.gray, b.gray, flow_scale, a.energy, b.energy)
            return pm.log_ratio, pm.overlap, pm.flow_ts, pm.flow_st

        m, computed = self._once(self._pairs, (a.key, b.key, flow_scale), compute, self.max_pairs)
        with self._lock:
            if computed:
                self.misses += 1
            else:
                self.hits += 1
        log_ratio, overlap, flow_ts, flow_st = m
        # the measure is antisymmetric: (s, t) has the opposite log-ratio and the flows swapped
        return Oriented(-log_ratio, overlap, flow_st) if swap else Oriented(log_ratio, overlap, flow_ts)

    def ahead(self, rgb: np.ndarray, scale: float, previous: list, flow_scale: float) -> Future:
        """In the background thread: ``frame(rgb, scale)``, then its measure against each of ``previous`` (futures
        of earlier calls, or WorkingFrames). The future's result is the WorkingFrame."""
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="vdiffdeblur-pairs")

        def job() -> WorkingFrame:
            f = self.frame(rgb, scale)
            for p in previous:
                self.measure(p.result() if isinstance(p, Future) else p, f, flow_scale)
            return f

        return self._pool.submit(job)


#: one per process: every transfer and guard stream of the process shares it (keys are the frames' content)
SHARED = PairCache()
