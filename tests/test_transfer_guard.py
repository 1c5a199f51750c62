import cv2
import numpy as np
import pytest
from scipy.stats import spearmanr

from vdiffdeblur.blur import apply_kernel, linear_motion_kernel
from vdiffdeblur.data.synthetic import ShakeConfig, load_photo, synthesize_shake
from vdiffdeblur.evaluation import score
from vdiffdeblur.frames import as_frames_tensor, to_uint8_frames
from vdiffdeblur.methods.guard import guard
from vdiffdeblur.methods.transfer import SharpTransfer, TransferConfig, sharp_frame_transfer
from vdiffdeblur.metrics import psnr
from vdiffdeblur.sharpness import laplacian_variance, relative_sharpness


@pytest.fixture(scope="module")
def panning_clip():
    """A slowly panning sharp clip (2 px/frame) with frame 6 motion-blurred (11 px)."""
    img = load_photo("coffee")
    sharp = np.stack([img[60:204, 40 + 2 * i:232 + 2 * i] for i in range(12)])
    blurry = sharp.copy()
    blurry[6] = to_uint8_frames(apply_kernel(as_frames_tensor(sharp[6]), linear_motion_kernel(11, 30)))[0]
    return sharp, blurry


def test_static_sharp_clip_passes_unchanged():
    img = load_photo("chelsea")[:96, :128]
    clip = np.repeat(img[None], 6, axis=0)
    out = sharp_frame_transfer(clip)
    assert np.abs(out.astype(int) - clip).max() <= 1
    over = np.clip(clip.astype(np.int16) + 25, 0, 255).astype(np.uint8)  # a method that changed everything
    g = guard(clip, over)
    assert np.abs(g.astype(int) - clip).max() <= 1


def test_transfer_repairs_the_blurred_frame_and_spares_the_sharp(panning_clip):
    sharp, blurry = panning_clip
    out = sharp_frame_transfer(blurry)
    before, after = psnr(blurry, sharp), psnr(out, sharp)
    assert after[6] - before[6] >= 5.0, (before[6], after[6])
    others = [i for i in range(12) if i != 6]
    # the sharp frames are untouched (inf PSNR before: they equal the truth) or within 0.1 dB
    assert np.all((after[others] == np.inf) | (after[others] >= before[others] - 0.1))
    assert np.abs(out[others].astype(int) - sharp[others]).max() <= 1


def test_guard_keeps_a_real_repair(panning_clip):
    sharp, blurry = panning_clip
    repaired = sharp_frame_transfer(blurry)
    g = guard(blurry, repaired)
    p = psnr(g, sharp)
    assert p[6] - psnr(blurry, sharp)[6] >= 5.0


@pytest.mark.parametrize("shape", [(1, 40, 30), (2, 23, 37), (5, 17, 64)])
def test_any_size_and_length(shape):
    n, h, w = shape
    img = load_photo("astronaut")
    clip = np.stack([img[100 + i:100 + i + h, 200 + 2 * i:200 + 2 * i + w] for i in range(n)])
    clip[n // 2] = cv2.blur(clip[n // 2], (5, 1))
    out = sharp_frame_transfer(clip)
    assert out.shape == clip.shape and out.dtype == np.uint8
    g = guard(clip, out)
    assert g.shape == clip.shape
    if n == 1:
        np.testing.assert_array_equal(out, clip)
        np.testing.assert_array_equal(g, clip)


def test_streaming_equals_whole_clip(panning_clip):
    _, blurry = panning_clip
    whole = sharp_frame_transfer(blurry, TransferConfig(radius=3))
    s = SharpTransfer(TransferConfig(radius=3))
    got, ready_at = [], []
    for i, f in enumerate(blurry):
        r = s.push([f])
        ready_at.append(len(r))
        got += r
    got += s.flush()
    np.testing.assert_array_equal(np.stack(got), whole)
    assert ready_at[:3] == [0, 0, 0] and ready_at[3] == 1  # radius frames of look-ahead
    assert len(s.buf) <= 7  # memory bounded by the window


def test_relative_sharpness_beats_laplacian_variance_while_panning():
    rel, lap = [], []
    for photo, seed in (("coffee", 1), ("motorcycle", 1)):
        c = synthesize_shake(photo, ShakeConfig(num_frames=30, width=192, height=144, pan_px_per_frame=(6, 8)),
                             seed=seed)
        rel.append(spearmanr(-relative_sharpness(c.blurry), c.blur_extent).statistic)
        lap.append(spearmanr(-np.log(laplacian_variance(c.blurry).numpy()), c.blur_extent).statistic)
    assert np.mean(rel) > np.mean(lap) + 0.05, (rel, lap)
    assert min(rel) > 0.7


def _usm(frames, amount, sigma):
    x = frames.astype(np.float32)
    blur = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in x])
    return np.clip(x + amount * (x - blur), 0, 255).round().astype(np.uint8)


def test_guard_cuts_harm_of_an_over_sharpening_method():
    """Stand-in method: the truth, over-sharpened. It gains a lot on blurry frames and ruins sharp ones."""
    c = synthesize_shake("chelsea", ShakeConfig(num_frames=30, width=192, height=144), seed=0)
    y = _usm(c.sharp, 1.0, 1.5)
    before = score(y, c.sharp, blurry=c.blurry, blur_score=c.blur_extent, with_ewarp=False)
    after = score(guard(c.blurry, y), c.sharp, blurry=c.blurry, blur_score=c.blur_extent, with_ewarp=False)
    assert before.frames_worse() >= 5  # the stand-in really does harm
    assert after.frames_worse() <= 0.05 * 30
    assert after.gain("hard") >= 0.9 * before.gain("hard")


def test_cli_transfer_end_to_end(tmp_path):
    import subprocess
    import sys

    from vdiffdeblur.video import read_video

    clip = tmp_path / "clip"
    cli = [sys.executable, "-m", "vdiffdeblur.cli"]
    assert subprocess.run(cli + ["synth", "builtin:motorcycle", "-o", str(clip), "--frames", "16", "--size", "128x96",
                                 "--seed", "1"], capture_output=True).returncode == 0
    outs = {}
    for flag in ([], ["--no-guard"]):
        out = tmp_path / f"t{len(flag)}.mkv"
        r = subprocess.run(cli + ["deblur", str(clip / "blur.mkv"), "-o", str(out), "--method", "transfer",
                                  "--lossless", *flag], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs[bool(flag)] = read_video(out).frames
    sharp, blurry = read_video(clip / "sharp").frames, read_video(clip / "blur.mkv").frames
    for frames in outs.values():
        s = score(frames, sharp, blurry=blurry, with_ewarp=False)
        assert frames.shape == blurry.shape
        assert s.gain("hard") > 0.5 and s.frames_worse() == 0
