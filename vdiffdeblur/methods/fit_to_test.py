"""Deblurring by fitting to test data (Ren, Qian & Chen; ``shared/papers/fit_to_test_data.md``).

No training set: a small U-Net (:class:`~vdiffdeblur.models.fit_unet.FitUNet`) is fitted to the sharp frames
of the very video it then deblurs.

1. Frame selection: the sharpest frame (highest variance of the Laplacian, M_VL) in every 20 frames.
2. Blur generation: random patches of those frames (no flips or rotations; ``patch_size`` capped by the
   frame size) blurred on the fly by random motion kernels in linear light (inverse gamma, blur, gamma),
   plus the video's own sensor-noise level.
3. Loss: the perceptual loss (eq. 2; a pixel loss without VGG weights), optionally re-weighted by the
   patch's M_VL / N (eq. 3), optionally plus a WGAN-GP PatchGAN critic.
4. Every frame is then deblurred, in small batches, streaming for long videos.

Defaults were chosen on one camera-shake clip (docs/fit.md): 96 px patches x 8 rather than the paper's
256 px (same pixels per step, +0.3 dB there), re-weighting and critic off (no gain there; on another clip both
were within 0.1 dB of the default, the critic at 3.7x the time), 1000 Adam steps at 3e-4 from the shipped MAML
initialisation (6e-4 from a random one: a learned starting point is lost to large first steps).

Two additions make the fit safe on a video whose frames are not all blurred (measured on this project's
clips, a fitted U-Net otherwise invents contrast on sharp frames):

- *kernel lengths matched to the video*: each frame's blur length is estimated by comparing its M_VL with
  the M_VL of its reference sharp frame blurred by known kernels (:func:`blur_length_curve`); the
  training kernels follow the lengths actually present, with a share of near-zero lengths, so the network
  learns to leave sharp input alone;
- *per-frame strength*: after fitting, the best share of the predicted change is measured as a function of
  blur length on held-out synthetic pairs, and each frame gets the share that matches its estimated blur
  (zero for frames estimated sharp: those come out unchanged, bit for bit).

Options that are the paper's ablations: ``kernel`` (symmetric / asymmetric / simulated), ``reweight``,
``inverse_gamma``, ``critic``. Post-processing (paper section IV-E): :meth:`FitToTestDeblurrer.postprocess`
takes another method's result as its input video.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..blur import linear_motion_kernel, linear_to_srgb, random_trajectory_kernel, srgb_to_linear
from ..devices import resolve_device as _resolve_device
from ..frames import NonFiniteOutputError, as_frames_tensor, check_finite, to_uint8_frames
from ..losses import critic_loss, generator_adversarial_loss, patch_sharpness, reweight
from ..model_folders import require_kind
from ..sharpness import laplacian_variance
from ..video import iter_frames

logger = logging.getLogger(__name__)

KERNEL_TYPES = ("symmetric", "asymmetric", "simulated")
SHIPPED_INIT = Path(__file__).resolve().parent.parent / "checkpoints" / "fit_maml"
#: Adam's peak learning rate by starting point (FitConfig.learning_rate=None). Measured (docs/fit.md): from the
#: MAML init, 6e-4 undoes part of what it knows in the first steps (3e-4 is 0.03-0.5 dB ahead at step 100 on
#: four clips); from a random init, 3e-4 is too slow (0.2-0.5 dB lower after 1000 steps).
LEARNING_RATE = {"random": 6e-4, "learned": 3e-4}

#: blur lengths (px) at which a frame's sharpness is calibrated
LENGTH_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.5, 7.5, 10.0, 13.0, 17.0, 22.0, 28.0, 36.0, 46.0)


@dataclass
class FitConfig:
    """Settings of one fit. Defaults are what the CLI uses (``--steps`` overrides ``steps``)."""

    steps: int = 1000
    batch_size: int = 8
    patch_size: int = 96  # capped by the frame size (paper: 256; see docs/fit.md for why 96 x 8 by default)
    learning_rate: float | None = None  # Adam's peak rate; None: 3e-4 from a learned init, 6e-4 from a random one
    every: int = 20  # one training frame per run of this many frames (paper: 20)
    kernel: str = "symmetric"  # symmetric | asymmetric | simulated (paper ablation)
    reweight: bool = False  # eq. 3 (paper ablation; off by default: no better on the measured clips, docs/fit.md)
    inverse_gamma: bool = True  # blur in linear light (paper ablation)
    gradient_weight: float = 1.0  # weight of the image-gradient term of the pixel loss (no VGG weights)
    critic: bool = False  # WGAN-GP PatchGAN critic (paper ablation; off by default: no better, 3.7x slower, docs)
    critic_weight: float = 1e-3
    critic_lr: float = 1e-4
    gp_weight: float = 10.0
    zero_fraction: float = 0.25  # share of training kernels of near-zero length (0..1 px)
    length_jitter: tuple[float, float] = (0.7, 1.3)  # observed blur lengths are scaled by a factor in this range
    max_length: float | None = None  # longest training kernel; None: matched to the video
    min_length: float = 3.0  # the longest kernel is never shorter than this
    noise_sigma: float | None = None  # sensor noise added to blurred patches; None: estimated from the video
    min_blur: float = 1.0  # frames estimated blurred by less than this many px are left unchanged
    calibration_patches: int = 8  # held-out patches per blur length when measuring the per-frame strength
    max_strength: float = 1.0  # the largest share of the predicted change a frame can get
    lr_schedule: str = "cosine"  # "cosine" (decay to zero over the fit) or "constant", after a linear warm-up
    warmup: float = 0.05  # share of the steps spent warming the learning rate up
    max_grad_norm: float | None = 1.0  # gradient clipping (None: off)
    ema_decay: float | None = 0.95  # the fit ends on an exponential moving average of its iterates (decay warmed
    # up as in diffusers' EMAModel, see warmed_up_ema); None: on the last iterate. See docs/fit.md
    adaptation_steps: int | None = None  # MAML inner-update steps first (None: as meta-trained; MAML inits only)
    mixed_precision: str = "auto"  # "bf16", "no", or "auto" (bf16 on CPU)
    num_threads: int | str | None = "auto"  # CPU threads while fitting/deblurring: a number, None (torch's
    # setting) or "auto" (the cores not already busy with other work, at least one; see cpu_threads)
    seed: int = 0

    def __post_init__(self):
        if self.kernel not in KERNEL_TYPES:
            raise ValueError(f"kernel must be one of {', '.join(KERNEL_TYPES)}, got {self.kernel!r}")
        if self.steps < 0 or self.batch_size < 1 or self.patch_size < 8 or self.every < 1:
            raise ValueError(f"need steps >= 0, batch_size >= 1, patch_size >= 8 and every >= 1, got steps="
                             f"{self.steps}, batch_size={self.batch_size}, patch_size={self.patch_size}, "
                             f"every={self.every}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be cosine or constant, got {self.lr_schedule!r}")
        if self.mixed_precision not in ("auto", "bf16", "no"):
            raise ValueError(f"mixed_precision must be auto, bf16 or no, got {self.mixed_precision!r}")


# ============================================================================ scanning a video
@dataclass
class VideoScan:
    """What one sequential pass over a video keeps: every frame's M_VL and the selected sharp frames."""

    scores: np.ndarray  # (F,) M_VL of every frame
    sharp_indices: list[int]  # indices of the selected frames
    sharp_frames: list[np.ndarray]  # uint8 (H, W, 3) frames, in the order of sharp_indices

    @property
    def num_frames(self) -> int:
        return len(self.scores)


