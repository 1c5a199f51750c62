"""Datasets: paired blurry/sharp folders or videos (GoPro / DVD / REDS / video-pair layouts) and synthetic
camera shake made on the fly."""

from .paired import DatasetError, PairedVideoDataset, detect_layout, scan_sequences
from .shake_dataset import SyntheticShakeDataset
from .synthetic import EVAL_PHOTOS, TRAIN_PHOTOS, ShakeClip, ShakeConfig, synthesize_shake

__all__ = ["PairedVideoDataset", "SyntheticShakeDataset", "DatasetError", "detect_layout", "scan_sequences",
           "ShakeConfig", "ShakeClip", "synthesize_shake", "TRAIN_PHOTOS", "EVAL_PHOTOS"]
