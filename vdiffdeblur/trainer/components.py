"""The models of a training stage: what is loaded, what learns, what stays frozen (paper section 4.2).

- Stage 1: the blur encoder learns, plus (by default) the input channels `widen_conv_in` added to the UNet's
  `conv_in` for the blurry-clip latents: a frozen zero-initialised conv_in would ignore them. The weight tensor
  is shared with the pretrained channels, so a gradient hook zeroes the pretrained slice's gradient and that
  tensor gets no weight decay: the pretrained channels stay bit-exact. Everything else is frozen.
- Stage 2: the UNet and the blur encoder learn; the VAE stays frozen.
Frozen models are cast to the mixed-precision weight dtype; what learns stays in float32.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from ..models.conditioning import build_unet_input, drop_tokens
from .config import DiffusionTrainConfig

logger = logging.getLogger(__name__)


def load_base_pipeline(cfg: DiffusionTrainConfig, **components):
    """The starting `DeblurVideoPipeline` in float32 on the CPU: `cfg.pretrained` (a pipeline folder) or, for
    ``"tiny"``, the tiny random pipeline of `vdiffdeblur.models.tiny` (seeded by `cfg.tiny_seed`). Components
    passed by keyword replace the loaded ones (and are not loaded)."""
    from vdiffdeblur.pipelines import DeblurVideoPipeline

    if not cfg.pretrained:
        raise ValueError("no base model: pass --pretrained DIR (a DeblurVideoPipeline folder, e.g. from "
                         "scripts/convert_t2v_to_deblur.py or a stage-1 output) or --pretrained tiny")
    from vdiffdeblur.pipelines.prior import add_prior_input, pipeline_config

    # a passed UNet may already be widened for the prior: it replaces the base's after any widening
    unet = components.pop("unet", None)
    if cfg.pretrained == "tiny":
        from vdiffdeblur.pipelines.tiny import tiny_components

        parts = tiny_components(seed=cfg.tiny_seed, prediction_type=cfg.tiny_prediction_type)
        parts.update(components)
        pipe = DeblurVideoPipeline(**parts)
    elif not Path(cfg.pretrained).is_dir():
        raise FileNotFoundError(f"--pretrained {cfg.pretrained}: no such pipeline folder")
    else:
        pipe = DeblurVideoPipeline.from_pretrained(cfg.pretrained, torch_dtype=torch.float32, **components)
    have = pipe.config.get("prior_method")
    if cfg.prior_method and have and cfg.prior_method != have:
        raise ValueError(f"prior_method {cfg.prior_method}: the base {cfg.pretrained} refines {have} output")
    if cfg.prior_method and not have:
        pipe = add_prior_input(pipe, cfg.prior_method)
    if unet is not None:
        pipe = DeblurVideoPipeline(**{**pipe.components, "unet": unet}, **pipeline_config(pipe))
    return pipe


def load_teacher(cfg: DiffusionTrainConfig, blur_encoder):
    """Image encoder 1, frozen: `cfg.teacher_encoder` (a BlurImageEncoder folder or a transformers CLIP vision
    folder) or, by default, a copy of the blur encoder the stage starts from."""
    from ..models.blur_encoder import BlurImageEncoder

    if cfg.teacher_encoder is None:
        teacher = copy.deepcopy(blur_encoder)
    else:
        path = Path(cfg.teacher_encoder)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--teacher_encoder {path}: no config.json "
                                    "(a BlurImageEncoder or CLIP vision folder)")
        import json

        cls_name = json.loads((path / "config.json").read_text()).get("_class_name")
        teacher = (BlurImageEncoder.from_pretrained(path) if cls_name == "BlurImageEncoder"
                   else BlurImageEncoder.from_clip_vision(
                       path, cross_attention_dim=blur_encoder.config.cross_attention_dim))
    return teacher.requires_grad_(False).eval()


def training_scheduler(pipeline_scheduler):
    """The noise scheduler of training: a `DDPMScheduler` with the pipeline scheduler's noise schedule and
    prediction type (T = 1000 steps, zero terminal SNR when the base uses it), as diffusers' examples use."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipeline_scheduler.config)


