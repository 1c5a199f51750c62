# Copyright 2025 The vdiffdeblur authors. Licensed under the Apache License, Version 2.0.
"""`DeblurVideoPipeline`: video deblurring with a re-purposed text-to-video diffusion model
("Deblurring via Video Diffusion Models", Wang & Long; docs/diffusion.md).

Components: `vae` (AutoencoderKL), `unet` (UNet3DConditionModel whose conv_in takes noisy latents ++ the blurry
clip's VAE latents), `blur_encoder` (BlurImageEncoder: CLIP vision tower -> cross-attention tokens),
`scheduler` (DDIM; epsilon or v prediction, from its config).

The temporal windows and spatial tiles are in `windows.py`, the push/flush stream in `stream.py`. Imports are
absolute so this file also loads as a diffusers custom pipeline file.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet3DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput, replace_example_docstring
from diffusers.video_processor import VideoProcessor

from vdiffdeblur.colour_fix import check_color_fix
from vdiffdeblur.models.blur_encoder import BlurImageEncoder
from vdiffdeblur.models.conditioning import BlurCondition, build_unet_input, decode_video_latents, encode_condition
from vdiffdeblur.pipelines.stream import DeblurVideoStream
from vdiffdeblur.pipelines.windows import apply_in_tiles, num_windows

logger = logging.getLogger(__name__)

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from vdiffdeblur import DeblurVideoPipeline
        >>> from vdiffdeblur.video import read_video, write_video

        >>> pipe = DeblurVideoPipeline.from_pretrained("path/to/deblur-pipeline", torch_dtype=torch.float16)
        >>> pipe.enable_model_cpu_offload()
        >>> clip = read_video("blurry.mp4")
        >>> frames = pipe(clip, num_inference_steps=50, generator=torch.Generator().manual_seed(0)).frames[0]
        >>> write_video("sharp.mp4", (frames * 255).round().astype("uint8"), fps=clip.info.fps)
        ```
"""

#: set to 1 to let `from_pretrained` load pickled `.bin` weights when `allow_pickle` is not passed
ALLOW_PICKLE_ENV = "VDIFFDEBLUR_ALLOW_PICKLE"

#: the components a pipeline folder must hold
COMPONENT_NAMES = ("vae", "unet", "blur_encoder", "scheduler")
#: the fast methods whose output a pipeline may refine (`prior_method`)
PRIOR_METHODS = ("transfer", "dtb")
_WEIGHTED = ("vae", "unet", "blur_encoder")


@dataclass
class DeblurVideoPipelineOutput(BaseOutput):
    r"""
    Output of [`DeblurVideoPipeline`].

    Args:
        frames (`np.ndarray`, `torch.Tensor` or `list[list[PIL.Image.Image]]`):
            The deblurred videos: a NumPy array `(batch_size, num_frames, height, width, 3)` or a tensor
            `(batch_size, num_frames, 3, height, width)` in [0, 1], or one list of PIL images per video. With
            `output_type="latent"`, the final latents `(batch_size, C, num_frames, h, w)` (padded size).
    """

    frames: torch.Tensor | np.ndarray | list[list[PIL.Image.Image]]


class ModelFolderError(ValueError):
    """A pipeline folder that is incomplete or inconsistent; the message names the component."""


