import numpy as np
import pytest
import torch

from vdiffdeblur.blur import (
    apply_kernel,
    average_subframes,
    kernel_centroid,
    kernel_extent,
    linear_motion_kernel,
    linear_to_srgb,
    random_trajectory_kernel,
    srgb_to_linear,
)
from vdiffdeblur.frames import as_frames_tensor


@pytest.mark.parametrize("length", [0.0, 0.7, 1.5, 3.0, 7.3, 12.0, 24.5])
@pytest.mark.parametrize("angle", [0.0, 17.0, 45.0, 90.0, 133.3])
def test_symmetric_kernel_sums_to_one_centred_with_right_spread(length, angle):
    k = linear_motion_kernel(length, angle)
    assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert k.min() >= 0 and abs(k.sum() - 1) < 1e-5
    cx, cy = kernel_centroid(k)
    assert abs(cx) < 0.01 and abs(cy) < 0.01
    if length >= 3:
        # second moment of a uniform line is L^2 / 12; bilinear splatting adds at most 1/4 px^2
        assert kernel_extent(k) == pytest.approx(length, abs=0.5)


def test_kernel_direction_and_asymmetric_centroid():
    k = linear_motion_kernel(10, 0)
    row = (k.shape[0] - 1) // 2
    assert np.allclose(k.sum(1)[row], 1.0, atol=1e-6)  # horizontal: all mass on the centre row
    kv = linear_motion_kernel(10, 90)
    assert np.allclose(kv.sum(0)[row], 1.0, atol=1e-6)
    a = linear_motion_kernel(10, 30, symmetric=False)
    cx, cy = kernel_centroid(a)
    assert abs(a.sum() - 1) < 1e-5
    assert np.hypot(cx, cy) == pytest.approx(5.0, abs=0.05)
    assert cx > 0 and cy < 0  # 30 degrees counter-clockwise from +x, y down
    with pytest.raises(ValueError):
        linear_motion_kernel(10, 0, size=7)
    with pytest.raises(ValueError):
        linear_motion_kernel(-1, 0)


def test_random_trajectory_kernel_seeded():
    a = random_trajectory_kernel(31, generator=5)
    b = random_trajectory_kernel(31, generator=5)
    c = random_trajectory_kernel(31, generator=6)
    assert abs(a.sum() - 1) < 1e-5 and a.shape == (31, 31)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a > 1e-4).sum() > 5  # a path, not a dot


def test_gamma_round_trip_and_curve():
    x = torch.linspace(0, 1, 101)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-5)
    assert float(srgb_to_linear(torch.tensor(0.5))) == pytest.approx(0.214, abs=1e-3)
    np.testing.assert_allclose(srgb_to_linear(np.array([0.5])), [0.2140], atol=1e-3)


def test_apply_kernel_identity_linear_light_and_per_frame(natural_clip):
    x = as_frames_tensor(natural_clip[:3])
    delta = linear_motion_kernel(0, 0)
    assert torch.allclose(apply_kernel(x, delta), x, atol=1e-5)
    k = linear_motion_kernel(9, 20)
    lin, srgb = apply_kernel(x, k, linear_light=True), apply_kernel(x, k, linear_light=False)
    assert lin.shape == x.shape
    # averaging in linear light makes blurred edges brighter than averaging sRGB values
    assert float(lin.mean()) > float(srgb.mean()) + 1e-3
    per = apply_kernel(x, np.stack([delta_pad(delta, k.shape[0]), k, k]))
    assert torch.allclose(per[0], x[0], atol=1e-5) and torch.allclose(per[1], lin[1], atol=1e-5)


def delta_pad(k, size):
    out = np.zeros((size, size), np.float32)
    c, r = size // 2, k.shape[0] // 2
    out[c - r:c + r + 1, c - r:c + r + 1] = k
    return out


def test_apply_kernel_is_a_convolution():
    # an asymmetric kernel pointing right moves a dot's energy to the right of it (convolution, not correlation)
    x = torch.zeros(1, 3, 21, 21)
    x[..., 10, 10] = 1.0
    y = apply_kernel(x, linear_motion_kernel(6, 0, symmetric=False), linear_light=False)
    cols = y[0, 0].sum(0)
    assert float((cols * torch.arange(21)).sum() / cols.sum()) == pytest.approx(13.0, abs=0.05)


def test_average_subframes():
    sub = torch.rand(9, 3, 8, 8)
    blurry, sharp = average_subframes(sub, tau=7)
    assert torch.equal(sharp, sub[3])
    expect = linear_to_srgb(srgb_to_linear(sub[:7]).mean(0))
    assert torch.allclose(blurry, expect)
    b2, _ = average_subframes(sub, tau=7, linear_light=False)
    assert torch.allclose(b2, sub[:7].mean(0))
    with pytest.raises(ValueError):
        average_subframes(sub, tau=10)


@pytest.mark.parametrize("length,angle", [(0, 0), (6, 105), (15, 45)])
def test_fit_linear_kernel_recovers_the_blur_and_ignores_brightness(length, angle):
    from vdiffdeblur.blur import fit_linear_kernel
    from vdiffdeblur.data.synthetic import load_photo

    img = load_photo("coffee")[:200, :300]
    blurred = apply_kernel(as_frames_tensor(img), linear_motion_kernel(length, angle))[0].permute(1, 2, 0).numpy()
    sharp_lin = srgb_to_linear(img.astype(np.float32) / 255).mean(-1)
    blur_lin = srgb_to_linear(blurred).mean(-1)
    L, a, k = fit_linear_kernel(sharp_lin, blur_lin)
    assert abs(L - length) <= 1.0
    if length:
        assert min(abs(a - angle), 180 - abs(a - angle)) <= 15
    # a brighter, higher-contrast copy of the sharp frame is not mistaken for blur
    L2, _, _ = fit_linear_kernel(np.clip(sharp_lin * 1.3 + 0.05, 0, 1), sharp_lin)
    assert L2 <= 1.0
