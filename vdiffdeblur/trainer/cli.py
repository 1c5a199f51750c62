"""The command lines of `training/stage1.py`, `stage2.py`, `train_vae.py`, `train_dtb.py` and `meta_train.py`.

Each parses its options with `options.config_cli` (``--config FILE.yaml`` + ``--name value``), trains and prints
one line; a user error (a bad or unknown option, a missing file or checkpoint, an incompatible model) is one
line on stderr and exit status 2.
"""

from __future__ import annotations

import logging
import sys


def run_script(cli, train, argv=None, done=None) -> int:
    """Parse ``argv`` with ``cli``, run ``train(cfg)``, then ``done(cfg, result)``; user errors exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = cli.parse(argv)
    except (FileNotFoundError, TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result = train(cfg)
    except (FileNotFoundError, ValueError) as e:  # user errors: missing folders, bad options, incompatible models
        print(f"error: {e}", file=sys.stderr)
        return 2
    if done is not None:
        done(cfg, result)
    return 0


def main(argv=None, stage: int = 1) -> int:
    """`training/stage1.py` / `stage2.py`."""
    from .config import stage_cli
    from .loop import train

    def done(cfg, result):
        if result:
            print(f"stage {stage} done: validation loss {result.get('diffusion', float('nan')):.4f}, "
                  f"PSNR {result.get('psnr', float('nan')):.2f} dB "
                  f"(input {result.get('input_psnr', float('nan')):.2f}), "
                  f"SSIM {result.get('ssim', float('nan')):.4f}; pipeline in {cfg.output_dir}")
        else:
            print(f"stage {stage} done; pipeline in {cfg.output_dir}")

    return run_script(stage_cli(stage), train, argv, done)


def vae_main(argv=None) -> int:
    """`training/train_vae.py`."""
    from .vae import train_vae, vae_cli

    def done(cfg, summary):
        print(f"VAE done: EVAL reconstruction PSNR {summary['eval_psnr_mean']:.2f} dB; saved to {cfg.output_dir}/vae")

    return run_script(vae_cli(), train_vae, argv, done)


def dtb_main(argv=None, description: str | None = None) -> int:
    """`training/train_dtb.py`."""
    from .dtb import dtb_cli, train

    def done(cfg, result):
        if result:
            print("final validation: " + ", ".join(f"{k} {v:+.3f} dB" for k, v in result.items()))

    return run_script(dtb_cli(description), train, argv, done)


def maml_main(argv=None, description: str | None = None) -> int:
    """`training/meta_train.py`."""
    from .maml import maml_cli, meta_train

    return run_script(maml_cli(description), meta_train, argv)
