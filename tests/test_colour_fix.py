"""The colour fix (wavelet / AdaIN): a colour-shifted output is pulled back to the input's low frequencies or
statistics, its fine detail is kept, and an output equal to its input is left alone; in the pipeline and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vdiffdeblur.colour_fix import adain_color_fix, apply_color_fix, check_color_fix, wavelet_color_fix, wavelet_low
from vdiffdeblur.pipelines.tiny import make_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_video(b=1, f=3, h=32, w=40) -> torch.Tensor:
    """(B, 3, F, H, W) in [0.2, 0.8]: slow ramps and a wide sinusoid, different per channel and frame."""
    y = torch.linspace(0, 1, h).view(h, 1)
    x = torch.linspace(0, 1, w).view(1, w)
    planes = []
    for c in range(3):
        for i in range(f):
            planes.append(0.5 + 0.15 * torch.sin(2.0 * x + 1.5 * y + c + 0.3 * i) + 0.1 * (x - y) * (c - 1))
    return torch.stack(planes).view(3, f, h, w).unsqueeze(0).repeat(b, 1, 1, 1, 1)


def checkerboard(shape, amplitude=0.05) -> torch.Tensor:
    h, w = shape[-2:]
    board = (torch.arange(h).view(h, 1) + torch.arange(w).view(1, w)) % 2 * 2.0 - 1.0
    return amplitude * board.expand(shape)


def colour_shift(video: torch.Tensor) -> torch.Tensor:
    gain = torch.tensor([0.8, 1.1, 0.9]).view(1, 3, 1, 1, 1)
    offset = torch.tensor([0.1, -0.08, 0.05]).view(1, 3, 1, 1, 1)
    return video * gain + offset


def test_wavelet_pulls_colours_back_and_keeps_detail():
    ref = smooth_video()
    detail = checkerboard(ref.shape)
    out = colour_shift(ref) + detail  # the generative pass's detail plus a colour cast
    fixed = wavelet_color_fix(out, ref)
    target = ref + detail
    # the cast is gone: channel means and the low band are the input's
    assert (fixed.mean(dim=(-2, -1)) - target.mean(dim=(-2, -1))).abs().max() < 0.01
    assert (wavelet_low(fixed) - wavelet_low(ref)).abs().mean() < 0.01
    assert (fixed - target).abs().mean() < 0.25 * (out - target).abs().mean()
    # the detail is kept: the checkerboard's amplitude in the fixed output
    assert ((fixed - wavelet_low(fixed)) * detail.sign()).mean() == pytest.approx(0.05, abs=0.005)


def test_adain_matches_input_statistics_and_keeps_detail():
    ref = smooth_video()
    detail = checkerboard(ref.shape)
    out = colour_shift(ref) + detail
    fixed = adain_color_fix(out, ref)
    for stat in (lambda v: v.mean(dim=(-2, -1)), lambda v: v.std(dim=(-2, -1), correction=0)):
        assert torch.allclose(stat(fixed), stat(ref), atol=1e-4)
    # per channel and frame an increasing affine map of the output: its detail is all there, rescaled
    a, b = fixed.flatten(-2), out.flatten(-2)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    corr = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    assert corr.min() > 0.9999


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_identity_when_output_equals_input(method):
    ref = smooth_video() + checkerboard(smooth_video().shape)
    assert torch.allclose(apply_color_fix(ref, ref, method), ref, atol=1e-5)


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_video_layout_equals_per_frame(method):
    ref, out = smooth_video(b=2, f=3), colour_shift(smooth_video(b=2, f=3)) + torch.rand(2, 3, 3, 32, 40) * 0.1
    video = apply_color_fix(out, ref, method)  # (B, C, F, H, W)
    for b in range(2):
        frames = apply_color_fix(out[b].transpose(0, 1), ref[b].transpose(0, 1), method)  # (F, C, H, W)
        assert torch.allclose(video[b].transpose(0, 1), frames, atol=1e-6)
    tiny = torch.rand(1, 3, 1, 3, 5)  # frames smaller than the wavelet's reach
    assert apply_color_fix(tiny, tiny, method).shape == tiny.shape


def test_none_and_bad_values():
    x = smooth_video()
    assert apply_color_fix(x, x * 0, None) is x
    assert check_color_fix("none") is None and check_color_fix("adain") == "adain"
    with pytest.raises(ValueError, match="color_fix must be one of wavelet, adain"):
        check_color_fix("histogram")
    with pytest.raises(ValueError, match="differ"):
        wavelet_color_fix(x, x[:, :, :2])


def test_pipeline_color_fix():
    pipe = make_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    video = (smooth_video(f=4, h=24, w=32)[0].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)
    kw = dict(num_inference_steps=2, window_size=3, window_overlap=1)
    plain = pipe(video, generator=torch.Generator().manual_seed(0), **kw).frames
    unset = pipe(video, generator=torch.Generator().manual_seed(0), color_fix=None, **kw).frames
    fixed = pipe(video, generator=torch.Generator().manual_seed(0), color_fix="adain", **kw).frames
    assert np.array_equal(plain, unset)
    inp = video.astype(np.float32) / 255
    # the random tiny model shifts colours; AdaIN puts every frame's channel means back (up to the [0, 1] clamp)
    assert np.abs(plain[0].mean(axis=(1, 2)) - inp.mean(axis=(1, 2))).max() > 0.02
    assert np.abs(fixed[0].mean(axis=(1, 2)) - inp.mean(axis=(1, 2))).max() < 0.01
    with pytest.raises(ValueError, match="color_fix"):
        pipe(video, color_fix="adain", output_type="latent", **kw)
    with pytest.raises(ValueError, match="color_fix must be one of"):
        pipe(video, color_fix="hist", **kw)
