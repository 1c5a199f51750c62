"""Video I/O shared by every method: read (decord), stream in windows, write (PyAV), frame folders.

At this boundary a video is a ``numpy.uint8`` array ``(F, H, W, 3)`` in RGB plus a :class:`VideoInfo`.
Reading is strictly sequential: decord can return the wrong frame after a backward seek on files with
B-frames, so no code path here ever seeks backwards.
"""

from __future__ import annotations

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
        self.info = VideoInfo(
            fps=DEFAULT_FPS, width=first.shape[1], height=first.shape[0], num_frames=len(self.files),
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


class _DecordSource:
    """Sequential decoding through decord: a fresh reader per pass, frames only ever read forwards."""

    def __init__(self, path: Path):
        self.path = path
        if path.stat().st_size == 0:
            raise VideoError(path, "file is empty (0 bytes)")
        vr = self._open()
        n = len(vr)
        if n <= 0:
            raise VideoError(path, "video holds no frames")
        h, w = self._first_shape(vr)
        fps = float(vr.get_avg_fps() or 0.0) or DEFAULT_FPS
        self.info = VideoInfo(fps=fps, width=w, height=h, num_frames=n, source=str(path), codec=_probe_codec(path))
        del vr

    def _open(self):
        import decord

        try:
            return decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=1)
        except Exception as e:  # decord raises its own DECORDError / RuntimeError for anything it cannot open
            raise VideoError(self.path, f"not a decodable video ({_short(e)})") from None

    def _first_shape(self, vr):
        try:
            frame = vr.next()
        except Exception as e:
            raise VideoError(self.path, f"cannot decode the first frame ({_short(e)})") from None
        return frame.shape[0], frame.shape[1]

    def frames(self, start: int, end: int) -> Iterator[np.ndarray]:
        vr = self._open()
        try:
            if start > 0:
                vr.skip_frames(start)
            for i in range(start, end):
                try:
                    frame = vr.next().asnumpy()
                except StopIteration:
                    raise VideoError(self.path, f"truncated: frame {i} of {self.info.num_frames} is missing") from None
                except Exception as e:
                    raise VideoError(self.path, f"truncated or corrupt: frame {i} of {self.info.num_frames} "
                                     f"cannot be decoded ({_short(e)})") from None
                yield np.ascontiguousarray(frame)
        finally:
            del vr


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    msg = msg[0] if msg else e.__class__.__name__
    return msg[:200]


def _probe_codec(path: Path) -> str:
    try:
        import av

        with av.open(str(path)) as c:
            if c.streams.video:
                return c.streams.video[0].codec_context.name or ""
    except Exception:  # only a label: a file decord reads but PyAV cannot probe keeps an empty codec name
        pass
    return ""


def _open_source(source):
    if isinstance(source, (_FolderSource, _ImageSource, _DecordSource)):
        return source
    path = Path(source)
    if not path.exists():
        raise VideoError(path, "no such file or folder")
    if path.is_dir():
        return _FolderSource(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _ImageSource(path)
    return _DecordSource(path)


def probe(source) -> VideoInfo:
    """Size, frame count, fps and codec of a video file, frame folder or image, without decoding it all."""
    return _open_source(source).info


def _check_range(info: VideoInfo, start: int, end: int | None) -> tuple[int, int]:
    n = info.num_frames
    end = n if end is None else end
    if start < 0 or end > n or start >= end:
        raise VideoError(info.source, f"frame range [{start}, {end}) is outside the video's {n} frames")
    return start, end


def iter_frames(source, start: int = 0, end: int | None = None) -> Iterator[np.ndarray]:
    """Frames ``start..end-1`` one at a time, decoded sequentially."""
    src = _open_source(source)
    start, end = _check_range(src.info, start, end)
    yield from src.frames(start, end)


def read_video(source, start: int = 0, end: int | None = None) -> Video:
    """Read frames ``[start, end)`` of a video file, a folder of images (natural order) or one image."""
    src = _open_source(source)
    start, end = _check_range(src.info, start, end)
    frames = np.stack(list(src.frames(start, end)))
    info = replace(src.info, num_frames=frames.shape[0])
    return Video(frames=frames, info=info)


def iter_windows(source, window: int, overlap: int = 0) -> Iterator[VideoWindow]:
    """Consecutive windows of ``window`` frames overlapping by ``overlap``, read in one forward pass.

    Memory holds one window. The last window ends at the last frame (it may be shorter when the video is
    shorter than ``window``); every frame lies in at least one window.
    """
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window, got window={window}, overlap={overlap}")
    src = _open_source(source)
    n = src.info.num_frames
    stride = window - overlap
    buf: deque = deque(maxlen=window)
    next_start = 0
    for i, frame in enumerate(src.frames(0, n)):
        buf.append(frame)
        last = i == n - 1
        if i == next_start + window - 1 or last:
            ws = i + 1 - len(buf)
            yield VideoWindow(range(ws, i + 1), np.stack(buf))
            if last:
                return
            next_start += stride
            # drop frames the next window does not need
            while buf and i + 1 - len(buf) < next_start:
                buf.popleft()


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
