"""Video I/O shared by every method: read (decord), stream in windows, write (PyAV), frame folders.

At this boundary a video is a ``numpy.uint8`` array ``(F, H, W, 3)`` in RGB plus a :class:`VideoInfo`.
Reading is strictly sequential and never seeks. Video files decode with PyAV by default; decord is an
alternative backend. Two measured reasons (see DESIGN notes): decord can return the wrong frame after a
backward seek on files with B-frames, and its decoder thread runs ahead of a slow consumer without bound
(898 MB peak for 400 frames of 640x480 read at 5 ms per frame, against 89 MB with PyAV), which breaks flat
memory when a deblurring method consumes the frames.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import uuid
from collections import deque
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}
DEFAULT_FPS = 25.0
FOLDER_META = ".vdiffdeblur.json"  # a PNG folder written here remembers its fps in this hidden file


class VideoError(ValueError):
    """A video (or frame folder / image) that cannot be used; the message names the path and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    width: int
    height: int
    num_frames: int
    source: str = ""
    codec: str = ""


@dataclass
class Video:
    frames: np.ndarray  # uint8 (F, H, W, 3) RGB
    info: VideoInfo

    def __len__(self) -> int:
        return int(self.frames.shape[0])


class VideoWindow(NamedTuple):
    indices: range  # absolute frame indices of `frames`
    frames: np.ndarray  # uint8 (n, H, W, 3)


# --------------------------------------------------------------------------------------- reading helpers
def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: _natural_key(p.name))


def to_rgb_uint8(image: np.ndarray, path="<array>") -> np.ndarray:
    """Gray, gray+alpha, RGB or RGBA (uint8/uint16/bool/float in [0,1]) -> uint8 RGB (H, W, 3)."""
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
                arr = np.asarray(im).astype(np.float32)
                arr = arr / (65535.0 if arr.max() > 255 else 255.0)
                return to_rgb_uint8(arr, path)
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            return to_rgb_uint8(np.asarray(im), path)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise VideoError(path, f"not a readable image ({e.__class__.__name__}: {e})") from None


def _is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES or path.suffix.lower() not in IMAGE_SUFFIXES


class _FolderSource:
    def __init__(self, path: Path):
        self.path = path
        self.files = list_image_files(path)
        if not self.files:
            raise VideoError(path, "folder holds no images")
        first = _load_image(self.files[0])
        fps = DEFAULT_FPS
        meta = path / FOLDER_META
        if meta.is_file():
            try:
                fps = float(json.loads(meta.read_text())["fps"])
            except (ValueError, KeyError, TypeError):
                logger.warning("%s: unreadable, assuming %g fps", meta, DEFAULT_FPS)
        self.info = VideoInfo(
            fps=fps, width=first.shape[1], height=first.shape[0], num_frames=len(self.files),
            source=str(path), codec="images",
        )
        self._first = first

    def frames(self, start: int, end: int) -> Iterator[np.ndarray]:
        for i in range(start, end):
            img = self._first if i == 0 else _load_image(self.files[i])
            if img.shape[:2] != (self.info.height, self.info.width):
                raise VideoError(self.files[i], f"size {img.shape[1]}x{img.shape[0]} differs from the first "
                                 f"frame's {self.info.width}x{self.info.height}")
            yield img


class _ImageSource:
    def __init__(self, path: Path):
        self.path = path
        self._img = _load_image(path)
        self.info = VideoInfo(fps=DEFAULT_FPS, width=self._img.shape[1], height=self._img.shape[0],
                              num_frames=1, source=str(path), codec="image")

    def frames(self, start: int, end: int) -> Iterator[np.ndarray]:
        if start < 1 <= end:
            yield self._img


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    msg = msg[0] if msg else e.__class__.__name__
    return msg[:200]


