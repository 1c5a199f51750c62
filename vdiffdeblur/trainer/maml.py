"""MAML initialisation of the fit-to-test-data U-Net (paper section III-C, Algorithm 1; Finn et al. 2017).

A task is one image ``I_i`` drawn from p(I) (here: the built-in *training* photos at random scales):

    GT_i          random patches of I_i
    Blur_i        GT_i blurred by kernels drawn from D
    Blur*_i       GT_i blurred by other kernels drawn from D
    theta_i       = theta - alpha * grad_theta L(g_theta(Blur_i), GT_i)           (inner step, per task)
    theta        <- theta - beta * grad_theta sum_i L(g_theta_i(Blur*_i), GT_i)   (outer update)

The inner step goes through ``torch.func.functional_call``, so the outer gradient flows through it
(second order) unless ``first_order`` drops that term. The outer update is Adam with learning rate beta.
Each patch gets its own pair of kernels (a kernel per patch rather than per task): the adaptation the
inner step must learn is to the image's content, which is what a fit to a test video exploits.
D: symmetric linear kernels, a share of them of near-zero length so the initialisation leaves sharp input
alone, the rest with log-uniform lengths up to ``max_length``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.func import functional_call

from ..blur import LengthSampler, blur_crops, cut_patches, random_kernels
from ..data.dead_leaves import check_fur_fraction, dead_leaves
from ..data.layered import LayeredConfig, synthesize_layered
from ..data.synthetic import TRAIN_PHOTOS, load_photo
from ..losses import patch_sharpness, reweight
from ..sharpness import laplacian_variance
from .toolkit import check_training_photos, set_threads

logger = logging.getLogger(__name__)


@dataclass
class MetaConfig:
    inner_lr: float = 0.05  # alpha
    inner_steps: int = 1
    first_order: bool = False
    tasks_per_step: int = 2
    patches_per_task: int = 4
    patch_size: int = 96
    kernel: str = "symmetric"
    max_length: float = 32.0
    zero_fraction: float = 0.25
    inverse_gamma: bool = True
    reweight: bool = True
    noise_sigma: tuple[float, float] = (0.0, 2.0 / 255)  # sensor noise range of the blurred patches
    scales: tuple[float, ...] = (0.4, 0.55, 0.7, 0.85, 1.0)  # photo scales (frames show photos at ~1/2)
    dead_leaves: int = 0  # procedural dead-leaves pictures added to p(I) (textured with the photos)
    fur_fraction: float = 0.0  # their share of textured leaves filled with procedural fur (dead_leaves())
    layered_fraction: float = 0.0  # share of tasks whose query is a frame of a layered scene (object motion)

    def __post_init__(self):
        if self.dead_leaves < 0:
            raise ValueError(f"dead_leaves must be >= 0, got {self.dead_leaves}")
        check_fur_fraction(self.fur_fraction)
        if not 0.0 <= self.layered_fraction <= 1.0:
            raise ValueError(f"layered_fraction must be in [0, 1], got {self.layered_fraction}")
        if self.inner_steps < 1 or self.tasks_per_step < 1 or self.patches_per_task < 1:
            raise ValueError("inner_steps, tasks_per_step and patches_per_task must be >= 1")
        if self.inner_lr <= 0:
            raise ValueError(f"inner_lr must be positive, got {self.inner_lr}")


@dataclass
class Task:
    support: torch.Tensor  # Blur_i
    query: torch.Tensor  # Blur*_i
    target: torch.Tensor  # GT_i
    norm: float  # the re-weighting constant N of this task's image


class PhotoTasks:
    """p(I) over photos: by default the built-in training photos (never an evaluation photo), each kept at
    several scales, plus ``config.dead_leaves`` procedural pictures (:func:`~vdiffdeblur.data.dead_leaves.
    dead_leaves`, 384x512, seeded by their number, leaves textured with the photos), also at those scales.
    ``sample(rng)`` makes one task; ``sample(rng, photos_only=True)`` draws from the photos only.

    With ``config.layered_fraction`` > 0 that share of tasks come from one frame of a layered scene
    (:func:`~vdiffdeblur.data.layered.synthesize_layered`: the task's image as the background, objects cut from
    the photos moving over it): GT_i are patches of its sharp frame, Blur*_i the same patches of its blurry frame
    (object motion, occlusion), Blur_i GT_i blurred by kernels from D as before, which is what a fit to a test
    video can make from its own sharp frames. The inner step then learns from kernel blur what helps on
    object-motion blur."""

    def __init__(self, photos=TRAIN_PHOTOS, config: MetaConfig | None = None, allow_eval_photos: bool = False):
        self.config = config or MetaConfig()
        if not allow_eval_photos:
            check_training_photos(photos)
        self.images: list[torch.Tensor] = []
        self.norms: list[float] = []
        need = self.config.patch_size + 2 * (int(self.config.max_length) + 4)
        loaded = [load_photo(f"builtin:{p}" if isinstance(p, str) and ":" not in p else p) for p in photos]
        self._photos = loaded
        self._pictures: list[np.ndarray] = []  # uint8 (H, W, 3) behind each of self.images
        for img in loaded:
            self._add_scaled(img, need)
        self.num_photo_images = len(self.images)  # photo images come first; sample(photos_only=True) uses them
        for j in range(self.config.dead_leaves):
            self._add_scaled(dead_leaves(384, 512, np.random.default_rng([j, 11]), textures=loaded,
                                         fur_fraction=self.config.fur_fraction), need)
        if not self.images:
            raise ValueError(f"no photo is large enough for {self.config.patch_size} px patches")

    def _add_scaled(self, img: np.ndarray, need: int) -> None:
        """``img`` at every configured scale at which it still holds a patch plus its kernel margin."""
        h, w = img.shape[:2]
        for s in self.config.scales:
            if min(h, w) * s < need:
                continue
            im = cv2.resize(img, (round(w * s), round(h * s)),
                            interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
            t = torch.from_numpy(im).permute(2, 0, 1).float() / 255.0
            self.images.append(t)
            self._pictures.append(im)
            self.norms.append(float(laplacian_variance(t[None])[0]) or 1.0)

    def _lengths(self, n: int, rng: np.random.Generator) -> list[float]:
        cfg = self.config
        s = LengthSampler(cfg.max_length, zero_fraction=cfg.zero_fraction, log_uniform=True)
        return [s(rng) for _ in range(n)]

    def sample(self, rng: np.random.Generator, generator: torch.Generator | None = None,
               photos_only: bool = False) -> Task:
        cfg = self.config
        i = int(rng.integers(self.num_photo_images if photos_only and self.num_photo_images else len(self.images)))
        # (draws from rng as before when layered_fraction is 0, so earlier runs stay reproducible)
        layered = cfg.layered_fraction > 0 and not photos_only and rng.random() < cfg.layered_fraction
        n = cfg.patches_per_task
        k1 = random_kernels(self._lengths(n, rng), cfg.kernel, rng)
        k2 = random_kernels(self._lengths(n, rng), cfg.kernel, rng)
        size = max(k1.shape[-1], k2.shape[-1])
        k1, k2 = (np.pad(k, [(0, 0)] + [((size - k.shape[-1]) // 2,) * 2] * 2) for k in (k1, k2))
        m = size // 2
        sigma = float(rng.uniform(*cfg.noise_sigma))
        if layered:
            sharp, blurry = self._layered_frame(i, 2 * (cfg.patch_size + m), sigma, rng)
            crops, _, pos = cut_patches([sharp], n, cfg.patch_size, m, rng)
            p = crops.shape[-1] - 2 * m
            query = torch.stack([blurry[:, y:y + p, x:x + p] for y, x in pos])
        else:
            crops, _, _ = cut_patches([self.images[i]], n, cfg.patch_size, m, rng)
        support = blur_crops(crops, k1, m, cfg.inverse_gamma, sigma, generator)
        if not layered:
            query = blur_crops(crops, k2, m, cfg.inverse_gamma, sigma, generator)
        target = crops[:, :, m:crops.shape[-2] - m, m:crops.shape[-1] - m]
        return Task(support, query, target, self.norms[i])

    def _layered_frame(self, i: int, side: int, sigma: float, rng: np.random.Generator):
        """One frame (sharp, blurry: float (3, side, side)) of a layered scene over image ``i``, objects cut from
        the photos."""
        pic = self._pictures[i]
        cfg = LayeredConfig(num_frames=1, width=side, height=side, noise_sigma=sigma)
        c = synthesize_layered(self._photos, cfg, seed=int(rng.integers(2**31 - 1)), background=pic)
        to_t = lambda a: torch.from_numpy(a[0]).permute(2, 0, 1).float() / 255.0  # noqa: E731
        return to_t(c.sharp), to_t(c.blurry)


def task_loss(model, params: dict, x: torch.Tensor, y: torch.Tensor, loss_fn, norm: float | None,
              autocast=None) -> torch.Tensor:
    """L(g_params(x), y): ``loss_fn.per_sample`` re-weighted by M_VL / N (eq. 3) when ``norm`` is given."""
    import contextlib

    with autocast() if autocast is not None else contextlib.nullcontext():
        out = functional_call(model, params, (x,))
    per = loss_fn.per_sample(out.float(), y)
    return reweight(per, patch_sharpness(y), norm) if norm is not None else per.mean()


def adapt(model, params: dict, task: Task, loss_fn, config: MetaConfig, autocast=None) -> dict:
    """The inner loop: ``inner_steps`` SGD steps of size alpha on (Blur_i, GT_i)."""
    norm = task.norm if config.reweight else None
    for _ in range(config.inner_steps):
        loss = task_loss(model, params, task.support, task.target, loss_fn, norm, autocast)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=not config.first_order,
                                    allow_unused=True)
        params = {k: (p - config.inner_lr * (g if not config.first_order else g.detach())) if g is not None else p
                  for (k, p), g in zip(params.items(), grads)}
    return params


def meta_loss(model, tasks: list[Task], loss_fn, config: MetaConfig, autocast=None) -> tuple[torch.Tensor, float]:
    """Algorithm 1's outer objective, the mean over tasks of L(g_theta_i(Blur*_i), GT_i), and (for logging)
    the mean query loss before adaptation."""
    params = dict(model.named_parameters())
    total, before = 0.0, 0.0
    for task in tasks:
        norm = task.norm if config.reweight else None
        with torch.no_grad():
            before += float(task_loss(model, params, task.query, task.target, loss_fn, norm, autocast))
        adapted = adapt(model, params, task, loss_fn, config, autocast)
        total = total + task_loss(model, adapted, task.query, task.target, loss_fn, norm, autocast)
    return total / len(tasks), before / len(tasks)


# ============================================================================ meta-training with Accelerate
@dataclass
class MetaTrainConfig:
    """Everything ``training/meta_train.py`` sets; ``meta`` holds Algorithm 1's own settings."""

    output_dir: str = "out/fit_maml"
    steps: int = 4000
    seed: int = 0
    mixed_precision: str = "bf16"  # no | fp16 | bf16 (Accelerate)
    outer_lr: float = 3e-4  # beta, Adam, cosine decay after warm-up
    lr_warmup_steps: int = 100
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str | None = None  # a checkpoint folder or "latest"
    log_steps: int = 50
    validation_steps: int = 500
    init: str | None = None  # start from a FitUNet folder instead of a fresh network
    num_threads: int = 0  # torch CPU threads (0: torch's default; 1 is fastest on a CPU shared with other jobs)
    base_channels: int = 32
    levels: int = 4
    max_channels: int = 128
    meta: MetaConfig = None

    def __post_init__(self):
        if self.meta is None:
            self.meta = MetaConfig()
        if self.steps < 0 or self.checkpointing_steps < 0 or self.log_steps < 1:
            raise ValueError("steps and checkpointing_steps must be >= 0 and log_steps >= 1")


