"""Training and validation data of the diffusion training.

Training clips come from `SyntheticShakeDataset` (camera shake made from TRAIN_PHOTOS, no download; a
`layered_fraction` of them layered scenes with objects moving on their own) or from a `PairedVideoDataset`
folder. Their order is a fixed, seeded permutation per epoch (`ShuffledView`) read without a random sampler,
so the data a step sees depends only on the seed and the step: resuming from a checkpoint (Accelerate's
`skip_first_batches`) continues exactly the same sequence, and Accelerate's batch sharding gives every process
different clips.

Validation clips are held out: camera shake made from EVAL_PHOTOS (never trained on) with fixed seeds, or the
first clips of a paired folder.

With `prior_method`, every item also holds ``"prior"``: that fast method's output (`PriorClips`). For synthetic
clips it is computed once per whole clip, as inference computes it over a video, kept in memory, and cut like
the item; a paired item's prior is computed on the item's own frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.paired import PairedVideoDataset
from ..data.shake_dataset import SyntheticShakeDataset
from ..data.synthetic import ShakeConfig, synthesize_shake
from .config import DiffusionTrainConfig

logger = logging.getLogger(__name__)


def _to_uint8(clip: torch.Tensor) -> np.ndarray:
    """float (F, 3, H, W) in [0, 1] -> uint8 (F, H, W, 3)."""
    return (clip.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


class PriorClips(Dataset):
    """`dataset`'s items plus ``"prior"`` (float32 (F, 3, H, W) in [0, 1]): `method`'s output on the item's clip.
    On a `SyntheticShakeDataset` the prior of synthetic clip k is computed once over the whole clip and cut like
    each item (its ``start``, ``top``, ``left``); otherwise on the item's frames."""

    def __init__(self, dataset, method: str, device: str = "cpu"):
        self.dataset, self.method, self.device = dataset, method, device
        self._clips: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def clip_prior(self, k: int) -> np.ndarray:
        """The prior of synthetic clip `k`, uint8 (F, H, W, 3), computed on first use."""
        if k not in self._clips:
            from ..methods.diffusion import prior_frames

            self._clips[k] = prior_frames(self.method, self.dataset.clip(k)[1], device=self.device)
            logger.debug("prior (%s) of clip %d computed", self.method, k)
        return self._clips[k]

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        f, _, h, w = item["blurry"].shape
        if isinstance(self.dataset, SyntheticShakeDataset):
            prior = self.clip_prior(index % self.dataset.num_clips)
            top, left, start = item["top"], item["left"], item["start"]
            prior = prior[start:start + f, top:top + h, left:left + w]
        else:
            from ..methods.diffusion import prior_frames

            prior = prior_frames(self.method, _to_uint8(item["blurry"]), device=self.device)
        item["prior"] = torch.from_numpy(np.ascontiguousarray(prior)).permute(0, 3, 1, 2).float().div(255.0)
        return item


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


def build_train_dataset(cfg: DiffusionTrainConfig, prior_method: str | None = None) -> ShuffledView:
    """The training dataset: one epoch is `samples_per_clip` items per synthetic clip (or paired sequence). Its
    length does not depend on the number of steps, so a run cut short and resumed reads the same data. With
    `prior_method`, items hold that method's output too (`PriorClips`)."""
    if cfg.train_data == "synthetic":
        ds = SyntheticShakeDataset(
            sources=list(cfg.photos), num_clips=cfg.num_clips, clip_len=cfg.clip_len, crop=cfg.crop or None,
            config=ShakeConfig(width=cfg.synth_width, height=cfg.synth_height),
            frames_per_clip=max(cfg.frames_per_clip, cfg.clip_len), samples_per_clip=cfg.samples_per_clip,
            seed=cfg.seed, still_fraction=cfg.still_fraction, layered_fraction=cfg.layered_fraction)
    else:
        ds = PairedVideoDataset(cfg.train_data, layout=cfg.layout, clip_len=cfg.clip_len, crop=cfg.crop or None,
                                samples_per_sequence=cfg.samples_per_clip, seed=cfg.seed, flip=True)
    if prior_method:
        ds = PriorClips(ds, prior_method)
    return ShuffledView(ds, seed=cfg.seed)


def collate(items: list[dict]) -> dict:
    """Stack clips (B, F, 3, H, W); keep a string id per sample (which clip, epoch, crop) for bookkeeping."""
    ids = [f"e{it.get('epoch', 0)}:i{it.get('index', -1)}:{it.get('sequence', '?')}@{it.get('start', 0)}"
           f"+{it.get('top', 0)},{it.get('left', 0)}" for it in items]
    batch = {"blurry": torch.stack([i["blurry"] for i in items]), "sharp": torch.stack([i["sharp"] for i in items]),
             "ids": ids}
    if "prior" in items[0]:
        batch["prior"] = torch.stack([i["prior"] for i in items])
    return batch


@dataclass
class ValidationClip:
    name: str
    blurry: np.ndarray  # uint8 (F, H, W, 3)
    sharp: np.ndarray
    prior: np.ndarray | None = None  # the fast method's output, for a UNet that refines one


def validation_clips(cfg: DiffusionTrainConfig, prior_method: str | None = None) -> list[ValidationClip]:
    """The held-out clips validation runs on (none when `validation_data` is None or no clips are asked for),
    with `prior_method`'s output when given."""
    clips = _validation_clips(cfg)
    if prior_method:
        from ..methods.diffusion import prior_frames

        for c in clips:
            c.prior = prior_frames(prior_method, c.blurry)
    return clips


def _validation_clips(cfg: DiffusionTrainConfig) -> list[ValidationClip]:
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
