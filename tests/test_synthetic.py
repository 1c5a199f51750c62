import numpy as np
import pytest
from scipy.stats import spearmanr

from vdiffdeblur.blur import apply_kernel
from vdiffdeblur.data.synthetic import (
    BUILTIN_PHOTOS,
    EVAL_PHOTOS,
    TRAIN_PHOTOS,
    ShakeConfig,
    load_photo,
    synthesize_shake,
)
from vdiffdeblur.frames import as_frames_tensor
from vdiffdeblur.metrics import psnr


def test_shapes_seed_and_blur_range(shake_clip):
    c = shake_clip
    assert c.blurry.shape == c.sharp.shape == (24, 120, 160, 3) and c.blurry.dtype == np.uint8
    assert len(c.blur_extent) == 24 and len(c.offsets) == 24
    again = synthesize_shake("builtin:coffee", ShakeConfig(num_frames=24, width=160, height=120), seed=3)
    np.testing.assert_array_equal(again.blurry, c.blurry)
    other = synthesize_shake("builtin:coffee", ShakeConfig(num_frames=24, width=160, height=120), seed=4)
    assert not np.array_equal(other.blurry, c.blurry)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calm_and_burst_frames(seed):
    c = synthesize_shake("builtin:chelsea", ShakeConfig(num_frames=40, width=160, height=120), seed=seed)
    assert c.blur_extent.min() < 1.5, "no nearly sharp frame"
    assert c.blur_extent.max() > 6.0, "no badly blurred frame"
    p = psnr(c.blurry, c.sharp)
    assert spearmanr(c.blur_extent, -p).statistic > 0.7  # more motion, more blur
    assert p[np.argmin(c.blur_extent)] > 35


def test_translation_only_kernel_reproduces_the_blur():
    cfg = ShakeConfig(num_frames=10, width=160, height=120, rotation_deg=0.0, zoom=0.0, noise_sigma=0.0)
    c = synthesize_shake("builtin:astronaut", cfg, seed=2)
    i = int(np.argmax(c.blur_extent))
    k = c.kernel(i)
    assert abs(k.sum() - 1) < 1e-5
    rec = apply_kernel(as_frames_tensor(c.sharp[i]), k)
    crop = slice(20, -20)
    ref = as_frames_tensor(c.blurry[i])
    err = float(((rec - ref)[..., crop, crop] ** 2).mean())
    assert 10 * np.log10(1 / err) > 35, "the exported kernel does not explain the blur"
    assert psnr(c.blurry[i:i + 1], c.sharp[i:i + 1])[0] < 30  # while the frame really is blurred


def test_photo_split_and_sources():
    assert not set(TRAIN_PHOTOS) & set(EVAL_PHOTOS)
    assert set(TRAIN_PHOTOS) | set(EVAL_PHOTOS) <= set(BUILTIN_PHOTOS)
    for name in BUILTIN_PHOTOS:
        img = load_photo(f"builtin:{name}")
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    with pytest.raises(ValueError, match="unknown built-in"):
        load_photo("builtin:nope")


def test_sharp_video_source():
    frames = np.stack([load_photo("coffee")[i:i + 200, 2 * i:2 * i + 300] for i in range(6)])
    c = synthesize_shake(frames, ShakeConfig(num_frames=6, width=96, height=64), seed=0)
    assert c.blurry.shape == (6, 64, 96, 3)
    with pytest.raises(ValueError, match="fewer"):
        synthesize_shake(frames, ShakeConfig(num_frames=8, width=96, height=64))
