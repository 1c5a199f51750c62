"""A user's video in, the same video out: audio, rotation, colour tags and every frame's time are kept, with every
method; every output suffix reads back; outputs never delete or replace what the run did not create."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from media import make_video, scene, stream_facts
from PIL import Image

from vdiffdeblur.cli import main
from vdiffdeblur.models.fit_unet import FitUNet
from vdiffdeblur.video import WRITE_SUFFIXES, probe, read_video, write_video

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES = scene(16, 96, 64)
TINY_FIT = dict(base_channels=8, levels=2, max_channels=16)


@pytest.fixture(scope="module")
def phone(tmp_path_factory):
    """H.264 + AAC, rotation 90, BT.709 tv range, 30000/1001 fps."""
    path = tmp_path_factory.mktemp("phone") / "phone.mp4"
    make_video(path, FRAMES)
    return path


@pytest.fixture(scope="module")
def vfr(tmp_path_factory):
    """Variable frame rate (steps of 1/30, 1/10, 1/60 s), H.264 + AAC, no rotation."""
    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    make_video(path, FRAMES, vfr=True, rotation=0)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    FitUNet(**TINY_FIT).save_pretrained(str(d / "fit"))
    from helpers import load_script

    assert load_script("make_tiny_pipeline").main(["--out", str(d / "diffusion"), "--seed", "0"]) == 0
    return d


def _method_args(method, models):
    return {"transfer": [], "dtb": [],
            "fit": ["--init", str(models / "fit"), "--steps", "2"],
            "diffusion": ["--model", str(models / "diffusion"), "--steps", "1", "--window", "4", "--overlap", "1"],
            }[method]


def _assert_kept(src, out):
    a, b = stream_facts(src), stream_facts(out)
    assert b["audio"] == a["audio"] and b["audio"][0][0] == "aac"  # copied, not re-encoded into another codec
    frame = 1.0 / 29.97
    assert abs(b["audio_seconds"] - a["audio_seconds"]) <= frame
    assert b["rotation"] == a["rotation"]
    assert b["colour"] == a["colour"]
    assert len(b["times"]) == len(a["times"])
    tick = float(a["time_base"])
    np.testing.assert_allclose(b["times"], a["times"], atol=tick + 1e-9)


@pytest.mark.parametrize("method", ["transfer", "dtb", "fit", "diffusion"])
def test_every_method_keeps_audio_rotation_colour_and_timing(method, phone, vfr, models, tmp_path):
    for src in (phone, vfr):
        out = tmp_path / f"{src.stem}_{method}.mp4"
        assert main(["deblur", str(src), "-o", str(out), "--method", method, *_method_args(method, models)]) == 0
        _assert_kept(src, out)
    assert stream_facts(phone)["rotation"] == 90 and stream_facts(phone)["colour"] == (1, 1, 1, 1)
    times = stream_facts(vfr)["times"]
    assert len(set(np.round(np.diff(times), 4))) == 3  # the fixture really is variable-rate


def test_audio_the_container_cannot_take_is_reencoded_with_a_note(tmp_path, caplog):
    src = tmp_path / "pcm.mkv"
    make_video(src, FRAMES[:8], audio="pcm_s16le", rotation=0)
    out = tmp_path / "out.mp4"
    assert main(["deblur", str(src), "-o", str(out), "--no-guard"]) == 0
    facts = stream_facts(out)
    assert facts["audio"] == [("aac", 48000)]
    assert abs(facts["audio_seconds"] - stream_facts(src)["audio_seconds"]) <= 1 / 29.97
    assert any("pcm_s16le" in r.getMessage() and "re-encoded as aac" in r.getMessage() for r in caplog.records)
    # into Matroska it is copied as it is
    assert main(["deblur", str(src), "-o", str(tmp_path / "out.mkv"), "--no-guard"]) == 0
    assert stream_facts(tmp_path / "out.mkv")["audio"] == [("pcm_s16le", 48000)]


def test_opus_is_copied_and_webm_gets_vp9(tmp_path):
    src = tmp_path / "opus.mkv"
    make_video(src, FRAMES[:8], audio="libopus", rotation=0)
    out = tmp_path / "out.webm"
    assert main(["deblur", str(src), "-o", str(out), "--no-guard"]) == 0
    info = probe(out)
    assert info.codec == "vp9" and info.streams == ("audio opus",)
    assert read_video(out).frames.shape == (8, 64, 96, 3)


def test_png_folder_output_says_audio_is_not_kept(phone, tmp_path, caplog):
    out = tmp_path / "frames"
    assert main(["deblur", str(phone), "-o", str(out), "--no-guard"]) == 0
    notes = [r.getMessage() for r in caplog.records if "PNG folder" in r.getMessage()]
    assert len(notes) == 1 and "audio aac not kept" in notes[0]
    # the folder remembers each frame's time: written back as a video, the timing is the phone's
    again = tmp_path / "again.mp4"
    assert main(["deblur", str(out), "-o", str(again), "--no-guard", "--method", "transfer"]) == 0
    np.testing.assert_allclose(stream_facts(again)["times"], stream_facts(phone)["times"], atol=1 / 30000 + 1e-9)


def test_audio_longer_than_the_video_is_read_and_kept(tmp_path):
    src = tmp_path / "long_audio.mkv"
    make_video(src, FRAMES[:10], rotation=0, audio_extra=1.0)  # audio outlasts the video by 1 s (300%)
    assert probe(src).num_frames == 10
    out = tmp_path / "out.mkv"
    assert main(["deblur", str(src), "-o", str(out), "--no-guard"]) == 0
    assert read_video(out).frames.shape[0] == 10
    assert abs(stream_facts(out)["audio_seconds"] - stream_facts(src)["audio_seconds"]) <= 1 / 29.97


def test_identity_pass_of_a_bt709_file_stays_within_two_levels(tmp_path):
    colours = np.array([[0, 255, 0], [255, 0, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [128, 128, 128],
                        [224, 172, 105], [30, 200, 220]], np.uint8)
    img = np.kron(colours.reshape(2, 4, 3), np.ones((32, 32, 1), np.uint8))
    src = tmp_path / "hd_tags.mp4"
    make_video(src, np.stack([img] * 3), rotation=0, audio=None, crf=0)
    v = read_video(src)
    interior = np.zeros(img.shape[:2], bool)  # away from the colour edges 4:2:0 chroma blurs
    for y in range(2):
        for x in range(4):
            interior[32 * y + 6:32 * y + 26, 32 * x + 6:32 * x + 26] = True
    assert np.abs(v.frames[:, interior].astype(int) - img[interior]).max() <= 2  # read with BT.709, not 601
    out = write_video(tmp_path / "out.mp4", v.frames, fps=v.info.fps, pts=v.pts, like=v.info, crf=0)
    w = read_video(out)
    assert w.info.colour == v.info.colour
    assert np.abs(w.frames[:, interior].astype(int) - v.frames[:, interior]).max() <= 2
    assert stream_facts(out)["colour"] == (1, 1, 1, 1)


def test_untagged_hd_is_written_as_tagged_bt709(tmp_path):
    frames = np.zeros((2, 720, 1280, 3), np.uint8)
    frames[..., 1] = 255
    out = write_video(tmp_path / "hd.mp4", frames, fps=25)
    assert stream_facts(out)["colour"] == (1, 1, 1, 1)
    assert read_video(out).frames[:, 100:600, 100:1100, 1].min() >= 253  # green stays green (was 214)


@pytest.mark.parametrize("suffix", sorted(WRITE_SUFFIXES))
def test_every_output_suffix_reads_back(suffix, tmp_path, natural_clip):
    clip = natural_clip[:, :96, :128]
    path = write_video(tmp_path / f"v{suffix}", clip, fps=30)
    v = read_video(path)
    assert v.frames.shape == clip.shape
    assert v.info.num_frames == len(clip)
    assert v.info.fps == pytest.approx(30, rel=0.02)
    mse = np.mean((v.frames.astype(np.float64) - clip) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 33
    assert (v.info.codec == "vp9") == (suffix == ".webm")


def test_webm_lossless_is_refused_before_any_work(tmp_path, phone, capsys):
    out = tmp_path / "x.webm"
    assert main(["deblur", str(phone), "-o", str(out), "--lossless"]) == 2
    assert "WebM" in capsys.readouterr().err and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_sixteen_bit_grey_sequence_keeps_one_scale(tmp_path):
    folder = tmp_path / "grey16"
    folder.mkdir()
    levels = [200, 4000]  # a dark frame (all below 256) and a brighter one, both far below 65535
    for i, v in enumerate(levels):
        Image.fromarray(np.full((16, 16), v, np.uint16)).save(folder / f"{i}.png")
    frames = read_video(folder).frames
    expect = [round(v / 257) for v in levels]  # by the format's scale: 65535 is white
    assert [int(f[0, 0, 0]) for f in frames] == expect


# --------------------------------------------------------------------------------------- output safety
def _clip(tmp_path, name="a.mp4"):
    folder = tmp_path / "v"
    folder.mkdir(exist_ok=True)
    src = write_video(folder / name, FRAMES[:6], fps=25)
    return folder, src


def _one_line(err):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


def test_output_an_existing_folder_or_one_holding_the_input_deletes_nothing(tmp_path, capsys):
    folder, src = _clip(tmp_path)
    (folder / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    for extra in ([], ["--overwrite"]):
        assert main(["deblur", str(src), "-o", str(folder), *extra]) == 2  # the folder holds the input
        assert str(folder) in _one_line(capsys.readouterr().err)
        assert main(["synth", "builtin:coffee", "-o", str(folder), "--frames", "3", "--size", "32x24", *extra]) == 2
        assert str(folder) in _one_line(capsys.readouterr().err)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.jpg").write_bytes(b"x")
    for extra in ([], ["--overwrite"]):
        assert main(["deblur", str(src), "-o", str(other), *extra]) == 2
        assert str(other) in _one_line(capsys.readouterr().err)
    assert _tree(tmp_path) == sorted(before + [("other", -1), ("other/keep.jpg", 1)])


def test_output_path_that_is_a_folder_or_an_existing_file(tmp_path, capsys):
    folder, src = _clip(tmp_path)
    box = tmp_path / "x.mp4"
    box.mkdir()
    (box / "inside.txt").write_text("mine")
    plain = tmp_path / "plain"
    plain.write_text("a file without suffix")
    existing = write_video(tmp_path / "done.mp4", FRAMES[:2], fps=25)
    size = existing.stat().st_size
    before = _tree(tmp_path)
    for out, extra, word in ((box, [], "is a folder"), (box, ["--overwrite"], "is a folder"),
                             (plain, [], "is a file"), (plain, ["--overwrite"], "is a file"),
                             (existing, [], "--overwrite"), (src, ["--overwrite"], "is the input")):
        t0 = time.perf_counter()
        assert main(["deblur", str(src), "-o", str(out), *extra]) == 2
        line = _one_line(capsys.readouterr().err)
        assert str(out) in line and word in line, line
        assert time.perf_counter() - t0 < 5  # refused before any frame is processed
    assert _tree(tmp_path) == before
    # --overwrite replaces an earlier output file of this tool, and a frame folder it wrote
    assert main(["deblur", str(src), "-o", str(existing), "--overwrite", "--no-guard"]) == 0
    assert read_video(existing).frames.shape[0] == 6 and existing.stat().st_size != size
    frames_out = tmp_path / "frames"
    assert main(["deblur", str(src), "-o", str(frames_out), "--no-guard"]) == 0
    capsys.readouterr()
    assert main(["deblur", str(src), "-o", str(frames_out), "--no-guard"]) == 2
    assert "--overwrite" in _one_line(capsys.readouterr().err)
    assert main(["deblur", str(src), "-o", str(frames_out), "--no-guard", "--overwrite"]) == 0
    assert len(read_video(frames_out)) == 6


def test_synth_existing_folder(tmp_path, capsys):
    out = tmp_path / "clip"
    args = ["synth", "builtin:coffee", "-o", str(out), "--frames", "3", "--size", "32x24"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "--overwrite" in _one_line(capsys.readouterr().err)
    assert main(args + ["--overwrite"]) == 0  # a synth folder may be replaced by synth
    (out / "mine.txt").write_text("x")
    assert main(args + ["--overwrite"]) == 2
    assert (out / "mine.txt").read_text() == "x"


_SLOW_RUN = """
import sys, time
import vdiffdeblur.methods.transfer as t
push = t.SharpTransfer._push_one
def slow(self, frame):
    if self.n_in == 12:  # some frames are out (transfer looks a few frames ahead)
        open(sys.argv[1], "w").write("ready")
    if self.n_in >= 12:
        time.sleep(1.0)
    return push(self, frame)