def scan_video(source, every: int = 20, progress: bool = False) -> VideoScan:
    """One forward pass over a path / frame array: M_VL of each frame, keeping only the sharpest of every
    ``every`` frames in memory (paper III-B.1)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    frames = iter_frames(source) if isinstance(source, (str, Path)) else _frame_iter(source)
    scores, idx, keep = [], [], []
    best = (-1.0, -1, None)
    for i, f in enumerate(tqdm(frames, desc="scan frames", unit="frame", disable=not progress)):
        s = float(laplacian_variance(f)[0])
        scores.append(s)
        if s > best[0]:
            best = (s, i, f)
        if (i + 1) % every == 0:
            idx.append(best[1]), keep.append(best[2])
            best = (-1.0, -1, None)
    if best[2] is not None:
        idx.append(best[1]), keep.append(best[2])
    if not scores:
        raise ValueError("the video holds no frames")
    return VideoScan(np.asarray(scores), idx, keep)


def _frame_iter(frames):
    if hasattr(frames, "frames") and not isinstance(frames, (np.ndarray, torch.Tensor)):
        frames = frames.frames
    if isinstance(frames, torch.Tensor) and frames.dtype != torch.uint8:
        frames = to_uint8_frames(as_frames_tensor(frames))
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (F, H, W, 3), got {frames.dtype} {frames.shape}")
    return iter(frames)


# ============================================================================ kernels
def make_kernel(kind: str, length: float, angle: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """One blur kernel of the given type: the paper's symmetric line, a line starting at the centre, or a
    random camera-shake trajectory ("simulated", Kupyn et al.) of the same path length."""
    if kind == "symmetric":
        return linear_motion_kernel(length, angle, size=size, symmetric=True)
    if kind == "asymmetric":
        return linear_motion_kernel(length, angle, size=size, symmetric=False)
    if kind == "simulated":
        if length < 1:
            return linear_motion_kernel(length, angle, size=size, symmetric=True)
        return random_trajectory_kernel(size=size, length=length, generator=rng)
    raise ValueError(f"unknown kernel type {kind!r}; choose from {', '.join(KERNEL_TYPES)}")


def kernel_size_for(max_length: float, kind: str) -> int:
    reach = max_length if kind == "asymmetric" else max_length / 2
    return int(2 * math.ceil(reach) + 3) | 1


class LengthSampler:
    """Draws training kernel lengths: ``zero_fraction`` near zero (0..1 px); of the rest, two thirds copy the
    blur of a frame of the video (its estimated length scaled by a random factor in ``jitter``) and one
    third are uniform up to ``max_length``."""

    def __init__(self, max_length: float, observed=(), zero_fraction: float = 0.25, jitter=(0.7, 1.3)):
        self.max_length = float(max_length)
        self.observed = np.asarray([l for l in observed if l >= 1.0], dtype=np.float64)
        self.zero_fraction = zero_fraction
        self.jitter = tuple(jitter)

    def __call__(self, rng: np.random.Generator) -> float:
        if rng.random() < self.zero_fraction:
            return float(rng.uniform(0.0, 1.0))
        if len(self.observed) and rng.random() < 2 / 3:
            return float(min(self.max_length, rng.choice(self.observed) * rng.uniform(*self.jitter)))
        return float(rng.uniform(1.0, self.max_length))


# ============================================================================ training patches
@dataclass
class PatchBatch:
    blurry: torch.Tensor  # (N, 3, P, P) network input
    sharp: torch.Tensor  # (N, 3, P, P) ground truth
    frame_ids: list[int]  # which training frame each patch comes from (index into the list given)
    positions: list[tuple[int, int]]  # (y, x) of each patch's top-left corner in its frame
    lengths: list[float] = field(default_factory=list)


def cut_patches(frames: list[torch.Tensor], n: int, patch_size: int, margin: int, rng: np.random.Generator):
    """``n`` random ``patch_size`` crops of the frames (3, H, W) with ``margin`` extra pixels all round (taken
    from the frame where it exists, reflected where it does not). Patches are capped by the smallest frame.

    Returns (crops (n, 3, P + 2m, P + 2m), frame index of each, (y, x) of each patch's top-left corner).
    """
    if not frames:
        raise ValueError("no training frames")
    p = min(patch_size, min(f.shape[-2] for f in frames), min(f.shape[-1] for f in frames))
    m = margin
    crops, ids, pos = [], [], []
    for _ in range(n):
        i = int(rng.integers(len(frames)))
        f = frames[i]
        fh, fw = f.shape[-2:]
        y, x = int(rng.integers(0, fh - p + 1)), int(rng.integers(0, fw - p + 1))
        crop = f[:, max(0, y - m): y + p + m, max(0, x - m): x + p + m]
        pads = (m - (x - max(0, x - m)), m - (min(fw, x + p + m) - x - p), m - (y - max(0, y - m)),
                m - (min(fh, y + p + m) - y - p))
        if any(pads):
            mode = "reflect" if max(pads) < min(crop.shape[-2:]) else "replicate"
            crop = torch.nn.functional.pad(crop[None], pads, mode=mode)[0]
        crops.append(crop), ids.append(i), pos.append((y, x))
    return torch.stack(crops), ids, pos


def random_kernels(lengths: list[float], kind: str, rng: np.random.Generator) -> np.ndarray:
    """One kernel per length, each at a random angle, all on one grid just large enough: (n, k, k)."""
    size = kernel_size_for(max(lengths), kind)
    return np.stack([make_kernel(kind, l, float(rng.uniform(0, 180)), size, rng) for l in lengths])


def blur_crops(crops: torch.Tensor, kernels: np.ndarray, margin: int, inverse_gamma: bool = True,
               noise_sigma: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Blur each crop (n, 3, P + 2m, P + 2m) by its kernel (n, k, k), k <= 2m + 1, and keep the centre P x P.

    A true convolution done by FFT (the circular wrap stays in the discarded margin), in linear light with
    ``inverse_gamma``; then Gaussian noise of ``noise_sigma`` and rounding to 8-bit levels, like a video.
    """
    n, _, hh, ww = crops.shape
    k = kernels.shape[-1]
    if k > 2 * margin + 1:
        raise ValueError(f"a {k}x{k} kernel needs a margin of {k // 2} px, got {margin}")
    x = srgb_to_linear(crops) if inverse_gamma else crops
    kk = torch.zeros(n, hh, ww, dtype=x.dtype, device=x.device)
    kk[:, :k, :k] = torch.as_tensor(kernels, dtype=x.dtype)
    kk = torch.roll(kk, shifts=(-(k // 2), -(k // 2)), dims=(1, 2))
    y = torch.fft.irfft2(torch.fft.rfft2(x) * torch.fft.rfft2(kk)[:, None], s=(hh, ww))
    y = y[:, :, margin:hh - margin, margin:ww - margin].clamp(0, 1)
    y = linear_to_srgb(y) if inverse_gamma else y
    if noise_sigma > 0:
        y = y + torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device) * noise_sigma
    return (y.clamp(0, 1) * 255).round() / 255


def sample_patches(frames: list[torch.Tensor], n: int, patch_size: int, rng: np.random.Generator,
                   lengths=None, kind: str = "symmetric", inverse_gamma: bool = True, noise_sigma: float = 0.0,
                   max_length: float = 30.0, generator: torch.Generator | None = None) -> PatchBatch:
    """``n`` random patches of the training frames (3, H, W) in [0, 1], each blurred by its own random kernel
    (:func:`cut_patches`, :func:`random_kernels`, :func:`blur_crops`).

    ``lengths``: a callable ``rng -> length`` (capped at ``max_length``) or None (uniform in 0..max_length).
    """
    lens = [min(float(lengths(rng)) if lengths is not None else float(rng.uniform(0, max_length)), max_length)
            for _ in range(n)]
    kernels = random_kernels(lens, kind, rng)
    m = kernels.shape[-1] // 2
    crops, ids, pos = cut_patches(frames, n, patch_size, m, rng)
    blurry = blur_crops(crops, kernels, m, inverse_gamma, noise_sigma, generator)
    sharp = crops[:, :, m:crops.shape[-2] - m, m:crops.shape[-1] - m]
    return PatchBatch(blurry=blurry, sharp=sharp, frame_ids=ids, positions=pos, lengths=lens)


# ============================================================================ blur length of each frame
def estimate_noise_sigma(frame: np.ndarray, block: int = 8, quantile: float = 0.1) -> float:
    """Sensor-noise standard deviation of a uint8 frame on the 0..1 scale.

    Immerkaer's mask (1996) cancels smooth image content; texture still leaks through it, so the estimate
    is taken in the flattest blocks: the ``quantile`` of per-block estimates (median over channels).
    """
    x = as_frames_tensor(frame)[0]  # (3, H, W)
    if min(x.shape[-2:]) < 3:  # the 3x3 mask needs 3 px: edge-pad tiny frames (flat padding adds no noise)
        x = torch.nn.functional.pad(x[None], (0, max(0, 3 - x.shape[-1]), 0, max(0, 3 - x.shape[-2])),
                                    mode="replicate")[0]
    mask = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    r = torch.nn.functional.conv2d(x[:, None], mask[None, None]).abs()  # (3, 1, H-2, W-2)
    if min(r.shape[-2:]) >= block:
        r = torch.nn.functional.avg_pool2d(r, block)
    per_block = math.sqrt(math.pi / 2) / 6 * r.flatten(1)
    return float(torch.quantile(per_block, quantile, dim=1).median())


def blur_length_curve(frame: np.ndarray, lengths=LENGTH_GRID, angles=(0, 45, 90, 135), noise_sigma: float = 0.0,
                      inverse_gamma: bool = True, max_side: int = 384, seed: int = 0) -> np.ndarray:
    """M_VL of a sharp frame blurred by symmetric linear kernels of each length (mean over ``angles``).

    It decreases with length and calibrates a frame's M_VL against the blur of the same content. Large
    frames are measured on a central crop of at most ``max_side`` px.
    """
    x = as_frames_tensor(frame)
    h, w = x.shape[-2:]
    ch, cw = min(h, max_side), min(w, max_side)
    x = x[..., (h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
    g = torch.Generator().manual_seed(seed)
    lin = srgb_to_linear(x) if inverse_gamma else x
    size = kernel_size_for(max(lengths), "symmetric")
    pad = size // 2
    xp = torch.nn.functional.pad(lin, (pad, pad, pad, pad), mode="reflect" if pad < min(ch, cw) else "replicate")
    xf = torch.fft.rfft2(xp)
    out = []
    for length in lengths:
        vals = []
        for a in angles:
            b = _fft_blur(xf, xp.shape[-2:], linear_motion_kernel(length, a, size=size), pad)
            b = linear_to_srgb(b) if inverse_gamma else b
            if noise_sigma > 0:
                b = b + torch.randn(b.shape, generator=g) * noise_sigma
            vals.append(float(laplacian_variance((b.clamp(0, 1) * 255).round() / 255)[0]))
        out.append(np.mean(vals))
    return np.minimum.accumulate(np.asarray(out))  # monotone: more blur never reads sharper


def _fft_blur(xf: torch.Tensor, shape, kernel: np.ndarray, pad: int) -> torch.Tensor:
    """Circular convolution of a padded image (given by its rfft2) with a centred kernel, cropped back."""
    k = torch.zeros(shape)
    s = kernel.shape[0]
    k[:s, :s] = torch.from_numpy(kernel)
    k = torch.roll(k, shifts=(-(s // 2), -(s // 2)), dims=(0, 1))
    y = torch.fft.irfft2(xf * torch.fft.rfft2(k), s=tuple(shape))
    return y[..., pad:shape[0] - pad, pad:shape[1] - pad]


def lengths_from_scores(scores, curve, lengths=LENGTH_GRID) -> np.ndarray:
    """Invert :func:`blur_length_curve`: the blur length whose M_VL matches each score (0 if sharper)."""
    c = np.asarray(curve, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    # np.interp wants increasing x: walk the curve from the most blurred end
    return np.interp(s, c[::-1], np.asarray(lengths, dtype=np.float64)[::-1])


def nearest_reference(num_frames: int, sharp_indices: list[int]) -> np.ndarray:
    """For each frame, the position (in ``sharp_indices``) of the nearest selected frame."""
    ref = np.asarray(sharp_indices)
    return np.abs(np.arange(num_frames)[:, None] - ref[None]).argmin(1)


# ============================================================================ the network to start from
DEFAULT_ARCH = dict(base_channels=32, levels=4, convs_per_block=2, unshuffle=2, max_channels=128)


def load_init(init="maml", seed: int = 0):
    """The FitUNet a fit starts from: ``"maml"`` (the shipped meta-learned initialisation), ``"random"``
    (a seeded fresh network of the same layout) or a folder saved with ``save_pretrained``."""
    from ..models.fit_unet import FitUNet

    if isinstance(init, FitUNet):
        return init
    name = str(init)
    if name == "random":
        arch = dict(DEFAULT_ARCH)
        if (SHIPPED_INIT / "config.json").is_file():
            arch = {k: v for k, v in FitUNet.load_config(SHIPPED_INIT).items() if not k.startswith("_")}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return FitUNet(**arch)
    path = SHIPPED_INIT if name == "maml" else Path(name)
    require_kind(path, "FitUNet", "a fit initialisation folder")
    if not (path / "config.json").is_file():
        if name == "maml":
            raise FileNotFoundError(f"the shipped MAML initialisation is missing from {path}; reinstall the "
                                    "package or pass --init random / a FitUNet folder")
        raise FileNotFoundError(f"{path}: not a FitUNet folder (config.json missing); use --init maml, random "
                                "or a folder written by FitUNet.save_pretrained")
    return FitUNet.from_pretrained(str(path))


def maml_adaptation(init) -> tuple[float, int] | None:
    """(inner learning rate alpha, inner steps) a MAML initialisation was meta-trained with, read from the
    ``meta_train.json`` that ``training/meta_train.py`` writes next to it; None for other initialisations.

    A MAML initialisation is meant to be used *after* its inner update, so a fit starts with that update
    (plain SGD of step alpha) and goes on with Adam. (Measured: an initialisation meta-trained with
    alpha = 0.05 was 2 dB worse than the identity before its inner step and fitted poorly with Adam; the
    shipped one uses alpha = 0.003, where the inner step changes little and the network is good as it is.)
    """
    if not isinstance(init, (str, Path)) or str(init) == "random":
        return None
    path = SHIPPED_INIT if str(init) == "maml" else Path(init)
    meta = path / "meta_train.json"
    if not meta.is_file():
        return None
    import json

    try:
        m = json.loads(meta.read_text())["config"]["meta"]
        return float(m["inner_lr"]), int(m["inner_steps"])
    except (ValueError, KeyError, TypeError):
        logger.warning("%s: unreadable meta-training record; fitting without the MAML inner update", meta)
        return None


def auto_threads() -> int:
    """CPU threads worth using now: the cores this process may run on minus the load already on them (at
    least one). On a machine shared with other jobs, more threads than free cores make PyTorch's CPU kernels
    wait on each other (measured: a 200-step fit took 94 s with 2 threads beside another job, 26 s with 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = max(1, min(cores, torch.get_num_threads()))
    try:
        busy = os.getloadavg()[0]
    except (OSError, AttributeError):
        return cores
    return max(1, min(cores, int(round(cores - busy))))


@contextmanager
def cpu_threads(n):
    """Run a block with ``n`` torch CPU threads (an int, "auto" or None for unchanged), then restore."""
    if n is None:
        yield
        return
    n = auto_threads() if n == "auto" else int(n)
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def resolve_device(device="auto") -> torch.device:
    return _resolve_device(device)


def warmed_up_ema(decay: float):
    """``multi_avg_fn`` for :class:`torch.optim.swa_utils.AveragedModel`: torch's EMA update with the decay warmed
    up as in diffusers' ``EMAModel``, min(decay, (1 + n) / (10 + n)) at the n-th update (the first copies), so
    that early iterates are not held for long."""

    def update(averaged, current, num_averaged) -> None:
        n = float(num_averaged) + 1.0  # one read per step and parameter group
        get_ema_multi_avg_fn(min(decay, n / (n + 9.0)))(averaged, current, num_averaged)

    return update


# ============================================================================ the method
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
        from ..models.perceptual import PerceptualLoss

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
        mp = self.config.mixed_precision
        return mp == "bf16" or (mp == "auto" and self.device.type == "cpu")

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16)

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
            from ..models.discriminator import PatchCritic

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 1)
                self.critic = PatchCritic().to(self.device)
        copt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, betas=(0.5, 0.9)) if cfg.critic else None
        # The iterate's PSNR swings by +-0.3 dB while the learning rate is high (docs/fit.md); the average does
        # not, and equals it at the end of the cosine. Not diffusers' EMAModel: its module imports transformers
        # and accelerate (+120 MB resident, measured).
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
            with cpu_threads(self.config.num_threads if self.device.type == "cpu" else None):
                r = check_finite(self.unet.residual(x[todo].to(self.device)).float(), self.name, _DIVERGED).to(x)
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
        frames = iter_frames(video) if isinstance(video, (str, Path)) else _frame_iter(video)
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


@torch.no_grad()
def output_psnr(net, blurry: np.ndarray, sharp: np.ndarray, batch_size: int = 4) -> float:
    """Mean PSNR of ``net``'s own output (no per-frame strength) on uint8 ``blurry`` frames against ``sharp``:
    how far a fit has got, as measured along it by ``scripts/benchmark_fit.py curves`` and the slow tests."""
    from ..metrics import psnr

    was_training = net.training
    net.eval()
    x = as_frames_tensor(blurry, device=next(net.parameters()).device)
    out = torch.cat([net(x[i:i + batch_size]).float().clamp(0, 1) for i in range(0, len(x), batch_size)])
    net.train(was_training)
    return float(psnr(to_uint8_frames(out), sharp).mean())


# ============================================================================ CLI stream
class FitStream:
    """The per-frame stream of a fitted deblurrer: frames are deblurred in small batches as they arrive."""

    def __init__(self, deblurrer: FitToTestDeblurrer, batch_size: int = 4):
        self.deblurrer, self.batch_size = deblurrer, batch_size
        self.buf: list[np.ndarray] = []
        self.next_index = 0

    def _run(self) -> list[np.ndarray]:
        if not self.buf:
            return []
        idx = list(range(self.next_index, self.next_index + len(self.buf)))
        out = self.deblurrer.deblur_frames(np.stack(self.buf), idx)
        self.next_index += len(self.buf)
        self.buf = []
        return list(out)

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        self.buf.append(frame)
        return self._run() if len(self.buf) >= self.batch_size else []

    def flush(self) -> list[np.ndarray]:
        return self._run()


def make_stream(source, info, options: dict) -> FitStream:
    """``vdiffdeblur deblur --method fit``: scan the video once (keeping only its sharp frames), fit, then stream."""
    cfg = FitConfig(seed=int(options.get("seed") or 0))
    if options.get("steps") is not None:
        cfg = replace(cfg, steps=int(options["steps"]))
    if options.get("learning_rate") is not None:
        cfg = replace(cfg, learning_rate=float(options["learning_rate"]))
    if options.get("threads") is not None:  # the user's --threads wins over the load-based "auto"
        cfg = replace(cfg, num_threads=int(options["threads"]))
    progress = not options.get("quiet")
    deblurrer = FitToTestDeblurrer(init=options.get("init") or "maml", config=cfg,
                                   vgg_weights=options.get("vgg_weights"), device=options.get("device", "auto"),
                                   progress=progress)
    deblurrer.fit(scan_video(source, cfg.every, progress=progress))
    return FitStream(deblurrer)