class DeblurVideoPipeline(DiffusionPipeline):
    r"""
    Pipeline for video deblurring with a video diffusion model.

    This model inherits from [`DiffusionPipeline`]. Check the superclass documentation for the generic methods
    implemented for all pipelines (downloading, saving, running on a particular device, etc.).

    Args:
        vae ([`AutoencoderKL`]):
            Variational Auto-Encoder (the SD VAE of ModelScope text-to-video) to encode the blurry clip and decode
            the result.
        unet ([`UNet3DConditionModel`]):
            The denoising 3D UNet; its `conv_in` takes `2 * latent_channels` channels (noisy latents ++ the
            blurry clip's latents), see `vdiffdeblur.models.unet.widen_conv_in`.
        blur_encoder ([`~vdiffdeblur.models.BlurImageEncoder`]):
            Turns the clip's conditioning frame(s) into cross-attention tokens.
        scheduler ([`DDIMScheduler`]):
            The sampler; its `prediction_type` (epsilon or v_prediction) must be the UNet's.
        residual_decode (`bool`, defaults to `False`):
            Saved default of `__call__`'s `residual_decode`: output = blurry input + decode(z_0) - decode(z_blurry),
            so the VAE's reconstruction error cancels wherever the model leaves the content unchanged.
        residual_latents (`bool`, defaults to `False`):
            The UNet denoises the residual `z_sharp - z_blurry` (what training on this folder targets) instead of the
            sharp latents; the final latents are that residual plus the blurry clip's latents.
        residual_scale (`float`, defaults to 1.0):
            With `residual_latents`, the UNet works on `residual_scale * (z_sharp - z_blurry)`, so that the
            residual (small next to unit noise) carries a fair share of the diffusion loss.
        default_num_inference_steps (`int`, defaults to 50), default_guidance_scale (`float`, defaults to 3.0):
            Saved defaults of `__call__`'s `num_inference_steps` and `guidance_scale` (what the model was tuned for).
        prior_method (`str`, *optional*):
            `"transfer"` or `"dtb"`: the pipeline refines that method's output (predict-and-refine, Whang et al.
            CVPR 2022). Its UNet's conv_in then also takes the prior's latents (noisy ++ blurry ++ prior), every
            call needs `prior=`, and `residual_latents` / `residual_decode` are taken against the prior instead of
            the blurry clip. `None` (default): no prior.
    """

    model_cpu_offload_seq = "blur_encoder->unet->vae"
    _callback_tensor_inputs = ["latents", "blur_latents", "encoder_hidden_states"]
    #: frames per temporal window when `window_size` is not given: the UNet's training clip length
    default_window_size = 16

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet3DConditionModel,
        blur_encoder: BlurImageEncoder,
        scheduler: DDIMScheduler,
        residual_decode: bool = False,
        residual_latents: bool = False,
        residual_scale: float = 1.0,
        default_num_inference_steps: int = 50,
        default_guidance_scale: float = 3.0,
        prior_method: str | None = None,
    ):
        super().__init__()
        if prior_method is not None and prior_method not in PRIOR_METHODS:
            raise ModelFolderError(f"prior_method must be one of {PRIOR_METHODS} or None, got {prior_method!r}")
        self.register_modules(vae=vae, unet=unet, blur_encoder=blur_encoder, scheduler=scheduler)
        if int(default_num_inference_steps) < 1:
            raise ModelFolderError(f"default_num_inference_steps must be >= 1, got {default_num_inference_steps}")
        if not float(residual_scale) > 0:
            raise ModelFolderError(f"residual_scale must be > 0, got {residual_scale}")
        self.register_to_config(residual_decode=bool(residual_decode), residual_latents=bool(residual_latents),
                                residual_scale=float(residual_scale),
                                default_num_inference_steps=int(default_num_inference_steps),
                                default_guidance_scale=float(default_guidance_scale), prior_method=prior_method)
        self.check_components()
        for module in (vae, unet, blur_encoder):
            if isinstance(module, torch.nn.Module):
                _align_cpu_tensors(module)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        # frames stay in [0, 1]: the VAE's [-1, 1] mapping is done in conditioning.encode_video_latents
        self.video_processor = VideoProcessor(
            vae_scale_factor=self.vae_scale_factor, do_resize=False, do_normalize=False, do_convert_rgb=True
        )

    # ------------------------------------------------------------------------------------- components
    def check_components(self) -> None:
        """Raise `ModelFolderError` naming the component when the components do not fit together."""
        vae, unet = getattr(self, "vae", None), getattr(self, "unet", None)
        enc, sched = getattr(self, "blur_encoder", None), getattr(self, "scheduler", None)
        if vae is not None and unet is not None:
            c = vae.config.latent_channels
            if unet.config.out_channels != c:
                raise ModelFolderError(
                    f"unet predicts {unet.config.out_channels} channels but the vae has {c} latent channels"
                )
            prior = self.config.get("prior_method") if hasattr(self, "config") else None
            want, what = (3 * c, "noisy latents ++ blurry-clip latents ++ prior latents") if prior else (
                2 * c, "noisy latents ++ blurry-clip latents")
            if unet.config.in_channels != want:
                raise ModelFolderError(
                    f"unet conv_in takes {unet.config.in_channels} channels; the deblurrer"
                    f"{f' refining {prior} output' if prior else ''} needs {want} ({what}). Widen a text-to-video "
                    "UNet with vdiffdeblur.models.unet.widen_conv_in or scripts/convert_t2v_to_deblur.py (--prior)"
                )
        if enc is not None and unet is not None:
            if enc.config.cross_attention_dim != unet.config.cross_attention_dim:
                raise ModelFolderError(
                    f"blur_encoder makes tokens of width {enc.config.cross_attention_dim} but the unet's "
                    f"cross_attention_dim is {unet.config.cross_attention_dim}"
                )
        if sched is not None:
            if not hasattr(sched, "step") or not hasattr(sched, "set_timesteps"):
                raise ModelFolderError(f"scheduler {type(sched).__name__} is not a diffusers scheduler")
            pt = sched.config.get("prediction_type", "epsilon")
            if pt not in ("epsilon", "v_prediction", "sample"):
                raise ModelFolderError(f"scheduler prediction_type {pt!r} is not epsilon, v_prediction or sample")

    @classmethod
    def check_model_folder(cls, folder, passed: tuple[str, ...] = (), allow_pickle: bool = False) -> tuple[str, ...]:
        """Check a saved pipeline folder before loading: `model_index.json`, one sub-folder with a config per
        component, safetensors weights (or, with `allow_pickle`, pickled `.bin` weights). Raises `ModelFolderError` /
        `FileNotFoundError` naming what is wrong; returns the components whose weights are only pickled."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such model folder")
        index_file = folder / "model_index.json"
        if not index_file.is_file():
            raise ModelFolderError(f"{folder}: not a DeblurVideoPipeline folder (no model_index.json)")
        try:
            index = json.loads(index_file.read_text())
        except json.JSONDecodeError as e:
            raise ModelFolderError(f"{index_file}: not valid JSON ({e})") from None
        pickled = []
        for name in COMPONENT_NAMES:
            if name in passed:
                continue
            entry = index.get(name)
            if not isinstance(entry, list) or len(entry) != 2 or entry[0] is None:
                raise ModelFolderError(f"{folder}: model_index.json lists no {name!r} component")
            sub = folder / name
            if not sub.is_dir():
                raise ModelFolderError(f"{folder}: component {name!r} is missing (no {name}/ folder)")
            cfg = sub / ("scheduler_config.json" if name == "scheduler" else "config.json")
            if not cfg.is_file():
                raise ModelFolderError(f"{folder}: component {name!r} has no {cfg.name}")
            if name in _WEIGHTED:
                files = [p.name for p in sub.iterdir() if p.is_file()]
                if any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
                    continue
                if allow_pickle and any(f.endswith(".bin") or f.endswith(".bin.index.json") for f in files):
                    pickled.append(name)
                    continue
                other = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
                why = (f"only {', '.join(other)}, which is not loaded (safetensors only; pickled .bin weights can run "
                       f"code when loaded: pass allow_pickle=True or set {ALLOW_PICKLE_ENV}=1 only for a folder "
                       "you trust)") if other else "no weights"
                raise ModelFolderError(f"{folder}: component {name!r} has {why}")
        return tuple(pickled)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, allow_pickle: bool | None = None, **kwargs):
        r"""Load a pipeline saved with `save_pretrained` from a local folder (nothing is downloaded). Weights are
        read from safetensors only unless `allow_pickle=True` (or the environment variable
        `VDIFFDEBLUR_ALLOW_PICKLE=1` when `allow_pickle` is not given): then pickled `.bin` weights load too, with a
        warning, since unpickling a file can run code. Raises a `ModelFolderError` naming the component when the
        folder is incomplete or its components do not fit together. Other keyword arguments are those of
        [`DiffusionPipeline.from_pretrained`] (`torch_dtype`, a component to replace, `variant`, ...)."""
        if allow_pickle is None:
            allow_pickle = os.environ.get(ALLOW_PICKLE_ENV, "") not in ("", "0")
        passed = tuple(k for k in COMPONENT_NAMES if k in kwargs)
        pickled = cls.check_model_folder(pretrained_model_name_or_path, passed, allow_pickle=allow_pickle)
        if pickled:
            logger.warning("%s: loading pickled .bin weights of %s (allow_pickle): unpickling can run code, load only "
                           "folders you trust", pretrained_model_name_or_path, ", ".join(pickled))
        # safetensors are still preferred where both exist
        kwargs.setdefault("use_safetensors", None if allow_pickle else True)
        kwargs.setdefault("local_files_only", True)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def resolve_sampling(self, num_inference_steps: int | None, guidance_scale: float | None) -> tuple[int, float]:
        """`None` -> the saved defaults (`config.default_num_inference_steps`, `config.default_guidance_scale`)."""
        steps = (self.config.get("default_num_inference_steps", 50) if num_inference_steps is None
                 else num_inference_steps)
        scale = self.config.get("default_guidance_scale", 3.0) if guidance_scale is None else guidance_scale
        return int(steps), float(scale)

    # ------------------------------------------------------------------------------------- properties
    @property
    def guidance_scale(self):
        return self._guidance_scale

    # the guidance weight `w` of the Imagen paper (eq. 2): `guidance_scale <= 1` runs the conditional branch only
    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale > 1

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def interrupt(self):
        return self._interrupt

    @property
    def prior_method(self) -> str | None:
        """The method whose output this pipeline refines (`"transfer"`, `"dtb"`), or None: no prior."""
        return self.config.get("prior_method")

    @property
    def current_window(self) -> range | None:
        """While a window is denoised (e.g. inside `callback_on_step_end`), the absolute frame indices it covers."""
        return getattr(self, "_current_window", None)

    # ------------------------------------------------------------------------------------- conditioning
    def encode_condition(self, video: torch.Tensor, decode_chunk_size: int | None = None, generator=None,
                         sample: bool = False) -> BlurCondition:
        """A blurry clip in [0, 1] `(B, 3, F, H, W)` -> `BlurCondition(latents, tokens)`: its VAE latents scaled by
        `vae.config.scaling_factor` and the blur encoder's tokens. The same function training uses
        (`vdiffdeblur.models.conditioning.encode_condition`)."""
        return encode_condition(self.vae, self.blur_encoder, video, chunk_size=decode_chunk_size,
                                generator=generator, sample=sample)

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
        """Scaled latents `(B, C, F, h, w)` -> video `(B, 3, F, H, W)` float32 in [0, 1]."""
        return decode_video_latents(self.vae, latents, chunk_size=decode_chunk_size)

    def preprocess_video(self, video) -> torch.Tensor:
        """Any accepted video input -> float32 `(B, 3, F, H, W)` in [0, 1] on the CPU.

        Accepted: a `vdiffdeblur.video.Video` (or a list of them: a batch), uint8 arrays/tensors `(F, H, W, 3)` /
        `(B, F, H, W, 3)`, and everything diffusers' `VideoProcessor` takes: a list of PIL images (or a list of such
        lists), float NumPy `(F, H, W, 3)` / `(B, F, H, W, 3)` and tensors `(F, 3, H, W)` / `(B, F, 3, H, W)` in [0, 1].
        """
        if isinstance(video, (list, tuple)) and video and all(_is_video_obj(v) for v in video):
            video = np.stack([v.frames for v in video])
        elif _is_video_obj(video):
            video = video.frames
        if isinstance(video, np.ndarray) and video.dtype == np.uint8:
            if video.ndim not in (4, 5) or video.shape[-1] != 3:
                raise ValueError(f"uint8 video must be (F, H, W, 3) or (B, F, H, W, 3), got {video.shape}")
            video = video.astype(np.float32) / 255.0
        elif isinstance(video, torch.Tensor) and video.dtype == torch.uint8:
            if video.ndim not in (4, 5) or video.shape[-1] != 3:
                raise ValueError(f"uint8 video must be (F, H, W, 3) or (B, F, H, W, 3), got {tuple(video.shape)}")
            video = video.permute(*range(video.ndim - 3), -1, -3, -2).float() / 255.0
        if isinstance(video, np.ndarray) and video.ndim in (4, 5) and video.shape[-1] != 3:
            raise ValueError(f"NumPy video must be (F, H, W, 3) or (B, F, H, W, 3), got {video.shape}")
        if isinstance(video, torch.Tensor) and (video.ndim not in (4, 5) or video.shape[-3] != 3):
            raise ValueError(f"tensor video must be (F, 3, H, W) or (B, F, 3, H, W), got {tuple(video.shape)}")
        if isinstance(video, (list, tuple)) and len(video) == 0:
            raise ValueError("video is empty")
        try:
            out = self.video_processor.preprocess_video(video)
        except (ValueError, TypeError, IndexError) as e:
            raise ValueError(f"unsupported video input ({type(video).__name__}): {e}") from None
        out = out.float()
        if out.shape[1] != 3:
            raise ValueError(f"video must have 3 colour channels, got {out.shape[1]}")
        lo, hi = out.min().item(), out.max().item()
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"video values must lie in [0, 1] (floats) or be uint8, got range [{lo:.3g}, {hi:.3g}]")
        return out.clamp(0, 1)

    def check_prior(self, prior, shape) -> torch.Tensor | None:
        """`prior` (any `video` form) -> float32 `(B, 3, F, H, W)` matching the clip's `shape`, or None. Raises
        `ValueError` when this pipeline expects a prior and none is given, or the reverse, or the shapes differ."""
        method = self.prior_method
        if method is None:
            if prior is not None:
                raise ValueError("this pipeline takes no prior (its config has no prior_method); call it without "
                                 "prior=")
            return None
        if prior is None:
            raise ValueError(f"this pipeline refines {method} output: pass prior= (the {method} result of the same "
                             "clip)")
        out = self.preprocess_video(prior)
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"prior has shape {tuple(out.shape)} (B, 3, F, H, W) but the video has {tuple(shape)}")
        return out

    def prepare_extra_step_kwargs(self, generator, eta):
        # eta (η) is only used with the DDIMScheduler (η in the DDIM paper); other schedulers ignore it
        params = set(inspect.signature(self.scheduler.step).parameters.keys())
        extra = {}
        if "eta" in params:
            extra["eta"] = eta
        if "generator" in params:
            extra["generator"] = generator
        return extra

    def check_inputs(self, num_inference_steps, window_size, window_overlap, tile_size, tile_overlap,
                     decode_chunk_size, output_type, callback_on_step_end_tensor_inputs):
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if window_size is not None and window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0: the whole clip at once), got {window_size}")
        if window_size and not 0 <= window_overlap < window_size:
            raise ValueError(f"window_overlap must be in [0, window_size), got {window_overlap} for {window_size}")
        if tile_size is not None:
            m = self.spatial_multiple
            if tile_size < m or tile_size % m:
                raise ValueError(f"tile_size must be a positive multiple of {m}, got {tile_size}")
            if tile_overlap is not None and (tile_overlap % m or not 0 <= tile_overlap < tile_size):
                raise ValueError(f"tile_overlap must be a multiple of {m} in [0, tile_size), got {tile_overlap}")
        if decode_chunk_size is not None and decode_chunk_size < 1:
            raise ValueError(f"decode_chunk_size must be >= 1, got {decode_chunk_size}")
        if output_type not in ("np", "pt", "pil", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt', 'pil' or 'latent', got {output_type!r}")
        if callback_on_step_end_tensor_inputs is not None and not all(
            k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs
        ):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, but found "
                f"{[k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]}"
            )

    @property
    def spatial_multiple(self) -> int:
        """Frame sizes are padded to this multiple: one latent pixel at the UNet's coarsest level."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    # ------------------------------------------------------------------------------------- denoising
    def _predict(self, model_input, t, encoder_hidden_states, tile, tile_overlap):
        """One UNet evaluation, in overlapping spatial tiles (blended with edge-tapered weights) when the latent
        frame is larger than `tile`."""
        return apply_in_tiles(
            lambda x: self.unet(x, t, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0],
            model_input, tile, tile_overlap,
        )

    def denoise(self, latents, blur_latents, encoder_hidden_states, *, num_inference_steps, guidance_scale=1.0,
                prior_latents=None, extra_step_kwargs=None, prev_predictions=None, record_last: int = 0, tile=None,
                tile_overlap=0, progress_bar=None, callback_on_step_end=None,
                callback_on_step_end_tensor_inputs=("latents",)):
        """The DDIM loop over one window of latents `(B, C, f, h, w)`.

        `prev_predictions` (one entry per step: the previous window's guided model output over the first `k`
        frames of this window) is blended into this window's output for those frames at every step, with weights
        tapering from the previous window's side (`k/(k+1)`) to this one's (`1/(k+1)`), before the scheduler step.
        For DDIM, whose step is linear in the model output, this is MultiDiffusion's per-step average of the two
        windows' updates, done one window after the other so that only one window is in memory.
        `record_last` > 0 also returns this window's guided outputs over its last `record_last` frames.
        `guidance_scale` is the scale at the first step; `self.guidance_scale` is read at every step, so a callback
        may change it, and may return `blur_latents` / `encoder_hidden_states` for the remaining steps.
        `prior_latents` (same shape as `blur_latents`) are the prior's latents for a pipeline with `prior_method`.
        Returns `(latents, predictions)`.
        """
        extra_step_kwargs = extra_step_kwargs or {}
        self.scheduler.set_timesteps(num_inference_steps, device=latents.device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        # every window starts from the call's scale; a callback may change `self._guidance_scale` between steps
        self._guidance_scale = guidance_scale
        dtype = latents.dtype
        blend = None
        if prev_predictions:
            k = prev_predictions[0].shape[2]
            blend = torch.arange(k, 0, -1, device=latents.device, dtype=torch.float32) / (k + 1)
            blend = blend.view(1, 1, k, 1, 1).to(dtype)
        recorded = []
        for i, t in enumerate(timesteps):
            if self.interrupt:
                continue
            cfg = self.do_classifier_free_guidance
            tokens = encoder_hidden_states.to(dtype)
            if cfg:
                # the unconditional branch: zero tokens, the blurry clip's latents kept
                tokens = torch.cat([torch.zeros_like(tokens), tokens])
                blur_in = torch.cat([blur_latents, blur_latents])
                prior_in = None if prior_latents is None else torch.cat([prior_latents, prior_latents])
            else:
                blur_in, prior_in = blur_latents, prior_latents
            model_input = torch.cat([latents] * 2) if cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            model_input = build_unet_input(model_input, blur_in, prior_in)
            pred = self._predict(model_input, t, tokens, tile, tile_overlap)
            if cfg:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = pred_uncond + self.guidance_scale * (pred_cond - pred_uncond)
            if blend is not None:
                k = blend.shape[2]
                prev = prev_predictions[i].to(device=pred.device, dtype=pred.dtype)
                pred = torch.cat([blend * prev + (1 - blend) * pred[:, :, :k], pred[:, :, k:]], dim=2)
            if record_last:
                recorded.append(pred[:, :, -record_last:].clone())

            # the scheduler steps frame-wise images, as in diffusers' text-to-video pipeline
            b, c, f, h, w = latents.shape
            flat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
            pred = pred.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
            flat = self.scheduler.step(pred, t, flat, **extra_step_kwargs, return_dict=False)[0]
            latents = flat.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4).to(dtype)

            if callback_on_step_end is not None:
                callback_kwargs = {}
                local = {"latents": latents, "blur_latents": blur_latents,
                         "encoder_hidden_states": encoder_hidden_states}
                for name in callback_on_step_end_tensor_inputs:
                    callback_kwargs[name] = local[name]
                callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                latents = callback_outputs.pop("latents", latents)
                blur_latents = callback_outputs.pop("blur_latents", blur_latents)
                encoder_hidden_states = callback_outputs.pop("encoder_hidden_states", encoder_hidden_states)

            if progress_bar is not None:
                progress_bar.update()
        return latents, recorded

    # ------------------------------------------------------------------------------------- streaming
    def open_stream(self, height: int, width: int, batch_size: int = 1, **kwargs) -> "DeblurVideoStream":
        """A push/flush deblurring session over a video that arrives in pieces (see `DeblurVideoStream`):
        memory holds one window, whatever the video's length. Keyword arguments are those of `__call__`
        (`num_inference_steps`, `guidance_scale`, `eta`, `generator`, `window_size`, `window_overlap`,
        `tile_size`, `tile_overlap`, `decode_chunk_size`, `callback_on_step_end`, ...)."""
        return DeblurVideoStream(self, height, width, batch_size=batch_size, **kwargs)

    # ------------------------------------------------------------------------------------- call
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        video=None,
        prior=None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        window_size: int | None = None,
        window_overlap: int = 4,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        decode_chunk_size: int | None = 8,
        residual_decode: bool | None = None,
        num_videos_per_prompt: int = 1,
        color_fix: str | None = None,
        output_type: str | None = "np",
        return_dict: bool = True,
        callback_on_step_end: (
            Callable[[int, int, dict], None] | PipelineCallback | MultiPipelineCallbacks | None
        ) = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ):
        r"""
        Deblur a video (or a batch of videos of equal length and size).

        Args:
            video (`Video`, `list[PIL.Image.Image]`, `np.ndarray`, `torch.Tensor`, or a batch of these):
                The blurry clip(s), see [`~DeblurVideoPipeline.preprocess_video`]. Any frame count and size: frames
                are padded to `spatial_multiple` and cropped back.
            prior (same forms as `video`, *optional*):
                Another method's output for the same clip (frame for frame, same size), which a pipeline with
                `config.prior_method` refines; required by such a pipeline and refused by one without.
            num_inference_steps (`int`, *optional*): DDIM steps (default: the pipeline's
                `config.default_num_inference_steps`, 50 unless the saved model says otherwise).
            guidance_scale (`float`, *optional*, default: `config.default_guidance_scale`, 3.0 unless saved otherwise):
                Classifier-free guidance weight on the blur encoder's tokens (the unconditional branch has zero
                tokens and keeps the blurry latents). `guidance_scale <= 1` runs one UNet pass per step.
            eta (`float`, defaults to 0.0): DDIM η (0 is deterministic given the initial noise).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Makes the run repeatable; one generator per video makes each video's result independent of the batch.
            latents (`torch.Tensor`, *optional*):
                Initial noise `(batch_size * num_videos_per_prompt, C, num_frames, H_pad / s, W_pad / s)` instead of
                drawing it.
            window_size (`int`, *optional*, defaults to `default_window_size` = 16):
                Frames the UNet sees at once. Longer videos are cut into windows overlapping by `window_overlap`;
                at every step the overlapping frames' model outputs are blended with the previous window's (weights
                tapered across the overlap), so no seam shows.
                `0` denoises the whole clip at once.
            window_overlap (`int`, defaults to 4): frames shared by consecutive windows.
            tile_size (`int`, *optional*): when set, frames larger than `tile_size` pixels are denoised in
                overlapping spatial tiles of that size (a multiple of `spatial_multiple`), blended the same way.
            tile_overlap (`int`, *optional*, defaults to `tile_size // 4` rounded to `spatial_multiple`).
            decode_chunk_size (`int`, *optional*, defaults to 8): frames per VAE call (None: a window at once).
            residual_decode (`bool`, *optional*, default: `config.residual_decode`):
                Output = blurry input + decode(final latents) - decode(blurry latents) instead of decode(final
                latents): the VAE's reconstruction error cancels where the content is unchanged. Not for
                `output_type="latent"`.
            num_videos_per_prompt (`int`, defaults to 1): results per input video, each from its own noise; the
                output holds `batch_size * num_videos_per_prompt` videos, the results of each input together. A list
                of generators then needs one generator per result.
            color_fix (`str`, *optional*): `"wavelet"` or `"adain"` takes the output's low frequencies
                (wavelet) or per-channel mean and spread (AdaIN) from the blurry input, frame by frame, so the
                generative pass cannot shift colours (`vdiffdeblur.colour_fix`); `None` (default) leaves the output
                as the model made it. Not for `output_type="latent"`.
            output_type (`str`, defaults to `"np"`): `"np"`, `"pt"`, `"pil"` or `"latent"`.
            return_dict (`bool`, defaults to `True`): return a [`DeblurVideoPipelineOutput`] rather than a tuple.
            callback_on_step_end (`Callable`, `PipelineCallback`, `MultiPipelineCallbacks`, *optional*):
                Called at the end of every denoising step of every window as
                `callback_on_step_end(self, step, timestep, callback_kwargs)`; `callback_kwargs` holds the tensors
                named in `callback_on_step_end_tensor_inputs` for the current window (`pipe.current_window` gives
                its frames). Returned tensors replace the window's: `latents`, and `blur_latents` /
                `encoder_hidden_states` (the conditional branch's, without the CFG copy), which condition the
                window's remaining steps. `pipe.guidance_scale` is read at every step, so a callback that sets
                `pipe._guidance_scale` (e.g. to 0 from some step on: a CFG cutoff) changes the rest of that window;
                every window starts from `guidance_scale`.
            callback_on_step_end_tensor_inputs (`list`, defaults to `["latents"]`):
                Any of `._callback_tensor_inputs`.

        Examples:

        Returns:
            [`DeblurVideoPipelineOutput`] or `tuple`: the deblurred frames, with the input's frame count and size.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if video is None:
            raise ValueError("no video given")
        num_inference_steps, guidance_scale = self.resolve_sampling(num_inference_steps, guidance_scale)
        window = self.default_window_size if window_size is None else window_size
        self.check_inputs(num_inference_steps, window, window_overlap, tile_size, tile_overlap, decode_chunk_size,
                          output_type, callback_on_step_end_tensor_inputs)
        self._guidance_scale = guidance_scale
        self._interrupt = False

        if not isinstance(num_videos_per_prompt, int) or num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be a positive integer, got {num_videos_per_prompt!r}")
        color_fix = check_color_fix(color_fix)
        if color_fix is not None and output_type == "latent":
            raise ValueError("color_fix works on frames, not on output_type='latent'")

        frames = self.preprocess_video(video)
        prior_frames = self.check_prior(prior, frames.shape)
        if num_videos_per_prompt > 1:
            frames = frames.repeat_interleave(num_videos_per_prompt, dim=0)
            if prior_frames is not None:
                prior_frames = prior_frames.repeat_interleave(num_videos_per_prompt, dim=0)
        batch_size, _, num_frames, height, width = frames.shape
        if window == 0:
            window, window_overlap = num_frames, 0
        if latents is not None:
            m = self.spatial_multiple
            hp, wp = -(-height // m) * m, -(-width // m) * m
            expected = (batch_size, self.unet.config.out_channels, num_frames, hp // self.vae_scale_factor,
                        wp // self.vae_scale_factor)
            if tuple(latents.shape) != expected:
                raise ValueError(f"latents must have shape {expected} for this video, got {tuple(latents.shape)}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch_size} results (videos times "
                             "num_videos_per_prompt)")

        total = num_windows(num_frames, window, window_overlap) * num_inference_steps
        with self.progress_bar(total=total) as progress_bar:
            stream = DeblurVideoStream(
                self, height, width, batch_size=batch_size, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, eta=eta, generator=generator, latents=latents,
                window_size=window, window_overlap=window_overlap, tile_size=tile_size, tile_overlap=tile_overlap,
                decode_chunk_size=decode_chunk_size, output_latents=output_type == "latent",
                residual_decode=residual_decode, color_fix=color_fix, callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, progress_bar=progress_bar,
            )
            pieces = stream.push(frames, prior_frames)
            pieces += stream.flush()
        result = torch.cat(pieces, dim=2)
        if result.shape[2] != num_frames:  # a bug, not a user error
            raise RuntimeError(f"produced {result.shape[2]} frames for {num_frames}")

        if output_type == "latent":
            video_out = result
        else:
            video_out = self.video_processor.postprocess_video(video=result, output_type=output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (video_out,)
        return DeblurVideoPipelineOutput(frames=video_out)


def _align_cpu_tensors(module: torch.nn.Module) -> None:
    """Copy CPU tensors that do not start at a 64-byte boundary. Weights memory-mapped from safetensors can be
    unaligned, and CPU GEMM kernels then take another path and round differently: aligned, a loaded pipeline
    computes exactly what the saved one did."""
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type == "cpu" and t.data_ptr() % 64:
            t.data = t.data.clone()


def _is_video_obj(x) -> bool:
    # vdiffdeblur.video.Video, without importing the I/O stack here
    return hasattr(x, "frames") and hasattr(x, "info") and isinstance(getattr(x, "frames"), np.ndarray)

