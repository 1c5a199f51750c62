"""Layered scenes with object motion (vdiffdeblur.data.layered) and every trainer's dataset drawing them."""

import json
from dataclasses import replace

import numpy as np
import pytest

from vdiffdeblur.blur import linear_to_srgb, srgb_to_linear
from vdiffdeblur.data.layered import LayeredConfig, synthesize_layered
from vdiffdeblur.data.shake_dataset import SyntheticShakeDataset
from vdiffdeblur.data.synthetic import EVAL_PHOTOS, ShakeConfig
from vdiffdeblur.metrics import psnr

STILL_CAMERA = ShakeConfig(shake_px=0.0, rotation_deg=0.0, zoom=0.0, pan_px_per_frame=(0.0, 0.0))


def _tiny(**kw) -> LayeredConfig:
    base = dict(num_frames=5, width=48, height=40, num_objects=(2, 3), static_fraction=0.0, noise_sigma=0.0,
                speed_px=(6.0, 10.0), max_subframes=24)
    base.update(kw)
    return LayeredConfig(**base)


def _photos(rng_seed: int = 0, n: int = 2, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(rng_seed)
    return [rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8) for _ in range(n)]


def test_same_seed_same_clip_other_seed_other_clip():
    photos = _photos()
    a, b = (synthesize_layered(photos, _tiny(noise_sigma=1 / 255), seed=3) for _ in range(2))
    c = synthesize_layered(photos, _tiny(noise_sigma=1 / 255), seed=4)
    np.testing.assert_array_equal(a.blurry, b.blurry)
    np.testing.assert_array_equal(a.sharp, b.sharp)
    np.testing.assert_array_equal(a.blur_extent, b.blur_extent)
    assert a.blurry.shape == a.sharp.shape == (5, 40, 48, 3) and a.blurry.dtype == np.uint8
    assert not np.array_equal(a.sharp, c.sharp)


def test_objects_occlude_and_uncover_the_background():
    clip = synthesize_layered(_photos(), _tiny(camera=STILL_CAMERA, speed_px=(12.0, 12.0)), seed=1)
    own = clip.owner
    assert own.max() >= 1  # objects are in view
    changed = own[1:] != own[:-1]
    assert changed.any()  # some pixels change owner between frames
    uncovered = (own[:-1] >= 1) & (own[1:] == 0)
    assert uncovered.any()  # disocclusion: background comes back where an object was
    # where the owner changed, the sharp content changed too
    diff = np.abs(clip.sharp[1:].astype(int) - clip.sharp[:-1].astype(int)).sum(-1)
    assert diff[changed].mean() > diff[~changed].mean()


