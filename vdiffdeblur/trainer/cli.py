"""The command lines of `training/stage1.py`, `training/stage2.py` and `training/train_vae.py`."""

from __future__ import annotations

import logging
import sys


def main(argv=None, stage: int = 1) -> int:
    from .config import parse_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(argv, stage=stage)
    except (FileNotFoundError, TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .loop import train

    try:
        result = train(cfg)
    except (FileNotFoundError, ValueError) as e:  # user errors: missing folders, bad options, incompatible models
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result:
        print(f"stage {stage} done: validation loss {result.get('diffusion', float('nan')):.4f}, "
              f"PSNR {result.get('psnr', float('nan')):.2f} dB (input {result.get('input_psnr', float('nan')):.2f}), "
              f"SSIM {result.get('ssim', float('nan')):.4f}; pipeline in {cfg.output_dir}")
    else:
        print(f"stage {stage} done; pipeline in {cfg.output_dir}")
    return 0


def vae_main(argv=None) -> int:
    """`training/train_vae.py`: parse, train, print one line; user errors exit 2 with one line."""
    from .vae import parse_vae_config, train_vae

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_vae_config(argv)
        summary = train_vae(cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"VAE done: EVAL reconstruction PSNR {summary['eval_psnr_mean']:.2f} dB; saved to {cfg.output_dir}/vae")
    return 0
