"""Scoring a result against ground truth the way this project judges methods: PSNR/SSIM on all frames and
on the blurriest third, E_warp, and the count of frames the method made worse than its input."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .metrics import psnr, ssim, warping_error

WORSE_DB = 0.3  # a frame counts as "made worse" when it lost more than this against the blurry input


def hard_third(blur_score: np.ndarray, fraction: float = 1 / 3) -> np.ndarray:
    """Indices of the blurriest ``fraction`` of frames (at least one) by a blur score (higher = blurrier)."""
    s = np.asarray(blur_score, dtype=np.float64)
    k = max(1, int(round(len(s) * fraction)))
    return np.sort(np.argsort(-s, kind="stable")[:k])


@dataclass
class Score:
    psnr: np.ndarray
    ssim: np.ndarray
    ewarp: float | None = None
    hard: np.ndarray | None = None  # indices of the blurriest third
    input_psnr: np.ndarray | None = None  # PSNR of the blurry input, for gains and frames made worse
    input_ssim: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def mean_psnr(self) -> float:
        return float(np.mean(self.psnr))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim))

    @property
    def hard_psnr(self) -> float | None:
        return None if self.hard is None else float(np.mean(self.psnr[self.hard]))

    @property
    def hard_ssim(self) -> float | None:
        return None if self.hard is None else float(np.mean(self.ssim[self.hard]))

    def gain(self, where: str = "all") -> float | None:
        if self.input_psnr is None:
            return None
        idx = self.hard if where == "hard" else slice(None)
        if idx is None:
            return None
        return float(np.mean(self.psnr[idx]) - np.mean(self.input_psnr[idx]))

    def frames_worse(self, db: float = WORSE_DB) -> int | None:
        if self.input_psnr is None:
            return None
        return int(np.sum(self.psnr < self.input_psnr - db))

    def worst_loss(self) -> float | None:
        if self.input_psnr is None:
            return None
        return float(np.max(self.input_psnr - self.psnr))

    def as_dict(self) -> dict:
        d = {
            "psnr": self.mean_psnr, "ssim": self.mean_ssim, "ewarp": self.ewarp,
            "hard_psnr": self.hard_psnr, "hard_ssim": self.hard_ssim,
            "gain_all": self.gain("all"), "gain_hard": self.gain("hard"),
            "frames_worse": self.frames_worse(), "worst_loss": self.worst_loss(),
            "per_frame": {"psnr": [round(float(v), 4) for v in self.psnr],
                          "ssim": [round(float(v), 5) for v in self.ssim]},
        }
        if self.hard is not None:
            d["hard_frames"] = [int(i) for i in self.hard]
        d.update(self.extra)
        return d


def score(result: np.ndarray, truth: np.ndarray, blurry: np.ndarray | None = None,
          blur_score: np.ndarray | None = None, with_ewarp: bool = True) -> Score:
    """Score uint8 (F, H, W, 3) ``result`` against ``truth``. ``blurry`` (the method's input) gives gains and
    frames made worse; ``blur_score`` (e.g. the synthetic clip's blur extent; by default the input's PSNR
    deficit) picks the blurriest third. E_warp uses the flow of the ground truth."""
    if result.shape != truth.shape:
        raise ValueError(f"result {result.shape} and ground truth {truth.shape} differ in shape")
    s = Score(psnr=psnr(result, truth), ssim=ssim(result, truth))
    if blurry is not None:
        if blurry.shape != truth.shape:
            raise ValueError(f"blurry input {blurry.shape} and ground truth {truth.shape} differ in shape")
        s.input_psnr, s.input_ssim = psnr(blurry, truth), ssim(blurry, truth)
        if blur_score is None:
            blur_score = -np.minimum(s.input_psnr, 100.0)
    if blur_score is not None:
        s.hard = hard_third(blur_score)
    if with_ewarp:
        s.ewarp = warping_error(result, flow_frames=truth)
    return s
