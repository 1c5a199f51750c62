import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vdiffdeblur.metrics import lpips, psnr, ssim, warping_error


def test_psnr_ssim_agree_with_skimage(shake_clip):
    a, b = shake_clip.blurry[:6], shake_clip.sharp[:6]
    p, s = psnr(a, b), ssim(a, b)
    for i in range(6):
        assert p[i] == pytest.approx(peak_signal_noise_ratio(b[i], a[i], data_range=255), abs=1e-3)
        ref = structural_similarity(b[i], a[i], channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=255)
        assert s[i] == pytest.approx(ref, abs=1e-3)
    # float tensors in [0, 1] give the same
    t = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255
    u = torch.from_numpy(b).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_allclose(psnr(t, u), p, atol=1e-3)
    assert np.isinf(psnr(a, a)).all() and np.allclose(ssim(a, a), 1.0)
    with pytest.raises(ValueError, match="shape"):
        psnr(a, b[:5])


def test_warping_error_static_and_flicker(natural_clip):
    static = np.repeat(natural_clip[:1], 5, axis=0)
    assert warping_error(static) < 1e-6
    moving = natural_clip[:6]
    base = warping_error(moving)
    gains = np.array([1.0, 1.15, 0.9, 1.1, 0.85, 1.0])[:, None, None, None]
    flicker = np.clip(moving * gains, 0, 255).astype(np.uint8)
    stronger = np.clip(moving * (1 + 2 * (gains - 1)), 0, 255).astype(np.uint8)
    e1, e2 = warping_error(flicker, flow_frames=moving), warping_error(stronger, flow_frames=moving)
    assert base < e1 < e2
    assert warping_error(moving[:1]) == 0.0


def test_lpips_needs_local_weights(tmp_path, natural_clip):
    with pytest.raises(ValueError, match="nothing is downloaded"):
        lpips(natural_clip[:1], natural_clip[1:2])
    from safetensors.torch import save_file

    from vdiffdeblur.models.vgg import LPIPSVGG

    net = LPIPSVGG()
    sd = {f"features.{k}": v for k, v in net.vgg.features.state_dict().items()}
    sd.update({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPSVGG.CHANNELS)})
    save_file(sd, str(tmp_path / "lpips.safetensors"))
    same = lpips(natural_clip[:2], natural_clip[:2], weights=tmp_path / "lpips.safetensors")
    diff = lpips(natural_clip[:2], natural_clip[2:4], weights=tmp_path / "lpips.safetensors")
    assert np.allclose(same, 0, atol=1e-6) and (diff > 0).all()
    del sd["lin3.model.1.weight"]
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="lin3"):
        lpips(natural_clip[:1], natural_clip[1:2], weights=tmp_path / "bad.safetensors")
