#!/usr/bin/env python
"""Benchmark the online DTB deblurrer on this machine.

* seconds per frame and fps of ``OnlineDeblurrer`` (network only, no video I/O) at each ``--sizes`` for each
  ``--precisions`` / ``--layouts`` / ``--threads`` / ``--fused``, each configuration in its own process so that its
  peak memory (max RSS; on a GPU the peak allocated memory) is its own; wall and CPU time are both kept (on a shared
  CPU the wall time includes the time other jobs held the core);
* the GFLOP/s that reaches (convolution FLOPs counted per frame) against bfloat16 and float32 matmuls measured in
  the same process, by wall time and by CPU time;
* with ``--compare-outputs``: how far bfloat16, fused and tiled outputs are from the float32 whole-frame output
  (PSNR, largest difference in grey levels) on a camera-shake clip, and each one's PSNR against the sharp clip;
* peak memory (max RSS) of ``vdiffdeblur deblur --method dtb`` on ``--memory-frames`` frames of ``--memory-size``;
* with ``--quality``: PSNR gains on camera-shake clips of the evaluation photos (network alone, and after
  the do-no-harm guard with ``--guard``), for the model and any ``--compare`` models.

    python scripts/benchmark_dtb.py [--model PATH] [--threads 1 2] [--json out.json]
    python scripts/benchmark_dtb.py --sizes 640x480 1920x1080 3840x2160 --precisions float32 bfloat16 \\
        --layouts channels_last contiguous --frames 3 --no-memory --compare-outputs
    python scripts/benchmark_dtb.py --device cuda --precisions bfloat16 float16 --no-memory
    python scripts/benchmark_dtb.py --quality --guard --compare out/dtb-cnn --no-speed --no-memory
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vdiffdeblur.devices import resolve_device
from vdiffdeblur.methods.dtb import OnlineDeblurrer, load_dtb_model
from vdiffdeblur.models.dtb import conv_flops_per_frame

logger = logging.getLogger("benchmark_dtb")


def matmul_gflops(n: int = 2048, reps: int = 10, dtype=torch.bfloat16, device="cpu") -> dict:
    """Best wall-time and CPU-time GFLOP/s of an n x n matmul."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    wall = cpu = float("inf")
    for _ in range(reps):
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        a @ b
        _sync(device)
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return {"wall": 2 * n ** 3 / wall / 1e9, "cpu": 2 * n ** 3 / max(cpu, 1e-9) / 1e9}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_stream(model, width: int, height: int, frames: int, precision: str, compile: bool = False,
                channels_last: bool = True, tile="auto", device="cpu") -> dict:
    """Seconds per frame (wall and CPU, each frame) of the stream after two warm-up frames."""
    rng = np.random.default_rng(0)
    clip = (rng.random((4, height, width, 3)) * 255).astype(np.uint8)
    d = OnlineDeblurrer(model, device=device, precision=precision, compile=compile, channels_last=channels_last,
                        tile=tile)
    for i in range(3):  # warm-up (and compilation): the first output and a step with a state
        d.push([clip[i % 4]])
    wall, cpu = [], []
    for i in range(frames):
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        d.push([clip[(i + 3) % 4]])
        _sync(device)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    d.flush()
    return {"wall": wall, "cpu": cpu, "precision": d.precision}


