"""The network a fit starts from: the shipped MAML initialisation, a seeded random one or a FitUNet folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ...model_folders import require_kind

logger = logging.getLogger(__name__)

SHIPPED_INIT = Path(__file__).resolve().parents[2] / "checkpoints" / "fit_maml"
DEFAULT_ARCH = dict(base_channels=32, levels=4, convs_per_block=2, unshuffle=2, max_channels=128)


def load_init(init="maml", seed: int = 0):
    """The FitUNet a fit starts from: ``"maml"`` (the shipped meta-learned initialisation), ``"random"``
    (a seeded fresh network of the same layout) or a folder saved with ``save_pretrained``."""
    from ...models.fit_unet import FitUNet

    if isinstance(init, FitUNet):
        return init
    name = str(init)
    if name == "random":
        arch = dict(DEFAULT_ARCH)
        if (SHIPPED_INIT / "config.json").is_file():
            arch = {k: v for k, v in FitUNet.load_config(SHIPPED_INIT).items() if not k.startswith("_")}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return FitUNet(**arch)
    path = SHIPPED_INIT if name == "maml" else Path(name)
    require_kind(path, "FitUNet", "a fit initialisation folder")
    if not (path / "config.json").is_file():
        if name == "maml":
            raise FileNotFoundError(f"the shipped MAML initialisation is missing from {path}; reinstall the "
                                    "package or pass --init random / a FitUNet folder")
        raise FileNotFoundError(f"{path}: not a FitUNet folder (config.json missing); use --init maml, random "
                                "or a folder written by FitUNet.save_pretrained")
    return FitUNet.from_pretrained(str(path))


def maml_adaptation(init) -> tuple[float, int] | None:
    """(inner learning rate alpha, inner steps) a MAML initialisation was meta-trained with, read from the
    ``meta_train.json`` that ``training/meta_train.py`` writes next to it; None for other initialisations.

    A MAML initialisation is meant to be used *after* its inner update, so a fit starts with that update
    (plain SGD of step alpha) and goes on with Adam (docs/fit.md).
    """
    if not isinstance(init, (str, Path)) or str(init) == "random":
        return None
    path = SHIPPED_INIT if str(init) == "maml" else Path(init)
    meta = path / "meta_train.json"
    if not meta.is_file():
        return None
    try:
        m = json.loads(meta.read_text())["config"]["meta"]
        return float(m["inner_lr"]), int(m["inner_steps"])
    except (ValueError, KeyError, TypeError):
        logger.warning("%s: unreadable meta-training record; fitting without the MAML inner update", meta)
        return None
