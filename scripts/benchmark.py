"""Benchmark every method against classical baselines on held-out built-in camera-shake clips, and write
docs/benchmarks.md with PNG plots.

    python scripts/benchmark.py                       # all methods, 4 held-out photos x 2 seeds, 40 frames 320x240
    python scripts/benchmark.py --methods transfer transfer+guard --seeds 0 --frames 24 --out /tmp/bench
    python scripts/benchmark.py --motion layered      # objects moving over the photos instead (docs/layered/)
    python scripts/benchmark.py --motion objects      # the same, the camera only panning (docs/objects/)

Each method runs in its own process (so its peak memory is its own) through the same path as
`vdiffdeblur deblur` (or, for the baselines, frame by frame). Methods whose model is not available are
listed as such. Figures: PSNR/SSIM on all frames and on the blurriest third (by the clip's known blur
extent), E_warp (flow of the ground truth), frames made worse than the input by more than 0.3 dB,
seconds per frame and peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vdiffdeblur.profiling import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
# name -> (kind, method or baseline, guard)
METHODS = {
    "blurry": ("baseline", "identity", False),
    "unsharp": ("baseline", "unsharp", False),
    "rl_oracle": ("baseline", "rl_oracle", False),
    "transfer": ("method", "transfer", False),
    "transfer+guard": ("method", "transfer", True),
    "dtb": ("method", "dtb", False),
    "dtb+guard": ("method", "dtb", True),
    "fit": ("method", "fit", False),
    "fit+guard": ("method", "fit", True),
    "diffusion": ("method", "diffusion", False),
    "diffusion+guard": ("method", "diffusion", True),
}


def worker(name: str, clip_dirs: list[str]) -> dict:
    """Run one method on every clip; per clip, write its output next to the clip and return timings."""
    from vdiffdeblur.baselines import richardson_lucy, unsharp_mask
    from vdiffdeblur.cli import build_parser, deblur_options
    from vdiffdeblur.methods.runner import deblur_file
    from vdiffdeblur.video import read_video, write_video

    kind, what, guard = METHODS[name]
    res = {"clips": {}}
    for d in map(Path, clip_dirs):
        src, out = d / "blur.mkv", d / f"out_{name}.mkv"
        t0 = time.perf_counter()
        try:
            if kind == "baseline":
                frames = read_video(src).frames
                meta = json.loads((d / "meta.json").read_text())
                if what == "rl_oracle" and "offsets" not in meta:
                    raise ValueError("rl_oracle needs each frame's one blur kernel; in layered clips every object "
                                     "blurs differently")
                if what == "unsharp":
                    frames = unsharp_mask(frames)
                elif what == "rl_oracle":
                    from vdiffdeblur.blur import splat_points

                    kernels = [splat_points(np.asarray(o), 2 * int(np.ceil(np.abs(o).max())) + 3)
                               for o in meta["offsets"]]
                    frames = np.stack([richardson_lucy(f, k) for f, k in zip(frames, kernels)])
                write_video(out, frames, fps=meta["fps"], lossless=True)
            else:
                # one thread, so that float sums (and so every figure) are the same on any machine load
                argv = (["deblur", str(src), "-o", str(out), "--method", what, "--lossless", "--threads", "1"]
                        + ([] if guard else ["--no-guard"]))
                options = deblur_options(build_parser().parse_args(argv + ["--quiet"]))
                deblur_file(src, out, method=what, options=options, overwrite=True)
        except (NotImplementedError, FileNotFoundError, ValueError) as e:
            return {"error": " ".join(str(e).split())}
        res["clips"][d.name] = time.perf_counter() - t0
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def make_clips(root: Path, photos, seeds, frames: int, size: tuple[int, int], motion: str = "shake") -> list[Path]:
    from vdiffdeblur.data.layered import LayeredConfig, synthesize_layered
    from vdiffdeblur.data.synthetic import ShakeConfig, synthesize_shake
    from vdiffdeblur.video import write_video

    dirs = []
    for photo in photos:
        for seed in seeds:
            d = root / f"{photo}_s{seed}"
            d.mkdir(parents=True, exist_ok=True)
            if motion in ("layered", "objects"):
                cfg = LayeredConfig(num_frames=frames, width=size[0], height=size[1])
                cfg = cfg.steady_camera() if motion == "objects" else cfg
                c = synthesize_layered([f"builtin:{photo}"], cfg, seed=seed)
            else:
                c = synthesize_shake(f"builtin:{photo}", ShakeConfig(num_frames=frames, width=size[0],
                                                                     height=size[1]), seed=seed)
            write_video(d / "blur.mkv", c.blurry, fps=c.fps, lossless=True)
            np.save(d / "sharp.npy", c.sharp)
            (d / "meta.json").write_text(json.dumps(c.metadata()))
            dirs.append(d)
    return dirs


def evaluate(name: str, dirs: list[Path]) -> dict:
    from vdiffdeblur.evaluation import score
    from vdiffdeblur.video import read_video

    rows = []
    for d in dirs:
        blurry = read_video(d / "blur.mkv").frames
        sharp = np.load(d / "sharp.npy")
        extent = np.asarray(json.loads((d / "meta.json").read_text())["blur_extent"])
        res = read_video(d / f"out_{name}.mkv").frames
        s = score(res, sharp, blurry=blurry, blur_score=extent)
        rows.append({"clip": d.name, "psnr": s.mean_psnr, "ssim": s.mean_ssim, "hard_psnr": s.hard_psnr,
                     "hard_ssim": s.hard_ssim, "gain_all": s.gain("all"), "gain_hard": s.gain("hard"),
                     "ewarp": s.ewarp, "worse": s.frames_worse(), "frames": len(res),
                     "extent": extent.tolist(), "frame_gain": (s.psnr - s.input_psnr).tolist()})
    return {"rows": rows}


def summarize(name: str, ev: dict, run: dict) -> dict:
    r = ev["rows"]
    n = sum(x["frames"] for x in r)
    secs = sum(run["clips"].values())
    return {"method": name, "psnr": np.mean([x["psnr"] for x in r]), "ssim": np.mean([x["ssim"] for x in r]),
            "hard_psnr": np.mean([x["hard_psnr"] for x in r]), "hard_ssim": np.mean([x["hard_ssim"] for x in r]),
            "gain_all": np.mean([x["gain_all"] for x in r]), "gain_hard": np.mean([x["gain_hard"] for x in r]),
            "ewarp": np.mean([x["ewarp"] for x in r]), "worse": int(sum(x["worse"] for x in r)), "frames": n,
            "s_per_frame": secs / n, "peak_mb": run["peak_rss_mb"]}


def plots(out_dir: Path, evals: dict, summary: list[dict]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    bins = np.array([0, 1, 2, 4, 6, 9, 13, 20, 40])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, ev in evals.items():
        if name == "blurry":
            continue
        ext = np.concatenate([x["extent"] for x in ev["rows"]])
        gain = np.concatenate([x["frame_gain"] for x in ev["rows"]])
        idx = np.digitize(ext, bins) - 1
        centers, means = [], []
        for b in range(len(bins) - 1):
            m = idx == b
            if m.sum() >= 3:
                centers.append(0.5 * (bins[b] + bins[b + 1]))
                means.append(float(np.mean(gain[m])))
        ax.plot(centers, means, marker="o", label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("true blur extent of the frame (px)")
    ax.set_ylabel("PSNR gain over the blurry input (dB)")
    ax.set_title("Gain against blur extent (held-out clips)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "benchmark_gain_vs_blur.png", dpi=110)
    files.append("benchmark_gain_vs_blur.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    rows = [s for s in summary if s["method"] != "blurry"]
    ax.barh([s["method"] for s in rows], [s["s_per_frame"] for s in rows])
    ax.set_xscale("log")
    ax.set_xlabel("seconds per frame (2 CPU cores)")
    fig.tight_layout()
    fig.savefig(out_dir / "benchmark_speed.png", dpi=110)
    files.append("benchmark_speed.png")
    plt.close(fig)
    return files


def load_previous(path: Path, setup: dict) -> dict:
    """Per-method results of an earlier run on the same clips (so methods can be re-run one at a time)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return {}
    if data.get("setup") != setup or "evals" not in data:
        return {}
    by_name = {s["method"]: s for s in data["summary"]}
    return {name: (data["evals"][name], by_name[name]) for name in data["evals"] if name in by_name}


