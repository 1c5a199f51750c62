#!/usr/bin/env python
"""Meta-learn the FitUNet initialisation of the fit-to-test-data method (MAML, the paper's Algorithm 1).

    python training/meta_train.py --output_dir out/fit_maml --steps 4000 --seed 0 --first_order true
    python training/meta_train.py --config training/configs/fit_maml.yaml --output_dir out/fit_maml
    accelerate launch training/meta_train.py --output_dir out/fit_maml --mixed_precision bf16

Tasks come from the built-in scikit-image *training* photos only (``TRAIN_PHOTOS``); the evaluation photos
stay unseen. Every field of ``MetaTrainConfig`` and of ``MetaConfig`` (Algorithm 1's settings) is an option,
in a YAML file (``--config``; ``MetaConfig``'s at the top level or under ``meta:``) and on the command line
(``--name value``; booleans as ``--first_order true``), which wins. The logic lives in
``vdiffdeblur/trainer/maml.py``; the shipped initialisation ``vdiffdeblur/checkpoints/fit_maml`` is this
script's output folder.
"""

from __future__ import annotations

import sys

from vdiffdeblur.trainer.cli import maml_main


def main(argv=None) -> int:
    return maml_main(argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(main())
