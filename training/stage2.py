#!/usr/bin/env python
"""Stage 2 of the diffusion deblurrer's training: from the stage-1 output, the UNet and the blur encoder learn
(VAE frozen) with the diffusion loss + lambda * temporal coherence loss (paper section 4.2; docs/training.md).

    accelerate launch training/stage2.py --config training/configs/tiny.yaml --max_train_steps 4
    accelerate launch training/stage2.py --config training/configs/modelscope.yaml --pretrained runs/ms/stage1

Options come from the YAML file (top level + its `stage2:` section) and the command line (`--name value`);
the logic lives in `vdiffdeblur/trainer/`.
"""

import sys

from vdiffdeblur.trainer.cli import main

if __name__ == "__main__":
    sys.exit(main(stage=2))
