"""`make demo`: synthesize a camera-shake clip from a built-in photo that no shipped model was trained on,
deblur it with every available method through the same path as `vdiffdeblur deblur`, print PSNR / SSIM /
E_warp before and after with the time each took, and write videos and a comparison image.

    python scripts/demo.py --out demo_output [--photo coffee --frames 40 --size 256x192 --methods ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vdiffdeblur.cli import build_parser, deblur_options
from vdiffdeblur.data.synthetic import EVAL_PHOTOS, ShakeConfig, synthesize_shake
from vdiffdeblur.evaluation import score
from vdiffdeblur.methods.runner import deblur_file
from vdiffdeblur.video import read_video, write_video
from vdiffdeblur.visualize import comparison_image, side_by_side

METHODS = ["transfer", "dtb", "fit", "diffusion"]


def run_method(method: str, src: Path, out: Path, extra: list[str]) -> tuple[np.ndarray | None, float, str]:
    args = build_parser().parse_args(["deblur", str(src), "-o", str(out), "--method", method, "--lossless", *extra])
    options = deblur_options(args)
    t0 = time.perf_counter()
    try:
        deblur_file(src, out, method=method, options=options, overwrite=True)
    except (NotImplementedError, FileNotFoundError, ValueError) as e:
        return None, 0.0, " ".join(str(e).split())
    return read_video(out).frames, time.perf_counter() - t0, ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_output")
    p.add_argument("--photo", default="coffee", choices=EVAL_PHOTOS, help="a held-out built-in photo")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--size", default="256x192")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    out = Path(a.out)
    own = {"blurry.mkv", "blurry.mp4", "truth.mp4", "side_by_side.mp4", "comparison.png", "results.txt",
           "results.json"} | {f"{m}.{ext}" for m in METHODS for ext in ("mkv", "mp4")}
    if out.exists():  # a folder of the demo's own files is replaced; anything else is the user's, left alone
        foreign = [e.name for e in out.iterdir() if e.name not in own] if out.is_dir() else [out.name]
        if foreign:
            print(f"error: {out}: holds files the demo did not write ({', '.join(sorted(foreign)[:3])}); "
                  "choose another --out", file=sys.stderr)
            return 2
        for e in out.iterdir():
            e.unlink()
    out.mkdir(parents=True, exist_ok=True)
    w, h = map(int, a.size.split("x"))
    clip = synthesize_shake(f"builtin:{a.photo}", ShakeConfig(num_frames=a.frames, width=w, height=h), seed=a.seed)
    src = write_video(out / "blurry.mkv", clip.blurry, fps=clip.fps, lossless=True)
    write_video(out / "blurry.mp4", clip.blurry, fps=clip.fps)
    write_video(out / "truth.mp4", clip.sharp, fps=clip.fps)
    print(f"demo clip: builtin:{a.photo} (held out from every shipped model's training), {a.frames} frames {w}x{h}, "
          f"blur {clip.blur_extent.min():.1f}-{clip.blur_extent.max():.1f} px")

    base = score(clip.blurry, clip.sharp, blur_score=clip.blur_extent)
    rows = [("blurry input", base, 0.0, "")]
    results = {}
    for m in a.methods:
        print(f"--- {m}", flush=True)
        frames, dt, why = run_method(m, src, out / f"{m}.mkv", [])
        if frames is None:
            rows.append((m, None, 0.0, why))
            continue
        results[m] = frames
        write_video(out / f"{m}.mp4", frames, fps=clip.fps)
        rows.append((m, score(frames, clip.sharp, blurry=clip.blurry, blur_score=clip.blur_extent), dt, ""))

    hdr = (f"{'method':14s} {'PSNR':>7s} {'hard 1/3':>8s} {'SSIM':>6s} {'E_warp':>8s} {'gain':>6s} {'gain 1/3':>8s} "
           f"{'worse':>5s} {'time':>7s}")
    lines = [hdr, "-" * len(hdr)]
    for name, s, dt, why in rows:
        if s is None:
            lines.append(f"{name:14s} not available: {why}")
            continue
        g_all = f"{s.gain('all'):+.2f}" if s.input_psnr is not None else ""
        g_hard = f"{s.gain('hard'):+.2f}" if s.input_psnr is not None else ""
        worse = str(s.frames_worse()) if s.input_psnr is not None else ""
        lines.append(f"{name:14s} {s.mean_psnr:7.2f} {s.hard_psnr:8.2f} {s.mean_ssim:6.3f} {s.ewarp:8.5f} {g_all:>6s} "
                     f"{g_hard:>8s} {worse:>5s} {dt:6.1f}s")
    table = "\n".join(lines)
    print("\n" + table)
    print("PSNR/SSIM against the ground truth; 'hard 1/3' = the blurriest third of frames; gains in dB against the "
          "blurry input; 'worse' = frames made worse by more than 0.3 dB.")
    (out / "results.txt").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({n: (s.as_dict() if s else {"error": why}) | {"seconds": dt}
                                                  for n, s, dt, why in rows}, indent=1))

    names = ["truth", "blurry"] + list(results)
    clips = [clip.sharp, clip.blurry] + list(results.values())
    write_video(out / "side_by_side.mp4", side_by_side(clips, names), fps=clip.fps)
    worst = int(np.argmax(clip.blur_extent))
    Image.fromarray(comparison_image([c[worst] for c in clips], names, crop=min(64, h // 2))).save(
        out / "comparison.png")
    print(f"wrote {out}/: blurry.mp4, truth.mp4, one video per method, side_by_side.mp4, comparison.png "
          f"(frame {worst}, the blurriest), results.txt/json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
