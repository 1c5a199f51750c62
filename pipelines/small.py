"""The small diffusion deblurrer that vdiffdeblur ships (vdiffdeblur/checkpoints/diffusion/): configs of its UNet,
blur encoder and scheduler, and the untrained starting pipeline that `training/stage1.py` begins from, around a VAE
trained by `training/train_vae.py` (docs/training.md, "The shipped small model").

Layout as the real model, only small: VAE factor 4 with 8 latent channels (trained from scratch), a three-level
UNet3D (conv_in: noisy latents ++ blurry latents = 16 channels), a two-layer CLIP vision tower of width 32 feeding 4
tokens, v-prediction with zero terminal SNR and trailing timesteps (the paper's), so that a few DDIM steps from pure
noise are a direct estimate. The UNet denoises the residual z_sharp - z_blurry (`residual_latents`: zero for a
sharp frame, small for a blurry one, an easier target for a small network than the whole latent), and the output
is decoded residually (`residual_decode`); `SMALL_SAMPLING` holds these saved defaults and the DDIM steps / guidance.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, UNet3DConditionModel

from vdiffdeblur.models.blur_encoder import BlurImageEncoder
from vdiffdeblur.pipelines.pipeline_deblur_video import DeblurVideoPipeline

#: UNet3DConditionModel; `in_channels` / `out_channels` are set from the VAE's latent channels
SMALL_UNET_CONFIG = dict(
    sample_size=16,
    down_block_types=["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    up_block_types=["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    block_out_channels=[32, 64, 64], layers_per_block=1, norm_num_groups=8,
    cross_attention_dim=32, attention_head_dim=8,
)

#: the same UNet without attention at the top (full-latent) level: about a third of the time per step at
#: 320x240 (docs/diffusion.md, "Speed at 320x240"); the layout meant for a model trained on the f4c16 VAE
SMALL_UNET_CONFIG_LOW_ATTENTION = dict(
    SMALL_UNET_CONFIG,
    down_block_types=["DownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    up_block_types=["UpBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"],
)

#: attention (spatial, temporal and to the blur tokens) in the mid block only, at the coarsest latent size: the
#: layout for the factor-2 VAE, whose 160x120 latents of a 320x240 frame would make the layout above cost 1.15 s
#: per UNet step and frame (docs/diffusion.md, "Speed at 320x240")
SMALL_UNET_CONFIG_MID_ATTENTION = dict(
    SMALL_UNET_CONFIG,
    down_block_types=["DownBlock3D", "DownBlock3D", "DownBlock3D"],
    up_block_types=["UpBlock3D", "UpBlock3D", "UpBlock3D"],
)

#: `make_small_pipeline(unet_layout=...)`: the shipped layout, attention only below the top level, or only in
#: the mid block
UNET_LAYOUTS = {"attention": SMALL_UNET_CONFIG, "low_attention": SMALL_UNET_CONFIG_LOW_ATTENTION,
                "mid_attention": SMALL_UNET_CONFIG_MID_ATTENTION}

#: transformers CLIPVisionConfig fields of the blur encoder's tower (projection = the UNet's cross_attention_dim)
SMALL_CLIP_VISION_CONFIG = dict(
    hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2, num_attention_heads=2,
    num_channels=3, image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-5,
)

#: DDIM with v-prediction, zero terminal SNR, trailing timesteps (TF-T2V / the paper)
SMALL_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=0, prediction_type="v_prediction",
    rescale_betas_zero_snr=True, timestep_spacing="trailing",
)

#: the pipeline's saved sampling defaults (model_index.json): residual decoding, DDIM steps, guidance
SMALL_SAMPLING = dict(residual_decode=True, residual_latents=True, residual_scale=5.0, default_num_inference_steps=1,
                      default_guidance_scale=1.0)


def small_components(vae, seed: int = 0, num_tokens: int = 4, unet_layout: str = "attention") -> dict:
    """The untrained `unet` (`UNET_LAYOUTS[unet_layout]`), `blur_encoder` and `scheduler` around a trained `vae`,
    seeded, float32 on the CPU."""
    if unet_layout not in UNET_LAYOUTS:
        raise ValueError(f"unet_layout must be one of {', '.join(UNET_LAYOUTS)}, got {unet_layout!r}")
    c = int(vae.config.latent_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet3DConditionModel(**UNET_LAYOUTS[unet_layout], in_channels=2 * c, out_channels=c)
        blur_encoder = BlurImageEncoder(vision_config=SMALL_CLIP_VISION_CONFIG, num_tokens=num_tokens,
                                        cross_attention_dim=SMALL_UNET_CONFIG["cross_attention_dim"])
    return {"vae": vae.eval(), "unet": unet.eval(), "blur_encoder": blur_encoder.eval(),
            "scheduler": DDIMScheduler(**SMALL_SCHEDULER_CONFIG)}


def make_small_pipeline(vae, seed: int = 0, prior_method: str | None = None, unet_layout: str = "attention",
                        **sampling):
    """The starting `DeblurVideoPipeline` of the small model's training (`SMALL_SAMPLING` defaults, overridable);
    with `prior_method` (`"transfer"` / `"dtb"`) its UNet also takes that method's output (`pipelines.prior`)."""
    pipe = DeblurVideoPipeline(**small_components(vae, seed=seed, unet_layout=unet_layout),
                               **{**SMALL_SAMPLING, **sampling})
    if prior_method is None:
        return pipe
    from vdiffdeblur.pipelines.prior import add_prior_input

    return add_prior_input(pipe, prior_method)