def write_markdown(path: Path, summary: list[dict], missing: dict, args, pngs: list[str]) -> None:
    lines = ["# Benchmarks", "",
             "Generated by `python scripts/benchmark.py` (methods may be re-run one at a time with `--methods`; rows "
             "of other methods are kept from the previous run on the same clips, `--fresh` drops them).", "",
             f"Clips: held-out built-in photos {', '.join(args.photos)} x seeds {', '.join(map(str, args.seeds))}, "
             f"{args.frames} frames {args.size}, "
             + ("layered scenes, objects cut from the photo and procedural ones moving on their own over it with "
                "occlusion (`vdiffdeblur.data.layered`" + (", the camera only panning)." if args.motion == "objects"
                                                          else ").") if args.motion != "shake" else
                "synthetic camera shake (`vdiffdeblur.data.synthetic`).")
             + " \"Hard third\": the blurriest third of each clip's frames by the known "
             "blur extent. Gains are against the blurry input. \"Worse\": frames that lost more than 0.3 dB. "
             "E_warp: warping error with the ground truth's flow (lower is steadier). Time and peak memory: "
             "one process per method, each with `--threads 1` (so every quality figure is the same whatever "
             "the machine's load), on 2 CPU cores, decoding and encoding included"
             + (f", OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}" if os.environ.get("OMP_NUM_THREADS") else "")
             + " (the machine is shared, so times are indicative).", "",
             "| method | PSNR | SSIM | PSNR hard third | SSIM hard third | gain | gain hard third | E_warp x1e3 "
             "| worse | s/frame | peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['method']} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['hard_psnr']:.2f} | "
                     f"{s['hard_ssim']:.4f} | {s['gain_all']:+.2f} | {s['gain_hard']:+.2f} | {1e3 * s['ewarp']:.3f} | "
                     f"{s['worse']}/{s['frames']} | {s['s_per_frame']:.3f} | {s['peak_mb']:.0f} |")
    if missing:
        lines += ["", "Not measured:", ""] + [f"- {k}: {v}" for k, v in missing.items()]
    lines += ["", "`rl_oracle` is Richardson-Lucy deconvolution (30 iterations, linear light) with each frame's true "
              "translation-only kernel: an oracle, since real footage comes with no kernel.", ""]
    lines += [f"![{p}]({p})" for p in pngs]
    # a section another script generates between its markers (the speed table) is kept
    old = path.read_text() if path.exists() else ""
    start, end = (f"<!-- generated by scripts/benchmark_speed.py: {w} -->" for w in ("start", "end"))
    kept = old[old.index(start):old.index(end) + len(end)] if start in old and end in old else ""
    path.write_text("\n".join(lines) + "\n" + (f"\n{kept}\n" if kept else ""))


