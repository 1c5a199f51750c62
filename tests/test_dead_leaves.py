"""Procedural dead-leaves pictures and the ``dead_leaves`` training source."""

from __future__ import annotations

import numpy as np
import pytest

from vdiffdeblur.data import ShakeConfig, SyntheticShakeDataset
from vdiffdeblur.data.dead_leaves import DEAD_LEAVES, _fur_patch, _radii, dead_leaves


def test_dead_leaves_is_seeded_and_sized():
    a = dead_leaves(40, 56, np.random.default_rng(0))
    assert a.shape == (40, 56, 3) and a.dtype == np.uint8
    assert np.array_equal(a, dead_leaves(40, 56, np.random.default_rng(0)))
    assert not np.array_equal(a, dead_leaves(40, 56, np.random.default_rng(1)))
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 50  # many leaves, not a flat picture
    with pytest.raises(ValueError, match="8x8"):
        dead_leaves(4, 56)
    with pytest.raises(ValueError, match="alpha"):
        dead_leaves(40, 56, alpha=1.0)


def test_leaf_radii_follow_the_power_law():
    rmin, rmax, alpha = 2.0, 100.0, 2.5
    r = _radii(np.random.default_rng(0), 200_000, rmin, rmax, alpha)
    assert r.min() >= rmin and r.max() <= rmax
    a = 1 - alpha
    for q in (3.0, 10.0, 40.0):  # P(R > q) of the density ~ r^-alpha on [rmin, rmax]
        expected = (rmax ** a - q ** a) / (rmax ** a - rmin ** a)
        assert abs((r > q).mean() - expected) < 0.005


def test_textured_leaves_copy_the_texture_photos():
    """With only textured leaves (and colours from the texture), every colour comes from the texture photo:
    a grey photo gives a grey picture, whatever the channel order."""
    grey = np.repeat(np.random.default_rng(0).integers(0, 256, (64, 64, 1), dtype=np.uint8), 3, axis=2)
    pic = dead_leaves(48, 48, np.random.default_rng(2), textures=[grey], texture_fraction=1.0, rmin=6.0)
    plain = dead_leaves(48, 48, np.random.default_rng(2))
    off_grey = lambda p: np.abs(p.astype(int) - p.mean(2, keepdims=True))  # noqa: E731
    assert off_grey(plain).max() > 40
    # colours: 70% from the texture, 30% uniform but part-desaturated; the greys dominate
    assert np.mean(off_grey(pic) < 3) > 0.5


def _coherence(grey: np.ndarray) -> float:
    """How much the picture's gradients share one direction: 0 for isotropic texture, 1 for parallel lines."""
    gy, gx = np.gradient(grey.astype(np.float64))
    jxx, jyy, jxy = (gx * gx).mean(), (gy * gy).mean(), (gx * gy).mean()
    return float(np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy))


def test_fur_is_oriented_strands_around_the_leaf_colour():
    base = np.array([180.0, 130.0, 80.0])
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = _fur_patch(rng, 96, base)
        assert p.shape == (96, 96, 3) and p.dtype == np.float32
        assert np.all(np.abs(p.mean((0, 1)) - base) < 0.1 * base)
        contrast = p.mean(2).std() / p.mean()
        assert 0.04 < contrast < 0.6
        assert _coherence(p.mean(2)) > 0.4  # strands along one direction
    assert _coherence(np.random.default_rng(1).standard_normal((96, 96))) < 0.1  # the measure can tell


def test_fur_fraction_fills_leaves_with_fur_and_zero_keeps_the_pictures():
    rng = np.random.default_rng
    flat = dead_leaves(64, 64, rng(3), texture_fraction=1.0)
    assert np.array_equal(flat, dead_leaves(64, 64, rng(3), texture_fraction=1.0, fur_fraction=0.0))
    furry = dead_leaves(64, 64, rng(3), texture_fraction=1.0, fur_fraction=1.0)  # no photos needed
    detail = lambda p: np.abs(np.diff(p.astype(float), axis=1)).mean()  # noqa: E731
    assert detail(furry) > 1.5 * detail(flat)
    with pytest.raises(ValueError, match="fur_fraction"):
        dead_leaves(64, 64, fur_fraction=1.5)
    with pytest.raises(ValueError, match="fur_fraction"):
        SyntheticShakeDataset([DEAD_LEAVES], num_clips=1, clip_len=2, fur_fraction=-0.1)


def test_dataset_passes_fur_fraction_to_its_dead_leaves_scenes():
    kw = dict(sources=[DEAD_LEAVES], num_clips=2, clip_len=2, crop=None, config=ShakeConfig(width=64, height=48),
              frames_per_clip=2, still_fraction=1.0)
    plain, furry = SyntheticShakeDataset(**kw), SyntheticShakeDataset(**kw, fur_fraction=1.0)
    assert furry.fur_fraction == 1.0
    assert not np.array_equal(plain.clip(0)[2], furry.clip(0)[2])


def test_dataset_makes_a_new_dead_leaves_scene_per_clip():
    kw = dict(sources=["astronaut", DEAD_LEAVES], num_clips=4, clip_len=2, crop=None,
              config=ShakeConfig(width=64, height=48), frames_per_clip=2, still_fraction=1.0)
    ds, again = SyntheticShakeDataset(**kw), SyntheticShakeDataset(**kw)
    names = [ds.clip(k)[0] for k in range(4)]
    assert names[1] == "dead_leaves#1" and names[3] == "dead_leaves#3" and names[0].endswith("astronaut#0")
    assert np.array_equal(ds.clip(1)[2], again.clip(1)[2])  # seeded by the clip
    assert np.abs(ds.clip(1)[2][0].astype(int) - ds.clip(3)[2][0].astype(int)).mean() > 20  # another scene
    item = ds[1]
    assert item["sharp"].shape == (2, 3, 48, 64)
