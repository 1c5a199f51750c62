"""Many videos in one run (resumable, summary, split across processes) and the threaded file loop."""

import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
from media import make_video, scene

from vdiffdeblur.cli import main
from vdiffdeblur.methods.batch import SUMMARY
from vdiffdeblur.methods.runner import build_stream, stream_file
from vdiffdeblur.video import VideoError, probe, read_video

FAST = ["--no-guard", "--quiet", "--lossless"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    make_video(d / "a.mp4", scene(6, 64, 48, 0))
    make_video(d / "b.mkv", scene(5, 64, 48, 1), audio=None, rotation=0)
    make_video(d / "c.mp4", scene(4, 64, 48, 2), audio=None, rotation=0)
    return d


def _summary(out):
    return json.loads((out / SUMMARY).read_text())


def test_several_inputs_one_output_each_then_skip_and_redo_a_partial_one(videos, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["deblur", str(videos / "a.mp4"), str(videos / "b.mkv"), "-o", str(out), *FAST]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "b.mkv", SUMMARY]
    assert len(read_video(out / "a.mp4")) == 6 and len(read_video(out / "b.mkv")) == 5
    s = _summary(out)
    assert [(v["output"], v["status"], v["frames"], v["process"]) for v in s["videos"]] == [
        (str(out / "a.mp4"), "done", 6, 0), (str(out / "b.mkv"), "done", 5, 0)]
    assert all(v["seconds"] > 0 and v["fps"] == pytest.approx(v["frames"] / v["seconds"], rel=1e-3)
               for v in s["videos"])
    assert s["method"] == "transfer" and s["options"]["guard"] is False and s["frames"] == 11
    assert "2 deblurred (11 frames), 0 already done" in capsys.readouterr().out

    # a rerun skips what is finished, keeping its figures; a killed run's partial output is redone
    before = (out / "b.mkv").stat().st_mtime_ns
    (out / "a.mp4").unlink()
    partial = out / ".a.partial-999999999-0123abcd.mp4"  # a dead process's temporary output
    partial.write_bytes(b"half")
    assert main(args) == 0
    assert (out / "b.mkv").stat().st_mtime_ns == before and not partial.exists()
    assert len(read_video(out / "a.mp4")) == 6
    s = _summary(out)
    assert [(v["status"], v["frames"]) for v in s["videos"]] == [("done", 6), ("skipped", 5)]
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "b.mkv", SUMMARY]

    # --overwrite redoes every output; a different --suffix names other outputs
    assert main(args + ["--overwrite"]) == 0
    assert (out / "b.mkv").stat().st_mtime_ns != before
    assert [v["status"] for v in _summary(out)["videos"]] == ["done", "done"]
    assert main(args + ["--suffix", "folder"]) == 0
    assert len(read_video(out / "a")) == 6 and (out / "b").is_dir()


def test_a_single_input_keeps_its_output_name(videos, tmp_path, capsys):
    out = tmp_path / "single.mkv"
    assert main(["deblur", str(videos / "c.mp4"), "-o", str(out), *FAST]) == 0
    assert len(read_video(out)) == 4 and not (tmp_path / SUMMARY).exists()
    assert main(["deblur", str(videos / "c.mp4"), "-o", str(out), *FAST]) == 2  # exists: refused, as before
    assert "already exists (use --overwrite" in capsys.readouterr().err


