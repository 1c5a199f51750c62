"""Turning a deblurring pipeline into one that refines a fast method's output (predict-and-refine, Whang et al.,
"Deblurring via Stochastic Refinement", CVPR 2022): the UNet's conv_in gains the prior's latent channels, after
the blurry clip's, zero-initialised, so the new pipeline's UNet starts computing exactly what the old one did."""

from __future__ import annotations

from vdiffdeblur.models.unet import widen_conv_in
from vdiffdeblur.pipelines.pipeline_deblur_video import PRIOR_METHODS, DeblurVideoPipeline, ModelFolderError

#: the pipeline config fields a prior-conditioned copy keeps
_KEPT_CONFIG = ("residual_decode", "residual_latents", "residual_scale", "default_num_inference_steps",
                "default_guidance_scale")


def pipeline_config(pipe: DeblurVideoPipeline) -> dict:
    """The pipeline's own config fields (sampling defaults and `prior_method`), to build it again around other
    components."""
    return {k: pipe.config[k] for k in (*_KEPT_CONFIG, "prior_method") if k in pipe.config}


def add_prior_input(pipe: DeblurVideoPipeline, prior_method: str) -> DeblurVideoPipeline:
    """A `DeblurVideoPipeline` over the same components (the UNet is widened in place) that expects `prior_method`
    output (`"transfer"` or `"dtb"`) as `prior=`. Its conv_in takes `latent_channels` more input channels, zero at
    first; the saved sampling defaults are kept. Raises `ValueError` for an unknown method or a pipeline that
    already takes a prior."""
    if prior_method not in PRIOR_METHODS:
        raise ValueError(f"prior_method must be one of {PRIOR_METHODS}, got {prior_method!r}")
    if pipe.config.get("prior_method"):
        raise ModelFolderError(f"the pipeline already refines {pipe.config['prior_method']} output")
    widen_conv_in(pipe.unet, int(pipe.vae.config.latent_channels))
    config = {**pipeline_config(pipe), "prior_method": prior_method}
    return DeblurVideoPipeline(vae=pipe.vae, unet=pipe.unet, blur_encoder=pipe.blur_encoder,
                               scheduler=pipe.scheduler, **config)
