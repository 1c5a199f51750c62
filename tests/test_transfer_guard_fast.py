"""The working-size path of sharp-frame transfer and the guard (frames above ``work_size``) against the exact one."""

import threading

import cv2
import numpy as np
import pytest

from vdiffdeblur.blur import blur_image, fit_linear_kernel, linear_motion_kernel, srgb_to_linear
from vdiffdeblur.data.synthetic import ShakeConfig, load_photo, synthesize_shake
from vdiffdeblur.flow import consistency, warp
from vdiffdeblur.methods.guard import DoNoHarmGuard, GuardConfig
from vdiffdeblur.methods.stream import run
from vdiffdeblur.methods.transfer import SharpTransfer, TransferConfig
from vdiffdeblur.metrics import psnr
from vdiffdeblur.pair_cache import PairCache
from vdiffdeblur.sharpness import PairMeasure, gradient_energy, gray_float, pooled_gradient_energy
from vdiffdeblur.workres import bytes_to_linear, change_box, upscale_flow, warp_box, working_scale


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


def test_large_frames_repaired_two_at_a_time_equal_one_by_one(shake):
    clip = shake.blurry  # above the cap of 112: the working-size path, repaired in worker threads
    one = SharpTransfer(TransferConfig(radius=2, work_size=112), workers=1)
    two = SharpTransfer(TransferConfig(radius=2, work_size=112), workers=2)
    ready_one = [len(one.push([f])) for f in clip]
    ready_two = [len(two.push([f])) for f in clip]
    assert (one.workers, two.workers) == (1, 2)
    assert ready_one == [0, 0] + [1] * (len(clip) - 2)
    assert ready_two == [0, 0, 0] + [1] * (len(clip) - 3)  # one push later: the next frame's repair runs meanwhile
    assert two.flush().__len__() == 3 and len(two.weights) == len(clip)
    np.testing.assert_array_equal(run(SharpTransfer(TransferConfig(radius=2, work_size=112), workers=2), clip),
                                  run(SharpTransfer(TransferConfig(radius=2, work_size=112), workers=1), clip))
    assert SharpTransfer(TransferConfig(radius=2), workers=2).push([clip[0]]) == []
    small = SharpTransfer(TransferConfig(radius=2, work_size=0), workers=2)
    assert [len(small.push([f])) for f in clip[:4]] == [0, 0, 1, 1]  # at or below the cap: one by one


def test_guard_measures_ahead_in_the_background_equal_the_inline_ones(shake, monkeypatch):
    clip = shake.blurry
    ahead, _ = _guarded(clip, 112)
    monkeypatch.setattr(DoNoHarmGuard, "_ahead", lambda self, frames: None)
    inline, _ = _guarded(clip, 112)
    np.testing.assert_array_equal(ahead, inline)


def test_pair_cache_frame_is_kept_by_array_and_bounded():
    img = load_photo("chelsea")[:96, :128]
    cache = PairCache(max_pairs=2, max_frames=3)
    f = cache.frame(img, 0.5)
    assert cache.frame(img, 0.5) is f and cache.frame(img.copy(), 0.5) is not f
    frames = [np.roll(img, 3 * i, axis=1) for i in range(6)]
    works = [cache.frame(x, 0.5) for x in frames]
    assert len(cache._frames) == 3 and len(cache._energy) == 3
    for a, b in zip(works, works[1:]):
        cache.measure(a, b, 0.5)
    assert len(cache._pairs) == 2 and cache.misses == 5


def test_pair_cache_measures_a_pair_once_across_threads():
    img = load_photo("coffee")[:96, :128]
    cache = PairCache()
    frames = [img, np.roll(img, 4, axis=1), np.roll(img, 8, axis=1)]
    first = cache.ahead(frames[0], 0.5, [], 0.5)
    second = cache.ahead(frames[1], 0.5, [first], 0.5)
    third = cache.ahead(frames[2], 0.5, [first, second], 0.5)
    w = third.result()
    assert cache.frame(frames[2], 0.5) is w  # what the background made is what the caller gets
    assert (cache.hits, cache.misses) == (0, 3)
    m = cache.measure(cache.frame(frames[0], 0.5), w, 0.5)  # measured ahead: from memory
    assert (cache.hits, cache.misses) == (1, 3)
    ref = PairCache().measure(first.result(), w, 0.5)  # the same pair measured inline
    assert m.log_ratio == ref.log_ratio and m.overlap == ref.overlap
    np.testing.assert_array_equal(m.flow_ts, ref.flow_ts)
    results, barrier = [], threading.Barrier(4)
    a, b = cache.frame(frames[1], 0.5), cache.frame(frames[0], 0.5)
    fresh = PairCache()

    def ask():
        barrier.wait()
        results.append(fresh.measure(a, b, 0.25))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fresh.misses == 1 and fresh.hits == 3  # computed by one thread, waited for by the others
    assert len({r.log_ratio for r in results}) == 1


def test_helpers_equal_their_plain_forms():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    np.testing.assert_array_equal(bytes_to_linear(img), srgb_to_linear(img.astype(np.float32) / 255.0))
    fwd, bwd = (rng.normal(0, 2, (40, 60, 2)).astype(np.float32) for _ in range(2))
    d = fwd + warp(bwd, fwd)
    np.testing.assert_array_equal(consistency(fwd, bwd), np.exp(-(d ** 2).sum(-1) / 2.0).astype(np.float32))
    small = rng.normal(0, 1, (10, 15, 2)).astype(np.float32)
    up = upscale_flow(small, (40, 60))
    ref = cv2.resize(small, (60, 40), interpolation=cv2.INTER_LINEAR)
    ref[..., 0] *= 4.0
    ref[..., 1] *= 4.0
    np.testing.assert_array_equal(up, ref)
    box = (slice(5, 30), slice(7, 50))
    scratch = up.copy()
    np.testing.assert_array_equal(warp_box(img, scratch, box, flow_is_scratch=True),
                                  warp(img, up, cv2.INTER_CUBIC)[box])
    assert not np.array_equal(scratch, up)  # the scratch flow became the coordinate map


def test_guard_outputs_in_worker_threads_equal_one_by_one(shake):
    clip = shake.blurry

    def guarded(workers):
        g = DoNoHarmGuard(SharpTransfer(TransferConfig(radius=2, work_size=112), workers=workers),
                          GuardConfig(radius=2, work_size=112), workers=workers)
        ready = [len(g.push([f])) for f in clip]
        return ready, len(g.flush()), g

    ready_one, rest_one, one = guarded(1)
    ready_two, rest_two, two = guarded(2)
    assert (one.workers, two.workers) == (1, 2)
    assert not one.ahead and len(two.ahead) == 3  # one thread: no measures ahead in the background either
    assert ready_one == [0] * 4 + [1] * (len(clip) - 4)  # transfer's 2 frames of look-ahead, then the guard's 2
    assert ready_two == [0] * 6 + [1] * (len(clip) - 6)  # one push more in each
    assert (rest_one, rest_two) == (4, 6)
    assert [e.get("kept") for e in one.log] == [e.get("kept") for e in two.log] and len(two.log) == len(clip)
    np.testing.assert_array_equal(_guarded(clip, 112)[0], run(DoNoHarmGuard(
        SharpTransfer(TransferConfig(radius=2, work_size=112), workers=1), GuardConfig(radius=2, work_size=112),
        workers=1), clip))
