"""Checkpoints the way diffusers' training examples write them, made crash-safe; every trainer goes through here.

`output_dir/checkpoint-<step>/` comes from `accelerator.save_state` (optimizer, LR scheduler, RNG states) with
the models written by a save hook in diffusers format:

- stage 2: `unet/` and `blur_encoder/` (config.json + safetensors);
- stage 1: `blur_encoder/` and `unet_conv_in.safetensors` (conv_in's weight; the rest of the UNet is frozen and
  comes from the base model);
- with EMA: `<name>_ema/` (diffusers' `EMAModel.save_pretrained`), and `unet_conv_in_ema.safetensors` in stage 1.

The VAE, DTB and MAML trainers write their own contents through the same `save_checkpoint`.

Crash safety: `save_checkpoint` writes into `.checkpoint-<step>.partial/`, adds `checkpoint_manifest.json` (every
file and its size) last, fsyncs, and only then renames the folder to `checkpoint-<step>` (one `os.rename`), so a
`checkpoint-<step>` folder is always complete. `checkpoints_total_limit` prunes the oldest complete checkpoints
only after the new one is in place. `remove_partial_checkpoints` (each trainer's start, on the main process)
removes what a killed run left behind: only names of the `.checkpoint-<step>.partial` / `.checkpoint-<step>.old` form.
`resume_from_checkpoint` is "latest" (the newest complete checkpoint; one that is incomplete or fails to load is
skipped with a warning naming it, the next older one is tried, and a new run starts when none is left) or a
folder, which must load.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

CONV_IN_FILE = "unet_conv_in.safetensors"
CONV_IN_EMA_FILE = "unet_conv_in_ema.safetensors"
MANIFEST_FILE = "checkpoint_manifest.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TEMP_RE = re.compile(r"^\.checkpoint-(\d+)\.(partial|old)$")


class CorruptCheckpointError(ValueError):
    """A checkpoint folder that is incomplete or does not load (a ValueError: the scripts report it in one line)."""


def list_checkpoints(output_dir) -> list[Path]:
    """The complete `checkpoint-<step>` folders under `output_dir`, oldest first (temporary ones never match)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    dirs = [d for d in output_dir.iterdir() if _CHECKPOINT_RE.match(d.name) and d.is_dir()]
    return sorted(dirs, key=checkpoint_step)


def checkpoint_step(path) -> int:
    return int(Path(path).name.split("-")[-1])


def temp_checkpoint_dir(output_dir, step: int) -> Path:
    """Where `save_checkpoint` writes checkpoint `step` before renaming it (one name on every process)."""
    return Path(output_dir) / f".checkpoint-{step}.partial"


def is_temp_checkpoint(path) -> bool:
    return bool(_TEMP_RE.match(Path(path).name))


def remove_partial_checkpoints(output_dir, accelerator=None) -> list[Path]:
    """Remove the temporary checkpoint folders a killed run left in `output_dir`; returns them. A
    `.checkpoint-<step>.old` whose `checkpoint-<step>` is missing (killed between the two renames of a replace) is
    the last complete copy: it is renamed back instead. With `accelerator` (call it on every process) the main
    process does it and the others wait, so that every process then sees the same checkpoints."""
    if accelerator is not None:
        removed = remove_partial_checkpoints(output_dir) if accelerator.is_main_process else []
        accelerator.wait_for_everyone()
        return removed
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    removed = []
    for entry in sorted(output_dir.iterdir()):
        m = _TEMP_RE.match(entry.name)
        if not m:
            continue
        final = output_dir / f"checkpoint-{m.group(1)}"
        if m.group(2) == "old" and entry.is_dir() and not final.exists():
            os.rename(entry, final)
            logger.warning("restored %s from %s (a run was killed while replacing it)", final, entry.name)
            continue
        logger.warning("removing %s, a checkpoint left incomplete by a killed run", entry)
        _remove(entry)
        removed.append(entry)
    return removed


def resolve_resume(resume: str | None, output_dir) -> Path | None:
    """The checkpoint to resume from: None for a new run; "latest": the newest complete one under `output_dir`
    (None, i.e. a new run, when there is none yet); else a folder path (or a name under `output_dir`), which must
    exist. `load_resume` also checks and loads it, falling back to older ones for "latest"."""
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


def verify_checkpoint(path) -> str | None:
    """What is wrong with checkpoint folder `path` (None: nothing found). Checks every file the manifest lists
    (present, same size) and, cheaply, the structure of each safetensors file (its header and length) and of each
    torch zip file (its central directory), which a truncated file fails."""
    path = Path(path)
    if not path.is_dir():
        return "no such folder"
    manifest = path / MANIFEST_FILE
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError, TypeError) as e:
            return f"unreadable {MANIFEST_FILE} ({e})"
        for rel, size in files.items():
            f = path / rel
            if not f.is_file():
                return f"{rel} is missing"
            if f.stat().st_size != size:
                return f"{rel} has {f.stat().st_size} bytes, the manifest says {size}"
    for f in sorted(path.rglob("*")):
        if not f.is_file():
            continue
        problem = None
        if f.suffix == ".safetensors":
            problem = _safetensors_problem(f)
        elif f.suffix in (".bin", ".pkl", ".pt", ".pth") and f.stat().st_size >= 4:
            with open(f, "rb") as fh:
                is_zip = fh.read(4) == b"PK\x03\x04"
            if is_zip:
                try:
                    with zipfile.ZipFile(f):
                        pass
                except (zipfile.BadZipFile, OSError) as e:
                    problem = f"not a readable torch file ({e})"
        if problem:
            return f"{f.relative_to(path)}: {problem}"
    return None


