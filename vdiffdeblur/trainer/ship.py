"""Assembling the shipped diffusion model (vdiffdeblur/checkpoints/diffusion/): the pipeline a training stage
wrote, its training records, the quality figures on held-out clips and a model card; nothing but safetensors
weights and JSON / Markdown, at most `MAX_MB`."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ..video import atomic_replace, remove_path, temp_sibling

logger = logging.getLogger(__name__)

MAX_MB = 20.0
COMPONENTS = ("vae", "unet", "blur_encoder", "scheduler")
RECORDS = ("training_config.json", "training_log.json", "trainer_state.json")


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20


def copy_pipeline(src: Path, dest: Path, records: dict[str, Path]) -> None:
    """Copy `src`'s `model_index.json` and component folders (weights and configs only) into `dest` (replaced
    atomically), plus `records` (name in dest -> file)."""
    src, dest = Path(src), Path(dest)
    if not (src / "model_index.json").is_file():
        raise FileNotFoundError(f"{src}: not a pipeline folder (no model_index.json)")
    tmp = temp_sibling(dest)
    try:
        tmp.mkdir(parents=True)
        for name in COMPONENTS:
            (tmp / name).mkdir()
            for f in (src / name).iterdir():
                if f.suffix in (".json", ".safetensors"):
                    shutil.copy2(f, tmp / name / f.name)
        for name, path in records.items():
            if Path(path).is_file():
                shutil.copy2(path, tmp / name)
        shutil.copy2(src / "model_index.json", tmp / "model_index.json")
        size = folder_mb(tmp)
        if size > MAX_MB:
            raise ValueError(f"the pipeline takes {size:.1f} MB, more than the {MAX_MB:g} MB that may ship")
        atomic_replace(tmp, dest)
    except BaseException:
        remove_path(tmp)
        raise


def stage_records(vae_dir: Path, stage_dirs: dict[str, Path]) -> dict[str, Path]:
    """The training records that ship next to the weights: `vae_<file>` and `stage<N>_<file>`."""
    out = {f"vae_{n}": Path(vae_dir) / n for n in ("training_config.json", "training_log.json", "summary.json")}
    for stage, d in stage_dirs.items():
        out.update({f"{stage}_{n}": Path(d) / n for n in RECORDS})
    return out


def write_card(dest: Path, report: dict, table: str, vae_summary: dict, commands: list[str], timings: dict) -> None:
    """README.md (model card) + quality.json in the shipped folder."""
    from .quality import MAX_FRAME_LOSS_DB, MIN_HARD_GAIN_DB

    dest = Path(dest)
    index = json.loads((dest / "model_index.json").read_text())
    vae_cfg = json.loads((dest / "vae" / "config.json").read_text())
    factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    m = report["mean"]
    mg = report.get("mean_guarded") or {}
    vae_rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in vae_summary.get("eval_psnr", {}).items())
    held = "holds" if m["meets_bar"] else "does not hold"
    held_g = "holds" if mg.get("meets_bar") else "does not hold"
    text = f"""---
library_name: diffusers
pipeline_tag: video-to-video
tags: [vdiffdeblur, video-deblurring, diffusers, DeblurVideoPipeline]
---
# vdiffdeblur small diffusion deblurrer

A `DeblurVideoPipeline` trained from scratch on one CPU thread on synthetic camera shake made from the built-in
TRAIN photos (never on coffee, chelsea, motorcycle, coins). Small on purpose: it ships inside the package
({folder_mb(dest):.1f} MB of safetensors and JSON) and shows the method end to end; it is no match for a
pipeline converted from a real text-to-video base (docs/diffusion.md).

- VAE: `AutoencoderKL`, factor {factor}, {vae_cfg['latent_channels']} latent channels, trained first
  (`training/train_vae.py`).
- UNet: `UNet3DConditionModel`, conv_in = noisy latents ++ blurry-clip latents; blur encoder: 2-layer CLIP
  vision tower + projector to 4 tokens. v-prediction, zero terminal SNR, trailing DDIM timesteps.
- Saved in `model_index.json`: residual_latents={index.get('residual_latents')}, \
residual_scale={index.get('residual_scale', 1.0):g}
  (the UNet denoises residual_scale x (z_sharp - z_blurry)), residual_decode={index.get('residual_decode')} \
(output = blurry input + decode(z_0) -
  decode(z_blurry): the VAE's reconstruction error cancels where the model changes nothing),
  {index.get('default_num_inference_steps')} DDIM steps, guidance {index.get('default_guidance_scale')}.

## VAE reconstruction PSNR (held-out photos, 320x240, posterior mode)

| photo | PSNR (dB) |
|---|---:|
{vae_rows}
| mean | {vae_summary.get('eval_psnr_mean', float('nan')):.2f} |

## Quality on held-out clips

Synthetic camera shake from the EVAL photos, scored against the sharp truth; the blurriest third by true blur
extent. Bar: hard-third gain >= {MIN_HARD_GAIN_DB:g} dB and no frame worse by > {MAX_FRAME_LOSS_DB:g} dB.
Raw pipeline: the bar {held}. Through `vdiffdeblur deblur --method diffusion` (do-no-harm guard on): it {held_g}.

{table}

## Reproduce

```bash
{chr(10).join(commands)}
```

Wall times on the shared 2-core development machine, one torch thread: \
{', '.join(f'{k} {v}' for k, v in timings.items())}.
"""
    (dest / "README.md").write_text(text)
    (dest / "quality.json").write_text(json.dumps(report, indent=1))


def set_sampling_defaults(dest: Path, **values) -> None:
    """Rewrite the pipeline's saved sampling defaults in `dest/model_index.json` (None values are left alone)."""
    path = Path(dest) / "model_index.json"
    index = json.loads(path.read_text())
    index.update({k: v for k, v in values.items() if v is not None})
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
