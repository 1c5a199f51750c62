"""Video I/O shared by every method: read (PyAV, or decord), stream in windows, write (PyAV), frame folders.

At this boundary a video is a ``numpy.uint8`` array ``(F, H, W, 3)`` in RGB plus a :class:`VideoInfo`. Reading is
strictly sequential and never seeks. Besides the pictures, the info carries what the output must keep: each frame's
timestamp (time base and pts), the rotation (display matrix), the colour description and the other streams;
:class:`VideoWriter` given ``like=info`` writes them back and copies the source's audio and subtitles.
Why PyAV by default: decord can return the wrong frame after a backward seek on files with B-frames, and its decoder
runs ahead of a slow consumer without bound, which breaks flat memory.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from .colour import ColourInfo
from .outputs import FOLDER_META, atomic_replace, remove_path, same_file, temp_sibling, writing_atomically

__all__ = ["VideoError", "VideoInfo", "Video", "VideoWindow", "TimedFrame", "probe", "iter_frames",
           "iter_timed_frames", "read_video", "iter_windows", "VideoWriter", "write_video", "same_file",
           "temp_sibling", "remove_path", "atomic_replace", "writing_atomically", "IMAGE_SUFFIXES",
           "VIDEO_SUFFIXES", "WRITE_SUFFIXES"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}
WRITE_SUFFIXES = VIDEO_SUFFIXES  # every one is read back by this module (tests hold each)
DEFAULT_FPS = 25.0


class VideoError(ValueError):
    """A video (or frame folder / image) that cannot be used; the message names the path and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    fps: float  # average frame rate (a variable-frame-rate file keeps its own timestamps besides)
    width: int
    height: int
    num_frames: int
    source: str = ""
    codec: str = ""
    time_base: Fraction | None = None  # of the frames' pts
    rotation: float = 0.0  # degrees counter-clockwise a player turns the picture (display matrix)
    display_matrix: tuple | None = None  # the 9 int32 of FFmpeg's display matrix, when the file has one
    colour: ColourInfo | None = None
    streams: tuple = ()  # the other streams, e.g. ("audio aac", "subtitle mov_text")
    pix_fmt: str = ""  # as decoded, e.g. yuv420p, yuv420p10le
    variable_rate: bool = False  # the container's nominal rate differs from its average one
    start: float = 0.0  # seconds of the first frame
    duration: float = 0.0  # seconds, as the container says (0: unknown)
    metadata: tuple = ()  # the container's tags as (key, value) pairs: creation_time, location, title, ...


@dataclass
class Video:
    frames: np.ndarray  # uint8 (F, H, W, 3) RGB
    info: VideoInfo
    pts: np.ndarray | None = None  # int64 (F,), in info.time_base

    def __len__(self) -> int:
        return int(self.frames.shape[0])


class VideoWindow(NamedTuple):
    indices: range  # absolute frame indices of `frames`
    frames: np.ndarray  # uint8 (n, H, W, 3)


class TimedFrame(NamedTuple):
    frame: np.ndarray  # uint8 (H, W, 3)
    pts: int  # in the source's time base


# --------------------------------------------------------------------------------------- reading helpers
def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_image_files(folder) -> list[Path]:
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: _natural_key(p.name))


