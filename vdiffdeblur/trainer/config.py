"""Options of the two-stage diffusion training, from a YAML file and the command line (`options.config_cli`).

A YAML config holds options shared by both stages at the top level, and per-stage overrides under
``stage1:`` / ``stage2:``; command-line options (``--name value``) override both. Unknown keys are an error
naming them, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..data.synthetic import EVAL_PHOTOS, TRAIN_PHOTOS
from .options import ConfigCLI, build_config, config_cli
from .toolkit import check_training_photos

#: the stage-dependent defaults (None in the dataclass means "take the stage's value")
STAGE_DEFAULTS = {
    1: {"coherence_weight": 0.0, "output_dir": "deblur-stage1"},
    2: {"coherence_weight": 0.1, "output_dir": "deblur-stage2"},
}
_TUPLE_FIELDS = ("photos", "validation_photos")


@dataclass
class DiffusionTrainConfig:
    """Every option of `training/stage1.py` and `training/stage2.py` (docs/training.md lists them)."""

    stage: int = 1
    # ---- model
    pretrained: str | None = None  # a DeblurVideoPipeline folder, or "tiny" (a tiny random one, for CPU tests)
    tiny_seed: int = 0
    tiny_prediction_type: str = "epsilon"
    # "transfer" / "dtb": the UNet refines that method's output (its conv_in widened for the prior's latents when the
    # base has none); None: the base's own prior_method
    prior_method: str | None = None
    teacher_encoder: str | None = None  # image encoder 1; default: a frozen copy of the starting blur encoder
    output_dir: str | None = None  # default deblur-stage<N>
    seed: int = 0
    # ---- training data: "synthetic" (camera shake or layered scenes from TRAIN_PHOTOS) or a PairedVideoDataset folder
    train_data: str = "synthetic"
    layout: str = "auto"
    photos: tuple = TRAIN_PHOTOS
    num_clips: int = 256
    samples_per_clip: int = 1  # items per synthetic clip (or paired sequence) per epoch
    frames_per_clip: int = 24
    still_fraction: float = 0.1
    layered_fraction: float = 0.0  # share of synthetic clips that are layered scenes (objects moving on their own)
    synth_width: int = 320
    synth_height: int = 288
    clip_len: int = 16
    crop: int = 256
    # ---- objective
    train_conv_in: bool = True  # stage 1: train conv_in's new input channels too
    condition_dropout: float = 0.1
    coherence_weight: float | None = None  # lambda; default 0 in stage 1, 0.1 in stage 2
    coherence_reduction: str = "sum_frames"
    alignment_weight: float = 0.0
    alignment_loss: str = "cosine"
    # ---- optimisation
    train_batch_size: int = 1
    max_train_steps: int = 10000
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str | None = None  # no | fp16 | bf16; None: what `accelerate launch` / its config says
    gradient_checkpointing: bool = False
    use_ema: bool = False
    ema_decay: float = 0.9999
    allow_tf32: bool = False
    dataloader_num_workers: int = 0
    num_threads: int = 0  # torch intra-op threads; 0: torch's default (1 is fastest on a shared CPU)
    # ---- validation: held-out clips (EVAL_PHOTOS) through the pipeline
    validation_data: str | None = "synthetic"  # "synthetic", a PairedVideoDataset folder, or None (no validation)
    validation_photos: tuple = EVAL_PHOTOS
    num_validation_clips: int = 2
    validation_frames: int = 16
    validation_size: int = 256
    validation_steps: int = 500
    validation_at_start: bool = False  # also validate before the first step (a baseline for the curve)
    validation_inference_steps: int = 50
    validation_guidance_scale: float = 3.0
    validation_loss_draws: int = 4  # fixed (timestep, noise) draws per clip for the validation loss
    # ---- bookkeeping
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    logging_dir: str = "logs"
    report_to: str | None = "auto"  # tensorboard | wandb | ... | None; auto: tensorboard when installed
    tracker_project_name: str = "vdiffdeblur-diffusion"

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage!r}")
        for key, value in STAGE_DEFAULTS[self.stage].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.photos, self.validation_photos = tuple(self.photos), tuple(self.validation_photos)
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.tiny_prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"tiny_prediction_type must be epsilon or v_prediction, got {self.tiny_prediction_type!r}")
        if self.prior_method not in (None, "transfer", "dtb"):
            raise ValueError(f"prior_method must be transfer, dtb or None, got {self.prior_method!r}")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {self.condition_dropout}")
        if self.coherence_reduction not in ("sum_frames", "mean", "sum"):
            raise ValueError(f"coherence_reduction must be sum_frames, mean or sum, got {self.coherence_reduction!r}")
        if self.alignment_loss not in ("cosine", "mse"):
            raise ValueError(f"alignment_loss must be cosine or mse, got {self.alignment_loss!r}")
        for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "clip_len",
                     "num_clips", "samples_per_clip", "validation_inference_steps", "validation_frames",
                     "validation_loss_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.layered_fraction <= 1.0:
            raise ValueError(f"layered_fraction must be in [0, 1], got {self.layered_fraction}")
        if self.coherence_weight < 0 or self.alignment_weight < 0:
            raise ValueError("coherence_weight and alignment_weight must be >= 0")
        if self.train_data == "synthetic":
            check_training_photos(self.photos)
            if self.crop and (self.crop > self.synth_width or self.crop > self.synth_height):
                raise ValueError(f"crop {self.crop} is larger than the synthetic frames "
                                 f"{self.synth_width}x{self.synth_height}")

    @classmethod
    def from_dict(cls, options: dict) -> "DiffusionTrainConfig":
        return build_config(cls, options)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in _TUPLE_FIELDS:
            d[k] = list(d[k])
        return d


# ------------------------------------------------------------------------------------------- YAML + CLI
def stage_cli(stage: int) -> ConfigCLI:
    """The command line of the stage-`stage` script: ``--config FILE`` (top level + its ``stage<N>:`` section)
    plus one ``--name`` per config field."""
    what = "blur encoder + conv_in new channels" if stage == 1 else "UNet + blur encoder"
    return config_cli(DiffusionTrainConfig, description=f"Stage {stage} of the diffusion deblurrer's training "
                      f"({what}).", section=f"stage{stage}", sections=("stage1", "stage2"), fixed={"stage": stage})


def read_yaml_options(path, stage: int) -> dict:
    """The options a YAML config gives `stage`: its top-level keys, then its ``stage<N>:`` section on top."""
    return stage_cli(stage).read_yaml(path)


def parse_config(argv=None, stage: int = 1) -> DiffusionTrainConfig:
    """The config of a stage script: YAML (``--config``) then command-line options on top."""
    return stage_cli(stage).parse(argv)
