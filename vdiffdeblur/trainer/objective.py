"""One training (or validation) loss evaluation on a batch of blurry/sharp clips.

    loss = diffusion loss (target in the scheduler's parameterisation)
         + coherence_weight * temporal coherence loss (eq. 4, on the prediction vs its target, frame differences)
         + alignment_weight * alignment of encoder 2 (blurry centre frame) with frozen encoder 1 (sharp centre frame)

Every random draw (VAE posterior sample, noise, timesteps, condition dropout) comes from one `torch.Generator`,
so a step is a function of the weights, the batch and that generator's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..losses import diffusion_loss, diffusion_target, encoder_alignment_loss, temporal_coherence_loss
from ..models.blur_encoder import select_condition_frames
from ..models.conditioning import encode_video_latents


@dataclass
class LossWeights:
    coherence: float = 0.0
    alignment: float = 0.0
    condition_dropout: float = 0.0
    coherence_reduction: str = "sum_frames"
    alignment_kind: str = "cosine"
    residual_latents: bool = False  # denoise z_sharp - z_base (the pipeline's `residual_latents`; base: the prior
    # when there is one, else the blurry clip)
    residual_scale: float = 1.0  # ... times this (the pipeline's `residual_scale`)


def step_seed(*keys: int) -> int:
    """A 63-bit seed from integers (run seed, step, process, micro-batch, ...), well mixed."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32).view(np.uint64)[0]
               >> np.uint64(1))


def to_diffusers_layout(clip: torch.Tensor) -> torch.Tensor:
    """Dataset clips (B, F, 3, H, W) -> diffusers' (B, 3, F, H, W)."""
    if clip.ndim != 5 or clip.shape[2] != 3:
        raise ValueError(f"expected clips (B, F, 3, H, W), got {tuple(clip.shape)}")
    return clip.permute(0, 2, 1, 3, 4)


def compute_losses(model, vae, noise_scheduler, blurry: torch.Tensor, sharp: torch.Tensor,
                   weights: LossWeights, generator: torch.Generator, teacher=None,
                   timesteps: torch.Tensor | None = None, prior: torch.Tensor | None = None) -> dict:
    """The losses of one batch. `model` is a `DeblurTrainModel` (possibly wrapped by Accelerate), `blurry` and
    `sharp` are (B, 3, F, H, W) in [0, 1] on the model's device; `prior` (same layout) is a fast method's output
    for a UNet that refines it. Returns a dict of scalars: ``loss`` (what to
    back-propagate), ``diffusion``, ``coherence`` (always computed, for logging) and ``alignment``."""
    device = blurry.device
    vae_dtype = vae.dtype
    with torch.no_grad():
        latents = encode_video_latents(vae, sharp.to(vae_dtype), generator=generator, sample=True).float()
        blur_latents = encode_video_latents(vae, blurry.to(vae_dtype)).float()
        prior_latents = None if prior is None else encode_video_latents(vae, prior.to(vae_dtype)).float()
    if weights.residual_latents:
        base = blur_latents if prior_latents is None else prior_latents
        latents = (latents - base) * weights.residual_scale
    bsz = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(device)
    if timesteps is None:
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), generator=generator)
    timesteps = timesteps.to(device=device, dtype=torch.long)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    target = diffusion_target(noise_scheduler, latents, noise, timesteps)

    align_images = None
    if weights.alignment > 0:
        if teacher is None:
            raise ValueError("alignment_weight > 0 needs the frozen teacher encoder (image encoder 1)")
        idx = select_condition_frames(blurry.shape[2], 1)
        align_images = blurry[:, :, idx[0]]
    pred, embeds = model(noisy, blur_latents, timesteps, blurry, drop_prob=weights.condition_dropout,
                         generator=generator, align_images=align_images, prior_latents=prior_latents)
    out = {"diffusion": diffusion_loss(pred, target),
           "coherence": temporal_coherence_loss(pred, target, reduction=weights.coherence_reduction)}
    loss = out["diffusion"] + weights.coherence * out["coherence"]
    if align_images is not None:
        with torch.no_grad():
            teacher_embeds = teacher.embed_images(sharp[:, :, idx[0]].to(teacher.dtype))
        out["alignment"] = encoder_alignment_loss(embeds, teacher_embeds, kind=weights.alignment_kind)
        loss = loss + weights.alignment * out["alignment"]
    out["loss"] = loss
    return out
