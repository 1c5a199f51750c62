import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from vdiffdeblur.video import VideoError, VideoWriter, iter_frames, iter_windows, probe, read_video, write_video


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("name,kwargs", [("a.mkv", {"lossless": True}),
                                         ("a.mp4", {"lossless": True}),
                                         ("b.mkv", {"lossless": True, "codec": "libx264rgb"})])
def test_lossless_round_trip_is_bit_exact(tmp_path, natural_clip, name, kwargs, backend):
    path = write_video(tmp_path / name, natural_clip, fps=24, **kwargs)
    v = read_video(path, backend=backend)
    assert v.frames.dtype == np.uint8
    np.testing.assert_array_equal(v.frames, natural_clip)
    assert v.info.fps == pytest.approx(24)
    expect = "ffv1" if name == "a.mkv" else "h264"
    assert v.info.codec == expect


def test_default_h264_quality(tmp_path, natural_clip):
    v = read_video(write_video(tmp_path / "c.mp4", natural_clip, fps=30))
    assert v.info.codec == "h264"
    assert _psnr(v.frames, natural_clip) > 35.0


@pytest.mark.parametrize("size,n", [((333, 201), 5), ((333, 201), 1), ((64, 48), 2), ((31, 17), 3)])
@pytest.mark.parametrize("suffix", [".mkv", ".mp4", ""])
def test_odd_sizes_and_lengths_round_trip(tmp_path, natural_clip, size, n, suffix):
    w, h = size
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    path = write_video(tmp_path / f"v{suffix}", frames, fps=12.5, lossless=True)
    v = read_video(path)
    assert v.frames.shape == (n, h, w, 3)
    assert (v.info.width, v.info.height, v.info.num_frames) == (w, h, n)
    assert v.info.fps == pytest.approx(12.5)
    np.testing.assert_array_equal(v.frames, frames)


def test_lossy_odd_size_keeps_size(tmp_path, natural_clip):
    clip = natural_clip[:3, :101, :133]
    v = read_video(write_video(tmp_path / "odd.mp4", clip, fps=25))
    assert v.frames.shape == clip.shape
    assert _psnr(v.frames, clip) > 35.0


def test_image_folders_gray_and_rgba_become_rgb(tmp_path, natural_clip):
    gray, rgba = tmp_path / "gray", tmp_path / "rgba"
    gray.mkdir(), rgba.mkdir()
    for i, f in enumerate(natural_clip[:3]):
        # natural sort: 2 < 10
        Image.fromarray(f[..., 0]).save(gray / f"f{[1, 2, 10][i]}.png")
        Image.fromarray(np.dstack([f, np.full(f.shape[:2], 128, np.uint8)])).save(rgba / f"{i:03d}.png")
    g = read_video(gray)
    assert g.frames.shape == (3, 120, 160, 3)
    np.testing.assert_array_equal(g.frames[2, ..., 1], natural_clip[2, ..., 0])
    np.testing.assert_array_equal(g.frames[1, ..., 2], natural_clip[1, ..., 0])
    r = read_video(rgba)
    np.testing.assert_array_equal(r.frames, natural_clip[:3])


def test_single_image_source(tmp_path, natural_clip):
    Image.fromarray(natural_clip[0]).save(tmp_path / "one.png")
    v = read_video(tmp_path / "one.png")
    assert v.frames.shape == (1, 120, 160, 3)
    np.testing.assert_array_equal(v.frames[0], natural_clip[0])


def _bframe_file(tmp_path, frames):
    path = tmp_path / "bframes.mp4"
    write_video(path, frames, fps=25, crf=20, options={"bf": "3", "g": "12"})
    # the file really has B-frames: decode order differs from presentation order
    with av.open(str(path)) as c:
        pts = [p.pts for p in c.demux(video=0) if p.pts is not None]
    assert pts != sorted(pts), "test file has no B-frames"
    return path


def _pyav_frames(path, backend="pyav"):
    """Every frame in presentation order, converted as the backend converts (decord: swscale's defaults)."""
    args = probe(path).colour.decode_args() if backend == "pyav" else {}
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24", **args) for f in c.decode(video=0)])


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_bframes_match_sequential_pyav(tmp_path, backend):
    from vdiffdeblur.data.synthetic import ShakeConfig, synthesize_shake

    frames = synthesize_shake("builtin:coffee", ShakeConfig(num_frames=60, width=128, height=96), seed=1).blurry
    path = _bframe_file(tmp_path, frames)
    ref = _pyav_frames(path, backend)
    assert len(ref) == 60
    for start, end in [(0, 60), (17, 41), (33, 34), (50, 60), (5, 12)]:
        np.testing.assert_array_equal(read_video(path, start, end, backend=backend).frames, ref[start:end])
    np.testing.assert_array_equal(np.stack(list(iter_frames(path, 20, 30, backend=backend))), ref[20:30])
    for window, overlap in [(16, 4), (7, 0), (25, 24), (100, 10)]:
        seen = {}
        for idx, w in iter_windows(path, window, overlap, backend=backend):
            assert len(idx) == len(w) <= window
            np.testing.assert_array_equal(w, ref[idx.start:idx.stop])
            for i in idx:
                seen[i] = True
        assert sorted(seen) == list(range(60))


