"""Training a :class:`~vdiffdeblur.models.dtb.DTBNet` with Accelerate (paper sections 5.2-5.3).

Objective (eq. 4): mean squared error between the sharp frames and the network's output over every frame
of a clip, plus a weight decay of ``1e-5`` on the convolution weights. Taken literally (``lambda * ||W||^2``
added to a per-pixel MSE, ``weight_decay_in_loss=True``), that term outweighs the MSE of camera-shake clips
and drives the weights to zero under Adam (docs/dtb.md). By default the decay is therefore applied decoupled
from the gradient (AdamW with ``weight_decay=1e-5``), which is how a "1e-5 weight decay" is usually meant.
Adam(W), learning rate ``1e-4`` decayed by ``0.96`` every ``10k`` steps; 13-frame clips, 128x128 crops,
batch 8 (the paper's values are the defaults; the shipped checkpoint's smaller values are in
``training/configs/dtb.yaml``). The clips come from :class:`~vdiffdeblur.data.SyntheticShakeDataset`
(training photos only) or from a :class:`~vdiffdeblur.data.PairedVideoDataset` folder.

Accelerate conventions follow diffusers' training examples: ``Accelerator(gradient_accumulation_steps,
mixed_precision, log_with, project_config)``, ``checkpoint-<step>`` folders written by ``save_state``
(at most ``checkpoints_total_limit`` kept, written crash-safe by :mod:`vdiffdeblur.trainer.checkpoints`),
``resume_from_checkpoint`` = ``latest`` or a path, only the main process writes. Data order is a fixed
function of the seed and the step, so resuming continues the same run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.dead_leaves import DEAD_LEAVES
from ..data.paired import PairedVideoDataset
from ..data.shake_dataset import SyntheticShakeDataset
from ..data.synthetic import EVAL_PHOTOS, TRAIN_PHOTOS, ShakeConfig, synthesize_shake
from ..models.dtb import DTBNet
from .checkpoints import checkpoint_step, load_resume, remove_partial_checkpoints, save_checkpoint
from .options import build_config, config_cli
from .toolkit import check_training_photos, read_history, resolve_report_to, set_threads, start_trackers, write_history

logger = logging.getLogger(__name__)


@dataclass
class DTBTrainConfig:
    output_dir: str = "dtb-model"
    seed: int = 0
    # model
    variant: str = "strcnn_dtb"
    channels: int = 64
    feature_channels: int = 32
    num_res_blocks: int = 4
    num_neighbors: int = 1
    residual: bool = True
    encoder_skip: bool = False
    linear_light: bool = False
    init_from: str | None = None  # start from this DTBNet folder (fine-tuning) instead of a fresh network
    # data: "synthetic" (built-in training photos) or a PairedVideoDataset folder
    train_data: str = "synthetic"
    layout: str = "auto"
    photos: tuple = TRAIN_PHOTOS
    num_clips: int = 64
    frames_per_clip: int = 24
    still_fraction: float = 0.1
    augment: bool = False  # each synthetic clip sees a random sub-window, flip / quarter turn, channel order
    source_zoom: tuple[float, float] = (1.0, 1.0)  # with augment: the sub-window's side as a fraction of the photo's
    fur_fraction: float = 0.0  # dead-leaves sources: share of textured leaves filled with procedural fur
    layered_fraction: float = 0.0  # share of synthetic clips that are layered scenes (objects moving on their own)
    synth_width: int = 320
    synth_height: int = 240
    clip_len: int = 13
    crop: int = 128
    # loss: "mse" (the paper's eq. 4) or "log_mse": the mean over frames of log(MSE_frame + loss_eps), i.e. the
    # mean per-frame PSNR, which weighs an error on a nearly sharp frame as much as the same loss in dB on a
    # blurred one (plain MSE hardly notices sharp frames, and the network learns to smear them)
    loss: str = "mse"
    loss_eps: float = 1e-5
    # do-no-harm term added to either loss: harm_weight * mean over frames of
    # relu(MSE(out, sharp) - MSE(blurry, sharp)) / (MSE(blurry, sharp) + loss_eps): zero while a frame gets
    # better, the relative loss of a frame made worse otherwise (0 turns it off: the paper's objective)
    harm_weight: float = 0.0
    # an optional last phase: the final `finetune_steps` of the `max_train_steps` use `finetune_loss` and
    # `finetune_learning_rate`, with Adam's moments restarted at the switch (the two losses differ in scale).
    # MSE first learns to deblur; a short log-MSE phase then teaches the network to leave sharp frames alone
    finetune_steps: int = 0
    finetune_loss: str = "log_mse"
    finetune_learning_rate: float = 2e-4
    # optimisation
    train_batch_size: int = 8
    max_train_steps: int = 1000
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_decay_rate: float = 0.96
    lr_decay_steps: int = 10000
    weight_decay: float = 1e-5  # the paper's lambda (eq. 4)
    weight_decay_in_loss: bool = False  # True: add lambda * ||W||^2 to the loss literally (see the module doc)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 0.0  # 0: no clipping (the paper clips nothing)
    mixed_precision: str = "bf16"
    channels_last: bool = True
    dataloader_num_workers: int = 0
    num_threads: int = 0  # torch intra-op threads; 0: torch's default. 1 is much faster on a busy shared CPU
    # bookkeeping
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    validation_steps: int = 250
    num_validation_clips: int = 2
    validation_frames: int = 24
    logging_dir: str = "logs"
    report_to: str | None = "auto"  # "tensorboard", "wandb", ..., None; "auto": tensorboard when installed
    tracker_project_name: str = "train_dtb"

    def __post_init__(self):
        from ..models.dtb import VARIANTS

        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose from {', '.join(VARIANTS)}")
        for name in ("loss", "finetune_loss"):
            if getattr(self, name) not in ("mse", "log_mse"):
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose mse or log_mse")
        if not 0 <= self.finetune_steps <= self.max_train_steps:
            raise ValueError(f"finetune_steps must be in [0, max_train_steps], got {self.finetune_steps}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.max_train_steps < 1 or self.train_batch_size < 1 or self.clip_len < 1:
            raise ValueError("max_train_steps, train_batch_size and clip_len must be >= 1")

    @classmethod
    def from_dict(cls, d: dict) -> "DTBTrainConfig":
        return build_config(cls, d, what="DTB training")

    def model_kwargs(self) -> dict:
        return dict(variant=self.variant, channels=self.channels, feature_channels=self.feature_channels,
                    num_res_blocks=self.num_res_blocks, num_neighbors=self.num_neighbors, residual=self.residual,
                    encoder_skip=self.encoder_skip, linear_light=self.linear_light)


def dtb_cli(description: str | None = None):
    """The command line of `training/train_dtb.py`: ``--config FILE`` (YAML) then ``--name value`` on top."""
    return config_cli(DTBTrainConfig, description=description or "Train the online deblurring network DTBNet.",
                      what="DTB training")


# --------------------------------------------------------------------------------------- pieces
def build_train_dataset(cfg: DTBTrainConfig, num_samples: int):
    """The training dataset, long enough for ``num_samples`` items (read in order, see the module doc)."""
    if cfg.train_data == "synthetic":
        check_training_photos(cfg.photos)
        shake = ShakeConfig(width=cfg.synth_width, height=cfg.synth_height)
        per_clip = max(1, math.ceil(num_samples / cfg.num_clips))
        return SyntheticShakeDataset(sources=list(cfg.photos), num_clips=cfg.num_clips, clip_len=cfg.clip_len,
                                     crop=cfg.crop, config=shake,
                                     frames_per_clip=max(cfg.frames_per_clip, cfg.clip_len),
                                     samples_per_clip=per_clip, seed=cfg.seed, still_fraction=cfg.still_fraction,
                                     augment=cfg.augment, source_zoom=tuple(cfg.source_zoom),
                                     fur_fraction=cfg.fur_fraction, layered_fraction=cfg.layered_fraction)
    ds = PairedVideoDataset(cfg.train_data, layout=cfg.layout, clip_len=cfg.clip_len, crop=cfg.crop, seed=cfg.seed,
                            flip=True)
    ds.samples_per_sequence = max(1, math.ceil(num_samples / len(ds.sequences)))
    return ds


def collate(items: list[dict]) -> dict:
    return {"blurry": torch.stack([i["blurry"] for i in items]), "sharp": torch.stack([i["sharp"] for i in items])}


def validation_clips(cfg: DTBTrainConfig) -> list:
    """Held-out clips for monitoring: training photos with seeds the training clips do not use (the evaluation
    photos stay untouched, so no choice is ever made on them)."""
    shake = ShakeConfig(num_frames=cfg.validation_frames, width=cfg.synth_width, height=cfg.synth_height)
    photos = [p for p in cfg.photos if p != DEAD_LEAVES] if cfg.train_data == "synthetic" else []
    photos = photos or list(TRAIN_PHOTOS)  # procedural pictures change with the seed: validate on photos
    return [synthesize_shake(photos[i % len(photos)], shake, seed=10_000 + cfg.seed * 100 + i)
            for i in range(cfg.num_validation_clips)]


@torch.no_grad()
def evaluate_clips(model: DTBNet, clips, precision: str = "float32") -> dict:
    """Mean PSNR gain on all frames and on the blurriest third, and the worst per-frame loss, over clips."""
    from ..evaluation import score
    from ..frames import as_frames_tensor, to_uint8_frames

    gains_all, gains_hard, worst = [], [], []
    was_training = model.training
    model.eval()
    for c in clips:
        x = as_frames_tensor(c.blurry, device=model.device)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            out = model(x)
        s = score(to_uint8_frames(out), c.sharp, blurry=c.blurry, blur_score=c.blur_extent, with_ewarp=False)
        gains_all.append(s.gain("all"))
        gains_hard.append(s.gain("hard"))
        worst.append(s.worst_loss())
    model.train(was_training)
    return {"gain_all": float(np.mean(gains_all)), "gain_hard": float(np.mean(gains_hard)),
            "worst_loss": float(np.max(worst))}


def frame_loss(out: torch.Tensor, sharp: torch.Tensor, kind: str = "mse", eps: float = 1e-5,
               blurry: torch.Tensor | None = None, harm_weight: float = 0.0):
    """(plain MSE for logging, the training loss) for clips (B, T, 3, H, W); see DTBTrainConfig.loss."""
    per_frame = (out.float() - sharp.float()).pow(2).flatten(2).mean(2)  # (B, T)
    mse = per_frame.mean()
    if kind == "mse":
        loss = mse
    elif kind == "log_mse":
        loss = torch.log(per_frame + eps).mean()
    else:
        raise ValueError(f"unknown loss {kind!r}; choose mse or log_mse")
    if harm_weight > 0:
        if blurry is None:
            raise ValueError("the do-no-harm term needs the blurry input")
        before = (blurry.float() - sharp.float()).pow(2).flatten(2).mean(2)
        loss = loss + harm_weight * (F.relu(per_frame - before) / (before + eps)).mean()
    return mse, loss


def weight_norm_sq(model: torch.nn.Module) -> torch.Tensor:
    return sum((p.float() ** 2).sum() for n, p in model.named_parameters() if p.requires_grad and n.endswith("weight"))


# --------------------------------------------------------------------------------------- training
def train(cfg: DTBTrainConfig) -> dict:
    """Train a DTBNet; writes ``cfg.output_dir`` (model, ``training_config.json``, ``training_log.json``,
    README.md) and returns the final validation figures."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    set_threads(cfg.num_threads)
    output_dir = Path(cfg.output_dir)
    report_to = resolve_report_to(cfg.report_to)
    project_config = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / cfg.logging_dir))
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              mixed_precision=cfg.mixed_precision, log_with=report_to, project_config=project_config)
    set_seed(cfg.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_checkpoints(output_dir, accelerator)

    if cfg.init_from:
        model = DTBNet.from_pretrained(cfg.init_from, use_safetensors=True)
        if model.config.variant != cfg.variant:
            raise ValueError(f"{cfg.init_from} holds a {model.config.variant} model, not {cfg.variant}")
    else:
        model = DTBNet(**cfg.model_kwargs())
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # decay the convolution weights only (not biases, not beta)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    groups = [{"params": decay, "weight_decay": 0.0 if cfg.weight_decay_in_loss else cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_epsilon)
    # staircase exponential decay: lr * rate ** floor(step / decay_steps); Accelerate steps a prepared
    # scheduler once per process at every optimisation step (as in diffusers' examples), hence the factor
    decay_every = max(1, cfg.lr_decay_steps) * accelerator.num_processes
    switch_step = cfg.max_train_steps - cfg.finetune_steps if cfg.finetune_steps else None
    ft_ratio = cfg.finetune_learning_rate / cfg.learning_rate

    def lr_factor(s: int) -> float:
        f = cfg.lr_decay_rate ** (s // decay_every)
        if switch_step is not None and s >= switch_step * accelerator.num_processes:
            f *= ft_ratio
        return f

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    total_samples = (cfg.max_train_steps * cfg.train_batch_size * cfg.gradient_accumulation_steps
                     * accelerator.num_processes)
    dataset = build_train_dataset(cfg, total_samples)
    loader = DataLoader(dataset, batch_size=cfg.train_batch_size, shuffle=False, collate_fn=collate,
                        num_workers=cfg.dataloader_num_workers, drop_last=True)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    val_clips = validation_clips(cfg) if cfg.num_validation_clips > 0 else []

    start_trackers(accelerator, report_to, cfg.tracker_project_name, asdict(cfg))

    global_step = 0
    path = load_resume(cfg.resume_from_checkpoint, output_dir, lambda p: accelerator.load_state(str(p)))
    if path is not None:
        accelerator.print(f"resumed from {path}")
        global_step = checkpoint_step(path)
        # the learning rate follows this run's schedule (max_train_steps or finetune_steps may have changed)
        sched = getattr(scheduler, "scheduler", scheduler)
        for group in getattr(optimizer, "optimizer", optimizer).param_groups:
            group["lr"] = group["initial_lr"] * lr_factor(sched.last_epoch)
    skip = global_step * cfg.gradient_accumulation_steps
    active_loader = accelerator.skip_first_batches(loader, skip) if skip else loader

    log_path = output_dir / "training_log.json"
    history = read_history(log_path, global_step)
    progress = tqdm(range(cfg.max_train_steps), initial=global_step, desc="train dtb",
                    disable=not accelerator.is_local_main_process)
    t0 = time.perf_counter()
    model.train()
    running, running_in = [], []
    restarted = False
    for batch in active_loader:
        if global_step >= cfg.max_train_steps:
            break
        finetuning = switch_step is not None and global_step >= switch_step
        if finetuning and global_step == switch_step and not restarted:
            _restart_adam(optimizer)
            restarted = True
            logger.info("step %d: switching to the %s loss at lr %g", global_step, cfg.finetune_loss,
                        cfg.finetune_learning_rate)
        with accelerator.accumulate(model):
            blurry, sharp = batch["blurry"], batch["sharp"]
            out = model(blurry)
            mse, loss = frame_loss(out, sharp, cfg.finetune_loss if finetuning else cfg.loss, cfg.loss_eps, blurry,
                                   cfg.harm_weight)
            if cfg.weight_decay_in_loss:
                loss = loss + cfg.weight_decay * weight_norm_sq(accelerator.unwrap_model(model))
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        running.append(mse.detach().item())
        running_in.append(F.mse_loss(blurry.float(), sharp.float()).item())
        if not accelerator.sync_gradients:
            continue
        global_step += 1
        progress.update(1)
        logs = {"mse": float(np.mean(running)), "lr": scheduler.get_last_lr()[0],
                "train_gain_db": float(10 * np.log10(np.mean(running_in) / max(np.mean(running), 1e-12)))}
        running, running_in = [], []
        progress.set_postfix(mse=f"{logs['mse']:.2e}", gain=f"{logs['train_gain_db']:+.2f}dB")
        accelerator.log(logs, step=global_step)
        if cfg.checkpointing_steps and global_step % cfg.checkpointing_steps == 0:
            # the state is saved by the main process only
            save_checkpoint(accelerator, output_dir, global_step, cfg.checkpoints_total_limit)
        if accelerator.is_main_process:
            if val_clips and cfg.validation_steps and global_step % cfg.validation_steps == 0:
                val = evaluate_clips(accelerator.unwrap_model(model), val_clips)
                accelerator.log({f"val/{k}": v for k, v in val.items()}, step=global_step)
                logger.info("step %d: validation %s", global_step, val)
                history.append({"step": global_step, "mse": logs["mse"], "train_gain_db": logs["train_gain_db"],
                                "elapsed_s": time.perf_counter() - t0, **val})
                write_history(log_path, history)
    progress.close()
    accelerator.wait_for_everyone()
    result = {}
    if accelerator.is_main_process:
        net = accelerator.unwrap_model(model).to(memory_format=torch.contiguous_format)
        if val_clips:
            result = evaluate_clips(net, val_clips)
            if not history or history[-1]["step"] != global_step:
                history.append({"step": global_step, "elapsed_s": time.perf_counter() - t0, **result})
        net.save_pretrained(output_dir, safe_serialization=True)
        record = {**asdict(cfg), "model_config": {k: v for k, v in net.config.items() if not k.startswith("_")}}
        (output_dir / "training_config.json").write_text(json.dumps(record, indent=1, default=str))
        write_history(log_path, history)
        _write_model_card(output_dir, cfg, global_step, result)
    accelerator.end_training()
    return result


def _restart_adam(optimizer) -> None:
    """Forget Adam's moment estimates (they are re-initialised at the next step)."""
    opt = getattr(optimizer, "optimizer", optimizer)
    opt.state.clear()


def _write_model_card(output_dir: Path, cfg: DTBTrainConfig, steps: int, val: dict) -> None:
    figures = "".join(f"| {k} | {v:+.3f} |\n" for k, v in val.items())
    start = f" starting from `{cfg.init_from}`" if cfg.init_from else ""
    data = ("synthetic camera shake from the built-in photos " + ", ".join(cfg.photos)
            if cfg.train_data == "synthetic" else cfg.train_data)
    text = (f"# DTBNet ({cfg.variant})\n\nTrained with `training/train_dtb.py`{start} for {steps} steps "
            f"(batch {cfg.train_batch_size}, {cfg.clip_len}-frame clips, {cfg.crop}px crops, lr {cfg.learning_rate}, "
            f"{cfg.mixed_precision} mixed precision, seed {cfg.seed}).\n\n"
            f"Data: {data}.\n"
            f"Photos kept for evaluation (never trained on): {', '.join(EVAL_PHOTOS)}.\n\n"
            f"Validation (held-out seeds of training photos, dB):\n\n| figure | value |\n|---|---|\n{figures}\n"
            f"Full options: `training_config.json`; curve: `training_log.json`.\n")
    (output_dir / "README.md").write_text(text)


# --------------------------------------------------------------------------------------- evaluation
def evaluate_shake(model: DTBNet, photos=EVAL_PHOTOS, seeds=(0,), num_frames: int = 40, precision: str = "auto",
                   with_guard: bool = False) -> list[dict]:
    """Score a model, streamed as the CLI runs it, on built-in camera-shake clips (by default the evaluation
    photos, which training never sees): per clip the PSNR gain on all frames and on the blurriest third, the
    worst per-frame loss and the frames made worse by > 0.3 dB; with ``with_guard`` also after the do-no-harm
    guard (:mod:`vdiffdeblur.methods.guard`)."""
    from ..evaluation import score
    from ..methods.dtb import OnlineDeblurrer

    rows = []
    for photo in photos:
        for seed in seeds:
            clip = synthesize_shake(f"builtin:{photo}" if ":" not in str(photo) else photo,
                                    ShakeConfig(num_frames=num_frames), seed=seed)
            out = OnlineDeblurrer(model, precision=precision).deblur(clip.blurry)
            s = score(out, clip.sharp, blurry=clip.blurry, blur_score=clip.blur_extent, with_ewarp=False)
            row = {"photo": str(photo), "seed": seed, "gain_hard": s.gain("hard"), "gain_all": s.gain("all"),
                   "worst_loss": s.worst_loss(), "frames_worse": s.frames_worse(),
                   "input_hard_psnr": float(np.mean(s.input_psnr[s.hard]))}
            if with_guard:
                from ..methods.guard import guard

                g = score(guard(clip.blurry, out), clip.sharp, blurry=clip.blurry, blur_score=clip.blur_extent,
                          with_ewarp=False)
                row.update({"guard_gain_hard": g.gain("hard"), "guard_gain_all": g.gain("all"),
                            "guard_worst_loss": g.worst_loss(), "guard_frames_worse": g.frames_worse()})
            rows.append(row)
    return rows