def _safetensors_problem(f: Path) -> str | None:
    size = f.stat().st_size
    try:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                return "truncated header"
            header = json.loads(fh.read(n))
    except (struct.error, ValueError, OSError) as e:
        return f"unreadable header ({e})"
    end = max([v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"], default=0)
    if 8 + n + end != size:
        return f"{size} bytes, its header says {8 + n + end}"
    return None


def load_resume(resume: str | None, output_dir, load: Callable[[Path], None]) -> Path | None:
    """Resume: call `load(folder)` on the checkpoint `resume` names and return that folder (None: a new run).

    "latest" tries the complete checkpoints newest first: one that `verify_checkpoint` faults or whose `load`
    raises is skipped with a warning naming it. When none is left a new run starts (with a warning) unless a
    `load` had already failed part-way, which may have changed the model or optimizer: that is an error. A folder
    named explicitly must verify and load, else `CorruptCheckpointError` naming it."""
    if not resume:
        return None
    output_dir = Path(output_dir)
    if resume != "latest":
        path = resolve_resume(resume, output_dir)
        problem = verify_checkpoint(path)
        if problem is not None:
            raise CorruptCheckpointError(f"checkpoint {path} is incomplete or corrupt: {problem}")
        try:
            load(path)
        except Exception as e:
            raise CorruptCheckpointError(f"checkpoint {path} does not load: {type(e).__name__}: {e}") from e
        return path
    candidates = list_checkpoints(output_dir)
    failed_loads = []
    for path in reversed(candidates):
        problem = verify_checkpoint(path)
        if problem is None:
            try:
                load(path)
                return path
            except Exception as e:
                problem = f"{type(e).__name__}: {e}"
                failed_loads.append(f"{path}: {problem}")
        logger.warning("skipping checkpoint %s (incomplete or corrupt: %s); trying the previous one", path, problem)
    if failed_loads:
        raise CorruptCheckpointError("no checkpoint could be loaded, and a failed load may have changed the state "
                                     "(start without --resume_from_checkpoint or remove them): "
                                     + "; ".join(failed_loads))
    if candidates:
        logger.warning("no usable checkpoint under %s (%s skipped): starting a new run", output_dir,
                       ", ".join(p.name for p in candidates))
    else:
        logger.info("no checkpoint under %s yet: starting a new run", output_dir)
    return None


def save_checkpoint(accelerator, output_dir, step: int, limit: int | None, *, every_process: bool = False,
                    extra: Callable[[Path], None] | None = None) -> Path:
    """Write `checkpoint-<step>` under `output_dir`; call it on every process.

    `accelerator.save_state` runs on the main process, or on every process with `every_process` (DeepSpeed
    shards, or trainers whose processes each add their own files); `extra(folder)`, on every process after it,
    adds a trainer's own files (each process decides what it writes). All of it goes into the temporary folder;
    after a barrier the main process writes the manifest, renames the folder into place and only then prunes to
    the newest `limit` complete checkpoints (the new one always kept)."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = temp_checkpoint_dir(output_dir, step)
    if accelerator.is_main_process:
        _remove(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if every_process or accelerator.is_main_process:
        accelerator.save_state(str(tmp))
    if extra is not None:
        extra(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_manifest(tmp, step)
        _publish(tmp, final)
        logger.info("saved %s", final)
        prune_checkpoints(output_dir, limit, keep=final)
    return final


def prune_checkpoints(output_dir, limit: int | None, keep=None) -> list[Path]:
    """After a checkpoint is complete: remove the oldest complete ones so that at most `limit` remain, never
    `keep` (the one just written); returns the removed folders."""
    if not limit or limit < 1:
        return []
    keep = Path(keep).resolve() if keep is not None else None
    existing = list_checkpoints(output_dir)
    others = [p for p in existing if p.resolve() != keep]
    excess = len(existing) - limit
    removed = others[:max(0, excess)]
    for old in removed:
        logger.info("removing checkpoint %s (checkpoints_total_limit=%d)", old, limit)
        shutil.rmtree(old)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _write_manifest(folder: Path, step: int) -> None:
    """List every file with its size (fsyncing each), then write the manifest last."""
    files = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != MANIFEST_FILE:
            _fsync(f)
            files[f.relative_to(folder).as_posix()] = f.stat().st_size
    for d in sorted({f.parent for f in folder.rglob("*")} | {folder}, key=lambda p: len(p.parts), reverse=True):
        _fsync(d)
    manifest = folder / MANIFEST_FILE
    with open(manifest, "w") as fh:
        json.dump({"step": step, "files": files}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync(folder)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the complete `tmp` to `final`; an existing `final` (the same step written again after resuming
    from an older checkpoint) is moved aside first and removed once the new one is in place."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        _remove(old)
        os.rename(final, old)
        os.rename(tmp, final)
        _remove(old)
    else:
        os.rename(tmp, final)
    _fsync(final.parent)


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
