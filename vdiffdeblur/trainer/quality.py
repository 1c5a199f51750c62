"""The quality check of a trained diffusion deblurrer on held-out built-in clips (the bar: the blurriest third of
frames gains >= 1 dB PSNR, no frame loses more than 0.5 dB), with and without the CLI's do-no-harm guard.

Clips are synthetic camera shake from the EVAL photos (never trained on), scored by `vdiffdeblur.evaluation.score`
with the clip's true blur extent picking the blurriest third.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.synthetic import EVAL_PHOTOS, ShakeConfig, synthesize_shake
from ..evaluation import score

logger = logging.getLogger(__name__)

#: the bar a shipped model must clear
MIN_HARD_GAIN_DB = 1.0
MAX_FRAME_LOSS_DB = 0.5
#: a refining model's frames may not fall further than this below its prior's
MAX_LOSS_VS_PRIOR_DB = 0.3


@dataclass
class QualityClip:
    name: str
    blurry: np.ndarray  # uint8 (F, H, W, 3)
    sharp: np.ndarray
    blur_extent: np.ndarray


def quality_clips(photos=EVAL_PHOTOS, num_frames: int = 40, size=(256, 192), seed: int = 1) -> list[QualityClip]:
    """One synthetic camera-shake clip per held-out photo (`size` = (width, height)), seeded."""
    cfg = ShakeConfig(num_frames=num_frames, width=size[0], height=size[1])
    out = []
    for p in photos:
        c = synthesize_shake(p, cfg, seed=seed)
        out.append(QualityClip(str(p), c.blurry, c.sharp, c.blur_extent))
    return out


def _score(result: np.ndarray, clip: QualityClip):
    return score(result, clip.sharp, blurry=clip.blurry, blur_score=clip.blur_extent, with_ewarp=False)


def _figures(result: np.ndarray, clip: QualityClip, s=None) -> dict:
    """The figures of `result` on `clip`, from its `_score` when given."""
    s = s if s is not None else _score(result, clip)
    loss = np.asarray(s.input_psnr) - np.asarray(s.psnr)
    return {"input_hard_psnr": float(np.mean(s.input_psnr[s.hard])), "hard_psnr": s.hard_psnr,
            "hard_gain": s.gain("hard"), "all_gain": s.gain("all"),
            "frames_worse_0.5dB": int(np.sum(loss > MAX_FRAME_LOSS_DB)), "worst_loss": float(loss.max())}


@torch.no_grad()
def evaluate_pipeline(pipe, clips: list[QualityClip], *, num_inference_steps: int | None = None,
                      guidance_scale: float | None = None, seed: int = 0, with_guard: bool = True) -> dict:
    """Deblur every clip with `pipe` (seeded); per clip and overall: hard-third gain, all-frames gain, frames made
    worse by > 0.5 dB, the largest loss, seconds per frame; `guarded` holds the same after the do-no-harm guard.
    A pipeline that refines a fast method's output gets that output as `prior=` (its time counted in s_per_frame);
    `prior` then holds the fast method's own figures and `frames_worse_than_prior` the frames the pipeline left
    more than 0.3 dB below it."""
    from ..methods.guard import guard

    method = pipe.config.get("prior_method") if hasattr(pipe, "config") else None
    rows = []
    for i, clip in enumerate(tqdm(clips, desc="quality", unit="clip")):
        t0 = time.perf_counter()
        extra = {}
        if method:
            from ..methods.diffusion import prior_frames

            extra["prior"] = prior_frames(method, clip.blurry)
        frames = pipe(clip.blurry, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                      generator=torch.Generator().manual_seed(seed + i), output_type="np", **extra).frames[0]
        seconds = time.perf_counter() - t0
        result = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
        scored = _score(result, clip)
        row = {"clip": clip.name, "frames": len(result), "size": f"{result.shape[2]}x{result.shape[1]}",
               "s_per_frame": seconds / len(result), **_figures(result, clip, scored)}
        if method:
            prior_scored = _score(extra["prior"], clip)
            row["prior"] = {"method": method, **_figures(extra["prior"], clip, prior_scored)}
            below = np.asarray(prior_scored.psnr) - np.asarray(scored.psnr)
            row["frames_worse_than_prior"] = int(np.sum(below > MAX_LOSS_VS_PRIOR_DB))
        if with_guard:
            t0 = time.perf_counter()
            guarded = guard(clip.blurry, result)
            row["guard_s_per_frame"] = (time.perf_counter() - t0) / len(result)
            row["guarded"] = _figures(guarded, clip)
        logger.info("%s: hard third %+.2f dB, all %+.2f dB, %d frames worse by > 0.5 dB", clip.name,
                    row["hard_gain"], row["all_gain"], row["frames_worse_0.5dB"])
        rows.append(row)
    return {"clips": rows, "mean": summarize(rows),
            "mean_guarded": summarize([r["guarded"] for r in rows]) if with_guard else None}


def summarize(rows: list[dict]) -> dict:
    """Means of the gains over clips, the total of frames made worse, the largest loss, and whether the bar holds."""
    out = {"hard_gain": float(np.mean([r["hard_gain"] for r in rows])),
           "all_gain": float(np.mean([r["all_gain"] for r in rows])),
           "frames_worse_0.5dB": int(sum(r["frames_worse_0.5dB"] for r in rows)),
           "worst_loss": float(max(r["worst_loss"] for r in rows))}
    out["meets_bar"] = bool(out["hard_gain"] >= MIN_HARD_GAIN_DB and out["frames_worse_0.5dB"] == 0)
    if rows and "prior" in rows[0]:
        out["prior_hard_gain"] = float(np.mean([r["prior"]["hard_gain"] for r in rows]))
        out["hard_gain_over_prior"] = out["hard_gain"] - out["prior_hard_gain"]
        out["frames_worse_than_prior"] = int(sum(r["frames_worse_than_prior"] for r in rows))
    return out


def quality_table(report: dict) -> str:
    """Markdown table of `evaluate_pipeline`'s report."""
    lines = ["| clip | input hard-third PSNR | hard-third gain | all-frames gain | frames worse > 0.5 dB | "
             "worst loss | s/frame | with guard: hard / all / worse |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["clips"]:
        g = r.get("guarded")
        gtxt = f"{g['hard_gain']:+.2f} / {g['all_gain']:+.2f} / {g['frames_worse_0.5dB']}" if g else "-"
        lines.append(f"| {r['clip']} ({r['frames']} x {r['size']}) | {r['input_hard_psnr']:.2f} | "
                     f"{r['hard_gain']:+.2f} | {r['all_gain']:+.2f} | {r['frames_worse_0.5dB']} | "
                     f"{r['worst_loss']:.2f} | {r['s_per_frame']:.2f} | {gtxt} |")
    m, mg = report["mean"], report.get("mean_guarded")
    gtxt = f"{mg['hard_gain']:+.2f} / {mg['all_gain']:+.2f} / {mg['frames_worse_0.5dB']}" if mg else "-"
    lines.append(f"| **mean** | | **{m['hard_gain']:+.2f}** | {m['all_gain']:+.2f} | {m['frames_worse_0.5dB']} | "
                 f"{m['worst_loss']:.2f} | | {gtxt} |")
    return "\n".join(lines)