def to_rgb_uint8(image: np.ndarray, path="<array>") -> np.ndarray:
    """Gray, gray+alpha, RGB or RGBA (uint8/uint16/bool/float in [0,1]) -> uint8 RGB (H, W, 3).

    uint16 is scaled by its format (65535 is white), never by the frame's own maximum, so a sequence keeps one
    scale from frame to frame.
    """
    a = np.asarray(image)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif a.dtype.kind == "f":
        a = (np.clip(a, 0, 1) * 255.0).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        raise VideoError(path, f"unsupported pixel type {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 2:  # gray + alpha: drop alpha
        a = np.repeat(a[..., :1], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:  # RGBA: drop alpha (the colour values are kept as stored)
        a = a[..., :3]
    elif not (a.ndim == 3 and a.shape[2] == 3):
        raise VideoError(path, f"unsupported image shape {a.shape}")
    return np.ascontiguousarray(a)


def _load_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grey (Pillow opens it as I;16 or I): one fixed scale, whatever this frame's maximum
                arr = np.clip(np.asarray(im).astype(np.int64), 0, 65535).astype(np.uint16)
                return to_rgb_uint8(arr, path)
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            return to_rgb_uint8(np.asarray(im), path)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise VideoError(path, f"not a readable image ({e.__class__.__name__}: {e})") from None


def _rate_time_base(fps: float) -> tuple[Fraction, Fraction]:
    rate = Fraction(fps).limit_denominator(1001)
    return rate, 1 / rate


class _FolderSource:
    def __init__(self, path: Path):
        self.path = path
        self.files = list_image_files(path)
        if not self.files:
            raise VideoError(path, "folder holds no images")
        first = _load_image(self.files[0])
        fps, self.pts, time_base, matrix, rotation = DEFAULT_FPS, None, None, None, 0.0
        meta = path / FOLDER_META
        if meta.is_file():
            try:
                data = json.loads(meta.read_text())
                fps = float(data["fps"])
                if "pts" in data and len(data["pts"]) == len(self.files):
                    self.pts, time_base = [int(p) for p in data["pts"]], Fraction(data["time_base"])
                matrix = tuple(int(v) for v in data["display_matrix"]) if data.get("display_matrix") else None
                rotation = float(data.get("rotation", 0.0))
            except (ValueError, KeyError, TypeError, ZeroDivisionError):
                logger.warning("%s: unreadable, assuming %g fps", meta, DEFAULT_FPS)
        if self.pts is None:
            time_base = _rate_time_base(fps)[1]
        self.info = VideoInfo(fps=fps, width=first.shape[1], height=first.shape[0], num_frames=len(self.files),
                              source=str(path), codec="images", time_base=time_base, display_matrix=matrix,
                              rotation=rotation)
        self._first = first

    def timed_frames(self, start: int, end: int) -> Iterator[TimedFrame]:
        for i in range(start, end):
            img = self._first if i == 0 else _load_image(self.files[i])
            if img.shape[:2] != (self.info.height, self.info.width):
                raise VideoError(self.files[i], f"size {img.shape[1]}x{img.shape[0]} differs from the first "
                                 f"frame's {self.info.width}x{self.info.height}")
            yield TimedFrame(img, self.pts[i] if self.pts else i)


class _ImageSource:
    def __init__(self, path: Path):
        self.path = path
        self._img = _load_image(path)
        self.info = VideoInfo(fps=DEFAULT_FPS, width=self._img.shape[1], height=self._img.shape[0],
                              num_frames=1, source=str(path), codec="image", time_base=_rate_time_base(DEFAULT_FPS)[1])

    def timed_frames(self, start: int, end: int) -> Iterator[TimedFrame]:
        if start < 1 <= end:
            yield TimedFrame(self._img, 0)


def _short(e: Exception) -> str:
    """FFmpeg's reason alone: no errno number, no repeated file name."""
    msg = (getattr(e, "strerror", None) or str(e)).strip().splitlines()
    msg = msg[0] if msg else e.__class__.__name__
    msg = re.sub(r"^\[Errno -?\d+\]\s*", "", msg)
    return re.sub(r":\s*'[^']*'$", "", msg)[:200]


def _display_matrix(frame) -> tuple | None:
    side = frame.side_data
    for item in side:
        # PyAV 18.1.1 iterates the container's keys (the types); 18.1.0 iterated the entries themselves
        sd = item if hasattr(item, "type") else side[item]
        if getattr(sd.type, "name", "") == "DISPLAYMATRIX":
            m = tuple(int(v) for v in np.frombuffer(bytes(sd), dtype="<i4")[:9])
            return None if m == (65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30) else m
    return None


def _declared_video_seconds(container, stream) -> float | None:
    """How long the headers say the video stream is; the container's duration only when nothing else is in it."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION")  # Matroska writes each stream's duration as a tag
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            pass
    if container.duration and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


def _probe_file(path: Path) -> VideoInfo:
    """Size, fps, codec, timing, rotation and colour of a video file, from its headers, one demux pass where the
    header has no frame count, and its first decoded frame.

    Raises VideoError for an empty file, what is not a video, and a file whose video packets stop short of the
    duration its header declares for the video (cut off).
    """
    import av

    if path.stat().st_size == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoError(path, "holds no video stream")
            s = c.streams.video[0]
            cc = s.codec_context
            rate = float(s.average_rate or s.guessed_rate or 0) or DEFAULT_FPS
            others = tuple(f"{o.type} {o.codec_context.name}" for o in c.streams
                           if o.type in ("audio", "subtitle"))
            base, avg = float(s.base_rate or 0), float(s.average_rate or 0)
            timing = dict(variable_rate=bool(base and avg and abs(base - avg) > 0.01 * avg),
                          start=float(s.start_time * s.time_base) if s.start_time is not None else 0.0,
                          duration=(c.duration or 0) / 1_000_000,
                          metadata=tuple((str(k), str(v)) for k, v in c.metadata.items()))
            n = int(s.frames or 0) if c.format.name not in _CFR_FORMATS else 0  # AVI counts its empty filler packets
            if not n:  # Matroska & co. store no frame count: count the packets, check them against the duration
                n, end = 0, None
                for p in c.demux(s):
                    if p.size:
                        n += 1
                        if p.pts is not None:
                            t = float((p.pts + (p.duration or 0)) * p.time_base)
                            end = t if end is None else max(end, t)
                declared = _declared_video_seconds(c, s)
                start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
                if declared and end is not None:
                    # short on count and on time alike (some muxers count the start offset in, some do not)
                    tol = max(2.0 / rate, 0.02 * declared)
                    want = int(round(declared * rate))
                    if n < want - max(2, int(0.02 * want)) and max(end - start, end) < declared - tol:
                        raise VideoError(path, f"truncated: the header declares {want} frames, only {n} are present")
            if n <= 0:
                raise VideoError(path, "video holds no frames")
        with av.open(str(path)) as c:  # the first frame says what the headers may not: rotation, colour
            s = c.streams.video[0]
            first = next(iter(c.decode(s)), None)
            if first is None:
                raise VideoError(path, "video holds no decodable frames")
            matrix = _display_matrix(first)
            rgb = first.format.name.startswith(("rgb", "bgr", "gbr", "0rgb", "argb", "rgba", "bgra"))
            colour = ColourInfo.from_codec(first, cc.width, cc.height)
            if rgb:
                colour = replace(colour, matrix=0)
            return VideoInfo(fps=rate, width=cc.width, height=cc.height, num_frames=n, source=str(path),
                             codec=cc.name or "", time_base=s.time_base, rotation=float(first.rotation or 0),
                             display_matrix=matrix, colour=colour, streams=others, pix_fmt=first.format.name,
                             **timing)
    except av.FFmpegError as e:
        raise VideoError(path, f"not a decodable video ({_short(e)})") from None


# containers whose decoded frames carry no reliable presentation timestamps: frames are one period apart
_CFR_FORMATS = {"avi", "asf"}


class _PyAVSource:
    """Sequential decoding with PyAV, the default: no seeking at all, and a decoder that only runs as far as
    the consumer asks. YUV is converted with the matrix and range the file declares."""

    def __init__(self, path: Path):
        self.path = path
        self.info = _probe_file(path)

    def timed_frames(self, start: int, end: int) -> Iterator[TimedFrame]:
        import av
        from av.video.reformatter import VideoReformatter

        n = self.info.num_frames
        args = self.info.colour.decode_args() if self.info.colour else {}
        to_rgb = VideoReformatter()  # one for the whole pass: it keeps its swscale context (a fifth of the time)
        step = max(1, int(round(1 / (self.info.fps * self.info.time_base)))) if self.info.time_base else 1
        i, last = 0, None
        try:
            with av.open(str(self.path)) as c:
                stream = c.streams.video[0]
                stream.codec_context.thread_count = 1  # in the reader's thread: FFmpeg's threads save no CPU
                by_index = c.format.name in _CFR_FORMATS
                for frame in c.decode(stream):
                    pts = frame.pts
                    if by_index or pts is None or (last is not None and pts <= last):
                        pts = last + step if last is not None else (frame.pts or 0)
                    last = pts
                    if i >= start:
                        yield TimedFrame(to_rgb.reformat(frame, format="rgb24", **args).to_ndarray(), int(pts))
                    i += 1
                    if i >= end:
                        return
        except av.FFmpegError as e:
            raise VideoError(self.path, f"corrupt: frame {i} of {n} cannot be decoded ({_short(e)})") from None
        if i < end:
            raise VideoError(self.path, f"truncated: only {i} of {n} frames could be decoded")


class _DecordSource(_PyAVSource):
    """decord as an alternative decoder (``backend="decord"``): a fresh reader per pass, frames only ever read
    forwards, since decord can return the wrong frame after a backward seek on files with B-frames."""

    def timed_frames(self, start: int, end: int) -> Iterator[TimedFrame]:
        import decord

        try:
            vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=1)
        except Exception as e:  # decord raises its own DECORDError / RuntimeError for anything it cannot open
            raise VideoError(self.path, f"not a decodable video ({_short(e)})") from None
        n = self.info.num_frames
        tb = self.info.time_base or _rate_time_base(self.info.fps)[1]
        try:
            if start > 0:
                vr.skip_frames(start)
            for i in range(start, end):
                try:
                    frame = vr.next().asnumpy()
                except StopIteration:
                    raise VideoError(self.path, f"truncated: only {i} of {n} frames could be decoded") from None
                except Exception as e:
                    raise VideoError(self.path, f"corrupt: frame {i} of {n} cannot be decoded ({_short(e)})") from None
                yield TimedFrame(np.ascontiguousarray(frame), int(round(i / self.info.fps / tb)))
        finally:
            del vr


BACKENDS = {"pyav": _PyAVSource, "decord": _DecordSource}
_SOURCES = (_FolderSource, _ImageSource, _PyAVSource)


def _open_source(source, backend: str = "pyav"):
    if isinstance(source, _SOURCES):
        return source
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose from {', '.join(BACKENDS)}")
    path = Path(source)
    if not path.exists():
        raise VideoError(path, "no such file or folder")
    if path.is_dir():
        return _FolderSource(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _ImageSource(path)
    return BACKENDS[backend](path)


def probe(source) -> VideoInfo:
    """Size, frame count, fps, codec, time base, rotation, colour and other streams of a video file, frame folder
    or image, without decoding more than its first frame."""
    return _open_source(source).info


def _check_range(info: VideoInfo, start: int, end: int | None) -> tuple[int, int]:
    n = info.num_frames
    end = n if end is None else end
    if start < 0 or end > n or start >= end:
        raise VideoError(info.source, f"frame range [{start}, {end}) is outside the video's {n} frames")
    return start, end


def iter_timed_frames(source, start: int = 0, end: int | None = None,
                      backend: str = "pyav") -> Iterator[TimedFrame]:
    """``(frame, pts)`` for frames ``start..end-1``, decoded sequentially; pts in ``probe(source).time_base``."""
    src = _open_source(source, backend)
    start, end = _check_range(src.info, start, end)
    yield from src.timed_frames(start, end)


def iter_frames(source, start: int = 0, end: int | None = None, backend: str = "pyav") -> Iterator[np.ndarray]:
    """Frames ``start..end-1`` one at a time, decoded sequentially (``backend``: "pyav" or "decord")."""
    for frame, _ in iter_timed_frames(source, start, end, backend):
        yield frame


def read_video(source, start: int = 0, end: int | None = None, backend: str = "pyav") -> Video:
    """Read frames ``[start, end)`` of a video file, a folder of images (natural order) or one image.

    Video files decode sequentially with PyAV by default; ``backend="decord"`` uses decord (forward reads only).
    """
    src = _open_source(source, backend)
    start, end = _check_range(src.info, start, end)
    timed = list(src.timed_frames(start, end))
    frames = np.stack([t.frame for t in timed])
    info = replace(src.info, num_frames=frames.shape[0])
    return Video(frames=frames, info=info, pts=np.array([t.pts for t in timed], dtype=np.int64))


def iter_windows(source, window: int, overlap: int = 0, backend: str = "pyav") -> Iterator[VideoWindow]:
    """Consecutive windows of ``window`` frames overlapping by ``overlap``, read in one forward pass.

    Memory holds one window. The last window is a full window ending at the last frame (so it may overlap
    its predecessor by more than ``overlap``); it is shorter only when the video is shorter than ``window``.
    """
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window, got window={window}, overlap={overlap}")
    src = _open_source(source, backend)
    n = src.info.num_frames
    stride = window - overlap
    buf: deque = deque(maxlen=window)  # always the latest `window` frames
    next_end = window - 1
    for i, (frame, _) in enumerate(src.timed_frames(0, n)):
        buf.append(frame)
        if i == next_end or i == n - 1:
            yield VideoWindow(range(i + 1 - len(buf), i + 1), np.stack(buf))
            if i == n - 1:
                return
            next_end += stride


# --------------------------------------------------------------------------------------- writing
from .writer import VideoWriter, write_video  # noqa: E402  (the writer needs the reader's types above)
