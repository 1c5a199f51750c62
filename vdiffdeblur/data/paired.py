"""``PairedVideoDataset``: blurry/sharp video pairs on disk, in the common public layouts.

Layouts (``layout="auto"`` detects which one ``root`` holds):

* ``gopro``: ``ROOT/<seq>/{blur,blur_gamma,sharp}/*.png`` (the blurry folder is ``blur`` by default,
  ``blur_folder="blur_gamma"`` picks the other); ``ROOT`` may also be a single such sequence (as
  ``vdiffdeblur synth`` writes it: ``ROOT/blur/`` + ``ROOT/sharp/``);
* ``dvd``: ``ROOT/<seq>/{input,GT}/*.jpg`` (DeepVideoDeblurring);
* ``reds``: ``ROOT/<split>_blur/<seq>/*.png`` with ``ROOT/<split>_sharp/<seq>/`` (``split="train"``);
* ``video``: pairs of video files ``ROOT/<seq>/blur.mp4`` + ``ROOT/<seq>/sharp.mp4`` (any video suffix).

Every item is a clip of ``clip_len`` consecutive frames from one sequence, with one random temporal start
and one random crop shared by the blurry and the sharp frames. Items are seeded by ``(seed, epoch,
index)``, so a run can be repeated; call :meth:`set_epoch` to draw new clips each epoch.

An item is a dict:

* ``"blurry"``, ``"sharp"``: float32 tensors (F, 3, H, W) in [0, 1] (F = ``clip_len``, H x W = ``crop``);
* ``"sequence"``: the sequence name; ``"start"``: the index of the first frame in the sequence;
* ``"top"``, ``"left"``: where the crop sits in the full frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, list_image_files, probe, read_video

logger = logging.getLogger(__name__)

LAYOUTS = ("gopro", "dvd", "reds", "video")


class DatasetError(ValueError):
    """A dataset folder that cannot be used; the message names the sequence and the reason."""


@dataclass
class Sequence:
    """One blurry/sharp pair: either two frame lists or two video files."""

    name: str
    blurry: object  # list[Path] of frames, or a Path to a video file
    sharp: object
    num_frames: int
    height: int
    width: int

    def read(self, which: str, start: int, length: int) -> np.ndarray:
        """uint8 (length, H, W, 3) frames ``start .. start+length-1`` of the blurry or the sharp side."""
        src = self.blurry if which == "blurry" else self.sharp
        if isinstance(src, list):
            frames = [_read_image(p) for p in src[start:start + length]]
            for p, f in zip(src[start:start + length], frames):
                if f.shape[:2] != (self.height, self.width):
                    raise DatasetError(f"sequence {self.name!r}: {p} is {f.shape[1]}x{f.shape[0]}, not "
                                       f"{self.width}x{self.height} like the sequence's first frame")
            return np.stack(frames)
        return read_video(src, start, start + length).frames


def _read_image(path: Path) -> np.ndarray:
    return read_video(path).frames[0]


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from None


def _frames(folder: Path) -> list[Path]:
    return list_image_files(folder) if folder.is_dir() else []


def _video_file(folder: Path, stem: str) -> Path | None:
    hits = [p for p in sorted(folder.glob(f"{stem}.*")) if p.suffix.lower() in VIDEO_SUFFIXES]
    return hits[0] if hits else None


def detect_layout(root: str | Path) -> str:
    """Which layout ``root`` holds: ``gopro``, ``dvd``, ``reds`` or ``video``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    if any((root / f"{s}_blur").is_dir() for s in ("train", "val", "test")):
        return "reds"
    if (root / "blur").is_dir() and (root / "sharp").is_dir():
        return "gopro"  # a single sequence
    for seq in sorted(p for p in root.iterdir() if p.is_dir()):
        if (seq / "input").is_dir() or (seq / "GT").is_dir():
            return "dvd"
        if (seq / "blur").is_dir() or (seq / "blur_gamma").is_dir() or (seq / "sharp").is_dir():
            return "gopro"
        if _video_file(seq, "blur") is not None or _video_file(seq, "sharp") is not None:
            return "video"
    raise DatasetError(f"{root}: cannot tell the dataset layout; expected <seq>/blur + <seq>/sharp (GoPro), "
                       "<seq>/input + <seq>/GT (DVD), train_blur/ + train_sharp/ (REDS) or <seq>/blur.mp4 + "
                       "<seq>/sharp.mp4 (video pairs)")


def _folder_pair(name: str, blur_dir: Path, sharp_dir: Path) -> Sequence:
    if not blur_dir.is_dir():
        raise DatasetError(f"sequence {name!r}: blurry frames folder {blur_dir} is missing")
    if not sharp_dir.is_dir():
        raise DatasetError(f"sequence {name!r}: sharp counterpart {sharp_dir} is missing")
    blur, sharp = _frames(blur_dir), _frames(sharp_dir)
    if not blur:
        raise DatasetError(f"sequence {name!r}: {blur_dir} holds no images")
    if len(blur) != len(sharp):
        raise DatasetError(f"sequence {name!r}: {len(blur)} blurry frames but {len(sharp)} sharp frames "
                           f"({blur_dir} vs {sharp_dir})")
    bs, ss = _image_size(blur[0]), _image_size(sharp[0])
    if bs != ss:
        raise DatasetError(f"sequence {name!r}: blurry frames are {bs[1]}x{bs[0]} but sharp frames are "
                           f"{ss[1]}x{ss[0]}")
    return Sequence(name, blur, sharp, len(blur), bs[0], bs[1])


