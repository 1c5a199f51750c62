"""Assemble the untrained starting pipeline of the shipped small diffusion deblurrer around a trained VAE
(`vdiffdeblur.pipelines.small`): the folder `training/stage1.py` starts from.

    python scripts/make_small_pipeline.py --vae outputs/diffusion_vae/vae --out outputs/diffusion_init [--seed 0]
        [--unet-layout attention|low_attention|mid_attention] [--prior transfer|dtb]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Assemble the small DeblurVideoPipeline around a trained VAE.")
    p.add_argument("--vae", required=True, help="an AutoencoderKL folder (training/train_vae.py's output_dir/vae)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seeds the UNet's and the blur encoder's initial weights")
    p.add_argument("--unet-layout", default="attention", choices=("attention", "low_attention", "mid_attention"),
                   help="the shipped UNet, one without attention at the full latent size, or one with attention in "
                        "its mid block only (faster; docs/diffusion.md, 'Speed at 320x240')")
    p.add_argument("--prior", choices=("transfer", "dtb"), default=None,
                   help="the UNet also takes this method's output and refines it (default: none)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = p.parse_args(argv)

    from diffusers import AutoencoderKL

    from vdiffdeblur.pipelines.small import make_small_pipeline
    from vdiffdeblur.video import writing_atomically

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists (use --overwrite)", file=sys.stderr)
        return 2
    if not (Path(args.vae) / "config.json").is_file():
        print(f"error: {args.vae}: not an AutoencoderKL folder (no config.json)", file=sys.stderr)
        return 2
    vae = AutoencoderKL.from_pretrained(args.vae, use_safetensors=True)
    pipe = make_small_pipeline(vae, seed=args.seed, prior_method=args.prior, unet_layout=args.unet_layout)
    with writing_atomically(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    print(f"wrote the small starting DeblurVideoPipeline to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
