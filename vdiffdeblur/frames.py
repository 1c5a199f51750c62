"""Conversions between the I/O form of a clip (uint8 (F, H, W, 3)) and the per-frame-method form
(float32 (F, 3, H, W) in [0, 1]), plus padding to a network's size multiple and back."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def as_frames_tensor(frames, device=None, dtype=torch.float32) -> torch.Tensor:
    """uint8 (F, H, W, 3) / (H, W, 3) array or tensor, or float (F, 3, H, W) tensor -> float (F, 3, H, W) in [0, 1]."""
    if hasattr(frames, "frames") and not isinstance(frames, (np.ndarray, torch.Tensor)):
        frames = frames.frames  # a vdiffdeblur.video.Video
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8:
            raise ValueError(f"numpy frames must be uint8 (F, H, W, 3), got {frames.dtype}")
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"expected frames as an array or tensor, got {type(frames).__name__}")
    if frames.dtype == torch.uint8:
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
            raise ValueError(f"uint8 frames must be (F, H, W, 3), got {tuple(frames.shape)}")
        frames = frames.permute(0, 3, 1, 2).to(dtype) / 255.0
    elif frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise ValueError(f"float frames must be (F, 3, H, W), got {tuple(frames.shape)}")
    return frames.to(device=device, dtype=dtype)


class NonFiniteOutputError(ValueError):
    """A model produced NaN or infinite values (corrupt weights, a diverged fit, an overflow in half precision)."""


def check_finite(x: torch.Tensor, what: str = "the model",
                 why: str = "its weights may be corrupt or its computation overflowed") -> torch.Tensor:
    """``x`` unchanged if every value is finite; else :class:`NonFiniteOutputError` naming ``what`` produced it
    (and ``why`` that may be).

    Called on a method's float output before :func:`to_uint8_frames`, which would turn NaN into black silently.
    """
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteOutputError(f"{what} produced non-finite values (NaN/inf); {why}")
    return x


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [0, 1] -> uint8 of the same shape, rounded (values outside [0, 1] clipped)."""
    return x.detach().float().clamp(0, 1).mul(255.0).round().to(torch.uint8)


def to_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    """float (F, 3, H, W) in [0, 1] -> uint8 (F, H, W, 3), rounded."""
    return to_uint8(frames).permute(0, 2, 3, 1).cpu().numpy()


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the last two dims up to a multiple (bottom/right); returns the padded tensor and the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        m = mode if (mode != "reflect" or (ph < h and pw < w)) else "replicate"
        lead = x.shape[:-2]
        x = F.pad(x.reshape(-1, *x.shape[-3:]) if x.ndim > 4 else x, (0, pw, 0, ph), mode=m)
        x = x.reshape(*lead, *x.shape[-2:])
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x[..., : size[0], : size[1]]