def test_blurry_frame_is_the_linear_light_mean_of_its_subframes():
    clip = synthesize_layered(_photos(), _tiny(speed_px=(15.0, 15.0)), seed=2)
    i = int(np.argmax(clip.blur_extent))
    times = clip.subframe_times[i]
    assert len(times) >= 9 and np.isclose(times[-1] - times[0], clip.config.exposure)
    subs = np.stack([clip.scene.render(float(t), i)[0] for t in times])  # linear light
    expected = (np.clip(linear_to_srgb(subs.mean(0)), 0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.abs(clip.blurry[i].astype(int) - expected.astype(int)).max() <= 1
    # averaging the sRGB values instead gives a different (darker) frame: the light really is linear here
    srgb_mean = (np.clip(linear_to_srgb(subs), 0, 1).mean(0) * 255 + 0.5).astype(np.uint8)
    assert np.abs(clip.blurry[i].astype(int) - srgb_mean.astype(int)).max() > 2
    sharp = clip.scene.render(float(i), i)[0]
    np.testing.assert_allclose(srgb_to_linear(clip.sharp[i] / 255.0), sharp, atol=0.01)


def test_a_static_scene_is_not_blurred():
    cfg = _tiny(camera=STILL_CAMERA).still()
    clip = synthesize_layered(_photos(), cfg, seed=5)
    assert all(o["static"] for o in clip.objects)
    assert np.abs(clip.blurry.astype(int) - clip.sharp.astype(int)).max() <= 1
    np.testing.assert_allclose(clip.blur_extent, 0.0, atol=1e-6)
    np.testing.assert_allclose(clip.blur_extent_max, 0.0, atol=1e-6)
    np.testing.assert_allclose(clip.camera_extent, 0.0, atol=1e-6)


def test_blur_extent_grows_with_speed():
    # the same scene (same seed) at three speeds; frame 1 is the middle of the clip, where every object is in view
    photos = _photos()
    clips = [synthesize_layered(photos, _tiny(camera=STILL_CAMERA, speed_px=(v, v), num_frames=3), seed=7)
             for v in (2.0, 8.0, 24.0)]
    ext_max = [float(c.blur_extent_max[1]) for c in clips]
    ext_mean = [float(c.blur_extent[1]) for c in clips]
    assert 0 < ext_max[0] < ext_max[1] < ext_max[2] and ext_max[2] > 5 * ext_max[0]
    assert ext_mean[0] < ext_mean[1] < ext_mean[2]
    assert max(c.camera_extent[1] for c in clips) < 1e-6  # all of it is the objects' own motion
    quality = [float(psnr(c.blurry[1:2], c.sharp[1:2])[0]) for c in clips]
    assert quality[0] > quality[1] > quality[2]  # faster objects, blurrier frames


def test_steady_camera_only_pans():
    photos = _photos()
    shaky = [synthesize_layered(photos, _tiny(num_frames=8, still_camera_fraction=0.0), seed=s) for s in (0, 1)]
    steady = [synthesize_layered(photos, _tiny(num_frames=8).steady_camera(), seed=s) for s in (0, 1)]
    pan_reach = 1.2 * 0.5 + 0.01  # the fastest pan over half a frame interval
    assert all(c.camera_extent.max() <= pan_reach for c in steady)
    assert all(c.camera_extent.max() > pan_reach for c in shaky)
    assert all(c.blur_extent.max() > c.camera_extent.max() for c in steady)  # the objects still move


def test_objects_and_background_come_only_from_the_photos_given():
    red, blue = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    cfg = _tiny(procedural_fraction=0.0)
    clip = synthesize_layered([red], cfg, seed=0, background=blue)
    assert all(o["source"] == "photo0" for o in clip.objects)
    assert clip.sharp[..., 1].max() == 0  # nothing but red, blue and their mixtures
    assert clip.sharp[..., 0].max() > 200 and clip.sharp[..., 2].max() > 200
    # the same holds through the dataset: its photo sources are the only photos a layered clip sees
    ds = SyntheticShakeDataset(sources=[blue, red], num_clips=2, clip_len=3, crop=None, seed=1,
                               config=ShakeConfig(width=48, height=40, noise_sigma=0.0), layered_fraction=1.0,
                               layered=replace(cfg, procedural_fraction=0.0))
    for k in range(2):
        _, blurry, sharp, _ = ds.clip(k)
        assert ds.is_layered(k) and sharp[..., 1].max() == 0 and blurry[..., 1].max() == 0


def test_dataset_layered_fraction_keeps_the_shake_clips_and_checks_its_range():
    photos = _photos(n=3)
    kw = dict(num_clips=4, clip_len=3, crop=16, config=ShakeConfig(width=40, height=32), seed=2)
    plain = SyntheticShakeDataset(photos, **kw)
    mixed = SyntheticShakeDataset(photos, layered_fraction=0.5, layered=_tiny(), **kw)
    layered = [k for k in range(4) if mixed.is_layered(k)]
    assert len(layered) == 2
    for k in range(4):
        if k not in layered:  # shake clips are exactly what they were without the option
            np.testing.assert_array_equal(mixed.clip(k)[1], plain.clip(k)[1])
    item = mixed[layered[0]]
    assert item["blurry"].shape == (3, 3, 16, 16) and item["blur_extent"].shape == (3,)
    with pytest.raises(ValueError, match="layered_fraction"):
        SyntheticShakeDataset(photos, layered_fraction=1.5, **kw)


def test_dtb_trainer_draws_layered_clips_from_training_photos_only(tmp_path):
    from test_dtb import _tiny_train_cfg

    from vdiffdeblur.trainer.dtb import build_train_dataset

    ds = build_train_dataset(_tiny_train_cfg(tmp_path, layered_fraction=1.0), num_samples=4)
    assert all(ds.is_layered(k) for k in range(ds.num_clips))
    item = ds[0]
    assert item["blurry"].shape == (3, 3, 24, 24) and not np.array_equal(item["blurry"], item["sharp"])
    with pytest.raises(ValueError, match="evaluation"):
        build_train_dataset(_tiny_train_cfg(tmp_path, layered_fraction=1.0, photos=("astronaut", EVAL_PHOTOS[0])), 4)


def test_diffusion_trainer_draws_layered_clips():
    from vdiffdeblur.trainer.config import DiffusionTrainConfig
    from vdiffdeblur.trainer.data import build_train_dataset

    cfg = DiffusionTrainConfig(pretrained="tiny", photos=("astronaut",), num_clips=2, frames_per_clip=3,
                               clip_len=3, synth_width=40, synth_height=32, crop=16, layered_fraction=1.0)
    view = build_train_dataset(cfg)
    assert all(view.dataset.is_layered(k) for k in range(2))
    assert view[0]["blurry"].shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="layered_fraction"):
        DiffusionTrainConfig(layered_fraction=-0.1)


def test_maml_tasks_take_their_query_from_a_layered_frame():
    import torch

    from vdiffdeblur.trainer.maml import MetaConfig, PhotoTasks

    cfg = MetaConfig(patch_size=24, patches_per_task=2, max_length=6, scales=(0.5,), layered_fraction=1.0)
    tasks = PhotoTasks(["astronaut"], cfg)
    a = tasks.sample(np.random.default_rng(0), torch.Generator().manual_seed(0))
    b = tasks.sample(np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert a.query.shape == a.support.shape == a.target.shape == (2, 3, 24, 24)
    torch.testing.assert_close(a.query, b.query)  # seeded
    assert not torch.equal(a.query, a.support)  # object-motion blur, not the kernel blur of the support
    plain = PhotoTasks(["astronaut"], replace(cfg, layered_fraction=0.0))
    c = plain.sample(np.random.default_rng(0), torch.Generator().manual_seed(0))
    d = PhotoTasks(["astronaut"], MetaConfig(patch_size=24, patches_per_task=2, max_length=6, scales=(0.5,)))
    torch.testing.assert_close(c.query, d.sample(np.random.default_rng(0), torch.Generator().manual_seed(0)).query)
    with pytest.raises(ValueError, match="layered_fraction"):
        MetaConfig(layered_fraction=2.0)


def test_synth_layered_writes_a_clip_whose_extent_eval_uses(tmp_path, capsys):
    from vdiffdeblur.cli import main

    out = tmp_path / "clip"
    assert main(["synth", "builtin:coffee", "-o", str(out), "--motion", "layered", "--frames", "3",
                 "--size", "48x40", "--seed", "1"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["motion"] == "layered" and len(meta["blur_extent"]) == 3 and meta["seed"] == 1
    expected = synthesize_layered(["builtin:coffee"], LayeredConfig(num_frames=3, width=48, height=40), seed=1)
    np.testing.assert_allclose(meta["blur_extent"], expected.blur_extent, atol=1e-3)
    js = tmp_path / "s.json"
    assert main(["eval", str(out / "blur.mkv"), str(out / "sharp"), "--json", str(js), "--no-ewarp"]) == 0
    hard = json.loads(js.read_text())["hard_frames"]
    assert hard == [int(np.argmax(expected.blur_extent))]
    assert main(["synth", "builtin:coffee", "-o", str(tmp_path / "objects"), "--motion", "objects", "--frames", "3",
                 "--size", "48x40", "--seed", "1"]) == 0
    steady = synthesize_layered(["builtin:coffee"], LayeredConfig(num_frames=3, width=48, height=40).steady_camera(),
                                seed=1)
    meta = json.loads((tmp_path / "objects" / "meta.json").read_text())
    np.testing.assert_allclose(meta["camera_extent"], steady.camera_extent, atol=1e-3)
