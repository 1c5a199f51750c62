"""``SyntheticShakeDataset``: camera-shake training clips made on the fly from sharp photos or sharp videos
with the foundation's generator (:func:`vdiffdeblur.data.synthetic.synthesize_shake`), so training needs no
download.

There are ``num_clips`` distinct synthetic clips; clip ``k`` is made from source ``k % len(sources)`` with a
seed derived from ``(seed, k)``, so the same dataset arguments always give the same clips. Each clip is
``frames_per_clip`` frames long (``clip_len`` by default) at ``config.width`` x ``config.height``; an item
is a random temporal window of ``clip_len`` frames and a random ``crop`` of it, the same for blurry and
sharp, drawn from ``(seed, epoch, index)``. Clips are kept in memory once made (``cache=True``), which
makes later epochs cheap; ``still_fraction`` of the clips are made without shake (only the slow pan),
so a network also learns to leave sharp frames alone.

With ``augment=True`` each clip sees its source differently (:func:`augment_source`, seeded by the clip):
a random sub-window whose sides are a fraction in ``source_zoom`` of the source's (so the same photo appears
at several scales and framings), one of the 8 flips / quarter turns, and the colour channels in a random
order. The few built-in photos otherwise give one view each, and a network trained on them for long learns
those views rather than deblurring (measured: see docs/dtb.md).

The source name ``"dead_leaves"`` stands for a new procedural dead-leaves picture per clip
(:func:`vdiffdeblur.data.dead_leaves.dead_leaves`, seeded by the clip, twice the clip's size, with leaves
textured by the dataset's photo sources): unlimited new scenes. Repeat it in ``sources`` to raise its share.

With ``layered_fraction`` > 0 that share of the clips (a fixed, seeded choice) are layered scenes instead
(:func:`vdiffdeblur.data.layered.synthesize_layered`, settings from ``layered``): the clip's source is the
background, the camera pans and may shake, and objects cut from the dataset's photo sources (or procedural
ones) move on their own over it, with occlusion and disocclusion. A still clip of that kind has no object
motion and no shake. ``layered_fraction=0`` makes exactly the clips made before the option existed.

By default the sources are :data:`~vdiffdeblur.data.synthetic.TRAIN_PHOTOS`; never train on
:data:`~vdiffdeblur.data.synthetic.EVAL_PHOTOS`.

An item is a dict with the same keys as :class:`~vdiffdeblur.data.paired.PairedVideoDataset` items
(``"blurry"``, ``"sharp"``: float32 (F, 3, H, W) in [0, 1]; ``"sequence"``; ``"start"``; ``"top"``,
``"left"``) plus ``"blur_extent"``: float32 (F,) the mean path length of image points during each
frame's exposure, in pixels (for layered clips, per pixel the fastest layer seen there), and
``"clip_seed"``: the seed the clip was synthesized with.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..video import read_video
from .dead_leaves import DEAD_LEAVES, check_fur_fraction, dead_leaves
from .layered import LayeredConfig, synthesize_layered
from .paired import DatasetError, to_float_clip
from .synthetic import TRAIN_PHOTOS, ShakeConfig, load_photo, synthesize_shake

logger = logging.getLogger(__name__)


def _load_source(source):
    """A source -> (label, uint8 photo (H, W, 3) or sharp video (F, H, W, 3)); (DEAD_LEAVES, None) for the
    procedural source, made per clip."""
    if isinstance(source, np.ndarray):
        return f"<array {source.shape}>", source
    name = str(source)
    if name == DEAD_LEAVES:
        return DEAD_LEAVES, None
    path = Path(name)
    if not name.startswith("builtin:") and path.exists() and (path.is_dir() or path.suffix.lower() not in
                                                               (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")):
        frames = read_video(path).frames  # a sharp video or frame folder
        return name, frames if len(frames) > 1 else frames[0]
    return (name if name.startswith("builtin:") or path.exists() else f"builtin:{name}"), load_photo(source)


def _check_source_zoom(zoom) -> tuple[float, float]:
    lo, hi = (float(v) for v in zoom)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"source_zoom must satisfy 0 < low <= high <= 1, got {tuple(zoom)}")
    return lo, hi


def augment_source(src: np.ndarray, rng: np.random.Generator, zoom=(1.0, 1.0)) -> np.ndarray:
    """A photo (H, W, 3) or sharp video (F, H, W, 3), seen differently: a random sub-window with sides a fraction
    ``rng.uniform(*zoom)`` of the source's (same aspect), a random one of the 8 flips / quarter turns, and the
    colour channels in a random order. All of it is the same for every frame of a video."""
    lo, hi = _check_source_zoom(zoom)
    h, w = src.shape[-3:-1]
    f = rng.uniform(lo, hi)
    ch, cw = max(8, min(h, int(round(h * f)))), max(8, min(w, int(round(w * f))))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = src[..., top:top + ch, left:left + cw, :]
    out = np.rot90(out, int(rng.integers(0, 4)), axes=(-3, -2))
    if rng.random() < 0.5:
        out = out[..., ::-1, :]
    return np.ascontiguousarray(out[..., rng.permutation(3)])


class SyntheticShakeDataset(Dataset):
    """Synthetic camera-shake clips with ground truth (see the module docstring)."""

    def __init__(self, sources=TRAIN_PHOTOS, num_clips: int = 64, clip_len: int = 13, crop=128,
                 config: ShakeConfig | None = None, frames_per_clip: int | None = None,
                 samples_per_clip: int = 1, seed: int = 0, still_fraction: float = 0.0, cache: bool = True,
                 augment: bool = False, source_zoom=(1.0, 1.0), fur_fraction: float = 0.0,
                 layered_fraction: float = 0.0, layered: LayeredConfig | None = None):
        if isinstance(sources, (str, Path)) or (isinstance(sources, np.ndarray) and sources.ndim in (3, 4)):
            sources = [sources]
        if len(sources) == 0:
            raise ValueError("SyntheticShakeDataset needs at least one source photo or video")
        if clip_len < 1 or num_clips < 1 or samples_per_clip < 1:
            raise ValueError("clip_len, num_clips and samples_per_clip must be >= 1")
        for name, share in (("still_fraction", still_fraction), ("layered_fraction", layered_fraction)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {share}")
        frames_per_clip = frames_per_clip or clip_len
        if frames_per_clip < clip_len:
            raise ValueError(f"frames_per_clip ({frames_per_clip}) must be >= clip_len ({clip_len})")
        self.config = replace(config or ShakeConfig(), num_frames=frames_per_clip)
        self.crop = (crop, crop) if isinstance(crop, int) else (tuple(int(v) for v in crop) if crop else None)
        if self.crop and (self.crop[0] > self.config.height or self.crop[1] > self.config.width):
            raise ValueError(f"crop {self.crop[1]}x{self.crop[0]} is larger than the synthetic frames "
                             f"{self.config.width}x{self.config.height}")
        self.sources = [_load_source(s) for s in sources]
        self._textures = [arr for _, arr in self.sources if arr is not None and arr.ndim == 3]
        for label, arr in self.sources:
            if arr is not None and arr.ndim == 4 and len(arr) < frames_per_clip:
                raise DatasetError(f"source {label}: a sharp video of {len(arr)} frames is shorter than "
                                   f"frames_per_clip={frames_per_clip}")
        self.num_clips, self.clip_len, self.frames_per_clip = num_clips, clip_len, frames_per_clip
        self.samples_per_clip, self.seed, self.still_fraction = samples_per_clip, seed, still_fraction
        self.cache = cache
        self.augment = bool(augment)
        self.fur_fraction = check_fur_fraction(fur_fraction)  # checked now: pictures are made per clip, later
        self.source_zoom = _check_source_zoom(source_zoom) if self.augment else tuple(source_zoom)
        self._clips: dict[int, tuple] = {}
        self.epoch = 0
        # which clips are still: a fixed, seeded choice
        n_still = int(round(still_fraction * num_clips))
        self._still = set(np.random.default_rng([seed, 7]).permutation(num_clips)[:n_still].tolist())
        self.layered_fraction, self.layered = float(layered_fraction), layered or LayeredConfig()
        n_layered = int(round(layered_fraction * num_clips))
        self._layered = set(np.random.default_rng([seed, 8]).permutation(num_clips)[:n_layered].tolist())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_clips * self.samples_per_clip

    def clip_seed(self, k: int) -> int:
        return int(np.random.default_rng([self.seed, k]).integers(0, 2**31 - 1))

    def clip(self, k: int) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
        """Clip ``k``: (name, blurry uint8 (F, H, W, 3), sharp uint8, blur extent (F,))."""
        if k in self._clips:
            return self._clips[k]
        label, src = self.sources[k % len(self.sources)]
        seed = self.clip_seed(k)
        cfg = self.config
        if k in self._still:
            cfg = replace(cfg, shake_px=0.0, rotation_deg=0.0, zoom=0.0)
        if src is None:
            src = dead_leaves(2 * cfg.height, 2 * cfg.width, np.random.default_rng([seed, 4]), textures=self._textures,
                              fur_fraction=self.fur_fraction)
        if src.ndim == 4 and len(src) > cfg.num_frames:
            s0 = int(np.random.default_rng([seed, 1]).integers(0, len(src) - cfg.num_frames + 1))
            src = src[s0:s0 + cfg.num_frames]
        if self.augment:
            src = augment_source(src, np.random.default_rng([seed, 2]), self.source_zoom)
        if k in self._layered:
            c = synthesize_layered(self._textures, self._layered_config(k), seed=seed, background=src)
        else:
            c = synthesize_shake(src, cfg, seed=seed)
        item = (f"{label}#{k}", c.blurry, c.sharp, c.blur_extent.astype(np.float32))
        if self.cache:
            self._clips[k] = item
        return item

    def is_layered(self, k: int) -> bool:
        """Whether clip ``k`` is a layered scene (objects moving over a background) rather than camera shake."""
        return k in self._layered

    def _layered_config(self, k: int) -> LayeredConfig:
        c = self.config  # size, timing and noise as the shake clips have them
        lc = replace(self.layered, num_frames=c.num_frames, width=c.width, height=c.height, fps=c.fps,
                     exposure=c.exposure, noise_sigma=c.noise_sigma)
        return lc.still() if k in self._still else lc

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = index % self.num_clips
        name, blurry, sharp, extent = self.clip(k)
        rng = np.random.default_rng([self.seed, self.epoch, index, 3])
        start = int(rng.integers(0, self.frames_per_clip - self.clip_len + 1))
        sl = slice(start, start + self.clip_len)
        blurry, sharp, extent = blurry[sl], sharp[sl], extent[sl]
        top = left = 0
        if self.crop:
            h, w = blurry.shape[1:3]
            top, left = int(rng.integers(0, h - self.crop[0] + 1)), int(rng.integers(0, w - self.crop[1] + 1))
            blurry = blurry[:, top:top + self.crop[0], left:left + self.crop[1]]
            sharp = sharp[:, top:top + self.crop[0], left:left + self.crop[1]]
        return {"blurry": to_float_clip(blurry), "sharp": to_float_clip(sharp), "sequence": name, "start": start,
                "top": top, "left": left, "blur_extent": torch.from_numpy(extent.copy()),
                "clip_seed": self.clip_seed(k)}
