#!/usr/bin/env python
"""Benchmark the online DTB deblurrer on this machine.

* frames per second of ``OnlineDeblurrer`` (network only, no video I/O) at 640x480 and 1280x720;
* the GFLOP/s that reaches (convolution FLOPs counted per frame) as a fraction of a bfloat16 matmul measured
  in the same run;
* peak memory (max RSS) of ``vdiffdeblur deblur --method dtb`` on 100 vs 1000 frames at 320x240;
* with ``--quality``: PSNR gains on camera-shake clips of the evaluation photos (network alone, and after
  the do-no-harm guard with ``--guard``), for the model and any ``--compare`` models.

    python scripts/benchmark_dtb.py [--model PATH] [--threads 1 2] [--json out.json]
    python scripts/benchmark_dtb.py --quality --guard --compare out/dtb-cnn --no-speed --no-memory
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vdiffdeblur.methods.dtb import OnlineDeblurrer, load_dtb_model
from vdiffdeblur.models.dtb import conv_flops_per_frame

logger = logging.getLogger("benchmark_dtb")


def matmul_gflops(n: int = 2048, reps: int = 10, dtype=torch.bfloat16) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def stream_fps(model, width: int, height: int, frames: int, precision: str, compile: bool) -> float:
    rng = np.random.default_rng(0)
    clip = (rng.random((4, height, width, 3)) * 255).astype(np.uint8)
    d = OnlineDeblurrer(model, precision=precision, compile=compile)
    for i in range(3):  # warm-up (and compilation)
        d.push([clip[i % 4]])
    t = time.perf_counter()
    for i in range(frames):
        d.push([clip[i % 4]])
    dt = time.perf_counter() - t
    d.flush()
    return frames / dt


# A tiny launcher runs the CLI and reports its children's peak RSS: measuring from this (large) process would
# count the pages a forked child shares with its parent before exec.
_LAUNCHER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def peak_rss_cli(video: Path, model: str | None, tmp: Path) -> float:
    """Max RSS (MiB) of one ``vdiffdeblur deblur --method dtb`` process."""
    cmd = [sys.executable, "-m", "vdiffdeblur.cli", "deblur", str(video), "-o", str(tmp / f"out_{video.stem}.mp4"),
           "--method", "dtb", "--no-guard", "--device", "cpu"]
    if model:
        cmd += ["--model", model]
    res = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr[-500:]}")
    return int(res.stdout.strip().splitlines()[-1]) / 1024.0


def make_video(path: Path, n: int, width: int = 320, height: int = 240) -> Path:
    from vdiffdeblur.data.synthetic import ShakeConfig, synthesize_shake
    from vdiffdeblur.video import VideoWriter

    clip = synthesize_shake("builtin:coffee", ShakeConfig(num_frames=40, width=width, height=height), seed=0)
    with VideoWriter(path, fps=30) as w:
        for i in range(n):
            w.write(clip.blurry[i % 40])
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="DTBNet folder (default: the shipped checkpoint)")
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    p.add_argument("--frames", type=int, default=12, help="frames timed per size")
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--no-memory", action="store_true", help="skip the CLI peak-memory runs")
    p.add_argument("--no-speed", action="store_true", help="skip the speed runs")
    p.add_argument("--quality", action="store_true", help="score on the evaluation photos' shake clips")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--guard", action="store_true", help="also score after the do-no-harm guard")
    p.add_argument("--compare", nargs="*", default=[], help="more DTBNet folders to score the same way")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model = load_dtb_model(args.model)
    cfg = model.config
    res: dict = {"model": args.model or "shipped", "variant": cfg.variant, "channels": cfg.channels,
                 "cpu_count": os.cpu_count(), "torch": torch.__version__, "speed": []}
    logger.info("DTBNet %s, %d channels; %d CPUs", cfg.variant, cfg.channels, os.cpu_count())
    for threads in ([] if args.no_speed else args.threads):
        torch.set_num_threads(threads)
        mm = matmul_gflops()
        logger.info("threads %d: bf16 matmul %.0f GFLOP/s", threads, mm)
        for w, h in ((640, 480), (1280, 720)):
            flops = conv_flops_per_frame(model, h, w)
            for comp in ([False, True] if args.compile else [False]):
                fps = stream_fps(model, w, h, args.frames, args.precision, comp)
                row = {"threads": threads, "size": f"{w}x{h}", "compile": comp, "fps": fps,
                       "gflop_per_frame": flops / 1e9, "gflops": fps * flops / 1e9, "matmul_bf16_gflops": mm,
                       "fraction_of_matmul": fps * flops / 1e9 / mm}
                res["speed"].append(row)
                logger.info("  %s%s: %.2f fps, %.1f GFLOP/frame -> %.0f GFLOP/s = %.0f%% of the bf16 matmul",
                            row["size"], " compiled" if comp else "", fps, row["gflop_per_frame"], row["gflops"],
                            100 * row["fraction_of_matmul"])
    if not args.no_memory:
        with tempfile.TemporaryDirectory() as td:
            tmp = Path(td)
            mem = {}
            for n in (100, 1000):
                video = make_video(tmp / f"in{n}.mkv", n)
                t = time.perf_counter()
                mem[n] = peak_rss_cli(video, args.model, tmp)
                logger.info("CLI on %d frames 320x240: peak RSS %.0f MiB (%.0f s)", n, mem[n], time.perf_counter() - t)
            res["peak_rss_mib"] = {str(k): v for k, v in mem.items()}
            res["peak_rss_ratio_1000_vs_100"] = mem[1000] / mem[100]
            logger.info("peak memory ratio 1000 / 100 frames: %.3f", res["peak_rss_ratio_1000_vs_100"])
    if args.quality:
        from vdiffdeblur.trainer.dtb import evaluate_shake

        res["quality"] = {}
        for name in [args.model or "shipped"] + list(args.compare):
            net = model if name == (args.model or "shipped") else load_dtb_model(name)
            rows = evaluate_shake(net, seeds=args.seeds, precision=args.precision, with_guard=args.guard)
            res["quality"][name] = rows
            for r in rows:
                line = (f"{name} {r['photo']:>10} seed {r['seed']}: hard third {r['input_hard_psnr']:.2f} dB "
                        f"{r['gain_hard']:+.2f} dB, all {r['gain_all']:+.2f} dB, "
                        f"worst frame {-r['worst_loss']:+.2f} dB")
                if args.guard:
                    line += (f" | guard: hard {r['guard_gain_hard']:+.2f}, all {r['guard_gain_all']:+.2f}, "
                             f"worst {-r['guard_worst_loss']:+.2f}")
                logger.info(line)
            logger.info("%s mean: hard third %+.3f dB, all %+.3f dB, worst frame %+.3f dB", name,
                        np.mean([r["gain_hard"] for r in rows]), np.mean([r["gain_all"] for r in rows]),
                        -max(r["worst_loss"] for r in rows))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
