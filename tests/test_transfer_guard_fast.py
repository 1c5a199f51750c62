"""The working-size path of sharp-frame transfer and the guard (frames above ``work_size``) against the exact one."""

import cv2
import numpy as np
import pytest

from vdiffdeblur.blur import blur_image, fit_linear_kernel, linear_motion_kernel
from vdiffdeblur.data.synthetic import ShakeConfig, load_photo, synthesize_shake
from vdiffdeblur.flow import warp
from vdiffdeblur.methods.guard import DoNoHarmGuard, GuardConfig
from vdiffdeblur.methods.stream import run
from vdiffdeblur.methods.transfer import SharpTransfer, TransferConfig
from vdiffdeblur.metrics import psnr
from vdiffdeblur.pair_cache import PairCache
from vdiffdeblur.sharpness import PairMeasure, gradient_energy, gray_float, pooled_gradient_energy
from vdiffdeblur.workres import change_box, upscale_flow, warp_box, working_scale


@pytest.fixture(scope="module")
def shake():
    return synthesize_shake("motorcycle", ShakeConfig(num_frames=8, width=224, height=128), seed=1)


def _guarded(clip, work_size):
    g = DoNoHarmGuard(SharpTransfer(TransferConfig(radius=2, work_size=work_size)),
                      GuardConfig(radius=2, work_size=work_size))
    return run(g, clip), g.log


def test_at_or_below_the_cap_is_the_exact_path(shake):
    clip = shake.blurry[:5, :96, :128]  # long side 128 = the cap
    exact = run(SharpTransfer(TransferConfig(radius=2, work_size=0)), clip)
    np.testing.assert_array_equal(run(SharpTransfer(TransferConfig(radius=2, work_size=128)), clip), exact)
    assert not np.array_equal(exact, clip)  # the clip is one transfer changes
    g_exact, _ = _guarded(clip, 0)
    np.testing.assert_array_equal(_guarded(clip, 128)[0], g_exact)


def test_working_size_path_matches_the_exact_one(shake):
    exact, log_e = _guarded(shake.blurry, 0)
    fast, log_f = _guarded(shake.blurry, 112)  # decisions at half size, blend at full size
    untouched = [bool((f == b).all()) for f, b in zip(exact, shake.blurry)]
    assert untouched == [bool((f == b).all()) for f, b in zip(fast, shake.blurry)]
    assert 0 < sum(untouched) < len(untouched)
    changed = ~np.array(untouched)
    assert psnr(fast, exact)[changed].min() >= 30.0  # measured 34.6-39 on this clip
    skipped = ["unchanged" in f for f in log_f]  # the working path skips frames the method left alone
    assert any(skipped) and all(u for u, k in zip(untouched, skipped) if k)
    np.testing.assert_allclose([e["beta_frame"] for e, f in zip(log_e, log_f) if "beta_frame" in f],
                               [f["beta_frame"] for f in log_f if "beta_frame" in f], atol=0.05)
    before = psnr(shake.blurry, shake.sharp)
    gain_e, gain_f = (psnr(o, shake.sharp) - before for o in (exact, fast))
    assert gain_f.sum() >= 0.8 * gain_e.sum() > 5.0, (gain_f, gain_e)
    assert gain_f.min() > -0.3  # no frame made worse


def test_working_scale_and_flow_upscaling():
    assert working_scale((1080, 1920, 3), 480) == 0.25 and working_scale((240, 320, 3), 480) == 1.0
    assert working_scale((1080, 1920), 0) == 1.0
    small = np.zeros((27, 48, 2), np.float32)
    small[..., 0], small[..., 1] = 1.5, -0.5
    up = upscale_flow(small, (108, 192))
    assert up.shape == (108, 192, 2)
    np.testing.assert_allclose(up[..., 0], 6.0, atol=1e-5)
    np.testing.assert_allclose(up[..., 1], -2.0, atol=1e-5)


def test_warp_box_is_the_warp_inside_the_box():
    img = load_photo("astronaut")[:90, :120]
    flow = np.random.default_rng(0).normal(0, 2, (90, 120, 2)).astype(np.float32)
    box = (slice(10, 50), slice(30, 100))
    np.testing.assert_array_equal(warp_box(img, flow, box, cv2.INTER_CUBIC), warp(img, flow, cv2.INTER_CUBIC)[box])


def test_change_box_covers_the_weights():
    w = np.zeros((27, 48), np.float32)
    assert change_box(w, (108, 192)) is None
    w[10:12, 20:25] = 0.5
    rows, cols = change_box(w, (108, 192), margin=1)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (36, 52, 76, 104)


def test_pooled_energy_keeps_the_full_size_mean():
    frame = load_photo("coffee")[:120, :160]
    e = pooled_gradient_energy(frame, (40, 30))
    assert e.shape == (30, 40)
    assert np.isclose(e.mean(), gradient_energy(gray_float(frame)).mean(), rtol=1e-4)


def test_pair_cache_is_the_measure_either_way_round():
    img = load_photo("chelsea")
    a, b = img[40:136, 40:168], img[43:139, 45:173]
    b = cv2.blur(b, (5, 1))
    cache = PairCache()
    fa, fb = cache.frame(a, 0.5), cache.frame(b, 0.5)
    m = cache.measure(fa, fb, 0.5)
    ref = PairMeasure(fa.gray, fb.gray, 0.5, fa.energy, fb.energy)
    assert m.log_ratio == ref.log_ratio < -0.2  # b is the blurrier
    np.testing.assert_array_equal(m.flow_ts, ref.flow_ts)
    back = cache.measure(fb, fa, 0.5)
    assert (cache.hits, cache.misses) == (1, 1)
    assert back.log_ratio == -m.log_ratio and back.overlap == m.overlap
    np.testing.assert_array_equal(back.flow_ts, ref.flow_st)


def test_fast_kernel_fit_finds_the_same_kernel():
    img = gray_float(load_photo("coffee")[:128, :160])
    for length, angle in ((0, 0.0), (6, 30.0), (11, 120.0)):
        blurry = blur_image(img, linear_motion_kernel(length, angle))
        exact = fit_linear_kernel(img, blurry, scale=1.0)[:2]
        assert fit_linear_kernel(img, blurry, scale=1.0, fast=True)[:2] == exact == (length, angle)
        assert fit_linear_kernel(img, blurry, fast=True)[:2] == fit_linear_kernel(img, blurry)[:2]