t.SharpTransfer._push_one = slow
from vdiffdeblur.cli import main
sys.exit(main(["deblur", sys.argv[2], "-o", sys.argv[3], "--no-guard", *sys.argv[4:]]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGKILL])
def test_killed_runs_leave_no_partial_output(sig, tmp_path):
    src = write_video(tmp_path / "long.mp4", scene(16, 64, 48), fps=25)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ready = tmp_path / "ready"
    script = tmp_path / "slow.py"
    script.write_text(_SLOW_RUN)
    for out, extra in ((out_dir / "o.mkv", ["--lossless"]), (out_dir / "frames", [])):  # FFV1 writes at once
        ready.unlink(missing_ok=True)
        # a suite started as a background job ignores SIGINT, and a child inherits that: start it as a shell would
        p = subprocess.Popen([sys.executable, str(script), str(ready), str(src), str(out), *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert list(out_dir.glob(".*partial*")), "the run writes under a temporary name"
        p.send_signal(sig)
        p.communicate(timeout=60)
        assert p.returncode != 0
        if sig != signal.SIGKILL:
            assert list(out_dir.iterdir()) == []
        else:  # a kill cannot clean up: the next run on the same output does
            assert len(list(out_dir.glob(".*partial*"))) == 1
            assert main(["deblur", str(src), "-o", str(out), "--no-guard"]) == 0
            assert [p.name for p in out_dir.iterdir()] == [out.name]
            from vdiffdeblur.outputs import remove_path

            remove_path(out)


def test_a_live_runs_temporary_output_is_left_alone(tmp_path):
    from vdiffdeblur.outputs import remove_leftovers, temp_sibling

    out = tmp_path / "o.mp4"
    mine = temp_sibling(out)
    mine.write_bytes(b"x")
    dead = tmp_path / ".o.partial-999999999-0123abcd.mp4"
    dead.write_bytes(b"x")
    other = tmp_path / ".p.partial-999999999-0123abcd.mp4"  # another output's
    other.write_bytes(b"x")
    assert remove_leftovers(out) == [dead]
    assert mine.exists() and other.exists()


# --------------------------------------------------------------------------------------- what a demanding user tried
def test_overwrite_never_replaces_a_folder_of_someone_elses_numbered_pngs(tmp_path, capsys):
    _, src = _clip(tmp_path)
    mine = tmp_path / "myframes"
    mine.mkdir()
    for i in range(1, 4):  # what an ffmpeg %05d.png export looks like
        Image.fromarray(FRAMES[i]).save(mine / f"{i:05d}.png")
    before = _tree(mine)
    assert main(["deblur", str(src), "-o", str(mine), "--overwrite"]) == 2
    assert "did not write" in _one_line(capsys.readouterr().err)
    assert _tree(mine) == before
    link = tmp_path / "link"
    link.symlink_to(mine)
    assert main(["deblur", str(src), "-o", str(link), "--overwrite"]) == 2
    assert "symbolic link" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("suffix", [".avi", ".wmv"])
def test_constant_rate_containers_get_evenly_spaced_frames(suffix, phone, vfr, tmp_path, caplog):
    for src in (phone, vfr):
        out = tmp_path / f"{src.stem}{suffix}"
        assert main(["deblur", str(src), "-o", str(out), "--no-guard", "--quiet"]) == 0
        v = read_video(out)
        assert len(v) == len(FRAMES) and v.info.num_frames == len(FRAMES)
        times = np.array(stream_facts(out)["times"])
        assert np.all(np.diff(times) > 0)
    assert any("constant frame rate" in r.getMessage() for r in caplog.records)  # said for the VFR source


def test_ts_keeps_audio_it_can_play_and_says_what_it_drops(tmp_path, caplog):
    from media import add_subtitles

    flac = tmp_path / "flac.mkv"
    make_video(flac, FRAMES[:8], audio="flac", rotation=0, sample_rate=44100)
    out = tmp_path / "flac.ts"
    assert main(["deblur", str(flac), "-o", str(out), "--no-guard", "--quiet"]) == 0
    assert probe(out).streams == ("audio aac",)  # re-encoded, not an opaque data stream
    subs = tmp_path / "subs.mp4"
    add_subtitles(write_video(tmp_path / "plain.mp4", FRAMES[:8], fps=25), subs, tmp_path)
    assert main(["deblur", str(subs), "-o", str(tmp_path / "subs.ts"), "--no-guard", "--quiet"]) == 0
    import av

    with av.open(str(tmp_path / "subs.ts")) as c:
        assert [s.type for s in c.streams] == ["video"]
    assert any("mov_text" in r.getMessage() and "not kept" in r.getMessage() for r in caplog.records)


def test_subtitles_are_copied_where_the_container_takes_them(tmp_path):
    from media import add_subtitles

    subs = tmp_path / "subs.mp4"
    make_video(tmp_path / "a.mp4", FRAMES[:8])
    add_subtitles(tmp_path / "a.mp4", subs, tmp_path, language="fra")
    out = tmp_path / "out.mp4"
    assert main(["deblur", str(subs), "-o", str(out), "--no-guard", "--quiet"]) == 0
    assert stream_facts(out)["subtitles"] == ["mov_text"] and stream_facts(out)["audio"] == [("aac", 48000)]
    import av

    with av.open(str(out)) as c:
        assert c.streams.subtitles[0].metadata.get("language") == "fra"


def test_webm_resamples_audio_opus_cannot_take(tmp_path):
    src = tmp_path / "a44.mp4"
    make_video(src, FRAMES[:8], rotation=0, sample_rate=44100)
    out = tmp_path / "a44.webm"
    assert main(["deblur", str(src), "-o", str(out), "--no-guard", "--quiet"]) == 0
    facts = stream_facts(out)
    assert facts["audio"] == [("opus", 48000)]
    assert abs(facts["audio_seconds"] - stream_facts(src)["audio_seconds"]) <= 1 / 29.97


def test_pcm_is_reencoded_for_mp4_whatever_it_came_in(tmp_path):
    src = tmp_path / "pcm.mov"
    make_video(src, FRAMES[:8], audio="pcm_s16le", rotation=0)
    out = tmp_path / "out.mp4"
    assert main(["deblur", str(src), "-o", str(out), "--no-guard", "--quiet"]) == 0
    assert stream_facts(out)["audio"] == [("aac", 48000)]


def test_capture_date_place_and_title_are_kept(tmp_path):
    tags = {"creation_time": "2026-05-01T10:20:30.000000Z", "title": "harbour", "location": "+52.37+004.89/"}
    src = tmp_path / "tagged.mp4"
    make_video(src, FRAMES[:6], metadata=tags)
    for suffix in (".mp4", ".mov", ".mkv"):
        out = tmp_path / f"out{suffix}"
        assert main(["deblur", str(src), "-o", str(out), "--no-guard", "--quiet"]) == 0
        kept = dict(probe(out).metadata)
        lowered = {k.lower(): v for k, v in kept.items()}
        assert lowered.get("title") == "harbour", (suffix, kept)
        assert lowered.get("creation_time", "").startswith("2026-05-01"), (suffix, kept)


def test_default_track_flags_survive_into_matroska(phone, tmp_path):
    import av

    out = tmp_path / "out.mkv"
    assert main(["deblur", str(phone), "-o", str(out), "--no-guard", "--quiet"]) == 0
    with av.open(str(phone)) as a, av.open(str(out)) as b:
        assert int(b.streams.audio[0].disposition) == int(a.streams.audio[0].disposition)


def test_a_png_folder_remembers_the_rotation(phone, tmp_path):
    frames = tmp_path / "frames"
    assert main(["deblur", str(phone), "-o", str(frames), "--no-guard", "--quiet"]) == 0
    again = tmp_path / "again.mp4"
    assert main(["deblur", str(frames), "-o", str(again), "--no-guard", "--quiet"]) == 0
    assert stream_facts(again)["rotation"] == 90


def test_ffmpeg_errors_read_as_a_reason_without_errno(tmp_path, capsys):
    good = write_video(tmp_path / "good.mp4", FRAMES, fps=25)
    half = tmp_path / "half.mp4"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    assert main(["info", str(half)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(half) in line and "Errno" not in line and line.count(str(half)) == 1, line
