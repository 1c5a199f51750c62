#!/usr/bin/env python
"""Stage 1 of the diffusion deblurrer's training: the blur encoder (and conv_in's new input channels) learn,
the pretrained UNet and VAE stay frozen (paper section 4.2; docs/training.md).

    accelerate launch training/stage1.py --config training/configs/tiny.yaml --max_train_steps 4
    accelerate launch training/stage1.py --config training/configs/modelscope.yaml --pretrained models/deblur-ms-1.7b

Options come from the YAML file (top level + its `stage1:` section) and the command line (`--name value`);
the logic lives in `vdiffdeblur/trainer/`.
"""

import sys

from vdiffdeblur.trainer.cli import main

if __name__ == "__main__":
    sys.exit(main(stage=1))