# --------------------------------------------------------------------------------------- trainable parameters
def base_latent_channels(unet) -> int:
    """conv_in's pretrained input channels (the noisy latents); the rest were added for the blurry latents."""
    return int(unet.config.out_channels)


def _mask_pretrained_channels(base: int):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:, :base] = 0
        return grad

    return hook


def configure_trainable(stage: int, vae, unet, blur_encoder, train_conv_in: bool = True) -> dict:
    """Freeze / unfreeze for `stage` and return the optimizer's parameter groups by name:
    ``{"decay": [...], "no_decay": [...]}`` (conv_in's shared weight in stage 1 gets no weight decay, which
    would otherwise shrink its frozen slice)."""
    vae.requires_grad_(False)
    blur_encoder.requires_grad_(True)
    if stage == 1:
        unet.requires_grad_(False)
        no_decay = []
        if train_conv_in:
            base = base_latent_channels(unet)
            if unet.conv_in.in_channels <= base:
                raise ValueError(f"unet.conv_in has {unet.conv_in.in_channels} input channels: no new channels "
                                 "to train (widen it with vdiffdeblur.models.unet.widen_conv_in)")
            unet.conv_in.weight.requires_grad_(True)
            unet.conv_in.weight.register_hook(_mask_pretrained_channels(base))
            no_decay = [unet.conv_in.weight]
        return {"decay": list(blur_encoder.parameters()), "no_decay": no_decay}
    if stage == 2:
        unet.requires_grad_(True)
        return {"decay": list(unet.parameters()) + list(blur_encoder.parameters()), "no_decay": []}
    raise ValueError(f"stage must be 1 or 2, got {stage}")


def cast_frozen(stage: int, vae, unet, weight_dtype: torch.dtype, device) -> None:
    """Move the VAE and the UNet to `device`; cast what does not learn to `weight_dtype` (the VAE; in stage 1 the UNet
    except conv_in, which learns in float32)."""
    vae.to(device)
    unet.to(device)
    if weight_dtype == torch.float32:
        return
    vae.to(dtype=weight_dtype)
    if stage == 1:
        unet.to(dtype=weight_dtype)
        unet.conv_in.to(dtype=torch.float32)


# --------------------------------------------------------------------------------------- the trained module
class DeblurTrainModel(nn.Module):
    """The learning part of the deblurrer as one module (what Accelerate wraps for DDP/FSDP): blur encoder
    tokens (with condition dropout) -> UNet prediction, and the blur encoder's CLIP embeddings for the optional
    alignment loss, in one forward."""

    def __init__(self, unet, blur_encoder):
        super().__init__()
        self.unet = unet
        self.blur_encoder = blur_encoder

    def forward(self, noisy_latents, blur_latents, timesteps, blurry, drop_prob: float = 0.0, generator=None,
                align_images=None, prior_latents=None):
        """`blurry` (B, 3, F, H, W) in [0, 1], `prior_latents` those of the prior for a UNet that refines one;
        returns `(prediction (B, C, F, h, w), embeds or None)`."""
        tokens = self.blur_encoder(blurry)
        tokens = drop_tokens(tokens, drop_prob, generator=generator)
        model_input = build_unet_input(noisy_latents, blur_latents, prior_latents)
        pred = self.unet(model_input, timesteps, encoder_hidden_states=tokens, return_dict=False)[0]
        embeds = self.blur_encoder.embed_images(align_images) if align_images is not None else None
        return pred, embeds


def enable_gradient_checkpointing(unet, blur_encoder) -> None:
    """Gradient checkpointing for both learners (the UNet3D through `vdiffdeblur.models.unet`'s wrapper, since it
    refuses `enable_gradient_checkpointing()`; the CLIP tower through transformers)."""
    from ..models.unet import enable_unet_gradient_checkpointing

    enable_unet_gradient_checkpointing(unet)
    clip = getattr(blur_encoder, "clip", None)
    if clip is not None and hasattr(clip, "gradient_checkpointing_enable"):
        clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
