"""Streaming I/O benchmark: push a long clip through iter_windows and VideoWriter and report peak RSS; or, with
``--cpu``, the CPU time decoding and encoding cost per frame on the command line's path.

    python scripts/benchmark_io.py --frames 2000 --size 640x480
    python scripts/benchmark_io.py --cpu --frames 48 --size 1920x1080

Writes a synthetic source video first (not measured), then in a fresh process reads it window by window
and re-encodes it; the peak resident memory of that process is the figure (goal: under 600 MB). ``--cpu`` instead
runs ``stream_file`` with a method that returns its input (decode ahead and encode behind in their threads, as
``vdiffdeblur deblur`` does) and reports the process's CPU time per frame and the reader's and writer's own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vdiffdeblur.profiling import peak_rss_mb


def make_source(path: Path, frames: int, w: int, h: int, preset: str = "ultrafast") -> None:
    import cv2

    from vdiffdeblur.data.synthetic import load_photo
    from vdiffdeblur.video import VideoWriter

    photo = cv2.resize(load_photo("coffee"), (w + 200, h + 200), interpolation=cv2.INTER_AREA)
    with VideoWriter(path, fps=30, preset=preset) as wr:
        for i in range(frames):
            x, y = int(100 + 80 * np.sin(i / 37)), int(100 + 80 * np.cos(i / 53))
            wr.write(photo[y:y + h, x:x + w])


def stream(src: str, dst: str, window: int, overlap: int) -> dict:
    from vdiffdeblur.video import VideoWriter, iter_windows, probe

    info = probe(src)
    t0 = time.perf_counter()
    n = 0
    with VideoWriter(dst, fps=info.fps, preset="veryfast") as wr:
        written = 0
        for idx, frames in iter_windows(src, window, overlap):
            new = frames[written - idx.start:]  # frames not written yet
            wr.write(new)
            written = idx.stop
            n += len(new)
    dt = time.perf_counter() - t0
    rss_mb = peak_rss_mb()
    return {"frames": n, "seconds": round(dt, 2), "fps": round(n / dt, 1), "peak_rss_mb": round(rss_mb, 1)}


class _Identity:
    def push(self, frames):
        return list(frames)

    def flush(self):
        return []


def identity_pass(src: str, dst: str) -> dict:
    """Decode and encode alone: CPU milliseconds per frame of the process and of the reader and writer threads."""
    from vdiffdeblur.methods.runner import stream_file
    from vdiffdeblur.video import probe

    info = probe(src)
    stats: dict = {}
    c0, t0 = time.process_time(), time.perf_counter()
    stream_file(src, dst, _Identity(), info, quiet=True, stats=stats)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = info.num_frames

    def ms(s):
        return round(1000 * s / n, 1)

    return {"frames": n, "wall_ms": ms(wall), "cpu_ms": ms(cpu), "decode_cpu_ms": ms(stats["decode_cpu_s"]),
            "encode_cpu_ms": ms(stats["encode_cpu_s"]), "size_kib_per_frame": round(Path(dst).stat().st_size / n
                                                                                      / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--size", default="640x480")
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--overlap", type=int, default=4)
    p.add_argument("--cpu", action="store_true", help="CPU time of decode + encode per frame instead of memory")
    p.add_argument("--_stream", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--_identity", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._stream:
        print(json.dumps(stream(a._stream[0], a._stream[1], a.window, a.overlap)))
        return
    if a._identity:
        print(json.dumps(identity_pass(*a._identity)))
        return
    w, h = map(int, a.size.split("x"))
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "src.mp4", Path(d) / "dst.mp4"
        make_source(src, a.frames, w, h, preset="medium" if a.cpu else "ultrafast")  # --cpu: a file like a camera's
        mode = ["--_identity"] if a.cpu else ["--window", str(a.window), "--overlap", str(a.overlap), "--_stream"]
        out = subprocess.run([sys.executable, __file__, *mode, str(src), str(dst)], capture_output=True, text=True,
                             check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update(size=a.size)
    if not a.cpu:
        res.update(window=a.window, overlap=a.overlap)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
