"""Datasets: paired blurry/sharp folders or videos (GoPro / DVD / REDS / video-pair layouts), synthetic
camera shake and layered scenes with object motion, made on the fly."""

from .layered import LayeredClip, LayeredConfig, synthesize_layered
from .paired import DatasetError, PairedVideoDataset, detect_layout, scan_sequences
from .shake_dataset import SyntheticShakeDataset
from .synthetic import EVAL_PHOTOS, TRAIN_PHOTOS, ShakeClip, ShakeConfig, synthesize_shake

__all__ = ["PairedVideoDataset", "SyntheticShakeDataset", "DatasetError", "detect_layout", "scan_sequences",
           "ShakeConfig", "ShakeClip", "synthesize_shake", "TRAIN_PHOTOS", "EVAL_PHOTOS",
           "LayeredConfig", "LayeredClip", "synthesize_layered"]