def maml_cli(description: str | None = None):
    """The command line of `training/meta_train.py`: ``--config FILE`` (YAML: the fields of `MetaTrainConfig`
    and of `MetaConfig`, the latter at the top level or under ``meta:``) then ``--name value`` on top."""
    from .options import config_cli

    return config_cli(MetaTrainConfig, description=description or "Meta-learn the FitUNet initialisation (MAML).",
                      what="meta-training")


def validation_tasks(tasks: PhotoTasks, n: int = 4, seed: int = 12345) -> list[Task]:
    """Fixed held-out draws (their own seed) from the training photos, to follow progress (the same draws
    with or without procedural pictures in p(I))."""
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    return [tasks.sample(rng, gen, photos_only=True) for _ in range(n)]


@torch.no_grad()
def validation_gain(model, tasks: list[Task]) -> float:
    """Mean PSNR gain (dB) of the un-adapted network on the query patches of ``tasks``."""
    gains = []
    for t in tasks:
        out = model(t.query).float().clamp(0, 1)
        mse_in = ((t.query - t.target) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        mse_out = ((out - t.target) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        gains.append(10 * torch.log10(mse_in / mse_out))
    return float(torch.cat(gains).mean())


def meta_train(cfg: MetaTrainConfig, photos=TRAIN_PHOTOS, callback=None):
    """Meta-train a FitUNet initialisation with Algorithm 1 under Accelerate; returns the trained network.

    Every process draws its own tasks (seed + process index); gradients are averaged across processes
    (the inner loop runs through ``functional_call``, outside any DDP wrapper). Checkpoints are Accelerate
    states saved by every process, plus the network (``fit_unet/``, main process) and each process's task
    sampler state, so resuming continues the same draws; they are written crash-safe by
    :mod:`vdiffdeblur.trainer.checkpoints`. Only the main process writes the final ``save_pretrained`` folder
    and ``meta_train.json``.
    """
    import json
    import time
    from pathlib import Path

    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from tqdm.auto import tqdm

    from ..models.fit_unet import FitUNet
    from ..models.perceptual import PerceptualLoss
    from .checkpoints import (
        CorruptCheckpointError,
        checkpoint_step,
        list_checkpoints,
        load_resume,
        remove_partial_checkpoints,
        save_checkpoint,
    )

    out_dir = Path(cfg.output_dir)
    set_threads(cfg.num_threads)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision,
                              project_config=ProjectConfiguration(project_dir=str(out_dir),
                                                                  logging_dir=str(out_dir / "logs")))
    set_seed(cfg.seed)
    remove_partial_checkpoints(out_dir, accelerator)
    if cfg.init:
        model = FitUNet.from_pretrained(cfg.init)
    else:
        model = FitUNet(base_channels=cfg.base_channels, levels=cfg.levels, max_channels=cfg.max_channels)
    model = model.to(accelerator.device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.outer_lr)
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.lr_warmup_steps, max(cfg.steps, 1))
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    loss_fn = PerceptualLoss(None).to(accelerator.device)
    tasks = PhotoTasks(photos, cfg.meta)
    val = validation_tasks(tasks)
    rng = np.random.default_rng(cfg.seed + 1000 * accelerator.process_index)
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * accelerator.process_index)

    sampler_file = f"maml_sampler_{accelerator.process_index}.json"

    def load(path: Path) -> None:
        nonlocal rng
        accelerator.load_state(str(path))
        model.load_state_dict(FitUNet.from_pretrained(str(path / "fit_unet")).state_dict())
        if (path / sampler_file).is_file():
            state = json.loads((path / sampler_file).read_text())
            rng.bit_generator.state = state["numpy"]
            gen.set_state(torch.tensor(state["torch"], dtype=torch.uint8))
        else:  # a checkpoint without this process's sampler state: fresh draws
            rng = np.random.default_rng([cfg.seed, checkpoint_step(path), accelerator.process_index])

    def save_extra(folder: Path) -> None:
        state = {"numpy": rng.bit_generator.state, "torch": gen.get_state().tolist()}
        (folder / sampler_file).write_text(json.dumps(state))
        if accelerator.is_main_process:  # the network itself as safetensors, not pickled
            accelerator.unwrap_model(model).save_pretrained(str(folder / "fit_unet"))

    first = 0
    if cfg.resume_from_checkpoint:
        if cfg.resume_from_checkpoint == "latest" and not list_checkpoints(out_dir):
            raise FileNotFoundError(f"checkpoint {cfg.resume_from_checkpoint!r} not found under {out_dir}")
        path = load_resume(cfg.resume_from_checkpoint, out_dir, load)
        if path is None:  # meta-training resumes or fails, it never silently restarts
            raise CorruptCheckpointError(f"no checkpoint under {out_dir} could be loaded")
        first = checkpoint_step(path)
        logger.info("resumed from %s at step %d", path, first)

    history = []
    autocast = accelerator.autocast
    t0 = time.time()
    run_loss = run_before = 0.0
    bar = tqdm(range(first + 1, cfg.steps + 1), desc="meta-train", disable=not accelerator.is_local_main_process)
    for step in bar:
        batch = [tasks.sample(rng, gen) for _ in range(cfg.meta.tasks_per_step)]
        batch = [Task(t.support.to(accelerator.device), t.query.to(accelerator.device), t.target.to(accelerator.device),
                      t.norm) for t in batch]
        loss, before = meta_loss(model, batch, loss_fn, cfg.meta, autocast)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if accelerator.num_processes > 1:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad = accelerator.reduce(p.grad, reduction="mean")
        optimizer.step()
        scheduler.step()
        run_loss += float(loss.detach())
        run_before += before
        if step % cfg.log_steps == 0:
            rec = {"step": step, "meta_loss": run_loss / cfg.log_steps, "query_loss_before": run_before / cfg.log_steps,
                   "lr": scheduler.get_last_lr()[0], "minutes": (time.time() - t0) / 60}
            run_loss = run_before = 0.0
            if cfg.validation_steps and (step % cfg.validation_steps == 0 or step == cfg.steps):
                model.eval()
                with autocast():
                    rec["val_gain_db"] = validation_gain(model, val)
                model.train()
            history.append(rec)
            bar.set_postfix(loss=f"{rec['meta_loss']:.4f}", **({"val": f"{rec['val_gain_db']:+.2f}dB"}
                                                               if "val_gain_db" in rec else {}))
            logger.info("meta-train %s", {k: round(v, 5) if isinstance(v, float) else v for k, v in rec.items()})
            if callback is not None:
                callback(step, model, rec)
        if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0 and step < cfg.steps:
            save_checkpoint(accelerator, out_dir, step, cfg.checkpoints_total_limit, every_process=True,
                            extra=save_extra)
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(model).to(memory_format=torch.contiguous_format).eval()
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir), safe_serialization=True)
        from dataclasses import asdict

        info = {"config": asdict(cfg), "photos": [str(p) for p in photos], "history": history,
                "minutes": (time.time() - t0) / 60, "torch_threads": torch.get_num_threads(),
                "num_processes": accelerator.num_processes}
        (out_dir / "meta_train.json").write_text(json.dumps(info, indent=1))
    accelerator.end_training()
    return model