def test_inputs_with_the_same_stem_are_refused_before_any_work(videos, tmp_path, capsys):
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(videos / "a.mp4", other / "a.mov")
    out = tmp_path / "out"
    assert main(["deblur", str(videos / "a.mp4"), str(other / "a.mov"), "-o", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "same name 'a'" in err and str(other) in err
    assert not out.exists()
    assert main(["deblur", str(videos / "a.mp4"), str(videos / "b.mkv"), "-o", str(tmp_path / "o.mp4")]) == 2
    assert "-o names a folder" in capsys.readouterr().err and not (tmp_path / "o.mp4").exists()
    assert main(["deblur", str(videos / "a.mp4"), "-o", str(tmp_path / "x.mp4"), "--suffix", ".mkv"]) == 2
    assert "--suffix is for several inputs" in capsys.readouterr().err


def test_a_failing_video_is_reported_and_the_others_are_done(videos, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    data = (videos / "a.mp4").read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # cut off
    out = tmp_path / "out"
    assert main(["deblur", str(bad), str(videos / "c.mp4"), "-o", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}")
    assert [v["status"] for v in _summary(out)["videos"]] == ["failed", "done"]
    assert sorted(p.name for p in out.iterdir()) == ["c.mp4", SUMMARY]


def test_two_processes_each_do_their_share_and_the_main_one_writes_every_video(videos, tmp_path, monkeypatch):
    """The split as two processes see it, run one after the other in this process (the real launch: the slow test
    below); the second process's records reach the first through the gather."""
    from vdiffdeblur.methods import batch

    sent = []

    class Two(batch._Processes):
        def __init__(self):
            self.state, self.index, self.count = None, rank, 2

        def split(self, items):
            k = (len(items) + 1) // 2  # accelerate's split: the first process takes the extra item
            return list(items)[:k] if self.index == 0 else list(items)[k:]

        def gather(self, records):
            if self.index == 1:
                sent.extend(records)
                return records
            return records + sent

    monkeypatch.setattr(batch, "_Processes", Two)
    out = tmp_path / "out"
    inputs = [videos / n for n in ("a.mp4", "b.mkv", "c.mp4")]
    for rank in (1, 0):
        batch.deblur_many(inputs, out, options={"guard": False, "quiet": True, "lossless": True})
        if rank == 1:
            assert sorted(p.name for p in out.iterdir()) == ["c.mp4"]  # its share only, and no summary
    s = _summary(out)
    assert [(os.path.basename(v["input"]), v["status"], v["process"]) for v in s["videos"]] == [
        ("a.mp4", "done", 0), ("b.mkv", "done", 0), ("c.mp4", "done", 1)]
    assert s["processes"] == 2 and s["frames"] == 15


@pytest.mark.slow
def test_accelerate_launch_splits_the_videos_between_two_processes(videos, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    launch = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    cmd = [launch, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "29531", "-m", "vdiffdeblur", "deblur",
           *(str(videos / n) for n in ("a.mp4", "b.mkv", "c.mp4")), "-o", str(out), *FAST]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    s = _summary(out)
    assert s["processes"] == 2
    by_input = {os.path.basename(v["input"]): v for v in s["videos"]}
    assert sorted(by_input) == ["a.mp4", "b.mkv", "c.mp4"] and all(v["status"] == "done" for v in s["videos"])
    assert {v["process"] for v in s["videos"]} == {0, 1}  # both worked, each video appears once
    assert [len(read_video(out / n)) for n in ("a.mp4", "b.mkv", "c.mp4")] == [6, 5, 4]
    assert r.stdout.count("3 deblurred") == 1  # one report, by the main process


# ------------------------------------------------------------------------------------------ the threaded loop
def _run(src, out, overlap, stream=None, **kw):
    info = probe(src)
    stream = stream or build_stream(src, info, "transfer", {"threads": 1})
    return stream_file(src, out, stream, info, overlap=overlap, quiet=True, **kw)


def _packets(path):
    """Every stream's packets (bytes, pts, dts): what differs between two files besides Matroska's random UID."""
    import av

    with av.open(str(path)) as c:
        return [(p.stream.index, bytes(p), p.pts, p.dts) for p in c.demux() if p.size]


def test_threaded_loop_writes_the_same_bytes_as_the_sequential_one(videos, tmp_path):
    for name in ("a.mp4", "b.mkv"):
        seq, thr = tmp_path / f"seq_{name}", tmp_path / f"thr_{name}"
        _run(videos / name, seq, overlap=False)
        stats = {}
        _run(videos / name, thr, overlap=True, stats=stats)
        if name.endswith(".mp4"):
            assert seq.read_bytes() == thr.read_bytes()
        assert _packets(seq) == _packets(thr) and len(_packets(seq)) >= len(read_video(seq))
        assert stats["wall_s"] > 0 and stats["decode_s"] > 0 and stats["encode_s"] > 0


class _Fails:
    """Passes frames through; raises at frame ``at`` (in push), or returns a wrong-sized frame there."""

    def __init__(self, at, wrong_size=False):
        self.at, self.wrong_size, self.n = at, wrong_size, 0

    def push(self, frames):
        out = []
        for f in frames:
            self.n += 1
            if self.n == self.at:
                if not self.wrong_size:
                    raise ValueError("the method failed at frame 3")
                f = f[:-2]
            out.append(f)
        return out

    def flush(self):
        return []


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("where", ["method", "writer"])
def test_an_error_in_the_method_or_the_writer_surfaces_and_nothing_is_written(videos, tmp_path, overlap, where):
    out = tmp_path / "o.mp4"
    threads = threading.active_count()
    with pytest.raises(ValueError) as e:
        _run(videos / "a.mp4", out, overlap=overlap, stream=_Fails(3, wrong_size=where == "writer"))
    assert ("failed at frame 3" if where == "method" else "differs from the first frame's 64x48") in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary
    assert threading.active_count() == threads  # the reader and writer threads have ended


def test_an_error_in_the_reader_surfaces_as_the_same_video_error(tmp_path):
    from vdiffdeblur.video import write_video

    folder = write_video(tmp_path / "in", scene(4, 64, 48))
    write_video(tmp_path / "small", scene(1, 32, 32))
    shutil.move(tmp_path / "small" / "00000.png", folder / "00002.png")  # the third frame is another size
    out = tmp_path / "out" / "o.mp4"
    out.parent.mkdir()
    errors = []
    for overlap in (False, True):
        with pytest.raises(VideoError) as e:
            _run(folder, out, overlap=overlap, stream=_Fails(10**6))
        errors.append(str(e.value))
        assert list(out.parent.iterdir()) == []
    assert errors[0] == errors[1] and "00002.png: size 32x32 differs" in errors[0]


def test_default_threads_rule(monkeypatch):
    import cv2
    import torch

    from vdiffdeblur import threads

    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert threads.default_threads() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert threads.default_threads() == 2  # shared among the launch's processes on this machine
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert threads.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3
    before = (torch.get_num_threads(), cv2.getNumThreads())
    try:
        assert threads.set_threads(1) == 1 and torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def test_output_names(tmp_path):
    from vdiffdeblur.methods.batch import output_name

    (tmp_path / "take.v2").mkdir()  # a frame folder with a dot in its name
    for name in ("clip.MOV", "clip.mts", "still.png"):
        (tmp_path / name).write_bytes(b"")
    assert output_name(tmp_path / "take.v2") == ("take.v2", "")
    assert output_name(tmp_path / "clip.MOV") == ("clip", ".MOV")
    assert output_name(tmp_path / "clip.mts") == ("clip", ".mp4")  # a suffix the writer does not take
    assert output_name(tmp_path / "still.png", ".mkv") == ("still", ".mkv")
    assert output_name(tmp_path / "clip.MOV", "folder") == ("clip", "")
