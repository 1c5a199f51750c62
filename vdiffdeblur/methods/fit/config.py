"""The settings of one fit."""

from __future__ import annotations

from dataclasses import dataclass

from ...blur import KERNEL_TYPES
from ...tiles import check_tile

#: Adam's peak rate by starting point: large first steps undo a learned start, a random one needs them (docs/fit.md)
LEARNING_RATE = {"random": 6e-4, "learned": 3e-4}


@dataclass
class FitConfig:
    """Settings of one fit. Defaults are what the CLI uses (``--steps`` overrides ``steps``)."""

    steps: int = 1000
    batch_size: int = 8
    patch_size: int = 96  # capped by the frame size (paper: 256; see docs/fit.md for why 96 x 8 by default)
    learning_rate: float | None = None  # Adam's peak rate; None: 3e-4 from a learned init, 6e-4 from a random one
    every: int = 20  # one training frame per run of this many frames (paper: 20)
    kernel: str = "symmetric"  # symmetric | asymmetric | simulated (paper ablation)
    reweight: bool = False  # eq. 3 (paper ablation; off by default: no gain on the clips of docs/fit.md)
    inverse_gamma: bool = True  # blur in linear light (paper ablation)
    gradient_weight: float = 1.0  # weight of the image-gradient term of the pixel loss (no VGG weights)
    critic: bool = False  # WGAN-GP PatchGAN critic (paper ablation; off by default: no gain for 3.7x the time)
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
    ema_decay: float | None = 0.95  # the fit ends on a moving average of its iterates (warmed_up_ema); None: the last
    adaptation_steps: int | None = None  # MAML inner-update steps first (None: as meta-trained; MAML inits only)
    mixed_precision: str = "auto"  # "bf16", "no", or "auto" (vdiffdeblur.devices.resolve_precision)
    num_threads: int | str | None = "auto"  # a number, None (torch's setting) or "auto" (the idle cores: cpu_threads)
    tile_size: int | str | None = "auto"  # deblur in tiles of this many px a side; "auto": vdiffdeblur.tiles.auto_tile
    seed: int = 0

    def __post_init__(self):
        check_tile(self.tile_size)
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
