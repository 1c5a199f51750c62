"""VideoWriter: frames to a video file (PyAV) or a PNG folder, written under a temporary name and renamed when done.

Given ``like=`` (the :class:`~vdiffdeblur.video.VideoInfo` of the source) and each frame's pts, the output keeps the
source's timestamps, rotation and colour description, and its audio and subtitle streams (see
:mod:`vdiffdeblur.passthrough`).
"""

from __future__ import annotations

import json
import logging
import re
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .colour import ColourInfo
from .outputs import (
    FOLDER_META,
    OutputError,
    atomic_replace,
    is_frame_folder,
    remove_leftovers,
    remove_path,
    temp_sibling,
)
from .video import DEFAULT_FPS, VIDEO_SUFFIXES, VideoInfo
from .yuv import rgb_to_yuv420p, rgb_to_yuv_matrix

logger = logging.getLogger(__name__)

_VP9_OPTIONS = {"b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
_X264_THREADS = {"threads": "1"}  # in the writer's own thread, whose CPU time is counted


class VideoWriter:
    """Write frames to a video file or, for a path without a suffix, a folder of PNGs.

    H.264 (yuv420p; yuv444p when a side is odd) by default, VP9 for ``.webm``; ``lossless=True`` is bit-exact:
    ``libx264rgb`` crf 0 for .mp4, FFV1 for .mkv (``codec="libx264rgb"`` selects it for .mkv too). YUV is written
    with the source's colour matrix and range (``like.colour``; else BT.709 for HD, BT.601 below) and tagged with
    them. Frames go to a temporary sibling that is renamed on success and removed on error, so a failed run leaves
    nothing under ``path``; an existing folder is replaced only when it holds nothing but frames this class wrote.
    x264 runs preset ``veryfast`` in the calling thread (``threads`` 1): the method's threads already fill the cores,
    medium costs twice the CPU time, and x264's own threads would spend theirs where the writer thread cannot count
    it (docs/architecture.md, "Decode and encode"); ``preset`` and ``options`` override them. YUV 4:2:0 of the
    common matrices is made by :mod:`vdiffdeblur.yuv`.
    """

    def __init__(self, path, fps: float = DEFAULT_FPS, lossless: bool = False, crf: int = 18,
                 codec: str | None = None, preset: str = "veryfast", options: dict | None = None,
                 like: VideoInfo | None = None, copy_streams: bool = True):
        self.path = Path(path)
        if not fps or fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.lossless = lossless
        self.crf = int(crf)
        self.codec = codec
        self.preset = preset
        self.options = dict(options or {})
        self.like = like
        self.copy_streams = copy_streams
        self.is_folder = self.path.suffix == ""
        suffix = self.path.suffix.lower()
        if not self.is_folder and suffix not in VIDEO_SUFFIXES:
            raise ValueError(f"{self.path}: unknown video suffix {self.path.suffix!r}; use .mp4, .mkv, ... "
                             "or a path without suffix for a PNG folder")
        if suffix == ".webm" and (lossless or (codec and codec not in ("libvpx-vp9", "vp9"))):
            raise ValueError(f"{self.path}: WebM holds VP9 here; lossless output needs .mkv or .mp4")
        self.num_frames = 0
        self.notes: list[str] = []
        self._tmp: Path | None = None
        self._container = None
        self._stream = None
        self._copier = None
        self._size = None
        self._yuv_args: dict | None = None
        self._i420: np.ndarray | None = None  # RGB -> YUV matrix of the OpenCV path (vdiffdeblur.yuv)
        self._pts: list[int] = []
        self._time_base: Fraction | None = None
        self._use_pts = False
        self._flushed = False

    # context manager ---------------------------------------------------------------
    def __enter__(self) -> "VideoWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        if self.path.is_dir() and not self.is_folder:
            raise OutputError(self.path, "is a folder; a video file cannot replace it")
        if self.is_folder and self.path.exists() and not (self.path.is_dir() and is_frame_folder(self.path)):
            raise OutputError(self.path, "exists and is not a frame folder this tool wrote: refusing to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.path)
        self._tmp = temp_sibling(self.path)
        if self.is_folder:
            self._tmp.mkdir()
            if self.like is not None and self.like.streams:
                self._note(f"{self.path}: a PNG folder holds pictures only; {', '.join(self.like.streams)} not kept")
            if self.like is not None and self.like.display_matrix:
                self._note(f"{self.path}: frames are stored as coded (a player turns them {self.like.rotation:g} "
                           "degrees); the folder remembers the rotation for a video written from it")

    def _note(self, text: str) -> None:
        self.notes.append(text)
        logger.warning(text)

    # writing ---------------------------------------------------------------------------
    def write(self, frames: np.ndarray, pts: Sequence[int] | None = None) -> None:
        """Append one frame (H, W, 3) or several (F, H, W, 3), uint8 RGB; ``pts``: their timestamps in
        ``like.time_base`` (default: one frame period after another)."""
        if self._tmp is None:
            raise RuntimeError("VideoWriter is not open: use it as a context manager")
        if self._flushed:
            raise RuntimeError("VideoWriter was flushed: no frame can follow")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames (F, H, W, 3), got {frames.dtype} {frames.shape}")
        if pts is not None and len(pts) != len(frames):
            raise ValueError(f"{len(pts)} timestamps for {len(frames)} frames")
        if self._size is None:
            self._size = frames.shape[1:3]
            self._start(*self._size, timed=pts is not None)
        elif frames.shape[1:3] != self._size:
            raise ValueError(f"frame size {frames.shape[2]}x{frames.shape[1]} differs from the first frame's "
                             f"{self._size[1]}x{self._size[0]}")
        for k, f in enumerate(frames):
            t = self._next_pts(None if pts is None or not self._use_pts else int(pts[k]))
            if self.is_folder:
                Image.fromarray(f).save(self._tmp / f"{self.num_frames:05d}.png", compress_level=1)
            else:
                self._encode(f, t)
            self.num_frames += 1

    def _next_pts(self, pts: int | None) -> int:
        if pts is None:
            pts = self._pts[-1] + self._step if self._pts else 0
        elif self._pts and pts <= self._pts[-1]:  # encoders need strictly increasing timestamps
            pts = self._pts[-1] + 1
        self._pts.append(pts)
        return pts

    def _start(self, h: int, w: int, timed: bool) -> None:
        rate = Fraction(self.fps).limit_denominator(1001)
        like_tb = self.like.time_base if self.like is not None else None
        if timed and self.path.suffix.lower() in _CONSTANT_RATE:
            timed = False  # these containers keep one frame period; the source's own timestamps would break them
            if self.like is not None and (self.like.variable_rate or self.like.start):
                self._note(f"{self.path}: {self.path.suffix} holds a constant frame rate only: frames are evenly "
                           f"spaced at {self.fps:g} fps from 0 (use .mp4, .mov or .mkv to keep their times)")
        self._use_pts = bool(timed and like_tb)
        self._time_base = like_tb if self._use_pts else 1 / rate
        self._step = max(1, int(round(1 / (rate * self._time_base))))
        if not self.is_folder:
            self._open_stream(h, w, rate)

    def _open_stream(self, h: int, w: int, rate: Fraction) -> None:
        import av

        suffix = self.path.suffix.lower()
        codec = self.codec
        odd = (w % 2) or (h % 2)
        if self.lossless:
            codec = codec or ("ffv1" if suffix == ".mkv" else "libx264rgb")
            if codec not in ("ffv1", "libx264rgb"):
                raise ValueError(f"lossless writing supports codec ffv1 or libx264rgb, got {codec!r}")
        else:
            codec = codec or ("libvpx-vp9" if suffix == ".webm" else "libx264")
        options = {}
        if codec == "libx264rgb":
            pix_fmt = "rgb24"
            options = {"crf": "0" if self.lossless else str(self.crf), "preset": self.preset, **_X264_THREADS}
            if self.lossless:
                options["qp"] = "0"
        elif codec == "ffv1":
            pix_fmt = "bgr0"
        elif codec in ("libx264", "h264"):
            pix_fmt = "yuv444p" if odd else "yuv420p"
            options = {"crf": str(self.crf), "preset": self.preset, **_X264_THREADS}
            if suffix in _NO_BFRAMES:
                options["bf"] = "0"
        elif codec in ("libvpx-vp9", "vp9"):
            pix_fmt = "yuv444p" if odd else "yuv420p"
            options = {**_VP9_OPTIONS, "crf": str(min(63, round(self.crf * 63 / 51)))}
        else:
            pix_fmt = "yuv420p"
        options.update(self.options)
        colour = (self.like.colour if self.like is not None and self.like.colour is not None
                  else ColourInfo.default_for(w, h))
        rgb = pix_fmt in ("rgb24", "bgr0")
        if colour.is_rgb and not rgb:  # an RGB-coded source written as YUV: the size's usual matrix
            d = ColourInfo.default_for(w, h)
            colour = ColourInfo(colour.primaries, colour.transfer, d.matrix, d.range)
        self._yuv_args = None if rgb else colour.encode_args()
        self._i420 = rgb_to_yuv_matrix(colour.matrix, colour.range) if pix_fmt == "yuv420p" else None
        if self.like is not None and re.search(r"(p|le|be)(9|1[0-6])", self.like.pix_fmt or ""):
            self._note(f"{self.path}: the {self.like.pix_fmt} source is written with 8 bits per channel")
        try:
            self._container = av.open(str(self._tmp), mode="w", format=_FORMATS.get(suffix))
        except (av.FFmpegError, OSError) as e:  # name the output, not its hidden temporary
            raise OutputError(self.path, f"cannot be written ({getattr(e, 'strerror', None) or e})") from None
        for key, value in (self.like.metadata if self.like is not None else ()):
            if key.lower() not in _OWN_TAGS:  # capture date, place, title: the user's; the rest the muxer writes
                self._container.metadata[key] = value
        s = self._container.add_stream(codec, rate=rate, options=options)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        s.codec_context.time_base = self._time_base
        s.time_base = self._time_base
        colour.tag(s.codec_context, rgb=rgb)
        if self.like is not None and self.like.display_matrix:
            s.set_display_matrix(list(self.like.display_matrix))
            if suffix not in _ROTATING:
                self._note(f"{self.path}: {suffix} cannot hold the rotation ({self.like.rotation:g} degrees); "
                           "use .mp4, .mov or .mkv to keep it")
        self._stream = s
        if odd and pix_fmt == "yuv444p":
            logger.info("%s: odd frame size %dx%d, encoding yuv444p", self.path, w, h)
        if self.copy_streams and self.like is not None and self.like.streams and Path(self.like.source).is_file():
            from .passthrough import StreamCopier

            self._copier = StreamCopier(self.like.source, self._container, str(self.path))
            self.notes += self._copier.notes

    def _mux(self, packets) -> None:
        for packet in packets:
            if self._copier is not None and packet.dts is not None:
                self._copier.mux_until(float(packet.dts * packet.time_base))
            self._container.mux(packet)

    def _encode(self, frame: np.ndarray, pts: int) -> None:
        import av

        if self._i420 is not None:
            vf = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame, self._i420), format="yuv420p")
        else:
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if self._yuv_args is not None:
                vf = vf.reformat(format=self._stream.pix_fmt, **self._yuv_args)
        vf.pts, vf.time_base = pts, self._time_base
        self._mux(self._stream.encode(vf))

    def flush(self) -> None:
        """Encode the frames the encoder still holds (x264 looks 10-40 frames ahead); no frame can follow.
        :meth:`close` does it otherwise; calling it first lets a writer thread do that work too."""
        if self._container is not None and not self._flushed:
            self._mux(self._stream.encode())
        self._flushed = True

    def close(self) -> None:
        if self._tmp is None:
            return
        try:
            if self.num_frames == 0:
                raise ValueError(f"{self.path}: no frames were written")
            if self.is_folder:
                meta = {"fps": self.fps, "time_base": str(self._time_base), "pts": self._pts}
                if self.like is not None and self.like.display_matrix:
                    meta |= {"display_matrix": list(self.like.display_matrix), "rotation": self.like.rotation}
                (self._tmp / FOLDER_META).write_text(json.dumps(meta))
            if self._container is not None:
                self.flush()
                if self._copier is not None:
                    self._copier.finish()
                    self._copier = None
                self._container.close()
                self._container = None
            atomic_replace(self._tmp, self.path)
            self._tmp = None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything written so far; ``path`` is left as it was."""
        if self._copier is not None:
            self._copier.close()
            self._copier = None
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the container may be half-written; it is deleted just below
                pass
            self._container = None
        if self._tmp is not None:
            remove_path(self._tmp)
            self._tmp = None


# suffixes whose muxer FFmpeg would not guess from a hidden temporary name's suffix alone
_CONSTANT_RATE = {".avi", ".wmv"}  # containers without per-frame presentation timestamps
_OWN_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder", "duration"}
_ROTATING = {".mp4", ".mov", ".m4v", ".mkv", ".webm"}  # containers whose muxer writes the display matrix
# containers that store B-frames badly (no presentation timestamps, or reordered ones on reading back)
_NO_BFRAMES = {".avi", ".wmv", ".mpg", ".mpeg", ".flv"}
_FORMATS = {".wmv": "asf", ".m4v": "ipod", ".ts": "mpegts", ".mpg": "mpeg", ".mpeg": "mpeg"}


def write_video(path, frames, fps: float = DEFAULT_FPS, pts=None, **kwargs) -> Path:
    """Write a whole clip at once (see :class:`VideoWriter`)."""
    with VideoWriter(path, fps=fps, **kwargs) as w:
        w.write(np.asarray(frames), pts=pts)
    return Path(path)
