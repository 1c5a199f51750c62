"""The model card (README.md) written next to a trained pipeline: base model, data, steps, validation figures."""

from __future__ import annotations

from pathlib import Path

from ..data.synthetic import EVAL_PHOTOS
from .config import DiffusionTrainConfig

STAGE_TEXT = {
    1: "stage 1 of the two-stage training (paper section 4.2): only the blur encoder (image encoder 2){conv} "
       "learned; the UNet and the VAE are the base model's",
    2: "stage 2 of the two-stage training (paper section 4.2): the UNet and the blur encoder learned; the VAE is "
       "the base model's",
}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def model_card(cfg: DiffusionTrainConfig, steps: int, num_processes: int, history: list[dict],
               final: dict | None, base_prediction_type: str) -> str:
    conv = " and the new input channels of the UNet's conv_in" if cfg.train_conv_in else ""
    base = "a tiny random pipeline (vdiffdeblur.models.tiny; for tests, it deblurs nothing)" \
        if cfg.pretrained == "tiny" else f"`{cfg.pretrained}`"
    if cfg.train_data == "synthetic":
        data = (f"synthetic camera shake made on the fly from the built-in photos {', '.join(cfg.photos)} "
                f"({cfg.num_clips} clips, {cfg.frames_per_clip} frames of {cfg.synth_width}x{cfg.synth_height}, "
                f"{cfg.still_fraction:.0%} without shake)")
    else:
        data = f"paired blurry/sharp clips from `{cfg.train_data}` (layout {cfg.layout})"
    if cfg.validation_data == "synthetic":
        vdata = (f"{cfg.num_validation_clips} synthetic camera-shake clips from the held-out photos "
                 f"{', '.join(cfg.validation_photos)} ({cfg.validation_frames} frames, {cfg.validation_size}px)")
    elif cfg.validation_data:
        vdata = f"{cfg.num_validation_clips} clips of `{cfg.validation_data}`"
    else:
        vdata = "none"
    eff_batch = cfg.train_batch_size * cfg.gradient_accumulation_steps * num_processes
    loss = ("diffusion loss"
            + (f" + {cfg.coherence_weight:g} x temporal coherence loss" if cfg.coherence_weight else "")
            + (f" + {cfg.alignment_weight:g} x encoder alignment ({cfg.alignment_loss})"
               if cfg.alignment_weight else ""))
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: video-to-video",
        "tags: [vdiffdeblur, video-deblurring, diffusers, DeblurVideoPipeline]",
        f"base_model: {cfg.pretrained}",
        "---",
        "",
        f"# DeblurVideoPipeline, stage {cfg.stage}",
        "",
        f"A video deblurring diffusion pipeline trained with `training/stage{cfg.stage}.py` (vdiffdeblur): "
        + STAGE_TEXT[cfg.stage].format(conv=conv) + ".",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {base} |",
        f"| data | {data} |",
        f"| steps | {steps} (of {cfg.max_train_steps} asked) |",
        f"| batch | {cfg.train_batch_size} per process x {cfg.gradient_accumulation_steps} accumulation x "
        f"{num_processes} process(es) = {eff_batch} clips per step |",
        f"| clips | {cfg.clip_len} frames, {cfg.crop}px random crops |",
        f"| loss | {loss}, in the base model's parameterisation ({base_prediction_type}) |",
        f"| condition dropout | {cfg.condition_dropout:g} (for classifier-free guidance) |",
        f"| optimizer | AdamW ({cfg.adam_beta1:g}, {cfg.adam_beta2:g}), lr {cfg.learning_rate:g} "
        f"({cfg.lr_scheduler}, {cfg.lr_warmup_steps} warm-up steps), weight decay {cfg.adam_weight_decay:g} |",
        f"| precision | mixed precision {cfg.mixed_precision or 'no'}"
        f"{', EMA ' + format(cfg.ema_decay, 'g') if cfg.use_ema else ''}"
        f"{', gradient checkpointing' if cfg.gradient_checkpointing else ''} |",
        f"| seed | {cfg.seed} |",
        "",
        "## Validation",
        "",
        f"Held-out data: {vdata}; training never sees the photos {', '.join(EVAL_PHOTOS)}. The pipeline ran with "
        f"{cfg.validation_inference_steps} DDIM steps and guidance {cfg.validation_guidance_scale:g}; the "
        "validation loss is the training objective on those clips at fixed timesteps and noise.",
        "",
    ]
    rows = [h for h in history if "val_psnr" in h or "val_diffusion" in h]
    if rows:
        lines += ["| step | val loss (diffusion) | PSNR out / in (dB) | SSIM out / in |", "|---|---|---|---|"]
        for h in rows:
            lines.append(f"| {h['step']} | {_fmt(h.get('val_diffusion', '-'))} | "
                         f"{_fmt(h.get('val_psnr', '-'))} / {_fmt(h.get('val_input_psnr', '-'))} | "
                         f"{_fmt(h.get('val_ssim', '-'))} / {_fmt(h.get('val_input_ssim', '-'))} |")
        lines.append("")
        if "val_vae_psnr" in rows[-1]:
            lines += [f"The VAE alone (sharp clips encoded and decoded) reaches {rows[-1]['val_vae_psnr']:.2f} dB: no "
                      "output can be better.", ""]
    else:
        lines += ["No validation was run.", ""]
    if final and final.get("images"):
        out_dir = Path(cfg.output_dir)
        shown = [Path(p).relative_to(out_dir) if Path(p).is_relative_to(out_dir) else p for p in final["images"]]
        lines += ["Side-by-side images (blurry | deblurred | sharp): " + ", ".join(f"`{p}`" for p in shown), ""]
    lines += [
        "## Use",
        "",
        "```python",
        "import torch",
        "from vdiffdeblur import DeblurVideoPipeline",
        f'pipe = DeblurVideoPipeline.from_pretrained("{cfg.output_dir}")',
        "frames = pipe(blurry_frames, num_inference_steps=50, guidance_scale=3.0,",
        "              generator=torch.Generator().manual_seed(0)).frames[0]",
        "```",
        "",
        "Full options: `training_config.json`; the curve: `training_log.json`.",
        "",
    ]
    return "\n".join(lines)
