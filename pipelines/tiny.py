"""Tiny random configs of every component of the diffusion deblurrer, shared by the tests, the training
scripts' smoke runs and the docs, so that everyone builds the same tiny pipeline.

The layout is the real one (ModelScope text-to-video UNet3D + SD VAE + CLIP vision tower + DDIM), only
narrow: VAE scale factor 4 (so frames are padded to multiples of 8), UNet with one down/up level, cross-attention
width 16.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel

from vdiffdeblur.models.blur_encoder import BlurImageEncoder
from vdiffdeblur.pipelines.pipeline_deblur_video import DeblurVideoPipeline

#: AutoencoderKL with three levels: vae_scale_factor 4, 4 latent channels
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[8, 8, 16], layers_per_block=1, norm_num_groups=4, sample_size=32,
)

#: UNet3DConditionModel of a text-to-video base (4 input channels, before widening)
TINY_T2V_UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4,
    down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
    up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"],
    block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4,
    cross_attention_dim=16, attention_head_dim=4,
)

#: the deblurring UNet: conv_in widened to noisy latents ++ blurry-clip latents
TINY_UNET_CONFIG = {**TINY_T2V_UNET_CONFIG, "in_channels": 8}

#: transformers CLIPVisionConfig fields (projection 16 = the UNet's cross_attention_dim)
TINY_CLIP_VISION_CONFIG = dict(
    hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=2, num_attention_heads=2,
    num_channels=3, image_size=16, patch_size=4, hidden_act="gelu", layer_norm_eps=1e-5,
)

#: transformers CLIPTextConfig fields for a tiny text-to-video base folder (converter tests)
TINY_CLIP_TEXT_CONFIG = dict(
    hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=2, num_attention_heads=2,
    vocab_size=1000, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)

#: the ModelScope text-to-video DDIM config (epsilon prediction)
TINY_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    timestep_spacing="leading",
)

#: TF-T2V / the paper: v-prediction with zero terminal SNR and trailing timesteps
TINY_V_SCHEDULER_CONFIG = {**TINY_SCHEDULER_CONFIG, "prediction_type": "v_prediction",
                           "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


def tiny_components(seed: int = 0, prediction_type: str = "epsilon", num_tokens: int = 4,
                    num_cond_frames: int = 1) -> dict:
    """Random tiny `vae`, `unet`, `blur_encoder`, `scheduler`, seeded, in float32 on the CPU."""
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
        unet = UNet3DConditionModel(**TINY_UNET_CONFIG)
        blur_encoder = BlurImageEncoder(vision_config=TINY_CLIP_VISION_CONFIG, num_tokens=num_tokens,
                                        cross_attention_dim=TINY_UNET_CONFIG["cross_attention_dim"],
                                        num_cond_frames=num_cond_frames)
    sched_cfg = TINY_SCHEDULER_CONFIG if prediction_type == "epsilon" else TINY_V_SCHEDULER_CONFIG
    scheduler = DDIMScheduler(**sched_cfg)
    return {"vae": vae.eval(), "unet": unet.eval(), "blur_encoder": blur_encoder.eval(), "scheduler": scheduler}


def make_tiny_pipeline(seed: int = 0, prior_method: str | None = None, **kwargs):
    """A tiny random `DeblurVideoPipeline` (see `tiny_components` for the keyword arguments); with `prior_method`
    (`"transfer"` / `"dtb"`) the same one widened to refine that method's output (`pipelines.prior`)."""
    pipe = DeblurVideoPipeline(**tiny_components(seed=seed, **kwargs))
    if prior_method is None:
        return pipe
    from vdiffdeblur.pipelines.prior import add_prior_input

    return add_prior_input(pipe, prior_method)
