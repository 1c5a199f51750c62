"""Checkpoints the way diffusers' training examples write them.

`output_dir/checkpoint-<step>/` comes from `accelerator.save_state` (optimizer, LR scheduler, RNG states) with
the models written by a save hook in diffusers format:

- stage 2: `unet/` and `blur_encoder/` (config.json + safetensors);
- stage 1: `blur_encoder/` and `unet_conv_in.safetensors` (conv_in's weight; the rest of the UNet is frozen and
  comes from the base model);
- with EMA: `<name>_ema/` (diffusers' `EMAModel.save_pretrained`), and `unet_conv_in_ema.safetensors` in stage 1.

`checkpoints_total_limit` keeps the newest ones; `resume_from_checkpoint` is "latest" or a folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

CONV_IN_FILE = "unet_conv_in.safetensors"
CONV_IN_EMA_FILE = "unet_conv_in_ema.safetensors"


def list_checkpoints(output_dir) -> list[Path]:
    """`checkpoint-<step>` folders under `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    dirs = [d for d in output_dir.glob("checkpoint-*") if d.is_dir() and d.name.split("-")[-1].isdigit()]
    return sorted(dirs, key=checkpoint_step)


def checkpoint_step(path) -> int:
    return int(Path(path).name.split("-")[-1])


def resolve_resume(resume: str | None, output_dir) -> Path | None:
    """The checkpoint to resume from: None for a new run; "latest": the newest under `output_dir` (None, i.e. a
    new run, when there is none yet); else a folder path (or a name under `output_dir`), which must exist."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir() and (Path(output_dir) / resume).is_dir():
        path = Path(output_dir) / resume
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
    if not path.name.split("-")[-1].isdigit():
        raise ValueError(f"--resume_from_checkpoint {resume}: not a checkpoint-<step> folder")
    return path


def prune_checkpoints(output_dir, limit: int | None) -> None:
    """Before saving a new checkpoint: remove the oldest so that at most `limit` remain after it (diffusers)."""
    if not limit or limit < 1:
        return
    existing = list_checkpoints(output_dir)
    if len(existing) >= limit:
        for old in existing[: len(existing) - limit + 1]:
            logger.info("removing checkpoint %s (checkpoints_total_limit=%d)", old, limit)
            shutil.rmtree(old)


class EMAState:
    """Diffusers `EMAModel`s of what learns: one per trained model (stage 2: unet and blur_encoder; stage 1:
    blur_encoder) plus, in stage 1, one over conv_in's weight."""

    def __init__(self, stage: int, unet, blur_encoder, decay: float):
        from diffusers.training_utils import EMAModel

        self.stage = stage
        self.models = {"blur_encoder": EMAModel(blur_encoder.parameters(), decay=decay,
                                                model_cls=type(blur_encoder), model_config=blur_encoder.config)}
        if stage == 2:
            self.models["unet"] = EMAModel(unet.parameters(), decay=decay, model_cls=type(unet),
                                           model_config=unet.config)
        self.conv_in = EMAModel([unet.conv_in.weight], decay=decay) if stage == 1 else None

    def to(self, device):
        for ema in self.all():
            ema.to(device)
        return self

    def all(self):
        return list(self.models.values()) + ([self.conv_in] if self.conv_in is not None else [])

    def step(self, unet, blur_encoder) -> None:
        self.models["blur_encoder"].step(blur_encoder.parameters())
        if "unet" in self.models:
            self.models["unet"].step(unet.parameters())
        if self.conv_in is not None:
            self.conv_in.step([unet.conv_in.weight])

    def _pairs(self, unet, blur_encoder):
        pairs = [(self.models["blur_encoder"], list(blur_encoder.parameters()))]
        if "unet" in self.models:
            pairs.append((self.models["unet"], list(unet.parameters())))
        if self.conv_in is not None:
            pairs.append((self.conv_in, [unet.conv_in.weight]))
        return pairs

    def store_and_copy_to(self, unet, blur_encoder) -> None:
        """Swap the EMA weights in (for validation); `restore` puts the training weights back."""
        for ema, params in self._pairs(unet, blur_encoder):
            ema.store(params)
            ema.copy_to(params)

    def restore(self, unet, blur_encoder) -> None:
        for ema, params in self._pairs(unet, blur_encoder):
            ema.restore(params)

    def copy_to(self, unet, blur_encoder) -> None:
        for ema, params in self._pairs(unet, blur_encoder):
            ema.copy_to(params)

    def save(self, folder: Path) -> None:
        for name, ema in self.models.items():
            ema.save_pretrained(folder / f"{name}_ema")
        if self.conv_in is not None:
            meta = {k: v for k, v in self.conv_in.state_dict().items() if k != "shadow_params"}
            save_file({"weight": self.conv_in.shadow_params[0].detach().contiguous().cpu()},
                      folder / CONV_IN_EMA_FILE, metadata={"ema": json.dumps(meta)})

    def load(self, folder: Path) -> None:
        from diffusers.training_utils import EMAModel

        for name, ema in self.models.items():
            sub = folder / f"{name}_ema"
            if not sub.is_dir():
                raise FileNotFoundError(f"checkpoint {folder} has no {sub.name}/ (was it saved with --use_ema?)")
            loaded = EMAModel.from_pretrained(sub, model_cls=ema.model_cls)
            ema.load_state_dict(loaded.state_dict())
        if self.conv_in is not None:
            path = folder / CONV_IN_EMA_FILE
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint {folder} has no {CONV_IN_EMA_FILE} (was it saved with --use_ema?)")
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = json.loads(f.metadata()["ema"])
                weight = f.get_tensor("weight")
            device = self.conv_in.shadow_params[0].device
            self.conv_in.load_state_dict({**meta, "shadow_params": [weight.to(device)]})


def save_trained(model, folder: Path, stage: int) -> None:
    """Write what learns in `stage` (see the module docstring) from a `DeblurTrainModel` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    model.blur_encoder.save_pretrained(folder / "blur_encoder", safe_serialization=True)
    if stage == 2:
        model.unet.save_pretrained(folder / "unet", safe_serialization=True)
    else:
        save_file({"weight": model.unet.conv_in.weight.detach().float().contiguous().cpu()}, folder / CONV_IN_FILE)


def load_trained(model, folder: Path, stage: int) -> None:
    """Load what `save_trained` wrote into a `DeblurTrainModel`, in place (parameters keep their identity, so the
    optimizer and DDP still see them)."""
    from diffusers import UNet3DConditionModel

    from ..models.blur_encoder import BlurImageEncoder

    enc_dir = folder / "blur_encoder"
    if not enc_dir.is_dir():
        raise FileNotFoundError(f"checkpoint {folder} has no blur_encoder/ folder")
    state = BlurImageEncoder.from_pretrained(enc_dir).state_dict()
    model.blur_encoder.load_state_dict(state)
    if stage == 2:
        if not (folder / "unet").is_dir():
            raise FileNotFoundError(f"checkpoint {folder} has no unet/ folder (a stage-1 checkpoint cannot resume "
                                    "stage 2; start stage 2 from the stage-1 output with --pretrained)")
        model.unet.load_state_dict(UNet3DConditionModel.from_pretrained(folder / "unet").state_dict())
    else:
        path = folder / CONV_IN_FILE
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {folder} has no {CONV_IN_FILE} (is it a stage-2 checkpoint?)")
        w = load_file(str(path))["weight"]
        with torch.no_grad():
            model.unet.conv_in.weight.copy_(w.to(model.unet.conv_in.weight))


def register_hooks(accelerator, stage: int, ema: EMAState | None) -> None:
    """Accelerate save/load hooks writing diffusers-format folders (as diffusers' training examples do)."""

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for m in models:
                save_trained(accelerator.unwrap_model(m), Path(output_dir), stage)
            if ema is not None:
                ema.save(Path(output_dir))
        # the models are written: stop Accelerate from saving them again
        while weights:
            weights.pop()

    def load_model_hook(models, input_dir):
        while models:
            load_trained(accelerator.unwrap_model(models.pop()), Path(input_dir), stage)
        if ema is not None:
            ema.load(Path(input_dir))

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)
