"""The one streaming protocol every method and the guard follow: frames go in, in order, a batch at a time, and
come out in order, possibly later (look-ahead). Memory stays bounded by what a stream holds back.

    outputs = stream.push(frames)   # a list of frames (or an (F, H, W, 3) array) -> the frames now ready
    outputs += stream.flush()       # no more input: the rest

:func:`vdiffdeblur.methods.runner.stream_file` runs any such stream over a video file.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class FrameStream(Protocol):
    def push(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Take the next frames (uint8 (H, W, 3) each); return the output frames that are now ready, in order."""

    def flush(self) -> list[np.ndarray]:
        """No more input: return the remaining output frames."""


def frame_list(frames) -> list:
    """``frames`` as a list of single frames: a list/tuple of frames or one stacked array/tensor (F, ...)."""
    if isinstance(frames, (list, tuple)):
        return list(frames)
    ndim = getattr(frames, "ndim", None)
    if ndim == 4:
        return list(frames)
    raise ValueError("push takes a list of frames or a stacked (F, H, W, 3) array, got "
                     f"{type(frames).__name__} with shape {getattr(frames, 'shape', None)} (one frame: wrap it in "
                     "a list)")


class OneByOne:
    """Base of streams that handle one frame at a time: subclasses implement ``_push_one(frame) -> list``."""

    def push(self, frames) -> list:
        return [o for f in frame_list(frames) for o in self._push_one(f)]

    def _push_one(self, frame) -> list:  # pragma: no cover - abstract
        raise NotImplementedError


def run(stream: FrameStream, frames) -> np.ndarray:
    """A whole clip (F, H, W, 3) through a stream -> the stacked output."""
    return np.stack(stream.push(frames) + stream.flush())


class Chain:
    """Feed one stream's output into the next."""

    def __init__(self, *streams: FrameStream):
        self.streams = streams

    def push(self, frames) -> list:
        out = frame_list(frames)
        for s in self.streams:
            out = s.push(out) if out else []
        return out

    def flush(self) -> list:
        out: list = []
        for s in self.streams:
            out = (s.push(out) if out else []) + s.flush()
        return out
