"""The training loop shared by `training/stage1.py` and `training/stage2.py` (Accelerate, diffusers conventions).

One process or many (DDP on GPUs, or on CPUs with gloo), gradient accumulation, mixed precision, EMA, gradient
checkpointing, checkpoints every N steps with exact resume, validation every N steps; only the main process
writes. At the end the full `DeblurVideoPipeline` is saved to `output_dir` (diffusers format, safetensors) with
a model card, `training_config.json`, `training_log.json` (the curve) and `trainer_state.json` (steps, the
per-process parameter digests and the samples each process saw).

Exact resume: the data order is a function of the seed and the step (`data.ShuffledView`, no random sampler,
Accelerate's `skip_first_batches` and the epoch on resume), and every random draw of a step (noise, timesteps,
VAE posterior sample, condition dropout, and the models' own dropout through torch's global RNG) is seeded by
(seed, step, micro-batch, process), so a resumed run takes the same steps as an uninterrupted one on every
process, whether or not a process's RNG state was saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .card import model_card
from .checkpoints import (
    EMAState,
    checkpoint_step,
    load_resume,
    register_hooks,
    remove_partial_checkpoints,
    save_checkpoint,
)
from .components import (
    DeblurTrainModel,
    base_latent_channels,
    cast_frozen,
    configure_trainable,
    enable_gradient_checkpointing,
    load_base_pipeline,
    load_teacher,
    training_scheduler,
)
from .config import DiffusionTrainConfig
from .data import build_train_dataset, collate, validation_clips
from .objective import LossWeights, compute_losses, step_seed, to_diffusers_layout
from .toolkit import read_history, resolve_report_to, set_threads, start_trackers, write_history
from .validation import make_validation_pipeline, run_pipeline_validation, validation_loss

#: sample ids kept per process in trainer_state.json
MAX_IDS_RECORDED = 2000


def parameter_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes, in name order: equal digests = identical weights."""
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def train(cfg: DiffusionTrainConfig) -> dict:
    """Run one training stage; returns the final validation figures (empty when there is no validation)."""
    from accelerate import Accelerator
    from accelerate.logging import get_logger
    from accelerate.utils import ProjectConfiguration, gather_object, set_seed
    from diffusers.optimization import get_scheduler

    set_threads(cfg.num_threads)
    output_dir = Path(cfg.output_dir)
    report_to = resolve_report_to(cfg.report_to)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, mixed_precision=cfg.mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / cfg.logging_dir)),
    )
    logger = get_logger(__name__, log_level="INFO")
    logger.info(accelerator.state, main_process_only=False)
    set_seed(cfg.seed)
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_checkpoints(output_dir, accelerator)

    # ---- models
    base = load_base_pipeline(cfg)
    vae, unet, blur_encoder = base.vae, base.unet, base.blur_encoder
    scheduler_config = dict(base.scheduler.config)
    # the base folder's output parameterisation, carried into validation (training targets follow it too)
    sampling = {k: bool(base.config.get(k, False)) for k in ("residual_decode", "residual_latents")}
    sampling["residual_scale"] = float(base.config.get("residual_scale", 1.0))
    # the fast method whose output the UNet refines (load_base_pipeline widened the UNet for it if needed)
    prior_method = sampling["prior_method"] = base.config.get("prior_method")
    noise_scheduler = training_scheduler(base.scheduler)
    spatial_multiple = base.spatial_multiple
    teacher = load_teacher(cfg, blur_encoder) if cfg.alignment_weight > 0 else None
    groups = configure_trainable(cfg.stage, vae, unet, blur_encoder, train_conv_in=cfg.train_conv_in)
    weight_dtype = _weight_dtype(accelerator.mixed_precision)
    cast_frozen(cfg.stage, vae, unet, weight_dtype, accelerator.device)
    if teacher is not None:
        teacher.to(accelerator.device)
        if weight_dtype != torch.float32:
            teacher.to(dtype=weight_dtype)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(unet, blur_encoder)
    vae.eval()
    unet.train()
    blur_encoder.train()
    model = DeblurTrainModel(unet, blur_encoder)
    ema = EMAState(cfg.stage, unet, blur_encoder, cfg.ema_decay) if cfg.use_ema else None
    register_hooks(accelerator, cfg.stage, ema)

    # ---- optimisation
    nproc = accelerator.num_processes
    lr = cfg.learning_rate * (cfg.gradient_accumulation_steps * cfg.train_batch_size * nproc if cfg.scale_lr else 1)
    param_groups = [{"params": [p for p in groups["decay"] if p.requires_grad], "weight_decay": cfg.adam_weight_decay}]
    if groups["no_decay"]:
        param_groups.append({"params": groups["no_decay"], "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(param_groups, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    trainable = [p for g in param_groups for p in g["params"]]
    logger.info("stage %d: %.3fM trainable parameters (unet %s, blur_encoder %s)", cfg.stage,
                sum(p.numel() for p in trainable) / 1e6,
                "all" if cfg.stage == 2 else ("conv_in new channels" if cfg.train_conv_in else "frozen"), "all")

    dataset = build_train_dataset(cfg, prior_method)
    if len(dataset) < cfg.train_batch_size * nproc:
        raise ValueError(f"the training data holds {len(dataset)} clips per epoch, fewer than one batch on every "
                         f"process ({cfg.train_batch_size} x {nproc}); raise num_clips / samples_per_clip")
    loader = DataLoader(dataset, batch_size=cfg.train_batch_size, shuffle=False, collate_fn=collate,
                        num_workers=cfg.dataloader_num_workers, drop_last=True)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * nproc,
                                 num_training_steps=cfg.max_train_steps * nproc)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    weights = LossWeights(coherence=cfg.coherence_weight, alignment=cfg.alignment_weight,
                          condition_dropout=cfg.condition_dropout, coherence_reduction=cfg.coherence_reduction,
                          alignment_kind=cfg.alignment_loss,
                          residual_latents=bool(base.config.get("residual_latents", False)),
                          residual_scale=float(base.config.get("residual_scale", 1.0)))

    start_trackers(accelerator, report_to, cfg.tracker_project_name, cfg.to_dict())

    # ---- resume
    global_step = 0
    resume = load_resume(cfg.resume_from_checkpoint, output_dir, lambda path: accelerator.load_state(str(path)))
    if resume is not None:
        logger.info("resumed from %s", resume)
        global_step = checkpoint_step(resume)
    # Accelerate ends an epoch's last, shorter accumulation with a step too (diffusers' count)
    steps_per_epoch = math.ceil(len(loader) / cfg.gradient_accumulation_steps)
    epoch = global_step // steps_per_epoch
    skip = (global_step % steps_per_epoch) * cfg.gradient_accumulation_steps

    log_path = output_dir / "training_log.json"
    history = read_history(log_path, global_step)
    val_clips = validation_clips(cfg, prior_method) if accelerator.is_main_process else []

    def validate(step: int) -> dict:
        return _validate(cfg, accelerator, model, vae, noise_scheduler, scheduler_config, sampling, val_clips, weights,
                         spatial_multiple, teacher, ema, step)

    if val_clips and cfg.validation_at_start and global_step == 0:
        start = validate(0)
        history.append({"step": 0, **{f"val_{k}": v for k, v in start.items() if k != "images"}})

    # ---- loop
    progress = tqdm(range(cfg.max_train_steps), initial=global_step, desc=f"stage {cfg.stage}",
                    disable=not accelerator.is_local_main_process)
    seen: list[str] = []
    running: dict[str, list[float]] = {}
    micro, t0 = 0, time.perf_counter()
    last_val = None
    while global_step < cfg.max_train_steps:
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        # Accelerate's loader hands its epoch to the dataset (`ShuffledView.set_epoch`) when iteration starts
        batches.set_epoch(epoch)
        for batch in batches:
            with accelerator.accumulate(model):
                seed = step_seed(cfg.seed, global_step, micro, accelerator.process_index)
                g = torch.Generator().manual_seed(seed)
                # dropout inside the models (diffusers' temporal convolutions have p=0.1) draws from torch's
                # global RNG: seed it per micro-batch too, so resuming needs no saved RNG state
                torch.manual_seed(seed ^ 0x5DEECE66D)
                blurry = to_diffusers_layout(batch["blurry"]).to(accelerator.device)
                sharp = to_diffusers_layout(batch["sharp"]).to(accelerator.device)
                prior = to_diffusers_layout(batch["prior"]).to(accelerator.device) if "prior" in batch else None
                losses = compute_losses(model, vae, noise_scheduler, blurry, sharp, weights, g, teacher=teacher,
                                        prior=prior)
                accelerator.backward(losses["loss"])
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in losses.items():
                running.setdefault(k, []).append(float(v.detach()))
            seen.extend(batch["ids"])
            micro += 1
            if not accelerator.sync_gradients:
                continue
            micro = 0
            if ema is not None:
                ema.step(unet, blur_encoder)
            global_step += 1
            progress.update(1)
            local = torch.tensor([float(np.mean(v)) for v in running.values()], device=accelerator.device)
            mean = accelerator.reduce(local, reduction="mean").tolist()
            logs = {f"train/{k}": v for k, v in zip(running.keys(), mean)}
            logs["lr"] = lr_scheduler.get_last_lr()[0]
            running = {}
            progress.set_postfix(loss=f"{logs['train/loss']:.4f}")
            accelerator.log(logs, step=global_step)
            if cfg.checkpointing_steps and global_step % cfg.checkpointing_steps == 0:
                _save_checkpoint(accelerator, output_dir, global_step, cfg.checkpoints_total_limit)
            if accelerator.is_main_process:
                entry = {"step": global_step, "elapsed_s": round(time.perf_counter() - t0, 2), **logs}
                if val_clips and cfg.validation_steps and global_step % cfg.validation_steps == 0:
                    last_val = validate(global_step)
                    entry.update({f"val_{k}": v for k, v in last_val.items() if k != "images"})
                history.append(entry)
                write_history(log_path, history)
            if global_step >= cfg.max_train_steps:
                break
        epoch += 1
    progress.close()

    # ---- the end: digests and samples from every process, then the main process writes
    accelerator.wait_for_everyone()
    digests = gather_object([parameter_digest(accelerator.unwrap_model(model))])
    samples = gather_object([{"process": accelerator.process_index, "count": len(seen),
                              "ids": seen[:MAX_IDS_RECORDED]}])
    result = {}
    if accelerator.is_main_process:
        if val_clips and (last_val is None or not history or "val_diffusion" not in history[-1]):
            last_val = validate(global_step)
            if history and history[-1]["step"] == global_step:
                history[-1].update({f"val_{k}": v for k, v in last_val.items() if k != "images"})
            else:
                history.append({"step": global_step, **{f"val_{k}": v for k, v in last_val.items() if k != "images"}})
        result = last_val or {}
        if ema is not None:
            ema.copy_to(unet, blur_encoder)
        export_pipeline(cfg, unet, blur_encoder, output_dir)
        (output_dir / "training_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        write_history(log_path, history)
        state = {"stage": cfg.stage, "global_step": global_step, "num_processes": nproc,
                 "parameter_digests": digests, "samples_seen": samples,
                 "final_validation": {k: v for k, v in result.items()}}
        (output_dir / "trainer_state.json").write_text(json.dumps(state, indent=1))
        (output_dir / "README.md").write_text(model_card(cfg, global_step, nproc, history, result,
                                                         scheduler_config.get("prediction_type", "epsilon")))
        logger.info("wrote the stage-%d pipeline to %s", cfg.stage, output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _save_checkpoint(accelerator, output_dir: Path, step: int, limit: int | None) -> None:
    """`checkpoint-<step>` by `accelerator.save_state`: on the main process (as diffusers' examples do), on every
    process under DeepSpeed, whose engine saves its shards collectively."""
    from accelerate.utils import DistributedType

    save_checkpoint(accelerator, output_dir, step, limit,
                    every_process=accelerator.distributed_type == DistributedType.DEEPSPEED)


def _validate(cfg, accelerator, model, vae, noise_scheduler, scheduler_config, sampling, clips, weights,
              spatial_multiple, teacher, ema, step: int) -> dict:
    """Validation on the main process, with the EMA weights when there are any; returns the figures."""
    net = accelerator.unwrap_model(model)
    if ema is not None:
        ema.store_and_copy_to(net.unet, net.blur_encoder)
    net.eval()
    try:
        with accelerator.autocast():
            figures = validation_loss(net, vae, noise_scheduler, clips, weights, spatial_multiple,
                                      cfg.validation_loss_draws, seed=cfg.seed, teacher=teacher)
            pipe = make_validation_pipeline(vae, net.unet, net.blur_encoder, scheduler_config, **sampling)
            figures.update(run_pipeline_validation(
                pipe, clips, cfg.validation_inference_steps, cfg.validation_guidance_scale, seed=cfg.seed,
                image_dir=Path(cfg.output_dir) / "validation", step=step))
    finally:
        net.train()
        if ema is not None:
            ema.restore(net.unet, net.blur_encoder)
    accelerator.log({f"val/{k}": v for k, v in figures.items() if k != "images"}, step=step)
    logging.getLogger(__name__).info(
        "step %d: validation loss %.4f, PSNR %.2f dB (input %.2f), SSIM %.4f (input %.4f)", step,
        figures["diffusion"], figures["psnr"], figures["input_psnr"], figures["ssim"], figures["input_ssim"])
    return figures


def _cpu_float32(module):
    module = module.to("cpu")
    return module if module.dtype == torch.float32 else module.to(dtype=torch.float32)


def export_pipeline(cfg: DiffusionTrainConfig, unet, blur_encoder, output_dir: Path) -> None:
    """Save the full pipeline (diffusers format, safetensors) to `output_dir`: the trained blur encoder, the
    trained UNet (stage 2) or the base UNet with conv_in's trained new channels (stage 1; the base is reloaded in
    float32, so mixed-precision casts never reach the saved weights), the base VAE and scheduler. Written to a
    temporary folder first; `model_index.json` arrives last."""
    from ..video import atomic_replace, remove_path, temp_sibling

    blur_encoder = _cpu_float32(blur_encoder).eval()
    if cfg.stage == 2:
        pipe = load_base_pipeline(cfg, unet=_cpu_float32(unet).eval(), blur_encoder=blur_encoder)
    else:
        pipe = load_base_pipeline(cfg, blur_encoder=blur_encoder)
        base = base_latent_channels(pipe.unet)
        with torch.no_grad():
            pipe.unet.conv_in.weight[:, base:] = unet.conv_in.weight[:, base:].detach().to("cpu", torch.float32)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(output_dir / "pipeline")
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        entries = sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json")
        for entry in entries:
            atomic_replace(entry, output_dir / entry.name)
    finally:
        remove_path(tmp)
