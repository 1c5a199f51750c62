#!/usr/bin/env python
r"""Train the small AutoencoderKL of the shipped diffusion deblurrer on the built-in TRAIN photos (first step;
docs/training.md, "The shipped small model").

    accelerate launch --num_processes 1 --mixed_precision no training/train_vae.py \
        --config training/configs/small_vae.yaml

Options come from the YAML file and the command line (`--name value`); the logic lives in
`vdiffdeblur/trainer/vae.py`.
"""

import sys

from vdiffdeblur.trainer.cli import vae_main

if __name__ == "__main__":
    sys.exit(vae_main())
