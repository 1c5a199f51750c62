"""Every trainer of vdiffdeblur, with Accelerate (docs/training.md); `vdiffdeblur.methods` holds inference only.

The scripts in `training/` only call `cli` (their command lines: parse, train, one line out). Shared by every
trainer: `options` (`config_cli`: a config dataclass's options from YAML and the command line), `toolkit`
(`report_to`, the training log on resume, CPU threads, the held-out-photo check) and `checkpoints` (crash-safe
Accelerate checkpoints, resume).

* the diffusion deblurrer's two stages (paper section 4.2; `training/stage1.py`, `stage2.py`): `config` (options),
  `components` (loading, freezing, the trained module), `objective` (the losses of a batch), `data` (training /
  validation clips), `validation`, `card` (the model card), `loop` (the training loop); for the shipped small
  model also `vae` (its AutoencoderKL, `training/train_vae.py`), `quality` (the held-out quality check) and
  `ship` (assembling vdiffdeblur/checkpoints/diffusion/);
* `dtb`: the online network DTBNet (`training/train_dtb.py`; docs/dtb.md);
* `maml`: the fit-to-test-data method's MAML initialisation (`training/meta_train.py`; docs/fit.md);
* `recipes`: how each shipped model was trained, as data (`training/recipes/`, run by `scripts/reproduce.py`).
"""

from .config import DiffusionTrainConfig, parse_config

__all__ = ["DiffusionTrainConfig", "parse_config", "train", "main"]


def train(cfg):
    from .loop import train as _train

    return _train(cfg)


def main(argv=None, stage: int = 1) -> int:
    from .cli import main as _main

    return _main(argv, stage=stage)