def _probe_file(path: Path) -> VideoInfo:
    """Size, fps, codec and frame count of a video file, from its headers and one demux pass (no decoding).

    Raises VideoError for an empty file, what is not a video, and a file whose packets stop short of the
    duration its header declares (cut off).
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
            n = int(s.frames or 0)
            if not n:  # Matroska & co. store no frame count: count packets, check them against the duration
                n = sum(1 for p in c.demux(s) if p.size)
                if c.duration:
                    declared = int(round(c.duration / 1_000_000 * rate))
                    if n < declared - max(1, int(0.02 * declared)):
                        raise VideoError(path, f"truncated: the header declares {declared} frames, only {n} are present")
            if n <= 0:
                raise VideoError(path, "video holds no frames")
            return VideoInfo(fps=rate, width=cc.width, height=cc.height, num_frames=n, source=str(path),
                             codec=cc.name or "")
    except av.FFmpegError as e:
        raise VideoError(path, f"not a decodable video ({_short(e)})") from None


class _PyAVSource:
    """Sequential decoding with PyAV, the default: no seeking at all, and a decoder that only runs as far as
    the consumer asks (decord decodes ahead without bound when the consumer is slower than it)."""

    def __init__(self, path: Path):
        self.path = path
        self.info = _probe_file(path)

    def frames(self, start: int, end: int) -> Iterator[np.ndarray]:
        import av

        n = self.info.num_frames
        i = 0
        try:
            with av.open(str(self.path)) as c:
                stream = c.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in c.decode(stream):
                    if i >= start:
                        yield frame.to_ndarray(format="rgb24")
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

    def frames(self, start: int, end: int) -> Iterator[np.ndarray]:
        import decord

        try:
            vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=1)
        except Exception as e:  # decord raises its own DECORDError / RuntimeError for anything it cannot open
            raise VideoError(self.path, f"not a decodable video ({_short(e)})") from None
        n = self.info.num_frames
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
                yield np.ascontiguousarray(frame)
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
    """Size, frame count, fps and codec of a video file, frame folder or image, without decoding it."""
    return _open_source(source).info


def _check_range(info: VideoInfo, start: int, end: int | None) -> tuple[int, int]:
    n = info.num_frames
    end = n if end is None else end
    if start < 0 or end > n or start >= end:
        raise VideoError(info.source, f"frame range [{start}, {end}) is outside the video's {n} frames")
    return start, end


def iter_frames(source, start: int = 0, end: int | None = None, backend: str = "pyav") -> Iterator[np.ndarray]:
    """Frames ``start..end-1`` one at a time, decoded sequentially (``backend``: "pyav" or "decord")."""
    src = _open_source(source, backend)
    start, end = _check_range(src.info, start, end)
    yield from src.frames(start, end)


def read_video(source, start: int = 0, end: int | None = None, backend: str = "pyav") -> Video:
    """Read frames ``[start, end)`` of a video file, a folder of images (natural order) or one image.

    Video files decode sequentially with PyAV by default; ``backend="decord"`` uses decord (forward reads only).
    """
    src = _open_source(source, backend)
    start, end = _check_range(src.info, start, end)
    frames = np.stack(list(src.frames(start, end)))
    info = replace(src.info, num_frames=frames.shape[0])
    return Video(frames=frames, info=info)


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
    for i, frame in enumerate(src.frames(0, n)):
        buf.append(frame)
        if i == next_end or i == n - 1:
            yield VideoWindow(range(i + 1 - len(buf), i + 1), np.stack(buf))
            if i == n - 1:
                return
            next_end += stride


# --------------------------------------------------------------------------------------- writing
def temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{path.suffix}")


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def atomic_replace(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, replacing an earlier output (file or folder) only once ``tmp`` is complete."""
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def writing_atomically(final):
    """Yield a temporary sibling path to write ``final`` into; on success it replaces ``final`` (file or folder) in
    one rename, on any error it is removed, so a failed run never leaves a half-written output."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    try:
        yield tmp
        atomic_replace(tmp, final)
    except BaseException:
        remove_path(tmp)
        raise


class VideoWriter:
    """Write frames to a video file or, for a path without a suffix, a folder of PNGs.

    H.264 (yuv420p; yuv444p when a side is odd) by default; ``lossless=True`` is bit-exact: ``libx264rgb``
    crf 0 for .mp4, FFV1 for .mkv (``codec="libx264rgb"`` selects it for .mkv too). Frames go to a temporary
    sibling that is renamed on success and removed on error, so a failed run leaves nothing under ``path``.
    """

    def __init__(self, path, fps: float = DEFAULT_FPS, lossless: bool = False, crf: int = 18,
                 codec: str | None = None, preset: str = "medium", options: dict | None = None):
        self.path = Path(path)
        if not fps or fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.lossless = lossless
        self.crf = int(crf)
        self.codec = codec
        self.preset = preset
        self.options = dict(options or {})
        self.is_folder = self.path.suffix == ""
        if not self.is_folder and self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{self.path}: unknown video suffix {self.path.suffix!r}; use .mp4, .mkv, ... "
                             "or a path without suffix for a PNG folder")
        self.num_frames = 0
        self._tmp: Path | None = None
        self._container = None
        self._stream = None
        self._size = None

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_sibling(self.path)
        if self.is_folder:
            self._tmp.mkdir()

    # writing ---------------------------------------------------------------------------
    def write(self, frames: np.ndarray) -> None:
        """Append one frame (H, W, 3) or several (F, H, W, 3), uint8 RGB."""
        if self._tmp is None:
            raise RuntimeError("VideoWriter is not open: use it as a context manager")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames (F, H, W, 3), got {frames.dtype} {frames.shape}")
        if self._size is None:
            self._size = frames.shape[1:3]
            if not self.is_folder:
                self._open_stream(*self._size)
        elif frames.shape[1:3] != self._size:
            raise ValueError(f"frame size {frames.shape[2]}x{frames.shape[1]} differs from the first frame's "
                             f"{self._size[1]}x{self._size[0]}")
        for f in frames:
            if self.is_folder:
                Image.fromarray(f).save(self._tmp / f"{self.num_frames:05d}.png", compress_level=1)
            else:
                self._encode(f)
            self.num_frames += 1

    def _open_stream(self, h: int, w: int) -> None:
        import av

        suffix = self.path.suffix.lower()
        codec = self.codec
        odd = (w % 2) or (h % 2)
        if self.lossless:
            codec = codec or ("ffv1" if suffix == ".mkv" else "libx264rgb")
            if codec not in ("ffv1", "libx264rgb"):
                raise ValueError(f"lossless writing supports codec ffv1 or libx264rgb, got {codec!r}")
        else:
            codec = codec or "libx264"
        options = {}
        if codec == "libx264rgb":
            pix_fmt = "rgb24"
            options = {"crf": "0" if self.lossless else str(self.crf), "preset": self.preset}
            if self.lossless:
                options["qp"] = "0"
        elif codec == "ffv1":
            pix_fmt = "bgr0"
        elif codec in ("libx264", "h264"):
            pix_fmt = "yuv444p" if odd else "yuv420p"
            options = {"crf": str(self.crf), "preset": self.preset}
        else:
            pix_fmt = "yuv420p"
        options.update(self.options)
        self._container = av.open(str(self._tmp), mode="w")
        rate = Fraction(self.fps).limit_denominator(1001)
        self._stream = self._container.add_stream(codec, rate=rate, options=options)
        self._stream.width, self._stream.height, self._stream.pix_fmt = w, h, pix_fmt
        if odd and pix_fmt == "yuv444p":
            logger.info("%s: odd frame size %dx%d, encoding yuv444p", self.path, w, h)

    def _encode(self, frame: np.ndarray) -> None:
        import av

        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)

    def close(self) -> None:
        if self._tmp is None:
            return
        try:
            if self.num_frames == 0:
                raise ValueError(f"{self.path}: no frames were written")
            if self.is_folder:
                (self._tmp / FOLDER_META).write_text(json.dumps({"fps": self.fps}))
            if self._container is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
                self._container.close()
                self._container = None
            atomic_replace(self._tmp, self.path)
            self._tmp = None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything written so far; ``path`` is left as it was."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the container may be half-written; it is deleted just below
                pass
            self._container = None
        if self._tmp is not None:
            remove_path(self._tmp)
            self._tmp = None


def write_video(path, frames: np.ndarray | Sequence[np.ndarray], fps: float = DEFAULT_FPS, **kwargs) -> Path:
    """Write a whole clip at once (see :class:`VideoWriter`)."""
    with VideoWriter(path, fps=fps, **kwargs) as w:
        w.write(np.asarray(frames))
    return Path(path)


def same_file(a, b) -> bool:
    """True when two paths name the same file or folder (used to refuse overwriting an input)."""
    try:
        return Path(a).resolve() == Path(b).resolve() or (Path(b).exists() and Path(a).exists()
                                                          and os.path.samefile(a, b))
    except OSError:
        return False
