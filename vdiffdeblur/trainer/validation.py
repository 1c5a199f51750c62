"""Validation during training: the current weights run as a `DeblurVideoPipeline` on held-out clips.

Logged per validation: PSNR/SSIM of the pipeline's output (and of the blurry input, for reference) against the
sharp clips, the VAE's ceiling (PSNR of the sharp clips after a VAE round trip), the validation loss (the
training objective on the held-out clips, at fixed timesteps and noise, so that successive values compare), and
a side-by-side PNG per clip: blurry | deblurred | sharp, three frames.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .data import ValidationClip
from .objective import LossWeights, compute_losses, step_seed

logger = logging.getLogger(__name__)


def side_by_side(blurry: np.ndarray, result: np.ndarray, sharp: np.ndarray, rows: int = 3, gap: int = 2) -> np.ndarray:
    """uint8 image: for `rows` evenly spaced frames, blurry | result | sharp, separated by white gaps."""
    f, h, w, _ = blurry.shape
    idx = sorted(set(np.linspace(0, f - 1, min(rows, f)).round().astype(int).tolist()))
    canvas = np.full((len(idx) * (h + gap) - gap, 3 * w + 2 * gap, 3), 255, np.uint8)
    for r, i in enumerate(idx):
        y = r * (h + gap)
        for c, v in enumerate((blurry, result, sharp)):
            canvas[y:y + h, c * (w + gap):c * (w + gap) + w] = v[i]
    return canvas


def _crop_to_multiple(x: np.ndarray, m: int) -> np.ndarray:
    h, w = x.shape[1:3]
    hh, ww = h // m * m, w // m * m
    if hh < m or ww < m:
        raise ValueError(f"validation frames {w}x{h} are smaller than the model's multiple {m}")
    top, left = (h - hh) // 2, (w - ww) // 2
    return x[:, top:top + hh, left:left + ww]


def _as_clip(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (1, 3, F, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float().div(255).to(device)


@torch.no_grad()
def validation_loss(model, vae, noise_scheduler, clips: list[ValidationClip], weights: LossWeights,
                    spatial_multiple: int, draws: int, seed: int = 0, teacher=None) -> dict:
    """The training objective on held-out clips, at `draws` evenly spaced timesteps with fixed noise per clip,
    without condition dropout: the same value for the same weights, whenever it is computed."""
    w = LossWeights(coherence=weights.coherence, alignment=weights.alignment if teacher is not None else 0.0,
                    condition_dropout=0.0, coherence_reduction=weights.coherence_reduction,
                    alignment_kind=weights.alignment_kind, residual_latents=weights.residual_latents,
                    residual_scale=weights.residual_scale)
    device = next(model.parameters()).device
    num_t = noise_scheduler.config.num_train_timesteps
    totals: dict[str, list[float]] = {}
    for ci, clip in enumerate(clips):
        blurry = _as_clip(_crop_to_multiple(clip.blurry, spatial_multiple), device)
        sharp = _as_clip(_crop_to_multiple(clip.sharp, spatial_multiple), device)
        prior = None if clip.prior is None else _as_clip(_crop_to_multiple(clip.prior, spatial_multiple), device)
        for d in range(draws):
            g = torch.Generator().manual_seed(step_seed(seed, 424242, ci, d))
            t = torch.tensor([int((d + 0.5) / draws * num_t)])
            out = compute_losses(model, vae, noise_scheduler, blurry, sharp, w, g, teacher=teacher, timesteps=t,
                                 prior=prior)
            for k, v in out.items():
                totals.setdefault(k, []).append(float(v))
    return {k: float(np.mean(v)) for k, v in totals.items()}


@torch.no_grad()
def run_pipeline_validation(pipe, clips: list[ValidationClip], num_inference_steps: int, guidance_scale: float,
                            seed: int = 0, image_dir: Path | None = None, step: int = 0) -> dict:
    """Deblur every clip with `pipe`; returns mean PSNR/SSIM of the outputs and of the inputs, and writes
    `image_dir/step-<step>-<clip>.png` (blurry | deblurred | sharp) when `image_dir` is given."""
    from ..evaluation import score

    figures = {"psnr": [], "ssim": [], "input_psnr": [], "input_ssim": [], "vae_psnr": []}
    images = []
    for i, clip in enumerate(clips):
        figures["vae_psnr"].append(vae_ceiling_psnr(pipe, clip.sharp))
        g = torch.Generator().manual_seed(seed + i)
        frames = pipe(clip.blurry, prior=clip.prior, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, generator=g, output_type="np").frames[0]
        result = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
        s = score(result, clip.sharp, blurry=clip.blurry, with_ewarp=False)
        figures["psnr"].append(s.mean_psnr)
        figures["ssim"].append(s.mean_ssim)
        figures["input_psnr"].append(float(np.mean(np.minimum(s.input_psnr, 100.0))))
        figures["input_ssim"].append(float(np.mean(s.input_ssim)))
        if image_dir is not None:
            from PIL import Image

            image_dir.mkdir(parents=True, exist_ok=True)
            path = image_dir / f"step-{step:06d}-clip{i}.png"
            Image.fromarray(side_by_side(clip.blurry, result, clip.sharp)).save(path)
            images.append(str(path))
    out = {k: float(np.mean(v)) for k, v in figures.items()}
    out["images"] = images
    return out


@torch.no_grad()
def vae_ceiling_psnr(pipe, sharp: np.ndarray) -> float:
    """Mean PSNR of the sharp clip after a VAE round trip: no output of the pipeline can be better than its VAE
    (with the tiny random VAE of the tests, this ceiling is low, whatever the UNet learns)."""
    from ..frames import crop_to, pad_to_multiple
    from ..metrics import psnr
    from ..models.conditioning import decode_video_latents, encode_video_latents

    x = _as_clip(sharp, pipe.vae.device)
    padded, size = pad_to_multiple(x, pipe.vae_scale_factor)
    rec = crop_to(decode_video_latents(pipe.vae, encode_video_latents(pipe.vae, padded.to(pipe.vae.dtype))), size)
    rec = (rec[0].permute(1, 2, 3, 0).float().cpu().numpy() * 255).round().astype(np.uint8)
    return float(np.mean(np.minimum(psnr(rec, sharp), 100.0)))


def make_validation_pipeline(vae, unet, blur_encoder, scheduler_config, residual_decode: bool = False,
                             residual_latents: bool = False, residual_scale: float = 1.0,
                             prior_method: str | None = None):
    """A `DeblurVideoPipeline` over the training modules themselves (no copy), with a DDIM scheduler;
    `residual_decode` / `residual_latents` as the base pipeline saves them."""
    from diffusers import DDIMScheduler

    from vdiffdeblur.pipelines import DeblurVideoPipeline

    pipe = DeblurVideoPipeline(vae=vae, unet=unet, blur_encoder=blur_encoder,
                               scheduler=DDIMScheduler.from_config(scheduler_config), residual_decode=residual_decode,
                               residual_latents=residual_latents, residual_scale=residual_scale,
                               prior_method=prior_method)
    pipe.set_progress_bar_config(disable=True)
    return pipe
