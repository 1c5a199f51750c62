"""Training a small `AutoencoderKL` from scratch on the built-in TRAIN photos (random crops), the first step of
making the shipped diffusion deblurrer (docs/training.md, "The shipped small model").

Each step draws its crops from a generator seeded by (seed, step), so a run is repeatable and resuming from a
checkpoint (Accelerate state + the step) continues the same sequence. Loss: pixel MSE (+ L1) + a small KL term.
At the end the latent `scaling_factor` is set to 1 / std of the training latents (as Stable Diffusion's 0.18215),
the reconstruction PSNR on the EVAL photos is measured, and the VAE is saved (safetensors) with a card.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.synthetic import EVAL_PHOTOS, TRAIN_PHOTOS, load_photo
from .checkpoints import checkpoint_step, load_resume, remove_partial_checkpoints, save_checkpoint
from .objective import step_seed
from .toolkit import check_training_photos, read_history, set_threads, write_history

logger = logging.getLogger(__name__)


@dataclass
class VAETrainConfig:
    """Every option of `training/train_vae.py` (a YAML file's keys, or `--name value`)."""

    output_dir: str = "outputs/diffusion_vae"
    seed: int = 0
    photos: tuple = TRAIN_PHOTOS
    eval_photos: tuple = EVAL_PHOTOS
    eval_size: tuple = (320, 240)  # the EVAL photos are resized to this (width, height) for the PSNR
    # architecture (diffusers AutoencoderKL): vae_scale_factor = 2 ** (len(block_out_channels) - 1)
    block_out_channels: tuple = (32, 64, 128)
    latent_channels: int = 8
    layers_per_block: int = 1
    norm_num_groups: int = 8
    # the mid block's self-attention over every latent position (diffusers' default): trained on small crops it
    # attends over far fewer positions than a whole frame has
    mid_block_attention: bool = True
    # data: random crops of the photos, rescaled by a random factor first (the synthetic clips shrink photos)
    crop: int = 64
    scale_range: tuple = (0.3, 1.0)
    batch_size: int = 8
    # augmentation beyond the horizontal flip (off: the shipped VAE's crops, draw for draw)
    rotate: bool = False  # also a random vertical flip and 90-degree turn
    color_jitter: float = 0.0  # each channel's gain drawn from [1 - j, 1 + j], then clipped to [0, 1]
    # optimisation
    max_train_steps: int = 3000
    learning_rate: float = 1e-3
    lr_warmup_steps: int = 100
    lr_scheduler: str = "cosine"
    # warmup-stable-decay: with a constant schedule, the lr falls linearly to 0 over the last `cooldown_steps`
    # steps, so a cool-down can branch from any checkpoint of a constant-lr run (0: off)
    cooldown_steps: int = 0
    ema_decay: float = 0.0  # > 0: an EMA of the weights (diffusers EMAModel) is what is evaluated and exported
    kl_weight: float = 1e-6
    l1_weight: float = 0.1
    edge_weight: float = 0.0  # L1 between the horizontal/vertical differences of the round trip and the crop
    sample_posterior: bool = True  # decode a posterior sample while training (False: its mode, as at eval)
    max_grad_norm: float = 1.0
    num_threads: int = 0
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2  # complete checkpoints kept (None: all)
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    scaling_batches: int = 16  # batches of crops whose latent std sets scaling_factor
    eval_steps: int = 500  # EVAL reconstruction PSNR every this many steps (and at the end)

    def __post_init__(self):
        for name in ("photos", "eval_photos", "eval_size", "block_out_channels", "scale_range"):
            setattr(self, name, tuple(getattr(self, name)))
        check_training_photos(self.photos)
        for name in ("max_train_steps", "batch_size", "crop", "latent_channels", "scaling_batches", "eval_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        m = 2 ** (len(self.block_out_channels) - 1)
        if self.crop % m:
            raise ValueError(f"crop {self.crop} must be a multiple of the VAE factor {m}")
        if not 0.0 <= self.color_jitter < 1.0:
            raise ValueError(f"color_jitter must be in [0, 1), got {self.color_jitter}")
        if self.cooldown_steps and self.lr_scheduler not in ("constant", "constant_with_warmup"):
            raise ValueError(f"cooldown_steps needs a constant lr_scheduler, got {self.lr_scheduler!r}")
        if not 0 <= self.cooldown_steps <= self.max_train_steps:
            raise ValueError(f"cooldown_steps must be in [0, max_train_steps], got {self.cooldown_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def vae_config(self) -> dict:
        n = len(self.block_out_channels)
        return dict(in_channels=3, out_channels=3, latent_channels=self.latent_channels,
                    down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                    block_out_channels=list(self.block_out_channels), layers_per_block=self.layers_per_block,
                    norm_num_groups=self.norm_num_groups, sample_size=self.crop,
                    mid_block_add_attention=self.mid_block_attention)


def vae_cli():
    """The command line of `training/train_vae.py`: ``--config FILE`` (YAML) then ``--name value`` on top."""
    from .options import config_cli

    return config_cli(VAETrainConfig, description="Train a small AutoencoderKL on the built-in TRAIN photos.",
                      what="VAE training")


# ------------------------------------------------------------------------------------------------- data
def load_photos(names) -> list[np.ndarray]:
    """The photos as float32 RGB (H, W, 3) in [0, 1]."""
    return [load_photo(n).astype(np.float32) / 255.0 for n in names]


def random_crops(photos: list[np.ndarray], batch: int, crop: int, scale_range,
                 rng: np.random.Generator, rotate: bool = False, color_jitter: float = 0.0) -> torch.Tensor:
    """`batch` crops (B, 3, crop, crop) in [0, 1]: a random photo, rescaled by a random factor (area
    interpolation), a random crop, a random horizontal flip; with `rotate` also a random vertical flip and
    90-degree turn, with `color_jitter` a random gain per channel."""
    out = np.empty((batch, crop, crop, 3), np.float32)
    for b in range(batch):
        img = photos[int(rng.integers(len(photos)))]
        h, w = img.shape[:2]
        lo = max(scale_range[0], crop / min(h, w))
        s = float(rng.uniform(lo, max(lo, scale_range[1])))
        if s < 0.999:
            img = cv2.resize(img, (max(crop, round(w * s)), max(crop, round(h * s))), interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
        y, x = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
        patch = img[y:y + crop, x:x + crop]
        patch = patch[:, ::-1] if rng.random() < 0.5 else patch
        if rotate:
            patch = np.rot90(patch[::-1] if rng.random() < 0.5 else patch, int(rng.integers(2)))
        if color_jitter:
            patch = np.clip(patch * rng.uniform(1 - color_jitter, 1 + color_jitter, 3).astype(np.float32), 0, 1)
        out[b] = patch
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def eval_images(names, size) -> list[np.ndarray]:
    """EVAL photos resized (area) to `size` = (width, height), uint8."""
    return [cv2.resize(load_photo(n), tuple(size), interpolation=cv2.INTER_AREA) for n in names]


# ---------------------------------------------------------------------------------------------- measuring
@torch.no_grad()
def reconstruct(vae, image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> its VAE round trip (posterior mode), uint8, padded to the VAE factor and cropped back."""
    m = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = image.shape[:2]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)
    x = torch.nn.functional.pad(x, (0, -w % m, 0, -h % m), mode="replicate")
    rec = vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample
    rec = ((rec[0, :, :h, :w].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    return (rec * 255).round().astype(np.uint8)


def reconstruction_psnr(vae, images: dict) -> dict:
    """PSNR (dB) of each image's VAE round trip, by name."""
    from ..metrics import psnr

    return {name: float(psnr(reconstruct(vae, img)[None], img[None])[0]) for name, img in images.items()}


@torch.no_grad()
def latent_std(vae, photos, cfg: VAETrainConfig) -> float:
    """Std of the (unscaled) posterior-mode latents over `scaling_batches` seeded batches of training crops."""
    vals = []
    for i in range(cfg.scaling_batches):
        rng = np.random.default_rng(step_seed(cfg.seed, 777, i))
        x = random_crops(photos, cfg.batch_size, cfg.crop, cfg.scale_range, rng)
        vals.append(vae.encode(x * 2 - 1).latent_dist.mode().flatten())
    return float(torch.cat(vals).std())


# --------------------------------------------------------------------------------------------- training
def lr_factor(cfg: VAETrainConfig, step: int) -> float:
    """The learning rate's factor at `step` with `cooldown_steps`: linear warm-up, constant, then linear to 0."""
    if step < cfg.lr_warmup_steps:
        return (step + 1) / max(1, cfg.lr_warmup_steps) if cfg.lr_scheduler == "constant_with_warmup" else 1.0
    start = cfg.max_train_steps - cfg.cooldown_steps
    return 1.0 if step < start else max(0.0, (cfg.max_train_steps - step) / cfg.cooldown_steps)


def make_scheduler(cfg: VAETrainConfig, optimizer, num_processes: int = 1):
    from diffusers.optimization import get_scheduler

    if not cfg.cooldown_steps:
        return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                             num_training_steps=cfg.max_train_steps)
    # Accelerate steps a prepared scheduler once per process at every optimisation step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s // num_processes))


def vae_losses(vae, x: torch.Tensor, cfg: VAETrainConfig, generator: torch.Generator) -> dict:
    """x (B, 3, H, W) in [0, 1] -> {"loss", "mse", "l1", "kl", "edge"} of a round trip through a posterior
    sample (or its mode, without `cfg.sample_posterior`)."""
    post = vae.encode(x * 2 - 1).latent_dist
    z = post.mean
    if cfg.sample_posterior:
        z = z + post.std * torch.randn(post.mean.shape, generator=generator).to(post.mean)
    rec = (vae.decode(z).sample + 1) / 2
    mse = torch.nn.functional.mse_loss(rec, x)
    l1 = (rec - x).abs().mean()
    kl = post.kl().mean() / x[0].numel()
    loss = mse + cfg.l1_weight * l1 + cfg.kl_weight * kl
    out = {"mse": mse, "l1": l1, "kl": kl}
    if cfg.edge_weight:
        d = rec - x
        out["edge"] = (d[..., 1:, :] - d[..., :-1, :]).abs().mean() + (d[..., 1:] - d[..., :-1]).abs().mean()
        loss = loss + cfg.edge_weight * out["edge"]
    return {"loss": loss, **out}


def train_vae(cfg: VAETrainConfig) -> dict:
    """Train, measure and save the VAE to `cfg.output_dir/vae`; returns the summary written to `summary.json`."""
    import time

    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import AutoencoderKL
    set_threads(cfg.num_threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision="no")
    remove_partial_checkpoints(out, accelerator)
    set_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        vae = AutoencoderKL(**cfg.vae_config())
    logger.info("VAE: %.3fM parameters, factor %d, %d latent channels", sum(p.numel() for p in vae.parameters()) / 1e6,
                2 ** (len(cfg.block_out_channels) - 1), cfg.latent_channels)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    lr_scheduler = make_scheduler(cfg, optimizer, accelerator.num_processes)
    vae, optimizer, lr_scheduler = accelerator.prepare(vae, optimizer, lr_scheduler)
    ema = None
    if cfg.ema_decay:
        from diffusers.training_utils import EMAModel

        raw = accelerator.unwrap_model(vae)
        ema = EMAModel(raw.parameters(), decay=cfg.ema_decay, model_cls=AutoencoderKL, model_config=raw.config)
    photos = load_photos(cfg.photos)
    evals = dict(zip(cfg.eval_photos, eval_images(cfg.eval_photos, cfg.eval_size)))

    step, history = 0, []
    resume = load_resume(cfg.resume_from_checkpoint, out, lambda path: accelerator.load_state(str(path)))
    if resume is not None:
        step = checkpoint_step(resume)
        history = read_history(out / "training_log.json", step)
        logger.info("resumed from %s at step %d", resume, step)
        if cfg.cooldown_steps:
            # the lr follows this run's schedule (a cool-down branching from a constant-lr checkpoint)
            for group in getattr(optimizer, "optimizer", optimizer).param_groups:
                group["lr"] = cfg.learning_rate * lr_factor(cfg, step)
        if ema is not None:
            load_ema(ema, resume, accelerator.unwrap_model(vae))

    # a resumed run's elapsed time goes on from where its log stopped, so the curve's time axis is the run's
    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    vae.train()
    running = []
    with tqdm(total=cfg.max_train_steps, initial=step, desc="train VAE", unit="step") as bar:
        while step < cfg.max_train_steps:
            rng = np.random.default_rng(step_seed(cfg.seed, step))
            x = random_crops(photos, cfg.batch_size, cfg.crop, cfg.scale_range, rng, cfg.rotate,
                             cfg.color_jitter).to(accelerator.device)
            g = torch.Generator().manual_seed(step_seed(cfg.seed, step, 1))
            losses = vae_losses(vae, x, cfg, g)
            accelerator.backward(losses["loss"])
            if cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(vae.parameters(), cfg.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(accelerator.unwrap_model(vae).parameters())
            step += 1
            running.append(losses["mse"].item())
            bar.update(1)
            bar.set_postfix(mse=f"{np.mean(running[-50:]):.5f}")
            if step % 100 == 0 or step % cfg.eval_steps == 0 or step == cfg.max_train_steps:
                entry = {"step": step, "train_mse": float(np.mean(running[-100:])),
                         "train_psnr": float(-10 * np.log10(max(np.mean(running[-100:]), 1e-10))),
                         "lr": float(lr_scheduler.get_last_lr()[0]), "seconds": time.perf_counter() - t0}
                if step % cfg.eval_steps == 0 or step == cfg.max_train_steps:
                    vae.eval()
                    if ema is not None:  # the raw weights too, to see what the average adds
                        raw = reconstruction_psnr(accelerator.unwrap_model(vae), evals)
                        entry["eval_psnr_raw"] = float(np.mean(list(raw.values())))
                    with ema_weights(ema, accelerator.unwrap_model(vae)):
                        ps = reconstruction_psnr(accelerator.unwrap_model(vae), evals)
                    vae.train()
                    entry["eval_psnr"] = float(np.mean(list(ps.values())))
                    entry["eval_psnr_per_photo"] = ps
                    logger.info("step %d: train MSE %.5f, EVAL reconstruction PSNR %.2f dB", step,
                                entry["train_mse"], entry["eval_psnr"])
                history.append(entry)
                write_history(out / "training_log.json", history)
            if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0 and step < cfg.max_train_steps:
                # every process saves (each adds its own RNG state)
                save_checkpoint(accelerator, out, step, cfg.checkpoints_total_limit, every_process=True,
                                extra=None if ema is None else (lambda folder: ema.save_pretrained(folder / EMA_DIR)))

    vae = accelerator.unwrap_model(vae).eval()
    if ema is not None:
        ema.copy_to(vae.parameters())
    std = latent_std(vae, photos, cfg)
    vae.register_to_config(scaling_factor=1.0 / std)
    per_photo = reconstruction_psnr(vae, evals)
    summary = {"steps": step, "train_seconds": time.perf_counter() - t0, "latent_std": std,
               "scaling_factor": 1.0 / std, "eval_psnr": per_photo,
               "eval_psnr_mean": float(np.mean(list(per_photo.values()))),
               "eval_size": list(cfg.eval_size), "parameters": sum(p.numel() for p in vae.parameters())}
    vae.save_pretrained(out / "vae", safe_serialization=True)
    cfg_d = asdict(cfg)
    (out / "training_config.json").write_text(json.dumps(cfg_d, indent=1, default=list))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "README.md").write_text(vae_card(cfg, summary))
    logger.info("VAE saved to %s: EVAL reconstruction PSNR %.2f dB (%s)", out / "vae", summary["eval_psnr_mean"],
                ", ".join(f"{k} {v:.2f}" for k, v in per_photo.items()))
    return summary


EMA_DIR = "vae_ema"


def load_ema(ema, checkpoint: Path, vae) -> None:
    """The EMA saved in `checkpoint`; a checkpoint without one (EMA switched on later) starts it from the weights."""
    from diffusers import AutoencoderKL
    from diffusers.training_utils import EMAModel

    folder = Path(checkpoint) / EMA_DIR
    if folder.is_dir():
        ema.load_state_dict(EMAModel.from_pretrained(folder, model_cls=AutoencoderKL).state_dict())
    else:
        logger.warning("%s has no %s/: the EMA starts from its weights", checkpoint, EMA_DIR)
        ema.shadow_params = [p.detach().clone() for p in vae.parameters()]


class ema_weights:
    """`with ema_weights(ema, vae):` evaluates with the EMA weights and puts the training weights back after."""

    def __init__(self, ema, vae):
        self.ema, self.vae = ema, vae

    def __enter__(self):
        if self.ema is not None:
            self.ema.store(self.vae.parameters())
            self.ema.copy_to(self.vae.parameters())

    def __exit__(self, *exc):
        if self.ema is not None:
            self.ema.restore(self.vae.parameters())


def vae_card(cfg: VAETrainConfig, summary: dict) -> str:
    rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in summary["eval_psnr"].items())
    w, h = cfg.eval_size
    return (f"# Small AutoencoderKL for vdiffdeblur\n\nTrained from scratch by `training/train_vae.py` on random "
            f"{cfg.crop}x{cfg.crop} crops (rescaled x{cfg.scale_range[0]}-{cfg.scale_range[1]}, flipped) of the "
            f"built-in photos {', '.join(cfg.photos)}; {summary['steps']} steps of {cfg.batch_size} crops, "
            f"{summary['train_seconds'] / 60:.1f} min. Factor {2 ** (len(cfg.block_out_channels) - 1)}, "
            f"{cfg.latent_channels} latent channels, {summary['parameters'] / 1e6:.2f}M parameters, scaling_factor "
            f"{summary['scaling_factor']:.4f}.\n\nReconstruction PSNR (posterior mode) on the held-out photos at "
            f"{w}x{h}:\n\n| photo | PSNR (dB) |\n|---|---:|\n{rows}\n| mean | {summary['eval_psnr_mean']:.2f} |\n")
