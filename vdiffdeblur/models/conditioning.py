"""How the deblurring UNet is conditioned on the blurry clip, shared by the pipeline and the training scripts.

Two signals (DESIGN.md, "The diffusion deblurrer"):
- the VAE latents of the blurry clip, concatenated with the noisy latents on the channel axis
  (`build_unet_input`), which tell the UNet where every edge is;
- the blur encoder's tokens, through cross-attention (zeros for the unconditional branch of classifier-free
  guidance and for conditioning dropout in training).

Videos are in diffusers' layout `(B, C, F, H, W)`; pixels in [0, 1].
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class BlurCondition(NamedTuple):
    latents: torch.Tensor  # (B, C_lat, F, h, w), scaled by vae.config.scaling_factor
    tokens: torch.Tensor  # (B, T, cross_attention_dim)


def _vae_shift_scale(vae) -> tuple[float, float]:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return float(shift), float(vae.config.scaling_factor)


def encode_video_latents(vae, video: torch.Tensor, chunk_size: int | None = None, generator=None,
                         sample: bool = False) -> torch.Tensor:
    """VAE latents of a video in [0, 1] `(B, 3, F, H, W)` -> `(B, C_lat, F, H/s, W/s)`, scaled (and shifted) the
    way diffusers' latents are: `(z - shift_factor) * scaling_factor`.

    Frames go through the 2D VAE `chunk_size` at a time (all at once when None). `sample=False` takes the
    posterior mode (deterministic; what inference uses); `sample=True` draws from it with `generator`.
    """
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"expected a video (B, 3, F, H, W) in [0, 1], got shape {tuple(video.shape)}")
    b, _, f, h, w = video.shape
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, 3, h, w).to(vae.dtype) * 2.0 - 1.0
    chunk = chunk_size or frames.shape[0]
    shift, scale = _vae_shift_scale(vae)
    out = []
    for i in range(0, frames.shape[0], chunk):
        dist = vae.encode(frames[i : i + chunk]).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        out.append((z - shift) * scale)
    z = torch.cat(out)
    return z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4)


def decode_video_latents(vae, latents: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Scaled latents `(B, C_lat, F, h, w)` -> video `(B, 3, F, H, W)` in [0, 1] (float32), `chunk_size` frames
    per VAE call (all at once when None)."""
    b, c, f, h, w = latents.shape
    shift, scale = _vae_shift_scale(vae)
    z = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w).to(vae.dtype) / scale + shift
    chunk = chunk_size or z.shape[0]
    frames = torch.cat([vae.decode(z[i : i + chunk]).sample for i in range(0, z.shape[0], chunk)])
    video = frames.reshape(b, f, *frames.shape[1:]).permute(0, 2, 1, 3, 4)
    return (video.float() / 2 + 0.5).clamp(0, 1)


def encode_condition(vae, blur_encoder, video: torch.Tensor, chunk_size: int | None = None,
                     generator=None, sample: bool = False) -> BlurCondition:
    """The two conditioning signals of a blurry clip in [0, 1] `(B, 3, F, H, W)`:
    `BlurCondition(latents=VAE latents (scaled), tokens=blur_encoder(video))`.

    Gradients flow into `blur_encoder` (and the VAE, if it requires them); wrap in `torch.no_grad()` for a frozen
    VAE. The tokens come from the clip's conditioning frames (`blur_encoder.config.num_cond_frames`).
    """
    latents = encode_video_latents(vae, video, chunk_size=chunk_size, generator=generator, sample=sample)
    tokens = blur_encoder(video.to(blur_encoder.dtype))
    return BlurCondition(latents, tokens)


def build_unet_input(noisy_latents: torch.Tensor, blur_latents: torch.Tensor,
                     prior_latents: torch.Tensor | None = None) -> torch.Tensor:
    """The UNet's input: noisy latents ++ blurry-clip latents (++ the prior's latents, for a UNet refining another
    method's output) on the channel axis, `(B, 2*C_lat, F, h, w)` (`3*C_lat` with a prior)."""
    parts = [noisy_latents, blur_latents] + ([] if prior_latents is None else [prior_latents])
    for name, x in zip(("blurry-clip", "prior"), parts[1:]):
        if noisy_latents.shape[0] != x.shape[0] or noisy_latents.shape[2:] != x.shape[2:]:
            raise ValueError(f"noisy latents {tuple(noisy_latents.shape)} and {name} latents "
                             f"{tuple(x.shape)} differ in batch, frames or size")
    return torch.cat([p.to(noisy_latents.dtype) for p in parts], dim=1)


def drop_tokens(tokens: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Conditioning dropout for classifier-free guidance training: each sample's tokens are zeroed with
    probability `drop_prob` (zeros are the unconditional tokens the pipeline uses)."""
    if drop_prob <= 0:
        return tokens
    keep = torch.rand(tokens.shape[0], generator=generator, device=generator.device if generator else "cpu")
    keep = (keep >= drop_prob).to(device=tokens.device, dtype=tokens.dtype)
    return tokens * keep.view(-1, *([1] * (tokens.ndim - 1)))