def main() -> int:
    from vdiffdeblur.data.synthetic import EVAL_PHOTOS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--photos", nargs="+", default=list(EVAL_PHOTOS), choices=list(EVAL_PHOTOS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--size", default="320x240")
    p.add_argument("--motion", choices=["shake", "layered", "objects"], default="shake",
                   help="camera shake of each photo, or objects moving on their own over it (objects: the camera "
                        "only pans)")
    p.add_argument("--out", help="folder for benchmarks.md and the plots (default: docs/; docs/MOTION/ with "
                                 "--motion layered or objects)")
    p.add_argument("--fresh", action="store_true", help="drop the rows of methods not run this time")
    p.add_argument("--_worker", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._worker:
        print(json.dumps(worker(a._worker[0], a._worker[1:])))
        return 0
    size = tuple(int(v) for v in a.size.split("x"))
    out_dir = Path(a.out or (ROOT / "docs" / ("" if a.motion == "shake" else a.motion)))
    out_dir.mkdir(parents=True, exist_ok=True)
    setup = {"photos": a.photos, "seeds": a.seeds, "frames": a.frames, "size": a.size}
    if a.motion != "shake":  # (shake runs keep the setup their earlier records were written with)
        setup["motion"] = a.motion
    with tempfile.TemporaryDirectory() as tmp:
        dirs = make_clips(Path(tmp), a.photos, a.seeds, a.frames, size, a.motion)
        evals, summary, missing = {}, [], {}
        for name in a.methods:
            print(f"--- {name}", flush=True)
            r = subprocess.run([sys.executable, __file__, "--_worker", name, *map(str, dirs)], capture_output=True,
                               text=True)
            if r.returncode != 0:
                missing[name] = (r.stderr.strip().splitlines() or ["failed"])[-1]
                continue
            run = json.loads(r.stdout.strip().splitlines()[-1])
            if "error" in run:
                missing[name] = run["error"]
                continue
            evals[name] = evaluate(name, dirs)
            summary.append(summarize(name, evals[name], run))
            s = summary[-1]
            print(f"    gain hard {s['gain_hard']:+.2f} all {s['gain_all']:+.2f} worse {s['worse']}/{s['frames']} "
                  f"{s['s_per_frame']:.3f} s/frame {s['peak_mb']:.0f} MB", flush=True)
    # read at the end, so that runs of other methods that finished meanwhile are kept
    previous = {} if a.fresh else load_previous(out_dir / "benchmarks.json", setup)
    for name, (ev, s) in previous.items():
        if name not in evals and name not in missing:
            evals[name], s["kept_from_previous_run"] = ev, True
            summary.append(s)
    order = list(METHODS)
    summary.sort(key=lambda s: order.index(s["method"]))
    evals = {n: evals[n] for n in order if n in evals}
    pngs = plots(out_dir, evals, summary)
    write_markdown(out_dir / "benchmarks.md", summary, missing, a, pngs)
    (out_dir / "benchmarks.json").write_text(json.dumps({"setup": setup, "summary": summary, "missing": missing,
                                                         "evals": evals}, indent=1, default=float))
    print(f"wrote {out_dir / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
