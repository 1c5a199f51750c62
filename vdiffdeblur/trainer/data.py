"""Training and validation data of the diffusion training.

Training clips come from `SyntheticShakeDataset` (camera shake made from TRAIN_PHOTOS, no download; a
`layered_fraction` of them layered scenes with objects moving on their own) or from a `PairedVideoDataset`
folder. Their order is a fixed, seeded permutation per epoch (`ShuffledView`) read without a random sampler,
so the data a step sees depends only on the seed and the step: resuming from a checkpoint (Accelerate's
`skip_first_batches`) continues exactly the same sequence, and Accelerate's batch sharding gives every process
different clips.

Validation clips are held out: camera shake made from EVAL_PHOTOS (never trained on) with fixed seeds, or the
first clips of a paired folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.paired import PairedVideoDataset
from ..data.shake_dataset import SyntheticShakeDataset
from ..data.synthetic import ShakeConfig, synthesize_shake
from .config import DiffusionTrainConfig


class ShuffledView(Dataset):
    """`dataset` read in a seeded random order, a new one per epoch (`set_epoch`, forwarded to the dataset).
    Items gain ``"index"`` (the underlying index) and ``"epoch"``."""

    def __init__(self, dataset, seed: int = 0):
        self.dataset, self.seed, self.epoch = dataset, seed, 0
        self._perm = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch, 11]).permutation(len(self.dataset))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self._perm = self._permutation()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        j = int(self._perm[i])
        item = dict(self.dataset[j])
        item["index"], item["epoch"] = j, self.epoch
        return item


def build_train_dataset(cfg: DiffusionTrainConfig) -> ShuffledView:
    """The training dataset: one epoch is `samples_per_clip` items per synthetic clip (or paired sequence). Its
    length does not depend on the number of steps, so a run cut short and resumed reads the same data."""
    if cfg.train_data == "synthetic":
        ds = SyntheticShakeDataset(
            sources=list(cfg.photos), num_clips=cfg.num_clips, clip_len=cfg.clip_len, crop=cfg.crop or None,
            config=ShakeConfig(width=cfg.synth_width, height=cfg.synth_height),
            frames_per_clip=max(cfg.frames_per_clip, cfg.clip_len), samples_per_clip=cfg.samples_per_clip,
            seed=cfg.seed, still_fraction=cfg.still_fraction, layered_fraction=cfg.layered_fraction)
    else:
        ds = PairedVideoDataset(cfg.train_data, layout=cfg.layout, clip_len=cfg.clip_len, crop=cfg.crop or None,
                                samples_per_sequence=cfg.samples_per_clip, seed=cfg.seed, flip=True)
    return ShuffledView(ds, seed=cfg.seed)


def collate(items: list[dict]) -> dict:
    """Stack clips (B, F, 3, H, W); keep a string id per sample (which clip, epoch, crop) for bookkeeping."""
    ids = [f"e{it.get('epoch', 0)}:i{it.get('index', -1)}:{it.get('sequence', '?')}@{it.get('start', 0)}"
           f"+{it.get('top', 0)},{it.get('left', 0)}" for it in items]
    return {"blurry": torch.stack([i["blurry"] for i in items]), "sharp": torch.stack([i["sharp"] for i in items]),
            "ids": ids}


@dataclass
class ValidationClip:
    name: str
    blurry: np.ndarray  # uint8 (F, H, W, 3)
    sharp: np.ndarray


def validation_clips(cfg: DiffusionTrainConfig) -> list[ValidationClip]:
    """The held-out clips validation runs on (none when `validation_data` is None or no clips are asked for)."""
    n = cfg.num_validation_clips
    if not cfg.validation_data or n < 1:
        return []
    if cfg.validation_data == "synthetic":
        photos = list(cfg.validation_photos)
        shake = ShakeConfig(num_frames=cfg.validation_frames, width=cfg.validation_size, height=cfg.validation_size)
        clips = []
        for i in range(n):
            photo = photos[i % len(photos)]
            c = synthesize_shake(photo, shake, seed=50_000 + 97 * cfg.seed + i)
            clips.append(ValidationClip(f"{photo}#{i}", c.blurry, c.sharp))
        return clips
    ds = PairedVideoDataset(cfg.validation_data, layout=cfg.layout, clip_len=cfg.validation_frames,
                            crop=cfg.validation_size, seed=cfg.seed)
    out = []
    for i in range(min(n, len(ds))):
        it = ds[i]
        to_u8 = lambda t: (t.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # noqa: E731
        out.append(ValidationClip(f"{it['sequence']}@{it['start']}", to_u8(it["blurry"]), to_u8(it["sharp"])))
    return out
