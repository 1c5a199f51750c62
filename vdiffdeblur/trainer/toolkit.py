"""What the trainers share besides their options (`options`) and checkpoints (`checkpoints`), in the manner of
diffusers' `training_utils`: where metrics go (`report_to`), the training log read back on resume, torch's CPU
threads and the held-out-photo check.

Used by every trainer: stages 1 and 2 (`loop`), the VAE (`vae`), DTB (`dtb`) and MAML (`maml`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ..data.synthetic import EVAL_PHOTOS

__all__ = ["check_training_photos", "read_history", "resolve_report_to", "set_threads", "start_trackers",
           "write_history"]


def _tensorboard_installed() -> bool:
    return bool(importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"))


def resolve_report_to(report_to: str | None) -> str | None:
    """A trainer's ``report_to`` as Accelerate's ``log_with``, the same in every trainer:

    * None, ``"none"`` or ``""``: no tracker;
    * ``"auto"``: TensorBoard when tensorboard (or tensorboardX) is installed, else no tracker;
    * ``"tensorboard"`` when it is not installed: a ValueError saying how to install it or what to use instead;
    * anything else (``wandb``, ``comet_ml``, ``all``, ...): handed to Accelerate as it is.
    """
    if report_to in (None, "none", ""):
        return None
    if report_to == "auto":
        return "tensorboard" if _tensorboard_installed() else None
    if report_to == "tensorboard" and not _tensorboard_installed():
        raise ValueError("--report_to tensorboard, but tensorboard is not installed (pip install tensorboard), "
                         "or use --report_to auto / none")
    return report_to


def start_trackers(accelerator, report_to: str | None, project: str, options: dict) -> None:
    """Start the trackers (main process only) with the run's options as their hyper-parameters; values
    TensorBoard cannot hold (None, lists) as text."""
    if accelerator.is_main_process and report_to:
        accelerator.init_trackers(project, config={k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                                   for k, v in options.items()})


def set_threads(num_threads: int) -> None:
    """torch's intra-op CPU threads; 0 (or less) keeps torch's default."""
    if num_threads > 0:
        import torch

        torch.set_num_threads(num_threads)


def read_history(log_path: Path, step: int) -> list[dict]:
    """The training log (a JSON list of records with a ``step``) a run resumed at ``step`` continues: its
    records up to that step; empty for a fresh run (step 0) or when there is no log."""
    log_path = Path(log_path)
    if not step or not log_path.is_file():
        return []
    return [h for h in json.loads(log_path.read_text()) if h.get("step", 0) <= step]


def write_history(log_path: Path, history: list[dict]) -> None:
    Path(log_path).write_text(json.dumps(history, indent=1))


def check_training_photos(photos) -> None:
    """ValueError when any of ``photos`` (built-in names, ``builtin:NAME``, paths or arrays) is one of the
    evaluation photos: those are held out, so no model is ever trained or chosen on them."""
    names = {p.removeprefix("builtin:") for p in (str(p) for p in photos if isinstance(p, (str, Path)))}
    bad = sorted(names & set(EVAL_PHOTOS))
    if bad:
        raise ValueError(f"photos {', '.join(bad)} are kept for evaluation (EVAL_PHOTOS): evaluation photos are "
                         f"never trained on; use TRAIN_PHOTOS")
