"""``vdiffdeblur deblur --method fit``: scan, fit, then deblur the frames as they stream through."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..stream import frame_list
from .config import FitConfig
from .deblurrer import FitToTestDeblurrer
from .scan import scan_video

#: pixels deblurred in one batch at most (four 1080p frames): larger frames go in smaller batches, so memory
#: stays flat from 1080p to 4K
BATCH_PIXELS = 4 * 1920 * 1088


class FitStream:
    """The per-frame stream of a fitted deblurrer: frames are deblurred in small batches as they arrive (up to
    ``batch_size`` frames and :data:`BATCH_PIXELS` pixels)."""

    def __init__(self, deblurrer: FitToTestDeblurrer, batch_size: int = 4):
        self.deblurrer, self.batch_size = deblurrer, batch_size
        self.buf: list[np.ndarray] = []
        self.next_index = 0

    def _run(self) -> list[np.ndarray]:
        if not self.buf:
            return []
        idx = list(range(self.next_index, self.next_index + len(self.buf)))
        out = self.deblurrer.deblur_frames(np.stack(self.buf), idx)
        self.next_index += len(self.buf)
        self.buf = []
        return list(out)

    def push(self, frames) -> list[np.ndarray]:
        out = []
        for frame in frame_list(frames):
            self.buf.append(frame)
            if len(self.buf) >= max(1, min(self.batch_size, BATCH_PIXELS // (frame.shape[0] * frame.shape[1]))):
                out += self._run()
        return out

    def flush(self) -> list[np.ndarray]:
        return self._run()


def make_stream(source, info, run, opts) -> FitStream:
    """``--method fit``: scan the video once (keeping only its sharp frames), fit, then stream; ``opts`` is a
    :class:`~vdiffdeblur.methods.options.FitOptions`."""
    cfg = FitConfig(seed=run.seed)
    if opts.steps is not None:
        cfg = replace(cfg, steps=opts.steps)
    if opts.learning_rate is not None:
        cfg = replace(cfg, learning_rate=opts.learning_rate)
    if run.threads is not None:  # the user's --threads wins over the load-based "auto"
        cfg = replace(cfg, num_threads=run.threads)
    if opts.tile_size is not None:
        cfg = replace(cfg, tile_size=opts.tile_size)
    deblurrer = FitToTestDeblurrer(init=opts.init or "maml", config=cfg, vgg_weights=opts.vgg_weights,
                                   device=run.device, progress=not run.quiet)
    deblurrer.fit(scan_video(source, cfg.every, progress=not run.quiet))
    return FitStream(deblurrer)
