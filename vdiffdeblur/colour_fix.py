"""Colour fix of a generated frame against its input (StableSR, Upscale-A-Video): the output keeps its own high
frequencies and takes its low frequencies (wavelet) or its per-channel mean and spread (AdaIN) from the input, so a
generative pass cannot shift colours.

Both work on any layout whose last two dims are (H, W) and whose other dims index channels and frames, e.g.
`(B, C, F, H, W)` or `(F, C, H, W)`: statistics and blurs are per channel, per frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: the accepted `color_fix` values (None: no fix)
COLOR_FIXES = ("wavelet", "adain")

#: the levels of StableSR's wavelet decomposition: the low band is what is left after blurs of radius 1..16
WAVELET_LEVELS = 5

_EPS = 1e-5


def _planes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    if x.ndim < 2:
        raise ValueError(f"expected a tensor (..., H, W), got shape {tuple(x.shape)}")
    return x.reshape(-1, 1, *x.shape[-2:]), x.shape


def _dilated_blur(planes: torch.Tensor, dilation: int) -> torch.Tensor:
    """3x3 binomial blur with holes (the à trous wavelet's scaling filter), edges replicated; separable, as shifted
    sums (a 1-channel dilated conv2d is about 20x slower on the CPU)."""
    d = dilation
    # replicate padding (unlike reflect) takes any width, so every level works on frames smaller than its reach
    p = F.pad(planes, [d] * 4, mode="replicate")
    p = (p[..., :-2 * d] + 2 * p[..., d:-d] + p[..., 2 * d:]) / 4
    return (p[..., :-2 * d, :] + 2 * p[..., d:-d, :] + p[..., 2 * d:, :]) / 4


def wavelet_low(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """The low-frequency band of `x` (..., H, W): `x` blurred by `levels` à trous scales (dilation 1, 2, 4, ...)."""
    planes, shape = _planes(x)
    low = planes
    for i in range(levels):
        low = _dilated_blur(low, 2**i)
    return low.reshape(shape)


def wavelet_color_fix(output: torch.Tensor, reference: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """`output`'s high frequencies plus `reference`'s low frequencies (same shape, computed in float32)."""
    _check_pair(output, reference)
    out = output.float()
    # the blur is linear: out - low(out) + low(ref) == out - low(out - ref), one decomposition instead of two
    return (out - wavelet_low(out - reference.float(), levels)).to(output.dtype)


def adain_color_fix(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`output` normalised per channel and frame to `reference`'s mean and standard deviation over (H, W)."""
    _check_pair(output, reference)
    out, ref = output.float(), reference.float()
    dims = (-2, -1)
    o_mean, o_std = out.mean(dims, keepdim=True), out.std(dims, keepdim=True, correction=0)
    r_mean, r_std = ref.mean(dims, keepdim=True), ref.std(dims, keepdim=True, correction=0)
    return ((out - o_mean) / (o_std + _EPS) * (r_std + _EPS) + r_mean).to(output.dtype)


def apply_color_fix(output: torch.Tensor, reference: torch.Tensor, method: str | None) -> torch.Tensor:
    """`method` None: `output` unchanged; "wavelet" / "adain": the fix of that name."""
    if method is None:
        return output
    if method == "wavelet":
        return wavelet_color_fix(output, reference)
    if method == "adain":
        return adain_color_fix(output, reference)
    raise ValueError(f"color_fix must be one of {', '.join(COLOR_FIXES)} or None, got {method!r}")


def check_color_fix(method) -> str | None:
    """The `color_fix` value checked; "none" (the CLI's spelling) -> None."""
    if method is None or method == "none":
        return None
    if method not in COLOR_FIXES:
        raise ValueError(f"color_fix must be one of {', '.join(COLOR_FIXES)} or None, got {method!r}")
    return method


def _check_pair(output: torch.Tensor, reference: torch.Tensor) -> None:
    if output.shape != reference.shape:
        raise ValueError(f"colour fix: output {tuple(output.shape)} and reference {tuple(reference.shape)} differ")
