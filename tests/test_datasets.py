"""PairedVideoDataset (GoPro / DVD / REDS / video-pair layouts) and SyntheticShakeDataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vdiffdeblur.data import DatasetError, PairedVideoDataset, ShakeConfig, SyntheticShakeDataset, detect_layout
from vdiffdeblur.video import write_video

N_FRAMES, H, W = 6, 40, 48


def _sharp_frames(seq_id: int) -> np.ndarray:
    """Frames whose pixels say where they are: R = frame index * 20 + seq, G = row * 4, B = column * 4."""
    f = np.zeros((N_FRAMES, H, W, 3), np.uint8)
    f[..., 0] = (np.arange(N_FRAMES) * 20 + seq_id)[:, None, None]
    f[..., 1] = (np.arange(H) * 4)[None, :, None]
    f[..., 2] = (np.arange(W) * 4)[None, None, :]
    return f


def _blur_of(sharp: np.ndarray) -> np.ndarray:
    b = sharp.copy()
    b[..., 0] += 7  # the blurry frame differs from its sharp frame by a known offset
    return b


def _write_pngs(folder, frames, suffix=".png"):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:04d}{suffix}", quality=100, subsampling=0)


def make_gopro(root, n_seq=2, blur_name="blur"):
    for s in range(n_seq):
        sharp = _sharp_frames(s)
        _write_pngs(root / f"seq{s}" / blur_name, _blur_of(sharp))
        _write_pngs(root / f"seq{s}" / "sharp", sharp)
    return root


def make_dvd(root, n_seq=2):
    for s in range(n_seq):
        sharp = _sharp_frames(s)
        _write_pngs(root / f"clip{s}" / "input", _blur_of(sharp), ".jpg")
        _write_pngs(root / f"clip{s}" / "GT", sharp, ".jpg")
    return root


def make_reds(root, n_seq=2):
    for s in range(n_seq):
        sharp = _sharp_frames(s)
        _write_pngs(root / "train_blur" / f"{s:03d}", _blur_of(sharp))
        _write_pngs(root / "train_sharp" / f"{s:03d}", sharp)
    return root


def make_videos(root, n_seq=2):
    for s in range(n_seq):
        sharp = _sharp_frames(s)
        (root / f"v{s}").mkdir(parents=True)
        write_video(root / f"v{s}" / "blur.mp4", _blur_of(sharp), lossless=True)
        write_video(root / f"v{s}" / "sharp.mp4", sharp, lossless=True)
    return root


MAKERS = {"gopro": make_gopro, "dvd": make_dvd, "reds": make_reds, "video": make_videos}


def _check_item(item, clip_len, crop, tol=0.0):
    b, s = item["blurry"], item["sharp"]
    assert b.dtype == torch.float32 and s.dtype == torch.float32
    assert b.shape == s.shape == (clip_len, 3, crop, crop)
    assert 0.0 <= float(b.min()) and float(b.max()) <= 1.0
    sb, ss = (b * 255).round(), (s * 255).round()
    # the same pixels of the same frames: blurry = sharp + 7 in red, identical elsewhere
    assert torch.allclose(sb[:, 0] - ss[:, 0], torch.full_like(ss[:, 0], 7.0), atol=tol)
    assert torch.allclose(sb[:, 1:], ss[:, 1:], atol=tol)
    # consecutive frames starting at item["start"], from the named sequence
    seq_id = {"seq0": 0, "seq1": 1, "clip0": 0, "clip1": 1, "000": 0, "001": 1, "v0": 0, "v1": 1}[item["sequence"]]
    expect_r = torch.tensor([(item["start"] + i) * 20 + seq_id for i in range(clip_len)], dtype=torch.float32)
    assert torch.allclose(ss[:, 0].mean(dim=(1, 2)), expect_r, atol=max(tol, 1e-4))
    # the crop sits where the item says
    assert torch.allclose(ss[0, 1, :, 0], (torch.arange(crop) + item["top"]) * 4.0, atol=max(tol, 1e-4))
    assert torch.allclose(ss[0, 2, 0, :], (torch.arange(crop) + item["left"]) * 4.0, atol=max(tol, 1e-4))


@pytest.mark.parametrize("layout", ["gopro", "dvd", "reds", "video"])
def test_layouts_read_matched_crops(tmp_path, layout):
    root = MAKERS[layout](tmp_path / layout)
    assert detect_layout(root) == layout
    ds = PairedVideoDataset(root, layout="auto", clip_len=3, crop=24, samples_per_sequence=3, seed=1)
    assert ds.layout == layout and len(ds) == 6
    tol = 3.0 if layout == "dvd" else 0.0  # JPEG frames are lossy
    starts, crops = set(), set()
    for i in range(len(ds)):
        item = ds[i]
        _check_item(item, 3, 24, tol)
        starts.add(item["start"])
        crops.add((item["top"], item["left"]))
    assert len(starts) > 1 and len(crops) > 1  # random temporal starts and crops


def test_gopro_single_sequence_root_and_blur_gamma(tmp_path):
    root = tmp_path / "one"
    sharp = _sharp_frames(0)
    _write_pngs(root / "blur", _blur_of(sharp))
    _write_pngs(root / "sharp", sharp)
    ds = PairedVideoDataset(root, clip_len=2, crop=16)
    assert ds.layout == "gopro" and len(ds.sequences) == 1
    g = make_gopro(tmp_path / "gamma", n_seq=1, blur_name="blur_gamma")
    ds = PairedVideoDataset(g, layout="gopro", blur_folder="blur_gamma", clip_len=2, crop=16)
    _check_item(ds[0] | {"sequence": "seq0"}, 2, 16)


def test_items_are_seeded(tmp_path):
    root = make_gopro(tmp_path / "g")
    a = PairedVideoDataset(root, clip_len=3, crop=16, seed=5)
    b = PairedVideoDataset(root, clip_len=3, crop=16, seed=5)
    c = PairedVideoDataset(root, clip_len=3, crop=16, seed=6)
    assert torch.equal(a[1]["blurry"], b[1]["blurry"])
    assert any((a[i]["start"], a[i]["top"], a[i]["left"]) != (c[i]["start"], c[i]["top"], c[i]["left"])
               for i in range(len(a)))
    before = [(a[i]["start"], a[i]["top"]) for i in range(len(a))]
    a.set_epoch(1)
    assert before != [(a[i]["start"], a[i]["top"]) for i in range(len(a))]


def test_full_frames_and_flip(tmp_path):
    root = make_gopro(tmp_path / "g", n_seq=1)
    ds = PairedVideoDataset(root, clip_len=N_FRAMES, crop=None, flip=True, samples_per_sequence=8, seed=0)
    flipped = 0
    for i in range(len(ds)):
        item = ds[i]
        assert item["blurry"].shape == (N_FRAMES, 3, H, W)
        d = (item["blurry"] - item["sharp"]) * 255
        assert torch.allclose(d[:, 0], torch.full_like(d[:, 0], 7.0), atol=1e-3)
        flipped += int(item["sharp"][0, 2, 0, 0] > item["sharp"][0, 2, 0, -1])
    assert 0 < flipped < len(ds)


def test_missing_sharp_counterpart_names_sequence(tmp_path):
    root = make_gopro(tmp_path / "g")
    for p in (root / "seq1" / "sharp").iterdir():
        p.unlink()
    (root / "seq1" / "sharp").rmdir()
    with pytest.raises(DatasetError, match=r"seq1.*sharp counterpart.*missing"):
        PairedVideoDataset(root, layout="gopro", clip_len=2, crop=16)
    reds = make_reds(tmp_path / "r")
    import shutil

    shutil.rmtree(reds / "train_sharp" / "001")
    with pytest.raises(DatasetError, match=r"'001'.*missing"):
        PairedVideoDataset(reds, clip_len=2, crop=16)
    vids = make_videos(tmp_path / "v")
    (vids / "v0" / "sharp.mp4").unlink()
    with pytest.raises(DatasetError, match=r"'v0'.*sharp counterpart"):
        PairedVideoDataset(vids, clip_len=2, crop=16)


def test_mismatched_counts_and_sizes_name_sequence(tmp_path):
    root = make_gopro(tmp_path / "g")
    (root / "seq0" / "sharp" / "0005.png").unlink()
    with pytest.raises(DatasetError, match=r"'seq0'.*6 blurry frames but 5 sharp"):
        PairedVideoDataset(root, clip_len=2, crop=16)
    root = make_dvd(tmp_path / "d")
    for p in (root / "clip1" / "GT").iterdir():
        Image.open(p).resize((W // 2, H // 2)).save(p)
    with pytest.raises(DatasetError, match=r"'clip1'.*48x40.*24x20"):
        PairedVideoDataset(root, clip_len=2, crop=16)
    root = make_gopro(tmp_path / "g2")
    with pytest.raises(DatasetError, match=r"seq0.*fewer than clip_len"):
        PairedVideoDataset(root, clip_len=N_FRAMES + 1, crop=16)
    with pytest.raises(DatasetError, match=r"smaller than the 64x64 crop"):
        PairedVideoDataset(root, clip_len=2, crop=64)


def test_unknown_layout_is_a_clear_error(tmp_path):
    (tmp_path / "x" / "something").mkdir(parents=True)
    with pytest.raises(DatasetError, match="cannot tell the dataset layout"):
        PairedVideoDataset(tmp_path / "x")
    with pytest.raises(DatasetError, match="not found"):
        PairedVideoDataset(tmp_path / "nope")


# ------------------------------------------------------------------------------------- synthetic
SMALL = ShakeConfig(width=64, height=48)


def test_synthetic_items_shapes_and_keys():
    ds = SyntheticShakeDataset(["astronaut", "rocket"], num_clips=3, clip_len=4, crop=32, config=SMALL,
                               frames_per_clip=8, samples_per_clip=2, seed=0)
    assert len(ds) == 6
    item = ds[4]
    assert set(item) >= {"blurry", "sharp", "sequence", "start", "top", "left", "blur_extent", "clip_seed"}
    for k in ("blurry", "sharp"):
        assert item[k].dtype == torch.float32 and item[k].shape == (4, 3, 32, 32)
        assert 0 <= float(item[k].min()) and float(item[k].max()) <= 1
    assert item["blur_extent"].shape == (4,)
    assert item["sequence"] == "builtin:rocket#1"  # clip 4 % 3 = 1 -> source 1 % 2
    assert 0 <= item["start"] <= 4
    # the same crop of the same frames: blurry and sharp agree where the frame is nearly still
    d = (item["blurry"] - item["sharp"]).abs().flatten(1).mean(1)
    assert float(d[int(item["blur_extent"].argmin())]) < 0.05


def test_synthetic_is_seeded_per_index():
    kw = dict(sources=["astronaut"], num_clips=2, clip_len=3, crop=24, config=SMALL, frames_per_clip=6)
    a, b, c = (SyntheticShakeDataset(seed=3, **kw), SyntheticShakeDataset(seed=3, **kw),
               SyntheticShakeDataset(seed=4, **kw))
    assert torch.equal(a[1]["blurry"], b[1]["blurry"]) and torch.equal(a[1]["sharp"], b[1]["sharp"])
    assert not torch.equal(a[1]["blurry"], c[1]["blurry"])
    assert not torch.equal(a[0]["blurry"], a[1]["blurry"])


def test_synthetic_still_clips_are_nearly_sharp_and_video_sources():
    ds = SyntheticShakeDataset(["astronaut"], num_clips=4, clip_len=6, crop=None, config=SMALL, still_fraction=0.5)
    extents = [float(ds.clip(k)[3].max()) for k in range(4)]
    still = sorted(ds._still)
    assert len(still) == 2
    assert all(extents[k] < 1.0 for k in still)
    assert max(extents[k] for k in range(4) if k not in still) > 2.0
    video = np.stack([_sharp_frames(0)[0]] * 8)
    vd = SyntheticShakeDataset([video], num_clips=1, clip_len=4, crop=16, config=ShakeConfig(width=32, height=24))
    assert vd[0]["blurry"].shape == (4, 3, 16, 16)
    with pytest.raises(DatasetError, match="shorter than frames_per_clip"):
        SyntheticShakeDataset([video[:3]], num_clips=1, clip_len=4, crop=16, config=ShakeConfig(width=32, height=24))
    with pytest.raises(ValueError, match="larger than the synthetic frames"):
        SyntheticShakeDataset(["astronaut"], crop=128, config=SMALL)


def test_augment_source_is_a_seeded_flipped_channel_permuted_sub_window():
    from vdiffdeblur.data.shake_dataset import augment_source

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    a = augment_source(photo, np.random.default_rng(5), zoom=(0.5, 0.5))
    assert np.array_equal(a, augment_source(photo, np.random.default_rng(5), zoom=(0.5, 0.5)))
    assert sorted(a.shape[:2]) == [20, 30]  # half of each side, possibly a quarter turn
    # undo: some channel order and one of the 8 flips / quarter turns of a 20x30 window of the photo
    windows = {(t, l): photo[t:t + 20, l:l + 30] for t in range(21) for l in range(31)}
    views = [np.rot90(w, k) for w in windows.values() for k in range(4)]
    views += [v[:, ::-1] for v in views]
    found = any(np.array_equal(a, v[..., perm]) for v in views if v.shape == a.shape
                for perm in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]))
    assert found
    whole = augment_source(photo, np.random.default_rng(1))
    assert sorted(whole.shape[:2]) == [40, 60]
    assert sorted(whole.reshape(-1).tolist()) == sorted(photo.reshape(-1).tolist())
    video = np.stack([photo, 255 - photo])  # a video: the same view for every frame
    v = augment_source(video, np.random.default_rng(2), zoom=(0.6, 0.9))
    assert np.array_equal(v[1], 255 - v[0])
    with pytest.raises(ValueError, match="source_zoom"):
        augment_source(photo, rng, zoom=(0.0, 1.0))


def test_synthetic_augment_gives_each_clip_its_own_view_and_is_seeded():
    kw = dict(sources=["astronaut"], num_clips=3, clip_len=3, crop=None, config=SMALL, frames_per_clip=4,
              still_fraction=1.0)  # still clips: the frames show the (augmented) photo itself
    plain = SyntheticShakeDataset(**kw)
    aug, again = SyntheticShakeDataset(augment=True, source_zoom=(0.5, 1.0), **kw), \
        SyntheticShakeDataset(augment=True, source_zoom=(0.5, 1.0), **kw)
    assert np.array_equal(aug.clip(1)[2], again.clip(1)[2])
    assert not np.array_equal(aug.clip(1)[2], plain.clip(1)[2])
    means = [aug.clip(k)[2].reshape(-1, 3).mean(0) for k in range(3)]
    assert not np.allclose(means[0], means[1], atol=1) or not np.allclose(means[1], means[2], atol=1)
    with pytest.raises(ValueError, match="source_zoom"):
        SyntheticShakeDataset(augment=True, source_zoom=(0.5, 1.5), **kw)
