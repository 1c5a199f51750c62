"""``deblur_file``: decode -> method -> (sharp-frame transfer) -> (do-no-harm guard) -> encode, streaming.

Each method provides a :class:`~vdiffdeblur.methods.stream.FrameStream` factory registered in ``METHODS``;
a method that needs a first pass over the whole video (fitting) does it from the source path itself.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from tqdm.auto import tqdm

from ..video import VideoInfo, VideoWriter, iter_frames, probe
from .stream import Chain, PairedStream

logger = logging.getLogger(__name__)

# method name -> "module:factory"; factory(source, info, options) -> FrameStream
METHODS = {
    "transfer": "vdiffdeblur.methods.transfer:make_stream",
    "dtb": "vdiffdeblur.methods.online:make_stream",
    "fit": "vdiffdeblur.methods.fit_to_test:make_stream",
    "diffusion": "vdiffdeblur.methods.diffusion:make_stream",
}


def load_factory(method: str):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    mod_name, fn = METHODS[method].split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == mod_name or mod_name.startswith(e.name + ".")):
            raise NotImplementedError(f"--method {method} is not available yet") from None
        raise
    return getattr(mod, fn)


def build_stream(source, info: VideoInfo, method: str, options: dict):
    """The full per-frame chain for the CLI: method, then optional transfer, then the guard (on by default)."""
    stream = load_factory(method)(source, info, options)
    if options.get("transfer") and method != "transfer":
        stream = Chain(stream, load_factory("transfer")(source, info, options))
    if options.get("guard", True):
        from .guard import GuardStream

        stream = PairedStream(stream, GuardStream.from_options(info, options))
    return stream


def deblur_file(source, output, method: str = "transfer", options: dict | None = None) -> VideoInfo:
    """Deblur a video file / frame folder into ``output`` (file or PNG folder), streaming frame by frame."""
    options = dict(options or {})
    info = probe(source)
    stream = build_stream(source, info, method, options)
    out = Path(output)
    n = 0
    with VideoWriter(out, fps=info.fps, lossless=bool(options.get("lossless")), crf=int(options.get("crf", 18))) as w:
        bar = tqdm(total=info.num_frames, desc=f"deblur ({method})", unit="frame", disable=options.get("quiet"))
        for frame in iter_frames(source):
            for o in stream.push(frame):
                w.write(o)
                n += 1
                bar.update(1)
        for o in stream.flush():
            w.write(o)
            n += 1
            bar.update(1)
        bar.close()
        if n != info.num_frames:
            raise RuntimeError(f"{method} produced {n} frames for {info.num_frames} input frames")
    return info
