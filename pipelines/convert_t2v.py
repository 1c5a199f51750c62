"""Assemble a `DeblurVideoPipeline` from a local text-to-video checkpoint in diffusers' format (the ModelScope
text-to-video-ms-1.7b layout: `unet/ vae/ scheduler/ text_encoder/ tokenizer/`) and a CLIP vision tower.

What changes (paper section 4.1; docs/diffusion.md "Making a model"): the UNet's conv_in is widened for the
blurry clip's latents (zero init, so the UNet starts as the pretrained one); the scheduler becomes DDIM with the
base model's prediction type; the blur encoder (image encoder 2) starts from the CLIP tower plus a freshly
initialised projector. The text encoder and tokenizer are not used.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel

from vdiffdeblur.models.blur_encoder import BlurImageEncoder
from vdiffdeblur.models.unet import widen_conv_in
from vdiffdeblur.pipelines.pipeline_deblur_video import DeblurVideoPipeline, ModelFolderError

logger = logging.getLogger(__name__)

T2V_COMPONENTS = ("unet", "vae", "scheduler")


def check_t2v_folder(folder) -> Path:
    """A text-to-video folder must hold `unet/`, `vae/` (config + weights) and `scheduler/`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such text-to-video folder")
    for name in T2V_COMPONENTS:
        sub = folder / name
        cfg = sub / ("scheduler_config.json" if name == "scheduler" else "config.json")
        if not cfg.is_file():
            raise ModelFolderError(f"{folder}: text-to-video component {name!r} is missing (no {name}/{cfg.name})")
    return folder


def ddim_from_base(scheduler_config: dict, prediction_type: str | None = None):
    """A DDIMScheduler with the base model's noise schedule and prediction type (or `prediction_type`)."""
    cfg = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    if prediction_type is not None:
        cfg["prediction_type"] = prediction_type
    pt = cfg.get("prediction_type", "epsilon")
    if pt not in ("epsilon", "v_prediction"):
        raise ValueError(f"base scheduler prediction_type {pt!r} is not epsilon or v_prediction")
    if pt == "v_prediction" and "rescale_betas_zero_snr" not in cfg:
        logger.info("v-prediction base without rescale_betas_zero_snr in its scheduler config; keeping it off")
    return DDIMScheduler.from_config(cfg)


def convert_text_to_video(t2v_dir, clip_path, *, open_clip_model: str | None = None, num_tokens: int = 4,
                          num_cond_frames: int = 1, prediction_type: str | None = None, seed: int = 0,
                          variant: str | None = None, prior_method: str | None = None):
    """Build the deblurring pipeline (float32, CPU) from a text-to-video folder and a CLIP vision tower.

    Args:
        t2v_dir: the text-to-video checkpoint folder (diffusers format).
        clip_path: a transformers CLIP vision folder, or with `open_clip_model` an open_clip checkpoint file.
        open_clip_model: the open_clip architecture name (or `local-dir:PATH`) of `clip_path`.
        num_tokens: cross-attention tokens per conditioning frame.
        num_cond_frames: 1 = the clip's central frame; K = K evenly spaced frames.
        prediction_type: override the base scheduler's (only if the UNet was trained that way).
        seed: seeds the projector's initialisation.
        variant: weights variant of the base (e.g. "fp16").
        prior_method: `"transfer"` / `"dtb"`: a pipeline refining that method's output (conv_in widened again for
            the prior's latents, zero init; `pipelines.prior.add_prior_input`).
    """
    folder = check_t2v_folder(t2v_dir)
    load = dict(variant=variant, local_files_only=True)
    unet = UNet3DConditionModel.from_pretrained(folder / "unet", **load)
    vae = AutoencoderKL.from_pretrained(folder / "vae", **load)
    scheduler = ddim_from_base(json.loads((folder / "scheduler" / "scheduler_config.json").read_text()),
                               prediction_type)
    c = vae.config.latent_channels
    if unet.config.in_channels != c:
        raise ModelFolderError(f"{folder}: unet takes {unet.config.in_channels} input channels, expected the "
                               f"vae's {c} latent channels of a text-to-video UNet")
    widen_conv_in(unet, c)
    kwargs = dict(num_tokens=num_tokens, cross_attention_dim=unet.config.cross_attention_dim,
                  num_cond_frames=num_cond_frames)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if open_clip_model:
            encoder = BlurImageEncoder.from_open_clip(open_clip_model, clip_path, **kwargs)
        else:
            encoder = BlurImageEncoder.from_clip_vision(clip_path, **kwargs)
    pipe = DeblurVideoPipeline(vae=vae, unet=unet, blur_encoder=encoder.eval(), scheduler=scheduler)
    if prior_method is None:
        return pipe
    from vdiffdeblur.pipelines.prior import add_prior_input

    return add_prior_input(pipe, prior_method)
