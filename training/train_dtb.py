#!/usr/bin/env python
"""Train the online deblurring network DTBNet (STRCNN+DTB, STRCNN or CNN) with Accelerate.

    accelerate launch training/train_dtb.py --config training/configs/dtb.yaml
    python training/train_dtb.py --config training/configs/dtb.yaml --variant cnn --output_dir out/dtb-cnn

Every option of :class:`vdiffdeblur.methods.dtb_train.DTBTrainConfig` can be set in the YAML file and
overridden on the command line (``--name value``; booleans as ``--residual false``). The logic lives in
``vdiffdeblur/methods/dtb_train.py``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import yaml

from vdiffdeblur.methods.dtb_train import DTBTrainConfig, train
from vdiffdeblur.argtypes import optional as _optional, parse_bool as _bool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML file with DTBTrainConfig options (command-line options override it)")
    for f in fields(DTBTrainConfig):
        default = f.default if f.default is not MISSING else None
        if f.name == "photos":
            p.add_argument("--photos", nargs="+", default=None, help="training photos (built-in names or paths)")
            continue
        if f.name == "source_zoom":
            p.add_argument("--source_zoom", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
                           help=f"(default {default!r})")
            continue
        kind = {bool: _bool, int: int, float: float}.get(type(default), str)
        if default is None or f.name in ("checkpoints_total_limit", "report_to", "resume_from_checkpoint", "init_from"):
            kind = _optional(int if f.name == "checkpoints_total_limit" else str)
        p.add_argument(f"--{f.name}", type=kind, default=None, help=f"(default {default!r})")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            print(f"error: config file {path} not found", file=sys.stderr)
            return 2
        options.update(yaml.safe_load(path.read_text()) or {})
    options.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    try:
        cfg = DTBTrainConfig.from_dict(options)
    except (TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result = train(cfg)
    except (FileNotFoundError, ValueError) as e:  # user errors: a missing or corrupt checkpoint, bad options
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result:
        print("final validation: " + ", ".join(f"{k} {v:+.3f} dB" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
