#!/usr/bin/env python
"""Meta-learn the FitUNet initialisation of the fit-to-test-data method (MAML, the paper's Algorithm 1).

    python training/meta_train.py --output_dir out/fit_maml --steps 4000 --seed 0 --first_order true
    accelerate launch training/meta_train.py --output_dir out/fit_maml --mixed_precision bf16

Tasks come from the built-in scikit-image *training* photos only (``TRAIN_PHOTOS``); the evaluation photos
stay unseen. Every field of ``MetaTrainConfig`` and of ``MetaConfig`` (Algorithm 1's settings) is an option
(``--name value``; booleans as ``--first_order true``). The logic lives in ``vdiffdeblur/methods/maml.py``;
the shipped initialisation ``vdiffdeblur/checkpoints/fit_maml`` is this script's output folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from vdiffdeblur.methods.maml import MetaConfig, MetaTrainConfig, meta_train
from vdiffdeblur.argtypes import parse_bool as _bool


def _parser_for(p: argparse.ArgumentParser, cls, skip=()) -> None:
    for f in fields(cls):
        if f.name in skip:
            continue
        default = getattr(cls(), f.name)
        if isinstance(default, tuple):
            p.add_argument(f"--{f.name}", type=float, nargs="+", default=None, help=f"(default {default})")
            continue
        kind = {bool: _bool, int: int, float: float}.get(type(default), str)
        p.add_argument(f"--{f.name}", type=kind, default=None, help=f"(default {default!r})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _parser_for(p, MetaTrainConfig, skip=("meta",))
    _parser_for(p, MetaConfig)
    return p


def main(argv=None) -> int:
    args = vars(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    meta_names = {f.name for f in fields(MetaConfig)}
    try:
        meta = MetaConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items()
                             if k in meta_names and v is not None})
        cfg = MetaTrainConfig(meta=meta, **{k: v for k, v in args.items() if k not in meta_names and v is not None})
        meta_train(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
