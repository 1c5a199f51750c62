"""``deblur_file``: decode -> method -> (sharp-frame transfer) -> (do-no-harm guard) -> encode, streaming.

Each method provides a :class:`~vdiffdeblur.methods.stream.FrameStream` factory registered in ``METHODS``;
a method that needs a first pass over the whole video (fitting) does it from the source path itself.
"""

from __future__ import annotations

import importlib
import logging
from collections import deque
from pathlib import Path

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..outputs import check_output
from ..video import VideoInfo, VideoWriter, iter_timed_frames, probe
from .options import TransferOptions, options_of, split_options
from .stream import Chain

logger = logging.getLogger(__name__)

# method name -> "module:factory"; factory(source, info, RunOptions, the method's options) -> FrameStream
METHODS = {
    "transfer": "vdiffdeblur.methods.transfer:make_stream",
    "dtb": "vdiffdeblur.methods.dtb:make_stream",
    "fit": "vdiffdeblur.methods.fit.stream:make_stream",
    "diffusion": "vdiffdeblur.methods.diffusion:make_stream",
}


def load_factory(method: str):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    mod_name, fn = METHODS[method].split(":")
    return getattr(importlib.import_module(mod_name), fn)


def build_stream(source, info: VideoInfo, method: str, options: dict | None = None):
    """The full per-frame chain: method, then optional transfer, then the guard (on by default). ``options``: a
    plain dict of :mod:`~vdiffdeblur.methods.options` fields (a key no method knows is a ValueError)."""
    run, opts = split_options(options, method)
    stream = load_factory(method)(source, info, run, opts)
    if run.transfer and method != "transfer":
        stream = Chain(stream, load_factory("transfer")(source, info, run, options_of(TransferOptions, options)))
    if run.guard:
        from .guard import DoNoHarmGuard

        stream = DoNoHarmGuard(stream)
    return stream


def stream_file(source, output, stream, info: VideoInfo | None = None, desc: str = "deblur",
                lossless: bool = False, crf: int = 18, quiet: bool = False) -> VideoInfo:
    """Decode ``source``, push every frame through ``stream`` (a FrameStream), encode what it emits into ``output``.

    The output keeps the source's frame timestamps, rotation, colour description, audio and subtitles; its
    frame count must equal the input's. On any error (or SIGTERM/SIGHUP in the CLI) nothing is left under
    ``output``.
    """
    info = info or probe(source)
    pending: deque = deque()  # the pts of frames pushed in, handed to frames coming out in the same order
    n = 0
    with logging_redirect_tqdm(), VideoWriter(Path(output), fps=info.fps, lossless=lossless, crf=crf, like=info) as w, \
            tqdm(total=info.num_frames, desc=desc, unit="frame", disable=quiet) as bar:
        def emit(frames):
            nonlocal n
            for o in frames:
                w.write(o, pts=[pending.popleft()])
                n += 1
                bar.update(1)

        for frame, pts in iter_timed_frames(source):
            pending.append(pts)
            emit(stream.push([frame]))
        emit(stream.flush())
        if n != info.num_frames:
            raise RuntimeError(f"{desc} produced {n} frames for {info.num_frames} input frames")
    return info


def deblur_file(source, output, method: str = "transfer", options: dict | None = None,
                overwrite: bool = False) -> VideoInfo:
    """Deblur a video file / frame folder into ``output`` (file or PNG folder), streaming frame by frame.

    An existing ``output`` is refused unless ``overwrite`` (see :func:`vdiffdeblur.outputs.check_output`).
    """
    run, _ = split_options(options, method)
    check_output(output, inputs=[source], overwrite=overwrite)
    info = probe(source)
    stream = build_stream(source, info, method, options)
    return stream_file(source, output, stream, info, desc=f"deblur ({method})", lossless=run.lossless, crf=run.crf,
                       quiet=run.quiet)
