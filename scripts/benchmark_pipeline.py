"""Memory and time of the diffusion deblurrer against video length.

    python scripts/benchmark_pipeline.py                      # tiny random pipeline, 64x64, 16 vs 200 frames
    python scripts/benchmark_pipeline.py --model DIR --size 256x256 --frames 16 200 --steps 50 --device cuda

Each length runs in a fresh process that loads the pipeline, deblurs a 4-frame warm-up clip (untimed), then
streams the clip from a lossless file into a lossless file `--repeat` times (the fastest run counts). Reported:
wall and CPU seconds per frame, resident memory (peak during the run and its increase over the loaded pipeline)
and, on CUDA, peak allocated GPU memory;
then the ratios of the longest run to the shortest (goals: memory <= 1.2, time per frame within 1.2x), and the
ratio of frames the UNet processes per output frame (overlapping windows process the shared frames twice).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def make_clip(path: Path, frames: int, w: int, h: int, seed: int = 0) -> None:
    from vdiffdeblur.data.synthetic import ShakeConfig, synthesize_shake
    from vdiffdeblur.video import write_video

    clip = synthesize_shake("builtin:coffee", ShakeConfig(num_frames=frames, width=w, height=h), seed=seed)
    write_video(path, clip.blurry, fps=clip.fps, lossless=True)


def _unet_frames(n: int, args) -> int:
    from vdiffdeblur.pipelines.windows import num_windows

    if n <= args.window:
        return n
    k = num_windows(n, args.window, args.overlap)
    return (k - 1) * args.window + (n - (k - 1) * (args.window - args.overlap))


def worker(args) -> None:
    import torch

    from vdiffdeblur.methods.diffusion import load_pipeline, measure_deblur_file

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    pipe.set_progress_bar_config(disable=True)
    r = measure_deblur_file(pipe, args.input, args.output, warmup_source=args.warmup, repeat=args.repeat,
                            num_inference_steps=args.steps, window_size=args.window, window_overlap=args.overlap,
                            lossless=True)
    print(json.dumps(r))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="DeblurVideoPipeline folder (default: a tiny random one)")
    p.add_argument("--frames", type=int, nargs="+", default=[16, 200])
    p.add_argument("--size", default="64x64", help="WIDTHxHEIGHT")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--overlap", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--repeat", type=int, default=3, help="runs per length; the fastest counts")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--warmup", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    w, h = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            from vdiffdeblur.pipelines.tiny import make_tiny_pipeline

            model = str(tmp / "tiny")
            make_tiny_pipeline(seed=0).save_pretrained(model)
        make_clip(tmp / "warmup.mkv", 4, w, h, seed=1)
        results = []
        for n in args.frames:
            make_clip(tmp / f"in{n}.mkv", n, w, h)
            cmd = [sys.executable, __file__, "--worker", "--model", model, "--input", str(tmp / f"in{n}.mkv"),
                   "--output", str(tmp / f"out{n}.mkv"), "--warmup", str(tmp / "warmup.mkv"),
                   "--steps", str(args.steps), "--window", str(args.window), "--overlap", str(args.overlap),
                   "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads),
                   "--repeat", str(args.repeat)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            results.append(json.loads(r.stdout.strip().splitlines()[-1]))
            x = results[-1]
            print(f"{n:5d} frames {x['size']}: {x['seconds_per_frame'] * 1000:8.1f} ms/frame "
                  f"({x['cpu_seconds_per_frame'] * 1000:.1f} ms CPU), RSS peak "
                  f"{x['rss_peak_mb']:7.1f} MB (+{x['rss_increase_mb']:.1f} MB over the loaded pipeline)"
                  + (f", CUDA peak {x['cuda_peak_allocated_mb']:.1f} MB" if "cuda_peak_allocated_mb" in x else ""))
    a, b = results[0], results[-1]
    ratios = {
        "rss_peak_ratio": b["rss_peak_mb"] / a["rss_peak_mb"],
        "rss_increase_ratio": b["rss_increase_mb"] / max(a["rss_increase_mb"], 1e-9),
        "time_per_frame_ratio": b["seconds_per_frame"] / a["seconds_per_frame"],
        "cpu_time_per_frame_ratio": b["cpu_seconds_per_frame"] / a["cpu_seconds_per_frame"],
        # frames the UNet processes per output frame, longest run over shortest (what overlap costs)
        "unet_frames_ratio": (_unet_frames(b["frames"], args) / b["frames"]
                              / (_unet_frames(a["frames"], args) / a["frames"])),
    }
    if "cuda_peak_allocated_mb" in a:
        ratios["cuda_peak_ratio"] = b["cuda_peak_allocated_mb"] / a["cuda_peak_allocated_mb"]
    print(f"{b['frames']} vs {a['frames']} frames: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": results, "ratios": ratios, "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
