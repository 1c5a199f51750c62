"""The fit itself: :class:`FitToTestDeblurrer` fits a FitUNet to a video's sharp frames (Adam on blurred
patches, then the per-frame strength calibration) and deblurs every frame."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ...blur import LengthSampler
from ...devices import resolve_device, resolve_precision
from ...frames import NonFiniteOutputError, as_frames_tensor, check_finite, to_uint8_frames
from ...losses import critic_loss, generator_adversarial_loss, patch_sharpness, reweight
from ...sharpness import laplacian_variance
from ...tiles import resolve_tile
from .blur_lengths import LENGTH_GRID, blur_length_curve, estimate_noise_sigma, lengths_from_scores
from .config import LEARNING_RATE, FitConfig
from .initialisation import load_init, maml_adaptation
from .patches import sample_patches
from .scan import VideoScan, iter_video_frames, scan_video
from .threads import cpu_threads
from .tiles import tiled_residual

logger = logging.getLogger(__name__)


def warmed_up_ema(decay: float):
    """``multi_avg_fn`` for :class:`torch.optim.swa_utils.AveragedModel`: torch's EMA update with the decay warmed
    up as in diffusers' ``EMAModel``, min(decay, (1 + n) / (10 + n)) at the n-th update (the first copies), so
    that early iterates are not held for long."""

    def update(averaged, current, num_averaged) -> None:
        n = float(num_averaged) + 1.0  # one read per step and parameter group
        get_ema_multi_avg_fn(min(decay, n / (n + 9.0)))(averaged, current, num_averaged)

    return update


_DIVERGED = "its initialisation may be corrupt, or the fit diverged (try a lower learning rate)"


class FitToTestDeblurrer:
    """Fit a FitUNet to a video's sharp frames, then deblur every frame.

    >>> deblurrer = FitToTestDeblurrer(init="maml")
    >>> result = deblurrer.fit(frames).deblur(frames)  # uint8 (F, H, W, 3) in and out

    ``init``: "maml", "random", a FitUNet folder or a FitUNet; ``vgg_weights``: a local VGG-19 file for the
    perceptual loss (without one, the documented pixel-loss fallback is used). ``learning_rate`` is the peak
    rate the fit uses: ``config.learning_rate``, or by default the one for this kind of start (LEARNING_RATE).
    """

    def __init__(self, init="maml", config: FitConfig | None = None, vgg_weights=None, device="auto",
                 progress: bool = True):
        from ...models.perceptual import PerceptualLoss

        self.config = config or FitConfig()
        self.device = resolve_device(device)
        self.unet = load_init(init, self.config.seed).to(self.device)
        self.adaptation = maml_adaptation(init)  # (alpha, inner steps) of a MAML initialisation, else None
        self.learning_rate = (self.config.learning_rate if self.config.learning_rate is not None else
                              LEARNING_RATE["random" if str(init) == "random" else "learned"])
        self.loss_fn = PerceptualLoss(vgg_weights, gradient_weight=self.config.gradient_weight).to(self.device)
        self.progress = progress
        self.name = f"the fit network (init {init})" if isinstance(init, (str, Path)) else "the fit network"
        self.critic = None
        self.history: list[tuple[int, float]] = []  # (step, training loss)
        self.references: list[np.ndarray] = []  # the selected sharp frames, uint8
        self.reference_indices: list[int] = []
        self.curves: list[np.ndarray] = []  # blur_length_curve of each reference
        self.noise_sigma = 0.0
        self.strength_table: tuple[np.ndarray, np.ndarray] | None = None  # (lengths, share of the change)
        self.max_length = 30.0  # longest training kernel, set by fit()
        self.ema = None  # the moving average of the iterates while train() runs (cfg.ema_decay)

    # ------------------------------------------------------------------ helpers
    @property
    def _bf16(self) -> bool:
        name = {"bf16": "bfloat16", "no": "float32"}.get(self.config.mixed_precision, "auto")
        return resolve_precision(name, self.device, "fit") == "bfloat16"

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16)

    def _inference_autocast(self):
        """The deblurring pass: float32 on the CPU (as the fit's strength calibration measured it), the training
        precision on GPUs, where float32 would be the slow path."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16 and self.device.type != "cpu")

    def frame_lengths(self, scores, indices=None) -> np.ndarray:
        """Estimated blur length (px) of frames with M_VL ``scores`` at positions ``indices`` of the video."""
        if not self.curves:
            raise RuntimeError("fit() first: blur lengths are measured against the fitted video's sharp frames")
        scores = np.asarray(scores, dtype=np.float64)
        indices = np.arange(len(scores)) if indices is None else np.asarray(indices)
        ref = np.abs(indices[:, None] - np.asarray(self.reference_indices)[None]).argmin(1)
        return np.array([float(lengths_from_scores(s, self.curves[r])) for s, r in zip(scores, ref)])

    def strengths(self, lengths) -> np.ndarray:
        """Share of the predicted change applied to frames blurred by ``lengths`` px (0 below ``min_blur``)."""
        lengths = np.asarray(lengths, dtype=np.float64)
        if self.strength_table is None:
            return np.where(lengths >= self.config.min_blur, 1.0, 0.0)
        grid, share = self.strength_table
        return np.where(lengths >= self.config.min_blur, np.interp(lengths, grid, share), 0.0)

    @property
    def averaged_unet(self):
        """The network the fit would end on if it stopped now (the moving average of its iterates; for a
        ``callback`` that measures the fit as it goes); without a running average, ``self.unet`` itself."""
        return self.ema.module if self.ema is not None else self.unet

    # ------------------------------------------------------------------ fitting
    def fit(self, video, callback=None) -> "FitToTestDeblurrer":
        """Fit to a video: a path, uint8 frames (F, H, W, 3), a Video, or a :class:`VideoScan` of one.

        ``callback(step, deblurrer)`` is called after every step (e.g. to record PSNR against step).
        """
        cfg = self.config
        scan = video if isinstance(video, VideoScan) else scan_video(video, cfg.every, progress=self.progress)
        self.references, self.reference_indices = list(scan.sharp_frames), list(scan.sharp_indices)
        self.noise_sigma = (cfg.noise_sigma if cfg.noise_sigma is not None
                            else float(np.median([estimate_noise_sigma(f) for f in self.references])))
        self.curves = [blur_length_curve(f, noise_sigma=self.noise_sigma, inverse_gamma=cfg.inverse_gamma,
                                         seed=cfg.seed) for f in self.references]
        lengths = self.frame_lengths(scan.scores)
        max_length = cfg.max_length or max(cfg.min_length, cfg.length_jitter[1] * float(lengths.max()))
        logger.info("fit: %d frames, references %s, noise %.4f, estimated blur %.1f-%.1f px, kernels up to %.1f px",
                    scan.num_frames, self.reference_indices, self.noise_sigma, lengths.min(), lengths.max(), max_length)
        self.max_length = max_length
        sampler = LengthSampler(max_length, lengths, cfg.zero_fraction, cfg.length_jitter)
        frames = [as_frames_tensor(f, device=self.device)[0] for f in self.references]
        with cpu_threads(cfg.num_threads if self.device.type == "cpu" else None):
            self.train(frames, sampler, cfg.steps, callback=callback)
            self.calibrate(frames)
        return self

    def train(self, frames: list[torch.Tensor], lengths, steps: int, callback=None) -> None:
        """``steps`` optimisation steps on patches of ``frames`` (3, H, W) blurred with ``lengths(rng)`` px."""
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        net = self.unet.to(memory_format=torch.channels_last).train()
        opt = torch.optim.Adam(net.parameters(), lr=self.learning_rate)
        warm = max(1, int(cfg.warmup * steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: min(1.0, (i + 1) / warm) * (0.5 * (1 + math.cos(math.pi * min(i, steps) / max(steps, 1)))
                                                       if cfg.lr_schedule == "cosine" else 1.0))
        norm = float(np.mean([float(laplacian_variance(f[None])[0]) for f in frames])) or 1.0
        adapt_lr, adapt_steps = self.adaptation if self.adaptation else (0.0, 0)
        if cfg.adaptation_steps is not None:
            adapt_steps = cfg.adaptation_steps if self.adaptation else 0
        if cfg.critic and self.critic is None:
            from ...models.discriminator import PatchCritic

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 1)
                self.critic = PatchCritic().to(self.device)
        copt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, betas=(0.5, 0.9)) if cfg.critic else None
        # unlike the iterate, the average does not swing while the rate is high (torch's: diffusers' loads transformers)
        self.ema = AveragedModel(net, multi_avg_fn=warmed_up_ema(cfg.ema_decay)) if cfg.ema_decay and steps else None
        bar = tqdm(range(1, steps + 1), desc="fit", unit="step", disable=not self.progress or steps == 0)
        for step in bar:
            batch = sample_patches(frames, cfg.batch_size, cfg.patch_size, rng, lengths=lengths, kind=cfg.kernel,
                                   inverse_gamma=cfg.inverse_gamma, noise_sigma=self.noise_sigma,
                                   max_length=self.max_length, generator=gen)
            x = batch.blurry.to(self.device).contiguous(memory_format=torch.channels_last)
            y = batch.sharp.to(self.device)
            with self._autocast():
                out = net(x)
            out = out.float()
            per = self.loss_fn.per_sample(out, y)
            loss = reweight(per, patch_sharpness(y), norm) if cfg.reweight else per.mean()
            if self.critic is not None:
                loss = loss + cfg.critic_weight * generator_adversarial_loss(self.critic, out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
            if step <= adapt_steps:  # the MAML inner update the initialisation was meta-trained for
                with torch.no_grad():
                    for p in net.parameters():
                        if p.grad is not None:
                            p.sub_(adapt_lr * p.grad)
            else:
                opt.step()
            with warnings.catch_warnings():  # the schedule counts the inner step too, which is not opt.step()
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                sched.step()
            if self.critic is not None:
                closs = critic_loss(self.critic, y, out.detach(), cfg.gp_weight, generator=gen)
                copt.zero_grad(set_to_none=True)
                closs.backward()
                copt.step()
            if self.ema is not None:
                self.ema.update_parameters(net)
            self.history.append((len(self.history) + 1, float(loss.detach())))
            if not math.isfinite(self.history[-1][1]):  # stop at once: every later step would be NaN too
                raise NonFiniteOutputError(f"{self.name} produced non-finite values (NaN/inf) at step {step} of "
                                           f"the fit; {_DIVERGED}")
            if step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if callback is not None:
                callback(step, self)
        if self.ema is not None:
            net.load_state_dict(self.ema.module.state_dict())
            self.ema = None
        net.eval()

    @torch.no_grad()
    def calibrate(self, frames: list[torch.Tensor], lengths=None) -> tuple[np.ndarray, np.ndarray]:
        """Measure, per blur length, the share of the predicted change that best restores held-out synthetic
        pairs from the training frames (least squares, clipped to [0, 1])."""
        cfg = self.config
        top = self.max_length
        grid = np.asarray(lengths if lengths is not None else [l for l in LENGTH_GRID if 0 < l <= top * 1.15] or [top])
        rng = np.random.default_rng(cfg.seed + 7919)  # draws apart from the training ones
        gen = torch.Generator().manual_seed(cfg.seed + 7919)
        share = []
        for length in grid:
            batch = sample_patches(frames, cfg.calibration_patches, min(cfg.patch_size, 128), rng,
                                   lengths=lambda r, l=float(length): l, kind="symmetric",
                                   inverse_gamma=cfg.inverse_gamma, noise_sigma=self.noise_sigma,
                                   max_length=top, generator=gen)
            x, y = batch.blurry.to(self.device), batch.sharp.to(self.device)
            r = check_finite(self.unet.residual(x).float(), self.name, _DIVERGED)
            den = float((r * r).sum())
            share.append(float(np.clip(float((r * (y - x)).sum()) / den, 0.0, cfg.max_strength)) if den > 0 else 0.0)
        self.strength_table = (grid.astype(np.float64), np.asarray(share))
        logger.info("fit: share of the change by blur length %s",
                    ", ".join(f"{l:g}px {s:.2f}" for l, s in zip(*self.strength_table)))
        return self.strength_table

    # ------------------------------------------------------------------ deblurring
    @torch.no_grad()
    def deblur_tensor(self, x: torch.Tensor, strengths) -> torch.Tensor:
        """Frames (N, 3, H, W) in [0, 1] -> deblurred frames; each gets its share of the predicted change."""
        s = torch.as_tensor(np.asarray(strengths, dtype=np.float32)).view(-1, 1, 1, 1).to(x)
        out = x.clone()
        todo = (s.view(-1) > 0).nonzero().view(-1)
        if len(todo):
            self.unet.eval()
            tile = resolve_tile(self.config.tile_size, *x.shape[-2:])
            with cpu_threads(self.config.num_threads if self.device.type == "cpu" else None), \
                    self._inference_autocast():
                r = tiled_residual(self.unet, x[todo].to(self.device), tile)
            r = check_finite(r.float(), self.name, _DIVERGED).to(x)
            out[todo] = (x[todo] + s[todo] * r).clamp(0, 1)
        return out

    def deblur_frames(self, frames: np.ndarray, indices=None) -> np.ndarray:
        """uint8 (N, H, W, 3) frames (at ``indices`` of the fitted video) -> uint8 deblurred frames.

        Frames whose share is zero are returned unchanged, bit for bit.
        """
        frames = np.asarray(frames)
        scores = laplacian_variance(frames).numpy()
        st = self.strengths(self.frame_lengths(scores, indices))
        out = to_uint8_frames(self.deblur_tensor(as_frames_tensor(frames), st))
        out[st <= 0] = frames[st <= 0]
        return out

    def deblur(self, video, batch_size: int = 4) -> np.ndarray:
        """Deblur every frame of a path / uint8 (F, H, W, 3) array / Video; returns uint8 (F, H, W, 3)."""
        frames = iter_video_frames(video)
        out, buf, idx = [], [], []
        for i, f in enumerate(tqdm(frames, desc="deblur (fit)", unit="frame", disable=not self.progress)):
            buf.append(f), idx.append(i)
            if len(buf) == batch_size:
                out.append(self.deblur_frames(np.stack(buf), idx))
                buf, idx = [], []
        if buf:
            out.append(self.deblur_frames(np.stack(buf), idx))
        return np.concatenate(out)

    def postprocess(self, result, batch_size: int = 4) -> np.ndarray:
        """Paper section IV-E: refine another method's result by fitting to it and deblurring it."""
        return self.fit(result).deblur(result, batch_size=batch_size)
