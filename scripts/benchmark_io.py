"""Streaming I/O benchmark: push a long clip through iter_windows and VideoWriter and report peak RSS.

    python scripts/benchmark_io.py --frames 2000 --size 640x480

Writes a synthetic source video first (not measured), then in a fresh process reads it window by window
and re-encodes it; the peak resident memory of that process is the figure (goal: under 600 MB).
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


def make_source(path: Path, frames: int, w: int, h: int) -> None:
    import cv2

    from vdiffdeblur.data.synthetic import load_photo
    from vdiffdeblur.video import VideoWriter

    photo = cv2.resize(load_photo("coffee"), (w + 200, h + 200), interpolation=cv2.INTER_AREA)
    with VideoWriter(path, fps=30, preset="ultrafast") as wr:
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--size", default="640x480")
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--overlap", type=int, default=4)
    p.add_argument("--_stream", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._stream:
        print(json.dumps(stream(a._stream[0], a._stream[1], a.window, a.overlap)))
        return
    w, h = map(int, a.size.split("x"))
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "src.mp4", Path(d) / "dst.mp4"
        make_source(src, a.frames, w, h)
        out = subprocess.run([sys.executable, __file__, "--window", str(a.window), "--overlap", str(a.overlap),
                              "--_stream", str(src), str(dst)], capture_output=True, text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update(size=a.size, window=a.window, overlap=a.overlap)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
