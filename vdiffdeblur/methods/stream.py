"""The streaming protocol every method follows in the CLI: frames go in one at a time, in order, and come
out in order, possibly later (look-ahead). Memory stays bounded by what a stream holds back."""

from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator, Protocol

import numpy as np


class FrameStream(Protocol):
    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        """Take the next uint8 (H, W, 3) frame; return the output frames that are now ready, in order."""

    def flush(self) -> list[np.ndarray]:
        """No more input: return the remaining output frames."""


def run_stream(stream: FrameStream, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for f in frames:
        yield from stream.push(f)
    yield from stream.flush()


class Chain:
    """Feed one stream's output into the next."""

    def __init__(self, *streams: FrameStream):
        self.streams = streams

    def push(self, frame):
        out = [frame]
        for s in self.streams:
            out = [o for f in out for o in s.push(f)]
        return out

    def flush(self):
        out: list = []
        for s in self.streams:
            out = [o for f in out for o in s.push(f)] + s.flush()
        return out


class PairedStream:
    """A stream that needs each input frame next to its processed frame (e.g. the guard): wraps the method's
    stream and hands ``(input, output)`` pairs to ``pair_stream``."""

    def __init__(self, method: FrameStream, pair_stream):
        self.method, self.pair_stream = method, pair_stream
        self.inputs: deque = deque()

    def _pairs(self, outs):
        res = []
        for o in outs:
            res += self.pair_stream.push(self.inputs.popleft(), o)
        return res

    def push(self, frame):
        self.inputs.append(frame)
        return self._pairs(self.method.push(frame))

    def flush(self):
        return self._pairs(self.method.flush()) + self.pair_stream.flush()


class Identity:
    def push(self, frame):
        return [frame]

    def flush(self):
        return []