def _video_pair(name: str, folder: Path) -> Sequence:
    blur, sharp = _video_file(folder, "blur"), _video_file(folder, "sharp")
    if blur is None:
        raise DatasetError(f"sequence {name!r}: blurry video {folder}/blur.<mp4|mkv|...> is missing")
    if sharp is None:
        raise DatasetError(f"sequence {name!r}: sharp counterpart {folder}/sharp.<mp4|mkv|...> is missing")
    bi, si = probe(blur), probe(sharp)
    if bi.num_frames != si.num_frames:
        raise DatasetError(f"sequence {name!r}: {bi.num_frames} blurry frames but {si.num_frames} sharp frames")
    if (bi.width, bi.height) != (si.width, si.height):
        raise DatasetError(f"sequence {name!r}: blurry video is {bi.width}x{bi.height} but sharp video is "
                           f"{si.width}x{si.height}")
    return Sequence(name, blur, sharp, bi.num_frames, bi.height, bi.width)


def scan_sequences(root: str | Path, layout: str = "auto", blur_folder: str = "blur",
                   split: str = "train") -> tuple[str, list[Sequence]]:
    """Find every blurry/sharp pair under ``root``; returns the layout and the sequences (sorted by name)."""
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose from auto, {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    seqs: list[Sequence] = []
    if layout == "reds":
        bdir, sdir = root / f"{split}_blur", root / f"{split}_sharp"
        if not bdir.is_dir():
            raise DatasetError(f"{root}: REDS layout needs {bdir.name}/ (split={split!r})")
        for seq in sorted(p for p in bdir.iterdir() if p.is_dir()):
            seqs.append(_folder_pair(seq.name, seq, sdir / seq.name))
    elif layout == "gopro" and (root / blur_folder).is_dir() and (root / "sharp").is_dir():
        seqs.append(_folder_pair(root.name, root / blur_folder, root / "sharp"))
    else:
        for seq in sorted(p for p in root.iterdir() if p.is_dir()):
            if layout == "gopro":
                seqs.append(_folder_pair(seq.name, seq / blur_folder, seq / "sharp"))
            elif layout == "dvd":
                seqs.append(_folder_pair(seq.name, seq / "input", seq / "GT"))
            else:
                seqs.append(_video_pair(seq.name, seq))
    if not seqs:
        raise DatasetError(f"{root}: no sequences found for the {layout} layout")
    return layout, seqs


def _crop_size(crop) -> tuple[int, int] | None:
    if crop is None:
        return None
    if isinstance(crop, int):
        return (crop, crop)
    h, w = crop
    return int(h), int(w)


def to_float_clip(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (F, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)


class PairedVideoDataset(Dataset):
    """Matched blurry/sharp clips from a folder of sequences (see the module docstring for layouts and keys).

    ``samples_per_sequence`` clips are drawn from every sequence per epoch (length = sequences x that).
    ``crop`` is an int, (H, W) or None (whole frames). ``flip=True`` adds random horizontal flips and
    time reversal, the same for blurry and sharp.
    """

    def __init__(self, root, layout: str = "auto", clip_len: int = 16, crop=256, samples_per_sequence: int = 1,
                 seed: int = 0, flip: bool = False, blur_folder: str = "blur", split: str = "train"):
        if clip_len < 1:
            raise ValueError(f"clip_len must be >= 1, got {clip_len}")
        self.root = Path(root)
        self.layout, self.sequences = scan_sequences(root, layout, blur_folder=blur_folder, split=split)
        self.clip_len, self.crop = clip_len, _crop_size(crop)
        self.samples_per_sequence, self.seed, self.flip = samples_per_sequence, seed, flip
        self.epoch = 0
        for s in self.sequences:
            if s.num_frames < clip_len:
                raise DatasetError(f"sequence {s.name!r}: {s.num_frames} frames, fewer than clip_len={clip_len}")
            if self.crop and (s.height < self.crop[0] or s.width < self.crop[1]):
                raise DatasetError(f"sequence {s.name!r}: frames of {s.width}x{s.height} are smaller than the "
                                   f"{self.crop[1]}x{self.crop[0]} crop")
        logger.info("%s: %d %s sequences", self.root, len(self.sequences), self.layout)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.sequences) * self.samples_per_sequence

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        seq = self.sequences[index % len(self.sequences)]
        rng = self._rng(index)
        start = int(rng.integers(0, seq.num_frames - self.clip_len + 1))
        blurry = seq.read("blurry", start, self.clip_len)
        sharp = seq.read("sharp", start, self.clip_len)
        if blurry.shape != sharp.shape:
            raise DatasetError(f"sequence {seq.name!r}: frames {start}..{start + self.clip_len - 1} differ in size "
                               f"(blurry {blurry.shape[2]}x{blurry.shape[1]}, sharp {sharp.shape[2]}x{sharp.shape[1]})")
        top = left = 0
        if self.crop:
            h, w = blurry.shape[1:3]
            ch, cw = self.crop
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            blurry = blurry[:, top:top + ch, left:left + cw]
            sharp = sharp[:, top:top + ch, left:left + cw]
        if self.flip:
            if rng.random() < 0.5:
                blurry, sharp = blurry[:, :, ::-1], sharp[:, :, ::-1]
            if rng.random() < 0.5:
                blurry, sharp = blurry[::-1], sharp[::-1]
        return {"blurry": to_float_clip(blurry), "sharp": to_float_clip(sharp), "sequence": seq.name,
                "start": start, "top": top, "left": left}


__all__ = ["PairedVideoDataset", "DatasetError", "detect_layout", "scan_sequences", "LAYOUTS", "IMAGE_SUFFIXES"]