def test_iter_windows_layout(tmp_path, natural_clip):
    path = write_video(tmp_path / "w", natural_clip, fps=25)
    wins = [idx for idx, _ in iter_windows(path, 5, 2)]
    assert wins == [range(0, 5), range(3, 8), range(6, 11), range(7, 12)]
    assert [idx for idx, _ in iter_windows(path, 6, 3)] == [range(0, 6), range(3, 9), range(6, 12)]
    assert [idx for idx, _ in iter_windows(path, 20, 4)] == [range(0, 12)]
    with pytest.raises(ValueError, match="overlap"):
        list(iter_windows(path, 4, 4))


def _bad_inputs(tmp_path, natural_clip):
    mp4 = write_video(tmp_path / "good.mp4", np.concatenate([natural_clip] * 2), fps=25)
    mkv = write_video(tmp_path / "good.mkv", np.concatenate([natural_clip] * 2), fps=25, lossless=True)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 20)
    (tmp_path / "cut.mp4").write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    (tmp_path / "cut.mkv").write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])
    return {"missing": tmp_path / "missing.mp4", "empty": tmp_path / "empty.mp4", "text": tmp_path / "text.mp4",
            "cut_mp4": tmp_path / "cut.mp4", "cut_mkv": tmp_path / "cut.mkv"}


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_bad_inputs_raise_video_error_naming_the_file(tmp_path, natural_clip, backend):
    for kind, path in _bad_inputs(tmp_path, natural_clip).items():
        with pytest.raises(VideoError) as e:
            read_video(path, backend=backend)
        assert str(path) in str(e.value), kind
        assert isinstance(e.value, ValueError)


def test_cli_bad_inputs_exit_2_one_line_no_output(tmp_path, natural_clip):
    for kind, path in _bad_inputs(tmp_path, natural_clip).items():
        out = tmp_path / f"out_{kind}.mp4"
        for cmd in (["info", str(path)], ["deblur", str(path), "-o", str(out), "--method", "transfer"]):
            r = subprocess.run([sys.executable, "-m", "vdiffdeblur.cli", *cmd], capture_output=True, text=True)
            assert r.returncode == 2, (kind, cmd, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], (kind, r.stderr)
            assert "Traceback" not in r.stderr
            assert not out.exists()
            assert not list(tmp_path.glob(".out_*")), "a temporary output was left behind"


def test_writer_error_leaves_nothing(tmp_path, natural_clip):
    target = tmp_path / "o.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(target, fps=25) as w:
            w.write(natural_clip[:3])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="size"):
        with VideoWriter(tmp_path / "f", fps=25) as w:
            w.write(natural_clip[:1])
            w.write(natural_clip[:1, :50])
    assert list(tmp_path.iterdir()) == []


def test_writer_replaces_previous_output_only_on_success(tmp_path, natural_clip):
    target = tmp_path / "o.mkv"
    write_video(target, natural_clip[:2], fps=25, lossless=True)
    with pytest.raises(RuntimeError):
        with VideoWriter(target, fps=25, lossless=True) as w:
            w.write(natural_clip[5:9])
            raise RuntimeError("boom")
    np.testing.assert_array_equal(read_video(target).frames, natural_clip[:2])
    write_video(target, natural_clip[5:9], fps=25, lossless=True)
    np.testing.assert_array_equal(read_video(target).frames, natural_clip[5:9])


def test_probe_and_range_errors(tmp_path, natural_clip):
    path = write_video(tmp_path / "p.mkv", natural_clip, fps=25, lossless=True)
    info = probe(path)
    assert (info.width, info.height, info.num_frames, info.codec) == (160, 120, 12, "ffv1")
    with pytest.raises(VideoError, match="outside"):
        read_video(path, 5, 40)


def test_writing_atomically_replaces_on_success_and_leaves_nothing_on_error(tmp_path):
    from vdiffdeblur.video import writing_atomically

    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with writing_atomically(out) as tmp:
        assert tmp != out and tmp.parent == out.parent
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    with pytest.raises(RuntimeError, match="boom"):
        with writing_atomically(out) as tmp:
            tmp.mkdir()
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no partial folder left
    assert (out / "new.txt").read_text() == "new"
