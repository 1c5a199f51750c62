"""Synthetic camera shake: a sharp photo (or sharp video) -> a blurry clip with its ground truth.

A hand-held camera trajectory (a slow pan, plus translation, a little rotation and zoom from shake)
alternates calm stretches and shake bursts, so that some frames are nearly sharp and some badly blurred.
Each output frame is the mean of sub-frames across its exposure, in linear light (DTB paper eq. (1)); the
ground truth is the pose at the middle of the exposure; mild sensor noise is added. Everything is seeded.

Built-in sources are the real photographs that ship inside scikit-image. They are split once, here, into
photos that models may be trained on and photos kept for evaluation, so that no evaluation is done on
a training photo.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from ..blur import linear_to_srgb, splat_points, srgb_to_linear
from ..video import VideoError, read_video, to_rgb_uint8

# name -> skimage.data function. Only photographs bundled with scikit-image (nothing downloads);
# `clock` is left out (already motion-blurred), `cat` is the same photo as `chelsea`.
BUILTIN_PHOTOS = {
    "astronaut": "astronaut",
    "coffee": "coffee",
    "chelsea": "chelsea",
    "rocket": "rocket",
    "motorcycle": "stereo_motorcycle",
    "hubble_deep_field": "hubble_deep_field",
    "retina": "retina",
    "immunohistochemistry": "immunohistochemistry",
    "camera": "camera",
    "brick": "brick",
    "grass": "grass",
    "gravel": "gravel",
    "coins": "coins",
    "moon": "moon",
}
#: photos the shipped models are trained on
TRAIN_PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
                "camera", "brick", "grass", "gravel", "moon")
#: photos kept apart for evaluation, demos and benchmarks
EVAL_PHOTOS = ("coffee", "chelsea", "motorcycle", "coins")


def load_photo(source) -> np.ndarray:
    """``builtin:NAME`` / a built-in NAME / an image path / an array -> uint8 RGB (H, W, 3)."""
    if isinstance(source, np.ndarray):
        return to_rgb_uint8(source)
    name = str(source)
    key = name.split(":", 1)[1] if name.startswith("builtin:") else name
    if key in BUILTIN_PHOTOS:
        import skimage.data

        img = getattr(skimage.data, BUILTIN_PHOTOS[key])()
        if isinstance(img, tuple):  # stereo pairs: the left view
            img = img[0]
        return to_rgb_uint8(img, f"builtin:{key}")
    if name.startswith("builtin:"):
        raise ValueError(f"unknown built-in photo {key!r}; choose from {', '.join(sorted(BUILTIN_PHOTOS))}")
    video = read_video(name)
    if len(video) != 1:
        raise VideoError(name, f"expected one photo, found {len(video)} frames (pass a video as frames)")
    return video.frames[0]


@dataclass
class ShakeConfig:
    num_frames: int = 40
    width: int = 320
    height: int = 240
    fps: float = 30.0
    exposure: float = 0.5  # fraction of the frame interval the shutter is open
    shake_px: float = 20.0  # shake displacement at full burst, in output pixels
    shake_corr_frames: float = 0.6  # correlation time of the shake
    calm_level: tuple[float, float] = (0.0, 0.06)  # envelope in calm stretches (fraction of shake_px)
    burst_level: tuple[float, float] = (0.35, 1.0)
    calm_len: tuple[int, int] = (3, 9)  # frames
    burst_len: tuple[int, int] = (3, 8)
    pan_px_per_frame: tuple[float, float] = (0.2, 1.2)
    rotation_deg: float = 0.5  # shake rotation at full burst
    zoom: float = 0.006  # relative shake zoom at full burst
    noise_sigma: float = 1.0 / 255  # Gaussian sensor noise on the blurry frames (sRGB)
    max_subframe_step: float = 0.35  # px between sub-frames, so the mean looks like continuous motion

    def __post_init__(self):
        if self.num_frames < 1 or self.width < 8 or self.height < 8:
            raise ValueError(f"need num_frames >= 1 and a size of at least 8x8, got {self.num_frames} frames "
                             f"{self.width}x{self.height}")
        if not 0 < self.exposure <= 1:
            raise ValueError(f"exposure must be in (0, 1], got {self.exposure}")


@dataclass
class ShakeClip:
    blurry: np.ndarray  # uint8 (F, H, W, 3)
    sharp: np.ndarray  # uint8 (F, H, W, 3): the pose at the middle of each exposure
    blur_extent: np.ndarray  # (F,) mean path length of image points during the exposure, px
    offsets: list  # per frame (S, 2): where the image centre's content sits at each sub-frame, px
    fps: float
    config: ShakeConfig = field(default_factory=ShakeConfig)

    def kernel(self, i: int, size: int | None = None) -> np.ndarray:
        """The translation-only blur kernel of frame ``i`` (rotation and zoom left out)."""
        pts = np.asarray(self.offsets[i], dtype=np.float64)
        reach = float(np.abs(pts).max()) if len(pts) else 0.0
        size = size or (2 * int(math.ceil(reach)) + 3) | 1
        return splat_points(pts, size)

    def blurriest(self, fraction: float = 1 / 3) -> np.ndarray:
        """Indices of the blurriest ``fraction`` of frames (at least one), most blurred first."""
        k = max(1, int(round(len(self.blur_extent) * fraction)))
        return np.argsort(-self.blur_extent, kind="stable")[:k]

    def metadata(self) -> dict:
        return {
            "fps": self.fps,
            "blur_extent": [round(float(x), 4) for x in self.blur_extent],
            "offsets": [np.round(np.asarray(o), 4).tolist() for o in self.offsets],
            "config": asdict(self.config),
        }


def _envelope(n_frames: int, grid: int, cfg: ShakeConfig, rng: np.random.Generator) -> np.ndarray:
    levels = np.empty(n_frames)
    i, calm = 0, bool(rng.random() < 0.5)
    while i < n_frames:
        lo, hi = cfg.calm_len if calm else cfg.burst_len
        n = int(rng.integers(lo, hi + 1))
        lv = cfg.calm_level if calm else cfg.burst_level
        levels[i:i + n] = rng.uniform(*lv)
        i += n
        calm = not calm
    fine = np.repeat(levels, grid)
    return gaussian_filter1d(fine, sigma=0.5 * grid, mode="nearest")


def _smooth_noise(n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    x = gaussian_filter1d(rng.standard_normal(n + int(8 * sigma)), sigma=sigma, mode="wrap")[: n]
    return x / (x.std() + 1e-12)


def _trajectory(cfg: ShakeConfig, rng: np.random.Generator, grid: int):
    """Camera pose on a fine time grid: t (frames), translation (T, 2) px, rotation (T,) rad, zoom (T,)."""
    F = cfg.num_frames
    T = (F + 2) * grid
    t = np.arange(T) / grid - 1.0  # one frame of margin either side
    env = _envelope(F + 2, grid, cfg, rng)
    sig = cfg.shake_corr_frames * grid
    shake = np.stack([_smooth_noise(T, sig, rng), _smooth_noise(T, sig, rng)], 1) * (cfg.shake_px * env)[:, None]
    speed = rng.uniform(*cfg.pan_px_per_frame)
    direction = rng.uniform(0, 2 * np.pi)
    pan = np.outer(t, [speed * math.cos(direction), speed * math.sin(direction)])
    rot = np.deg2rad(cfg.rotation_deg) * env * _smooth_noise(T, sig, rng)
    zoom = 1.0 + cfg.zoom * env * _smooth_noise(T, sig, rng)
    return t, pan + shake, rot, zoom


def _interp(t_query, t, values):
    values = np.asarray(values)
    if values.ndim == 1:
        return np.interp(t_query, t, values)
    return np.stack([np.interp(t_query, t, values[:, j]) for j in range(values.shape[1])], 1)


def _affine(center_src, pos, rot, zoom, out_center):
    """2x3 matrix mapping output pixel coordinates to source-image coordinates."""
    c, s = math.cos(rot) * zoom, math.sin(rot) * zoom
    m = np.array([[c, -s], [s, c]])
    off = np.asarray(center_src) + np.asarray(pos) - m @ np.asarray(out_center)
    return np.hstack([m, off[:, None]])


def fit_view(sources: list, pos: np.ndarray, cfg: ShakeConfig, rng: np.random.Generator):
    """The sources (uint8 (H, W, 3) each) scaled so the view plus the camera's whole path ``pos`` fits inside them,
    in linear light, and a random view centre that keeps it inside (source px)."""
    W, H = cfg.width, cfg.height
    # ~1 source px per output px (downscaling with INTER_AREA keeps it crisp)
    span = pos.max(0) - pos.min(0)
    extra = 0.5 * max(W, H) * (3 * cfg.zoom + 2 * np.deg2rad(cfg.rotation_deg)) + 4
    half_view = np.array([W / 2, H / 2]) + extra
    need = 2 * half_view + span
    ph, pw = sources[0].shape[:2]
    r = max(need[0] / pw, need[1] / ph) * rng.uniform(1.0, 1.2)
    size = (max(int(round(pw * r)), int(math.ceil(need[0]))), max(int(round(ph * r)), int(math.ceil(need[1]))))
    interp = cv2.INTER_AREA if r < 1 else cv2.INTER_CUBIC
    lin = [srgb_to_linear(cv2.resize(s, size, interpolation=interp).astype(np.float32) / 255.0) for s in sources]
    lo = half_view - pos.min(0)
    hi = np.array(size, dtype=np.float64) - half_view - pos.max(0)
    return lin, lo + rng.uniform(0, 1, 2) * np.maximum(hi - lo, 0)


def synthesize_shake(source, config: ShakeConfig | None = None, seed: int = 0) -> ShakeClip:
    """Make a camera-shake clip from a photo (H, W, 3), a built-in name, or a sharp video (F, H, W, 3).

    With a video, output frame i is shaken from source frame i (the source needs >= num_frames frames).
    """
    cfg = config or ShakeConfig()
    rng = np.random.default_rng(seed)
    if isinstance(source, np.ndarray) and source.ndim == 4:
        if source.shape[0] < cfg.num_frames:
            raise ValueError(f"the sharp video has {source.shape[0]} frames, fewer than the {cfg.num_frames} asked for")
        sources = [to_rgb_uint8(f) for f in source[: cfg.num_frames]]
    else:
        sources = [load_photo(source)]
    grid = 32
    t, pos, rot, zoom = _trajectory(cfg, rng, grid)
    W, H = cfg.width, cfg.height
    out_c = np.array([(W - 1) / 2, (H - 1) / 2])
    lin, center_src = fit_view(sources, pos, cfg, rng)

    probe_pts = np.array([[0, 0], [-W / 2, -H / 2], [W / 2, -H / 2], [-W / 2, H / 2], [W / 2, H / 2]]) + out_c
    blurry, sharp, extent, offsets = [], [], [], []
    half = cfg.exposure / 2
    for i in range(cfg.num_frames):
        src = lin[i if len(lin) > 1 else 0]
        # path length of the probe points over the exposure, from the fine grid
        dense = np.linspace(i - half, i + half, 4 * grid + 1)
        p, r_, z = _interp(dense, t, pos), _interp(dense, t, rot), _interp(dense, t, zoom)
        mats = [_affine(center_src, p[k], r_[k], z[k], out_c) for k in range(len(dense))]
        pts = np.stack([(m[:, :2] @ probe_pts.T).T + m[:, 2] for m in mats])  # (D, 5, 2) source coords
        path = np.linalg.norm(np.diff(pts, axis=0), axis=2).sum(0)
        extent.append(float(path.mean()))
        n_sub = max(9, int(math.ceil(path.max() / cfg.max_subframe_step)) + 1)
        ts = np.linspace(i - half, i + half, n_sub) if cfg.exposure > 0 else np.array([float(i)])
        p, r_, z = _interp(ts, t, pos), _interp(ts, t, rot), _interp(ts, t, zoom)
        acc = np.zeros((H, W, 3), np.float32)
        for k in range(n_sub):
            m = _affine(center_src, p[k], r_[k], z[k], out_c)
            acc += cv2.warpAffine(src, m, (W, H), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REFLECT)
        mid = _affine(center_src, *_interp(np.array([float(i)]), t, pos), _interp(np.array([float(i)]), t, rot)[0],
                      _interp(np.array([float(i)]), t, zoom)[0], out_c)
        gt = cv2.warpAffine(src, mid, (W, H), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REFLECT)
        b = linear_to_srgb(acc / n_sub)
        b = b + rng.normal(0.0, cfg.noise_sigma, b.shape).astype(np.float32)
        blurry.append((np.clip(b, 0, 1) * 255 + 0.5).astype(np.uint8))
        sharp.append((np.clip(linear_to_srgb(gt), 0, 1) * 255 + 0.5).astype(np.uint8))
        # content at the centre moves opposite to the camera: kernel taps sit at -(p(t) - p(mid))
        p_mid = _interp(np.array([float(i)]), t, pos)[0]
        offsets.append(-(p - p_mid))
    return ShakeClip(blurry=np.stack(blurry), sharp=np.stack(sharp), blur_extent=np.array(extent),
                     offsets=offsets, fps=cfg.fps, config=cfg)