def speed_worker(cfg: dict) -> dict:
    """One configuration, run in its own process: timings, GFLOP/s against the matmuls, peak memory."""
    import vdiffdeblur.models.dtb as dtb_model

    torch.set_num_threads(cfg["threads"])
    dtb_model.FUSED_INFERENCE = dtb_model.FUSED_INFERENCE and cfg["fused"]
    device = torch.device(cfg["device"])
    model = load_dtb_model(cfg["model"], device=device)
    w, h = cfg["width"], cfg["height"]
    # every convolution's cost is proportional to the pixels: count at up to 640x480 (an untiled 4K step would not fit)
    flops = conv_flops_per_frame(model, min(h, 480), min(w, 640)) * (h * w) / (min(h, 480) * min(w, 640))
    n = cfg.get("matmul_size", 2048)
    mm = {"bfloat16": matmul_gflops(n, device=device), "float32": matmul_gflops(n, dtype=torch.float32, device=device)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time_stream(model, w, h, cfg["frames"], cfg["precision"], cfg["compile"], cfg["layout"] == "channels_last",
                    cfg["tile"], device)
    mm_after = {"bfloat16": matmul_gflops(n, device=device),
                "float32": matmul_gflops(n, dtype=torch.float32, device=device)}
    res = {**cfg, **t, "gflop_per_frame": flops / 1e9,
           "matmul_gflops": {k: {m: max(mm[k][m], mm_after[k][m]) for m in ("wall", "cpu")} for k in mm},
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return res


def run_speed_worker(cfg: dict) -> dict:
    r = subprocess.run([sys.executable, __file__, "--_worker", json.dumps(cfg)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"speed worker {cfg} failed: {r.stderr[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def compare_outputs(model, width: int, height: int, frames: int, tile: int) -> dict:
    """bfloat16, plain-ops and tiled outputs against the float32 whole-frame one, on a camera-shake clip."""
    import vdiffdeblur.models.dtb as dtb_model
    from vdiffdeblur.data.synthetic import ShakeConfig, synthesize_shake

    clip = synthesize_shake("builtin:coffee", ShakeConfig(num_frames=frames, width=width, height=height), seed=0)
    fused = dtb_model.FUSED_INFERENCE
    runs = {}
    for name, precision, tiled, use_fused in (("float32", "float32", None, fused),
                                              ("float32 plain ops", "float32", None, False),
                                              ("float32 tiled", "float32", tile, fused),
                                              ("bfloat16", "bfloat16", None, fused),
                                              ("bfloat16 plain ops", "bfloat16", None, False),
                                              ("bfloat16 tiled", "bfloat16", tile, fused)):
        dtb_model.FUSED_INFERENCE = use_fused
        runs[name] = OnlineDeblurrer(model, precision=precision, tile=tiled).deblur(clip.blurry)
    dtb_model.FUSED_INFERENCE = fused
    ref = runs["float32"]
    rows = {name: {"psnr_vs_float32": psnr(out, ref),
                   "max_grey_levels_vs_float32": int(np.abs(out.astype(int) - ref.astype(int)).max()),
                   "psnr_vs_sharp": psnr(out, clip.sharp)} for name, out in runs.items()}
    rows["bfloat16 tiled vs bfloat16"] = {
        "max_grey_levels": int(np.abs(runs["bfloat16 tiled"].astype(int) - runs["bfloat16"].astype(int)).max()),
        "psnr": psnr(runs["bfloat16 tiled"], runs["bfloat16"])}
    rows["input_psnr_vs_sharp"] = psnr(clip.blurry, clip.sharp)
    return rows


# A tiny launcher runs the CLI and reports its children's peak RSS: measuring from this (large) process would
# count the pages a forked child shares with its parent before exec.
_LAUNCHER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def peak_rss_cli(video: Path, model: str | None, tmp: Path, device: str = "cpu") -> float:
    """Max RSS (MiB) of one ``vdiffdeblur deblur --method dtb`` process."""
    cmd = [sys.executable, "-m", "vdiffdeblur.cli", "deblur", str(video), "-o", str(tmp / f"out_{video.stem}.mp4"),
           "--method", "dtb", "--no-guard", "--device", device]
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


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def _report_speed(row: dict) -> None:
    wall, cpu = min(row["wall"]), min(row["cpu"])
    gf = row["gflop_per_frame"]
    mm = row["matmul_gflops"]
    mem = f"peak RSS {row['peak_rss_mib']:.0f} MiB" + (f", GPU {row['peak_gpu_mib']:.0f} MiB"
                                                          if "peak_gpu_mib" in row else "")
    logger.info("%dx%d %s %s%s%s, %d thread(s): %.3f s/frame (median %.3f) = %.2f fps; %.1f GFLOP/frame -> "
                "%.0f GFLOP/s wall (%.0f%% of bf16 matmul %.0f, fp32 matmul %.0f), %.0f GFLOP/s CPU time (%.0f%% of "
                "%.0f); %s", row["width"], row["height"], row["precision"], row["layout"],
                "" if row["fused"] else " plain ops", " compiled" if row["compile"] else "", row["threads"], wall,
                float(np.median(row["wall"])), 1 / wall, gf, gf / wall, 100 * gf / wall / mm["bfloat16"]["wall"],
                mm["bfloat16"]["wall"], mm["float32"]["wall"], gf / max(cpu, 1e-9),
                100 * gf / max(cpu, 1e-9) / mm["bfloat16"]["cpu"], mm["bfloat16"]["cpu"], mem)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="DTBNet folder (default: the shipped checkpoint)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    p.add_argument("--sizes", type=_size, nargs="+", default=[(640, 480), (1920, 1080)], help="WxH (default: "
                   "640x480 1920x1080)")
    p.add_argument("--frames", type=int, default=6, help="frames timed per configuration")
    p.add_argument("--precisions", nargs="+", default=["auto"], help="float32, bfloat16, float16 or auto")
    p.add_argument("--layouts", nargs="+", default=["channels_last"], choices=["channels_last", "contiguous"])
    p.add_argument("--fused", nargs="+", default=["on"], choices=["on", "off"],
                   help="fused oneDNN convolutions on the CPU (off: the plain PyTorch ops)")
    p.add_argument("--tile", default="auto", help="tile size in pixels, auto or none (default: auto)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--compare-outputs", action="store_true", help="bfloat16 / plain / tiled output against float32")
    p.add_argument("--compare-size", type=_size, default=(640, 480), help="WxH of --compare-outputs' clip")
    p.add_argument("--no-memory", action="store_true", help="skip the CLI peak-memory runs")
    p.add_argument("--memory-size", type=_size, default=(320, 240), help="WxH of the CLI memory runs")
    p.add_argument("--memory-frames", type=int, nargs=2, default=[100, 1000], help="frame counts compared")
    p.add_argument("--no-speed", action="store_true", help="skip the speed runs")
    p.add_argument("--quality", action="store_true", help="score on the evaluation photos' shake clips")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--guard", action="store_true", help="also score after the do-no-harm guard")
    p.add_argument("--compare", nargs="*", default=[], help="more DTBNet folders to score the same way")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        print(json.dumps(speed_worker(json.loads(args._worker))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.device = str(resolve_device(args.device))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tile = None if args.tile == "none" else args.tile if args.tile == "auto" else int(args.tile)

    model = load_dtb_model(args.model)
    cfg = model.config
    res: dict = {"model": args.model or "shipped", "variant": cfg.variant, "channels": cfg.channels,
                 "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": args.device, "speed": [],
                 "load_average": os.getloadavg()[0]}
    logger.info("DTBNet %s, %d channels; %d CPUs, load average %.1f; %s", cfg.variant, cfg.channels,
                os.cpu_count(), res["load_average"], args.device)
    for threads in ([] if args.no_speed else args.threads):
        for w, h in args.sizes:
            for precision in args.precisions:
                for layout in args.layouts:
                    for fused in args.fused:
                        for comp in ([False, True] if args.compile else [False]):
                            row = run_speed_worker({
                                "model": args.model, "device": args.device, "threads": threads, "width": w,
                                "height": h, "frames": args.frames, "precision": precision, "layout": layout,
                                "fused": fused == "on", "compile": comp, "tile": tile})
                            _report_speed(row)
                            res["speed"].append(row)
    if args.compare_outputs:
        w, h = args.compare_size
        res["compare_outputs"] = rows = compare_outputs(model, w, h, 8, tile=256)
        for name, r in rows.items():
            logger.info("%s: %s", name, r)
    if not args.no_memory:
        with tempfile.TemporaryDirectory() as td:
            tmp = Path(td)
            mem = {}
            w, h = args.memory_size
            for n in args.memory_frames:
                video = make_video(tmp / f"in{n}.mkv", n, w, h)
                t = time.perf_counter()
                mem[n] = peak_rss_cli(video, args.model, tmp, args.device)
                logger.info("CLI on %d frames %dx%d: peak RSS %.0f MiB (%.0f s)", n, w, h, mem[n],
                            time.perf_counter() - t)
            a, b = args.memory_frames
            res["peak_rss_mib"] = {str(k): v for k, v in mem.items()}
            res["peak_rss_ratio"] = mem[b] / mem[a]
            logger.info("peak memory ratio %d / %d frames: %.3f", b, a, res["peak_rss_ratio"])
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
