"""Scanning a video for the fit: one forward pass, every frame's M_VL, the sharpest frame of each run kept."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...frames import as_frames_tensor, to_uint8_frames
from ...sharpness import laplacian_variance, select_sharp_frames
from ...video import iter_frames


@dataclass
class VideoScan:
    """What one sequential pass over a video keeps: every frame's M_VL and the selected sharp frames."""

    scores: np.ndarray  # (F,) M_VL of every frame
    sharp_indices: list[int]  # indices of the selected frames
    sharp_frames: list[np.ndarray]  # uint8 (H, W, 3) frames, in the order of sharp_indices

    @property
    def num_frames(self) -> int:
        return len(self.scores)


def iter_video_frames(source):
    """uint8 (H, W, 3) frames, one at a time, of a path (decoded as read), a frame array or tensor, or a Video."""
    if isinstance(source, (str, Path)):
        return iter_frames(source)
    frames = source
    if hasattr(frames, "frames") and not isinstance(frames, (np.ndarray, torch.Tensor)):
        frames = frames.frames
    if isinstance(frames, torch.Tensor) and frames.dtype != torch.uint8:
        frames = to_uint8_frames(as_frames_tensor(frames))
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (F, H, W, 3), got {frames.dtype} {frames.shape}")
    return iter(frames)


def scan_video(source, every: int = 20, progress: bool = False) -> VideoScan:
    """One forward pass over a path / frame array: M_VL of each frame and the frames
    :func:`~vdiffdeblur.sharpness.select_sharp_frames` picks, one per ``every``, holding only the sharpest
    frame of the current run in memory (paper III-B.1)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    scores, keep, pick = [], [], None
    frames = iter_video_frames(source)
    for i, f in enumerate(tqdm(frames, desc="scan frames", unit="frame", disable=not progress)):
        scores.append(float(laplacian_variance(f)[0]))
        start = i - i % every
        if start + select_sharp_frames(np.asarray(scores[start:]), every)[0] == i:
            pick = f
        if (i + 1) % every == 0:
            keep.append(pick)
    if not scores:
        raise ValueError("the video holds no frames")
    if len(scores) % every:
        keep.append(pick)
    scores = np.asarray(scores)
    return VideoScan(scores, select_sharp_frames(scores, every), keep)
