"""`DeblurVideoStream`: `DeblurVideoPipeline`'s push/flush deblurring of a video that arrives in pieces, one
temporal window at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from diffusers.utils.torch_utils import randn_tensor

from vdiffdeblur.colour_fix import apply_color_fix, check_color_fix
from vdiffdeblur.frames import check_finite, crop_to, pad_to_multiple, to_uint8
from vdiffdeblur.models.blur_encoder import select_condition_frames
from vdiffdeblur.models.conditioning import decode_video_latents, encode_video_latents

if TYPE_CHECKING:
    from vdiffdeblur.pipelines.pipeline_deblur_video import DeblurVideoPipeline


class DeblurVideoStream:
    r"""Deblur a video that arrives in pieces, one temporal window at a time: what `DeblurVideoPipeline.__call__`
    runs on a whole clip, what `DeblurVideoPipeline.open_stream` returns, and what the CLI and the DDIM script run
    from a video reader into a writer.

    `push(frames, prior=None)` takes the next frames `(B, 3, n, H, W)`, float in [0, 1] or uint8 (and, for a
    pipeline with a `prior_method`, the prior's same frames, whose latents travel with the blurry ones) and returns
    the output frames now final (a list of `(B, 3, m, H, W)` tensors: float32 in [0, 1], uint8 for uint8 frames, or
    latents with `output_latents=True`); `flush()` returns the rest. uint8 frames are kept as uint8 until each
    chunk of `decode_chunk_size` frames is encoded or decoded, so a window of 4K frames holds a quarter of the
    memory; the output is the float output rounded.

    A window of `window_size` frames is denoised as soon as it is complete; its first `window_size -
    window_overlap` frames are then final, its last `window_overlap` frames are held, with the model's outputs for
    them at every step, to be blended into the next window's at every step. Memory holds one window plus those
    outputs, whatever the video's length. Initial noise is drawn frame by frame in order, so a
    video gets the same noise whether it comes at once or in pieces.
    """

    def __init__(self, pipe: DeblurVideoPipeline, height: int, width: int, batch_size: int = 1, *,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None, eta: float = 0.0,
                 generator=None, residual_decode: bool | None = None,
                 latents: torch.Tensor | None = None, window_size: int | None = None, window_overlap: int = 4,
                 tile_size: int | None = None, tile_overlap: int | None = None, decode_chunk_size: int | None = 8,
                 output_latents: bool = False, color_fix: str | None = None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), progress_bar=None):
        num_inference_steps, guidance_scale = pipe.resolve_sampling(num_inference_steps, guidance_scale)
        window = pipe.default_window_size if window_size is None else window_size
        pipe.check_inputs(num_inference_steps, window, window_overlap, tile_size, tile_overlap, decode_chunk_size,
                          "latent" if output_latents else "pt", callback_on_step_end_tensor_inputs)
        self.residual_decode = bool(pipe.config.get("residual_decode", False) if residual_decode is None
                                    else residual_decode)
        # the clip the residuals are taken against: the prior when the pipeline refines one, else the blurry clip
        self.prior_method = pipe.config.get("prior_method")
        # the UNet's latents are residual_scale * (z_sharp - z_base) for folders trained that way
        self.residual_scale = (float(pipe.config.get("residual_scale", 1.0))
                               if pipe.config.get("residual_latents", False) else None)
        self.color_fix = check_color_fix(color_fix)
        if self.color_fix is not None and output_latents:
            raise ValueError("color_fix works on frames, not on latent output")
        if window == 0:
            raise ValueError("a stream needs window_size >= 1")
        if height < 1 or width < 1:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        self.pipe = pipe
        self.height, self.width, self.batch_size = height, width, batch_size
        self.steps, self.guidance_scale = num_inference_steps, guidance_scale
        self.generator, self.latents = generator, latents
        self.window, self.overlap = window, window_overlap
        m = pipe.spatial_multiple
        self.tile = None if tile_size is None else tile_size // pipe.vae_scale_factor
        if tile_size is not None and tile_overlap is None:
            tile_overlap = (tile_size // 4) // m * m
        self.tile_overlap = 0 if tile_size is None else tile_overlap // pipe.vae_scale_factor
        self.decode_chunk_size = decode_chunk_size
        self.output_latents = output_latents
        self.callback, self.callback_inputs = callback_on_step_end, list(callback_on_step_end_tensor_inputs)
        self.progress_bar = progress_bar
        self.extra_step_kwargs = pipe.prepare_extra_step_kwargs(generator, eta)
        pipe._guidance_scale = guidance_scale
        pipe._interrupt = False
        self.padded = (-(-height // m) * m, -(-width // m) * m)
        self.latent_size = (self.padded[0] // pipe.vae_scale_factor, self.padded[1] // pipe.vae_scale_factor)
        # per buffered frame: pixels (B, 3, 1, H, W) in [0, 1] (unpadded), blurry latents, initial noise
        self._pixels: list[torch.Tensor] = []
        self._blur: list[torch.Tensor | None] = []
        # the prior's pixels and latents per buffered frame (empty lists' entries stay None without a prior)
        self._prior_pixels: list[torch.Tensor | None] = []
        self._prior: list[torch.Tensor | None] = []
        self._noise: list[torch.Tensor | None] = []
        self._start = 0  # absolute index of the first buffered frame
        self._pushed = 0
        self._held = 0  # buffered frames already denoised (the previous window's tail)
        self._predictions: list[torch.Tensor] | None = None  # the held frames' model outputs, per step
        self._tail: torch.Tensor | None = None  # final latents of the held frames
        self._processed_any = False
        self._uint8: bool | None = None  # whether frames come (and go out) as uint8; set by the first push
        folder = getattr(pipe, "name_or_path", None)
        self.name = f"{folder}: the diffusion model" if folder else "the diffusion model"

    @property
    def device(self):
        return self.pipe._execution_device

    # ----------------------------------------------------------------------------------------- API
    def push(self, frames: torch.Tensor, prior: torch.Tensor | None = None) -> list[torch.Tensor]:
        if frames.ndim != 5 or frames.shape[0] != self.batch_size or frames.shape[1] != 3:
            raise ValueError(f"expected frames ({self.batch_size}, 3, n, H, W), got {tuple(frames.shape)}")
        if tuple(frames.shape[-2:]) != (self.height, self.width):
            raise ValueError(f"frame size {frames.shape[-1]}x{frames.shape[-2]} differs from the stream's "
                             f"{self.width}x{self.height}")
        if self.prior_method is None and prior is not None:
            raise ValueError("this pipeline takes no prior (its config has no prior_method); push frames only")
        if self.prior_method is not None:
            if prior is None:
                raise ValueError(f"this pipeline refines {self.prior_method} output: push the prior's frames too")
            if tuple(prior.shape) != tuple(frames.shape):
                raise ValueError(f"prior frames {tuple(prior.shape)} differ from the frames {tuple(frames.shape)}")
        uint8 = frames.dtype == torch.uint8
        if self._uint8 is None:
            self._uint8 = uint8
        elif uint8 != self._uint8:
            raise ValueError(f"frames came as {'uint8' if self._uint8 else 'float'} before, now as {frames.dtype}")
        out = []
        for i in range(frames.shape[2]):
            self._pixels.append(self._keep(frames[:, :, i : i + 1]))
            self._prior_pixels.append(None if prior is None else self._keep(prior[:, :, i : i + 1]))
            self._prior.append(None)
            self._blur.append(None)
            self._noise.append(None)
            self._pushed += 1
            if len(self._pixels) == self.window:
                out += self._process(final=False)
        return out

    def flush(self) -> list[torch.Tensor]:
        if len(self._pixels) > self._held or (not self._processed_any and self._pixels):
            return self._process(final=True)
        if self._tail is not None and self._held:
            out = [self._emit(self._tail, self._pixels, self._blur, self._prior_pixels, self._prior)]
            self._reset_buffer(0)
            return out
        return []

    # ----------------------------------------------------------------------------------------- internals
    def _noise_for(self, index: int) -> torch.Tensor:
        pipe = self.pipe
        if self.latents is not None:
            return self.latents[:, :, index : index + 1].to(self.device)
        shape = (self.batch_size, pipe.unet.config.out_channels, 1, *self.latent_size)
        # drawn in float32 so the noise does not depend on the pipeline's dtype
        noise = randn_tensor(shape, generator=self.generator, device=self.device, dtype=torch.float32)
        return noise * pipe.scheduler.init_noise_sigma

    def _pad(self, pixels: torch.Tensor) -> torch.Tensor:
        return pad_to_multiple(pixels, self.pipe.spatial_multiple)[0]

    @staticmethod
    def _keep(frames: torch.Tensor) -> torch.Tensor:
        return frames if frames.dtype == torch.uint8 else frames.float()

    def _video(self, frames: list[torch.Tensor]) -> torch.Tensor:
        """Buffered frames -> one float32 `(B, 3, k, H, W)` tensor in [0, 1] on the pipeline's device."""
        x = torch.cat(frames, dim=2).to(self.device)
        return x.float().div(255.0) if x.dtype == torch.uint8 else x

    def _chunks(self, start: int, stop: int) -> list[tuple[int, int]]:
        """`[start, stop)` in runs of `decode_chunk_size` frames: what is converted, encoded or decoded at once."""
        step = self.decode_chunk_size or max(1, stop - start)
        return [(a, min(a + step, stop)) for a in range(start, stop, step)]

    def _encode(self, frames: list[torch.Tensor], start: int) -> list[torch.Tensor]:
        """VAE latents `(B, C, 1, h, w)` of `frames[start:]`, one chunk of frames at a time."""
        vae, out = self.pipe.vae, []
        for a, b in self._chunks(start, len(frames)):
            enc = encode_video_latents(vae, self._pad(self._video(frames[a:b])).to(vae.dtype),
                                       chunk_size=self.decode_chunk_size)
            out += [enc[:, :, j : j + 1] for j in range(b - a)]
        return out

    def _process(self, final: bool) -> list[torch.Tensor]:
        pipe = self.pipe
        dtype = pipe.unet.dtype
        n = len(self._pixels)
        # VAE latents of the frames not encoded yet (the held ones were encoded with the previous window)
        new = [i for i in range(n) if self._blur[i] is None]
        if new:
            self._blur[new[0]:] = self._encode(self._pixels, new[0])
            if self.prior_method is not None:
                self._prior[new[0]:] = self._encode(self._prior_pixels, new[0])
        for i in range(n):
            if self._noise[i] is None:
                self._noise[i] = self._noise_for(self._start + i)
        blur = torch.cat(self._blur, dim=2).to(dtype)
        prior = None if self.prior_method is None else torch.cat(self._prior, dim=2).to(dtype)
        latents = torch.cat(self._noise, dim=2).to(dtype)
        # only the conditioning frames are converted (the encoder picks the same ones from them)
        picked = select_condition_frames(n, pipe.blur_encoder.config.num_cond_frames)
        cond = self._video([self._pixels[i] for i in picked])
        tokens = pipe.blur_encoder(cond.to(pipe.blur_encoder.dtype))
        keep = 0 if final else self.overlap
        pipe._current_window = range(self._start, self._start + n)
        try:
            latents, predictions = pipe.denoise(
                latents, blur, tokens, num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                prior_latents=prior,
                extra_step_kwargs=self.extra_step_kwargs,
                prev_predictions=self._predictions if self._held else None, record_last=keep,
                tile=self.tile, tile_overlap=self.tile_overlap, progress_bar=self.progress_bar,
                callback_on_step_end=self.callback, callback_on_step_end_tensor_inputs=self.callback_inputs,
            )
        finally:
            pipe._current_window = None
        self._processed_any = True
        ready = n - keep
        out = [self._emit(latents[:, :, :ready], self._pixels[:ready], self._blur[:ready], self._prior_pixels[:ready],
                          self._prior[:ready])] if ready else []
        self._predictions = predictions if keep else None
        self._tail = latents[:, :, ready:] if keep else None
        self._reset_buffer(keep)
        return out

    def _reset_buffer(self, keep: int) -> None:
        drop = len(self._pixels) - keep
        self._pixels, self._blur, self._noise = self._pixels[drop:], self._blur[drop:], self._noise[drop:]
        self._prior_pixels, self._prior = self._prior_pixels[drop:], self._prior[drop:]
        self._start += drop
        self._held = keep
        if not keep:
            self._predictions, self._tail = None, None

    def _emit(self, latents: torch.Tensor, pixels: list[torch.Tensor], blur: list[torch.Tensor],
              prior_pixels: list, prior: list) -> torch.Tensor:
        """Final latents of the first frames of the buffer -> output frames; `pixels` / `blur` are those frames'
        blurry input and its latents, `prior_pixels` / `prior` the prior's. The base of `residual_latents` and
        `residual_decode` is the prior when the pipeline has one, else the blurry input."""
        base_pixels, base = (prior_pixels, prior) if self.prior_method is not None else (pixels, blur)
        base_latents = torch.cat(base, dim=2).to(latents.device) if base else None
        if self.residual_scale is not None:
            latents = latents / self.residual_scale + base_latents.to(latents.dtype)
        if self.output_latents:
            return latents
        vae, size, pieces = self.pipe.vae, (self.height, self.width), []
        for a, b in self._chunks(0, latents.shape[2]):  # a chunk of frames at a time: 4K frames are large
            video = crop_to(decode_video_latents(vae, latents[:, :, a:b].to(vae.dtype),
                                                 chunk_size=self.decode_chunk_size), size)
            if self.residual_decode:
                base_rec = crop_to(decode_video_latents(vae, base_latents[:, :, a:b].to(vae.dtype),
                                                        chunk_size=self.decode_chunk_size), size)
                base_video = self._video(base_pixels[a:b]).to(video.device, video.dtype)
                video = (base_video + video - base_rec.to(video.dtype)).clamp(0, 1)
            if self.color_fix is not None:
                inputs = self._video(pixels[a:b]).to(video.device, video.dtype)
                video = apply_color_fix(video, inputs, self.color_fix).clamp(0, 1)
            if self._uint8:  # NaN must not reach the rounding, which would make it black
                video = to_uint8(check_finite(video, self.name))
            pieces.append(video)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
