"""Decode and encode in their own threads: the encoder's last frames are drained there too, x264 runs its defaults
(preset veryfast, one thread, in the writer's thread), and the threads' CPU time is what the benchmark counts."""

import threading

import numpy as np
import pytest
from media import scene

from vdiffdeblur.io_threads import BackgroundWriter
from vdiffdeblur.methods.runner import stream_file
from vdiffdeblur.video import VideoWriter, probe, read_video, write_video


class _Identity:
    def push(self, frames):
        return list(frames)

    def flush(self):
        return []


def test_done_runs_after_the_last_item_in_the_writer_thread_and_is_counted():
    seen = []
    with BackgroundWriter(lambda i: seen.append((i, threading.current_thread().name)),
                          done=lambda: seen.append(("done", threading.current_thread().name))) as sink:
        for i in range(5):
            sink.put(i)
        sink.finish()
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4, "done"]
    assert {s[1] for s in seen} == {"vdiffdeblur-writer"}
    assert sink.busy_s > 0 and sink.cpu_s >= 0


def test_an_error_in_done_is_raised_by_finish():
    def done():
        raise OSError("disk full at the end")

    with pytest.raises(OSError, match="disk full at the end"):
        with BackgroundWriter(lambda i: None, done=done) as sink:
            sink.put(1)
            sink.finish()


def test_a_failed_run_does_not_call_done():
    called = []
    with pytest.raises(ValueError):
        with BackgroundWriter(lambda i: None, done=lambda: called.append(1)) as sink:
            sink.put(1)
            raise ValueError("the method failed")
    assert called == []


def test_every_packet_is_encoded_in_the_writer_thread_and_its_cpu_time_counted(tmp_path, monkeypatch):
    src = write_video(tmp_path / "in.mp4", scene(24, 128, 96), fps=30)
    threads = []
    mux = VideoWriter._mux

    def spy(self, packets):
        packets = list(packets)
        threads.extend(threading.current_thread().name for _ in packets)
        mux(self, packets)

    monkeypatch.setattr(VideoWriter, "_mux", spy)
    stats = {}
    stream_file(src, tmp_path / "out.mp4", _Identity(), probe(src), quiet=True, stats=stats)
    assert len(threads) == 24 and set(threads) == {"vdiffdeblur-writer"}  # the encoder's flush included
    assert stats["decode_cpu_s"] > 0 and stats["encode_cpu_s"] > 0
    assert stats["encode_cpu_s"] <= stats["encode_s"] + 0.05 and stats["decode_cpu_s"] <= stats["decode_s"] + 0.05
    assert len(read_video(tmp_path / "out.mp4")) == 24


def _x264_settings(path) -> str:
    data = path.read_bytes()
    start = data.index(b"options: ")
    return data[start:data.index(b"\x00", start)].decode()


def test_x264_runs_veryfast_in_one_thread_unless_asked_otherwise(tmp_path):
    clip = scene(4, 320, 240)  # tall enough for x264 to take two threads when asked
    fast = _x264_settings(write_video(tmp_path / "a.mp4", clip, fps=25))
    assert " threads=1 " in fast and " subme=2 " in fast and " crf=18.0 " in fast  # veryfast's subme
    medium = _x264_settings(write_video(tmp_path / "b.mp4", clip, fps=25, preset="medium", options={"threads": "2"}))
    assert " threads=2 " in medium and " subme=7 " in medium


def test_flush_drains_the_encoder_and_then_refuses_frames(tmp_path):
    clip = scene(12, 64, 48)
    with VideoWriter(tmp_path / "o.mp4", fps=25) as w:
        w.write(clip)
        w.flush()
        w.flush()  # a second flush does nothing
        with pytest.raises(RuntimeError, match="flushed"):
            w.write(clip[:1])
    back = read_video(tmp_path / "o.mp4").frames
    assert back.shape == clip.shape
    assert np.array_equal(back, read_video(write_video(tmp_path / "closed.mp4", clip, fps=25)).frames)


def test_benchmark_io_identity_pass_reports_cpu_per_frame(tmp_path):
    from helpers import load_script

    bench = load_script("benchmark_io")
    src = write_video(tmp_path / "in.mp4", scene(6, 128, 96), fps=30)
    r = bench.identity_pass(str(src), str(tmp_path / "out.mp4"))
    assert r["frames"] == 6 and r["size_kib_per_frame"] > 0
    assert 0 < r["decode_cpu_ms"] and 0 < r["encode_cpu_ms"]
    assert r["decode_cpu_ms"] + r["encode_cpu_ms"] <= r["cpu_ms"] + 1  # the threads' time is part of the process's


@pytest.mark.parametrize("name, kw, size", [("yuv420.mp4", {}, (96, 128)), ("odd444.mp4", {}, (95, 127)),
                                            ("rgb.mp4", {"lossless": True}, (96, 128)),
                                            ("ffv1.mkv", {"lossless": True}, (96, 128))])
def test_the_reader_gives_exactly_what_each_frames_own_conversion_gives(name, kw, size, tmp_path):
    import av

    h, w = size
    path = write_video(tmp_path / name, scene(5, w, h), fps=25, **kw)
    args = probe(path).colour.decode_args() if probe(path).colour else {}
    with av.open(str(path)) as c:
        expected = np.stack([f.to_ndarray(format="rgb24", **args) for f in c.decode(c.streams.video[0])])
    got = read_video(path).frames
    assert got.shape == (5, h, w, 3) and np.array_equal(got, expected)


def test_the_command_line_preset_reaches_x264(tmp_path, capsys):
    from vdiffdeblur.cli import main

    src = write_video(tmp_path / "in.mp4", scene(4, 64, 48), fps=25)
    for preset, subme in (("veryfast", " subme=2 "), ("medium", " subme=7 ")):
        out = tmp_path / f"{preset}.mp4"
        argv = ["deblur", str(src), "-o", str(out), "--method", "transfer", "--quiet", "--threads", "1"]
        assert main(argv + (["--preset", preset] if preset != "veryfast" else [])) == 0
        assert subme in _x264_settings(out)
    capsys.readouterr()
    assert main(["deblur", str(src), "-o", str(tmp_path / "x.mp4"), "--preset", "quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--preset" in err[0] and not (tmp_path / "x.mp4").exists()
