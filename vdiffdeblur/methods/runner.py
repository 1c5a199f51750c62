"""``deblur_file``: decode -> method -> (sharp-frame transfer) -> (do-no-harm guard) -> encode, streaming.

Each method provides a :class:`~vdiffdeblur.methods.stream.FrameStream` factory registered in ``METHODS``;
a method that needs a first pass over the whole video (fitting) does it from the source path itself.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from collections import deque
from pathlib import Path

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..io_threads import BackgroundWriter, Prefetch
from ..outputs import check_output
from ..video import VideoInfo, VideoWriter, iter_timed_frames, probe
from .options import RunOptions, TransferOptions, options_of, split_options
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
                lossless: bool = False, crf: int = 18, quiet: bool = False, overlap: bool = True,
                overall=None, stats: dict | None = None, preset: str = RunOptions.preset) -> VideoInfo:
    """Decode ``source``, push every frame through ``stream`` (a FrameStream), encode what it emits into ``output``.

    The output keeps the source's frame timestamps, rotation, colour description, audio and subtitles; its
    frame count must equal the input's. On any error (or SIGTERM/SIGHUP in the CLI) nothing is left under
    ``output``. ``overlap``: decode ahead and encode behind in their own threads (:mod:`vdiffdeblur.io_threads`;
    the same output as without). ``overall``: a tqdm bar over several videos, advanced here too. ``stats``: a dict
    that receives ``wall_s``, ``decode_s`` and ``encode_s`` (seconds spent decoding and encoding) and ``decode_cpu_s``,
    ``encode_cpu_s`` (their CPU time). ``preset``: the x264 preset of an H.264 output.
    """
    info = info or probe(source)
    pending: deque = deque()  # the pts of frames pushed in, handed to frames coming out in the same order
    n = 0
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(logging_redirect_tqdm())
        w = stack.enter_context(VideoWriter(Path(output), fps=info.fps, lossless=lossless, crf=crf, like=info,
                                                preset=preset))
        bar = stack.enter_context(tqdm(total=info.num_frames, desc=desc, unit="frame", disable=quiet,
                                       leave=overall is None))
        frames = iter_timed_frames(source)
        if overlap:  # entered after the writer, so left before it: the writer thread ends before an abort
            frames = stack.enter_context(Prefetch(frames))
            sink = stack.enter_context(BackgroundWriter(lambda f, pts: w.write(f, pts=pts), done=w.flush))
            put = sink.put
        else:
            sink, put = None, lambda f, pts: w.write(f, pts=pts)

        def emit(outputs):
            nonlocal n
            for o in outputs:
                put(o, [pending.popleft()])
                n += 1
                bar.update(1)
                if overall is not None:
                    overall.update(1)

        for frame, pts in frames:
            pending.append(pts)
            emit(stream.push([frame]))
        emit(stream.flush())
        if sink is not None:
            sink.finish()
        if n != info.num_frames:
            raise RuntimeError(f"{desc} produced {n} frames for {info.num_frames} input frames")
        if stats is not None and sink is not None:
            stats.update(decode_s=frames.busy_s, encode_s=sink.busy_s, decode_cpu_s=frames.cpu_s,
                         encode_cpu_s=sink.cpu_s)
    if stats is not None:
        stats["wall_s"] = time.perf_counter() - t0
    return info


def deblur_file(source, output, method: str = "transfer", options: dict | None = None,
                overwrite: bool = False, **stream_kwargs) -> VideoInfo:
    """Deblur a video file / frame folder into ``output`` (file or PNG folder), streaming frame by frame.

    An existing ``output`` is refused unless ``overwrite`` (see :func:`vdiffdeblur.outputs.check_output`).
    ``stream_kwargs``: ``overlap``, ``overall``, ``stats`` or ``desc`` of :func:`stream_file`.
    """
    run, _ = split_options(options, method)
    check_output(output, inputs=[source], overwrite=overwrite)
    info = probe(source)
    stream = build_stream(source, info, method, options)
    stream_kwargs.setdefault("desc", f"deblur ({method})")
    return stream_file(source, output, stream, info, lossless=run.lossless, crf=run.crf, preset=run.preset,
                       quiet=run.quiet, **stream_kwargs)
