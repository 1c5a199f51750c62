#!/usr/bin/env python
"""Train the online deblurring network DTBNet (STRCNN+DTB, STRCNN or CNN) with Accelerate.

    accelerate launch training/train_dtb.py --config training/configs/dtb.yaml
    python training/train_dtb.py --config training/configs/dtb.yaml --variant cnn --output_dir out/dtb-cnn

Every option of :class:`vdiffdeblur.trainer.dtb.DTBTrainConfig` can be set in the YAML file and
overridden on the command line (``--name value``; booleans as ``--residual false``). The logic lives in
``vdiffdeblur/trainer/dtb.py``.
"""

from __future__ import annotations

import sys

from vdiffdeblur.trainer.cli import dtb_main


def main(argv=None) -> int:
    return dtb_main(argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(main())
