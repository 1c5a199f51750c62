"""Two-stage training of the diffusion deblurrer with Accelerate (paper section 4.2; docs/training.md).

`training/stage1.py` and `training/stage2.py` only parse options (`config.parse_config`) and call
`loop.train`. Modules: `config` (options, YAML, command line), `components` (loading, freezing, the trained
module), `objective` (the losses of a batch), `data` (training / validation clips), `validation`,
`checkpoints` (Accelerate hooks, resume, EMA), `card` (the model card), `loop` (the training loop). For the shipped
small model: `vae` (training its AutoencoderKL, `training/train_vae.py`), `quality` (the held-out quality check),
`ship` (assembling vdiffdeblur/checkpoints/diffusion/).
"""

from .config import DiffusionTrainConfig, parse_config

__all__ = ["DiffusionTrainConfig", "parse_config", "train", "main"]


def train(cfg):
    from .loop import train as _train

    return _train(cfg)


def main(argv=None, stage: int = 1) -> int:
    from .cli import main as _main

    return _main(argv, stage=stage)
