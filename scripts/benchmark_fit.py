"""Measure the fit-to-test-data method (docs/fit.md) on built-in camera-shake clips from evaluation photos.

    python scripts/benchmark_fit.py quality   # `vdiffdeblur deblur --method fit` defaults on 4 photos x seeds
    python scripts/benchmark_fit.py curves    # PSNR against fitting step: shipped MAML init vs random init
    python scripts/benchmark_fit.py curves --photos coffee chelsea --seeds 0 1   # every photo x seed; the
        # first is drawn (docs/fit_psnr_vs_step.png) and kept under "curves", the others under "curves_more"
    python scripts/benchmark_fit.py curves --more --photos motorcycle coins   # adds clips, keeps the drawn one

``quality`` runs the same commands a user would (``vdiffdeblur synth``, ``vdiffdeblur deblur --method fit``
with its defaults, output written losslessly, then the scoring of ``vdiffdeblur eval``), each in its own
process, timing the deblur command's wall time; with the coffee seed-0 clip first it also draws
docs/fit_example.png.

``curves`` fits the same clip from the shipped MAML initialisation and from a random one and records, along
the way, the PSNR of the blurriest third of frames (the network's output, before the per-frame strength) for
the weights the fit would end on if stopped there (the moving average of its iterates) and for the iterate,
then fits from the MAML initialisation once more with a tenth of the steps (its own learning-rate schedule).
It draws docs/fit_psnr_vs_step.png and reports the step at which MAML first reaches the random
initialisation's final PSNR and the step from which it stays at or above it.

Both write their part of docs/fit_benchmark.json (``quality`` keeps the rows of clips it did not run
again). Clips are 40 frames of 256x192. Thread count: ``--threads`` (torch threads of
every process; default 1, the measured figures in docs/fit.md say which).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKS = (0, 5, 10, 20, 30, 40, 50, 75, 100, 150, 200, 250, 300, 400, 500, 600, 800, 1000, 1500, 2000)


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def _cli(args: list[str], threads: int) -> float:
    """Run ``vdiffdeblur ARGS`` in a fresh process; return its wall time in seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vdiffdeblur.cli", *args], check=True, env=_env(threads),
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def quality(photos: list[str], seeds: list[int], work: Path, threads: int) -> dict:
    from vdiffdeblur.evaluation import score
    from vdiffdeblur.video import read_video

    rows = []
    for seed in seeds:
        for photo in photos:
            clip = work / f"{photo}_{seed}"
            _cli(["synth", f"builtin:{photo}", "-o", str(clip), "--frames", "40", "--size", "256x192",
                  "--seed", str(seed)], threads)
            out = clip / "fit.mkv"
            wall = _cli(["deblur", str(clip / "blur.mkv"), "-o", str(out), "--method", "fit", "--lossless"], threads)
            extent = np.asarray(json.loads((clip / "meta.json").read_text())["blur_extent"])
            s = score(read_video(out).frames, read_video(clip / "sharp").frames,
                      blurry=read_video(clip / "blur.mkv").frames, blur_score=extent, with_ewarp=False)
            row = {"photo": photo, "seed": seed, "gain_hard_db": round(s.gain("hard"), 3),
                   "gain_all_db": round(s.gain("all"), 3), "frames_worse": s.frames_worse(),
                   "worst_loss_db": round(float(s.worst_loss()), 3), "wall_s": round(wall, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if rows and (photos[0], seeds[0]) == ("coffee", 0):
        _example_figure(work / "coffee_0")
    return {"clips": rows}


def _example_figure(clip: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vdiffdeblur.metrics import psnr
    from vdiffdeblur.video import read_video

    b, s, o = (read_video(clip / n).frames for n in ("blur.mkv", "sharp", "fit.mkv"))
    ext = np.asarray(json.loads((clip / "meta.json").read_text())["blur_extent"])
    rows = [int(np.argsort(-ext)[k]) for k in (3, 8)]
    h, w = b.shape[1:3]
    crop = (slice(h // 5, h - h // 8), slice(w // 4, w - w // 8))
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3.2 * len(rows)))
    for r, i in enumerate(rows):
        for c, (img, name) in enumerate([(b[i], "blurry input"), (o[i], "fit (CLI defaults)"), (s[i], "ground truth")]):
            ax = axes[r, c]
            ax.imshow(img[crop])
            ax.set_xticks([])
            ax.set_yticks([])
            title = name + (f"  {psnr(img[None], s[i][None])[0]:.1f} dB" if c < 2 else "")
            ax.set_title(f"frame {i} ({ext[i]:.0f} px blur): {title}" if c == 0 else title, fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "fit_example.png", dpi=100)
    plt.close(fig)


def _curve(blur, sharp, hard, init: str, steps: int) -> tuple[list, list, float]:
    """PSNR of the blurriest third at the marks: of the weights the fit would end on if it stopped there (its
    moving average) and of the current iterate."""
    from vdiffdeblur.methods.fit.config import FitConfig
    from vdiffdeblur.methods.fit.deblurrer import FitToTestDeblurrer
    from vdiffdeblur.methods.fit.psnr import output_psnr

    marks = set(m for m in MARKS if m <= steps) | {steps}
    curve, iterate = [], []

    def psnr_of(net):
        return round(output_psnr(net, blur[hard], sharp[hard]), 3)

    def measure(step, d):
        if step not in marks:
            return
        iterate.append((step, psnr_of(d.unet)))
        curve.append((step, psnr_of(d.averaged_unet)))
        print(init, steps, *curve[-1], iterate[-1][1], flush=True)

    d = FitToTestDeblurrer(init=init, config=FitConfig(steps=steps, num_threads=None), progress=False)
    measure(0, d)
    t0 = time.perf_counter()
    d.fit(blur, callback=measure)
    return curve, iterate, time.perf_counter() - t0


def curves(photo: str, seed: int, steps: int, threads: int, figure: bool = True) -> dict:
    import torch

    from vdiffdeblur.data.synthetic import ShakeConfig, synthesize_shake
    from vdiffdeblur.evaluation import hard_third
    from vdiffdeblur.metrics import psnr

    torch.set_num_threads(threads)
    clip = synthesize_shake(f"builtin:{photo}", ShakeConfig(num_frames=40, width=256, height=192), seed=seed)
    hard = hard_third(clip.blur_extent)
    res = {"photo": photo, "seed": seed, "threads": threads,
           "input_psnr_hard": round(float(psnr(clip.blurry[hard], clip.sharp[hard]).mean()), 3), "runs": {}}
    for name, init, n in (("maml", "maml", steps), ("random", "random", steps), ("maml_short", "maml", steps // 10)):
        curve, iterate, secs = _curve(clip.blurry, clip.sharp, hard, init, n)
        res["runs"][name] = {"init": init, "steps": n, "fit_s": round(secs, 1), "curve": curve,
                             "curve_iterate": iterate}
    target = res["runs"]["random"]["curve"][-1][1]
    curve = res["runs"]["maml"]["curve"]
    reach = next((s for s, p in curve if p >= target), None)
    # the curve is noisy while the learning rate is high: also the mark from which it never falls below again
    stay = next((curve[i][0] for i in range(len(curve)) if all(p >= target for _, p in curve[i:])), None)
    res["random_final_psnr"] = target
    res["maml_steps_to_random_final"] = reach
    res["step_ratio"] = None if reach is None else round(reach / steps, 3)
    res["maml_steps_to_stay_above_random_final"] = stay
    res["stay_step_ratio"] = None if stay is None else round(stay / steps, 3)
    res["maml_short_final_psnr"] = res["runs"]["maml_short"]["curve"][-1][1]
    if figure:
        _curve_figure(res)
    return res


def _curve_figure(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res["runs"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(*zip(*runs["random"]["curve"]), "o-", ms=3, label="random initialisation")
    ax.plot(*zip(*runs["maml"]["curve"]), "s-", ms=3, label="shipped MAML initialisation")
    ax.plot(*zip(*runs["maml"]["curve_iterate"]), ":", color="C1", lw=0.8,
            label="MAML, the iterate (not its moving average)")
    ax.plot(*zip(*runs["maml_short"]["curve"]), "^-", ms=3,
            label=f"MAML, {runs['maml_short']['steps']}-step fit (own schedule)")
    ax.axhline(res["input_psnr_hard"], color="gray", ls=":", label="blurry input")
    ax.axhline(res["random_final_psnr"], color="C0", ls="--", lw=0.8)
    ax.set_xscale("symlog", linthresh=10)
    last = runs["random"]["steps"]
    ax.set_xlim(0, last * 1.1)
    ax.set_xticks([t for t in (0, 10, 100, 1000, 10000) if t <= last])
    ax.set_xticklabels([str(t) for t in (0, 10, 100, 1000, 10000) if t <= last])
    ax.set_xlabel("fitting step")
    ax.set_ylabel("PSNR, blurriest third (dB)")
    ax.set_title(f"{res['photo']} (seed {res['seed']}), 40 frames 256x192: network output before per-frame strength",
                 fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(DOCS / "fit_psnr_vs_step.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["quality", "curves"])
    p.add_argument("--photos", nargs="+", help="evaluation photos (quality: all four; curves: coffee)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=1000, help="curves: fitting steps of the two full runs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="outputs/fit_benchmark", help="quality: folder for the clips and outputs")
    p.add_argument("--json", default=str(DOCS / "fit_benchmark.json"))
    p.add_argument("--more", action="store_true",
                   help="curves: add every clip under curves_more, keeping the drawn reference curve")
    a = p.parse_args(argv)
    from vdiffdeblur.data.synthetic import EVAL_PHOTOS

    a.photos = a.photos or (["coffee", "chelsea", "motorcycle", "coins"] if a.what == "quality" else ["coffee"])
    if not set(a.photos) <= set(EVAL_PHOTOS):
        p.error(f"use evaluation photos only (the MAML initialisation saw the others): {EVAL_PHOTOS}")
    path = Path(a.json)
    if a.what == "quality":
        new = quality(a.photos, a.seeds, Path(a.work), a.threads)
    else:  # the first clip is drawn and kept under "curves" (unless --more), any further ones under "curves_more"
        clips = [(photo, seed) for seed in a.seeds for photo in a.photos]
        first = None if a.more else curves(*clips[0], a.steps, a.threads)
        rest = clips if first is None else clips[1:]
        more = {f"{ph}_{sd}": curves(ph, sd, a.steps, a.threads, figure=False) for ph, sd in rest}
        for r in [first, *more.values()]:
            if r is not None:
                print(json.dumps({k: v for k, v in r.items() if k != "runs"}), flush=True)
    # read only now, so that two runs into one file (e.g. one per core) keep each other's results
    report = json.loads(path.read_text()) if path.is_file() else {}
    if a.what == "quality":
        done = {(r["photo"], r["seed"]) for r in new["clips"]}  # earlier rows of other clips are kept
        kept = [r for r in report.get("quality", {}).get("clips", []) if (r["photo"], r["seed"]) not in done]
        new["clips"] = kept + [dict(r, threads=a.threads) for r in new["clips"]]
        rows = new["clips"]
        new.update(threads=sorted({r.get("threads", a.threads) for r in rows}),
                   mean_gain_hard_db=round(float(np.mean([r["gain_hard_db"] for r in rows])), 3),
                   mean_gain_all_db=round(float(np.mean([r["gain_all_db"] for r in rows])), 3),
                   frames_worse=int(sum(r["frames_worse"] for r in rows)),
                   mean_wall_s=round(float(np.mean([r["wall_s"] for r in rows])), 1))
        report["quality"] = new
    else:
        if first is not None:
            report["curves"] = first
        if more:
            report["curves_more"] = {**report.get("curves_more", {}), **more}
    path.write_text(json.dumps(report, indent=1) + "\n")
    if a.what == "quality":
        print(json.dumps({k: v for k, v in report["quality"].items() if k != "clips"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
