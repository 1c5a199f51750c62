"""Layered scenes with object motion: a background plus foreground objects that move on their own, blurred
the way a camera blurs them.

Camera shake of a flat photo (:mod:`~vdiffdeblur.data.synthetic`) moves every pixel the same way; real footage
has objects that move on their own, pass in front of each other and uncover what was behind them. Here a scene
is a background (a photo, a sharp video or a dead-leaves picture) seen by a camera that pans and may shake
(the shake trajectory of :mod:`~vdiffdeblur.data.synthetic`), with 4-8 objects in front of it, back to front.
An object is a patch of a photo cut out with a soft mask (a disk, ellipse, rectangle, triangle or an organic
blob) or a procedural one (a dead-leaves picture or a shaded flat colour). Each object follows its own smooth
path in the scene: translation along a slowly turning direction, rotation and scale change, at a speed that
comes and goes (calm stretches and bursts, as the camera's shake does), so one clip holds nearly sharp and
badly blurred frames; some objects stay still.

The sharp frame at time ``i`` is the composite at ``t = i``. The blurry frame is the mean of ``N`` composites
spread over the exposure, in linear light (inverse sRGB, mean, back to sRGB), plus mild sensor noise, as
:func:`~vdiffdeblur.data.synthetic.synthesize_shake` makes it. Each frame's blur extent is the mean over pixels of
the path length during the exposure of the fastest layer seen at that pixel, so object motion counts (the
90th percentile and the maximum are kept too).
Everything is drawn from one seed.

Objects and backgrounds come only from the photos given: pass TRAIN_PHOTOS for training and EVAL_PHOTOS for
evaluation, never a mix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import cv2
import numpy as np
from tqdm.auto import tqdm

from ..blur import linear_to_srgb, srgb_to_linear
from ..video import to_rgb_uint8
from .dead_leaves import _shape_mask, dead_leaves
from .synthetic import ShakeConfig, _affine, _envelope, _interp, _smooth_noise, _trajectory, fit_view, load_photo

#: the time grid of trajectories, in steps per frame
GRID = 32


@dataclass
class LayeredConfig:
    num_frames: int = 40
    width: int = 320
    height: int = 240
    fps: float = 30.0
    exposure: float = 0.5  # fraction of the frame interval the shutter is open
    num_objects: tuple[int, int] = (4, 8)
    object_size: tuple[float, float] = (0.3, 0.7)  # an object's side as a fraction of the frame's shorter side
    static_fraction: float = 0.2  # share of objects that do not move on their own (one moves if any can)
    procedural_fraction: float = 0.3  # share of objects that are procedural instead of cut from a photo
    speed_px: tuple[float, float] = (8.0, 48.0)  # an object's top speed in px per frame (log-uniform)
    turn_rad: float = 0.08  # how fast an object's direction turns, rad per frame at most
    spin_deg: float = 3.0  # an object's top rotation speed, degrees per frame
    scale_rate: float = 0.01  # an object's top relative scale change per frame
    camera: ShakeConfig = field(default_factory=lambda: ShakeConfig(shake_px=10.0))
    still_camera_fraction: float = 0.3  # share of clips whose camera only pans slowly (no shake)
    noise_sigma: float = 1.0 / 255  # Gaussian sensor noise on the blurry frames (sRGB)
    max_subframe_step: float = 0.5  # px between sub-frames, so the mean looks like continuous motion
    max_subframes: int = 96

    def __post_init__(self):
        if isinstance(self.camera, dict):  # from metadata or a YAML file
            self.camera = ShakeConfig(**self.camera)
        if self.num_frames < 1 or self.width < 8 or self.height < 8:
            raise ValueError(f"need num_frames >= 1 and a size of at least 8x8, got {self.num_frames} frames "
                             f"{self.width}x{self.height}")
        if not 0 < self.exposure <= 1:
            raise ValueError(f"exposure must be in (0, 1], got {self.exposure}")
        lo, hi = self.num_objects
        if not 0 <= lo <= hi:
            raise ValueError(f"num_objects must be (low, high) with 0 <= low <= high, got {self.num_objects}")
        if not 0 < self.object_size[0] <= self.object_size[1] <= 1:
            raise ValueError(f"object_size must satisfy 0 < low <= high <= 1, got {self.object_size}")
        if not 0 < self.speed_px[0] <= self.speed_px[1]:
            raise ValueError(f"speed_px must satisfy 0 < low <= high, got {self.speed_px}")
        for name in ("static_fraction", "procedural_fraction", "still_camera_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def steady_camera(self) -> "LayeredConfig":
        """Objects moving as before, the camera panning slowly without shake: blur beyond the pan is the objects'."""
        return replace(self, still_camera_fraction=1.0)

    def still(self) -> "LayeredConfig":
        """The same scene kind with nothing moving on its own and no shake (the camera's slow pan stays)."""
        return replace(self, static_fraction=1.0, still_camera_fraction=1.0)


@dataclass
class SceneObject:
    rgba: np.ndarray  # float32 (h, w, 4): linear RGB premultiplied by alpha, and alpha
    t: np.ndarray  # (T,) the time grid, frames
    pos: np.ndarray  # (T, 2) the centre in scene (background) pixels
    angle: np.ndarray  # (T,) rad
    scale: np.ndarray  # (T,)
    label: str
    static: bool

    def to_scene(self, t: float) -> np.ndarray:
        """3x3 matrix: object pixel -> scene pixel at time ``t``."""
        a, s = float(np.interp(t, self.t, self.angle)), float(np.interp(t, self.t, self.scale))
        c = np.array([np.interp(t, self.t, self.pos[:, 0]), np.interp(t, self.t, self.pos[:, 1])])
        h, w = self.rgba.shape[:2]
        rot = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        m = np.eye(3)
        m[:2, :2], m[:2, 2] = rot, c - rot @ np.array([(w - 1) / 2, (h - 1) / 2])
        return m


def _h(m2x3: np.ndarray) -> np.ndarray:
    return np.vstack([m2x3, [0.0, 0.0, 1.0]])


@dataclass
class LayeredScene:
    """A background and its objects on one time grid; :meth:`render` gives the composite at any time."""

    backgrounds: list  # float32 linear (Hs, Ws, 3): one picture, or one per frame of a sharp video
    objects: list
    t: np.ndarray
    cam_pos: np.ndarray
    cam_rot: np.ndarray
    cam_zoom: np.ndarray
    center_src: np.ndarray
    width: int
    height: int

    def camera(self, t: float) -> np.ndarray:
        """3x3 matrix: output pixel -> scene pixel at time ``t``."""
        q = np.array([float(t)])
        out_c = np.array([(self.width - 1) / 2, (self.height - 1) / 2])
        return _h(_affine(self.center_src, _interp(q, self.t, self.cam_pos)[0], _interp(q, self.t, self.cam_rot)[0],
                          _interp(q, self.t, self.cam_zoom)[0], out_c))

    def layer_maps(self, t: float) -> list[np.ndarray]:
        """Per layer (background first), the 3x3 matrix output pixel -> layer pixel at time ``t``."""
        cam = self.camera(t)
        return [cam] + [np.linalg.solve(o.to_scene(t), cam) for o in self.objects]

    def render(self, t: float, frame: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The composite at time ``t`` (linear float32 (H, W, 3)) and which layer owns each pixel (uint8 (H, W):
        0 the background, j the j-th object, where its alpha is above one half)."""
        W, H = self.width, self.height
        maps = self.layer_maps(t)
        bg = self.backgrounds[min(frame, len(self.backgrounds) - 1)]
        out = cv2.warpAffine(bg, maps[0][:2], (W, H), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT)
        owner = np.zeros((H, W), np.uint8)
        for j, (obj, m) in enumerate(zip(self.objects, maps[1:]), start=1):
            h, w = obj.rgba.shape[:2]
            # warp only the object's bounding box in the frame: objects are small, frames are not
            fwd = np.linalg.inv(m)
            corners = fwd[:2, :2] @ np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1]]) + fwd[:2, 2:]
            x0, y0 = (max(0, int(math.floor(v)) - 2) for v in corners.min(1))
            x1, y1 = min(W, int(math.ceil(corners[0].max())) + 3), min(H, int(math.ceil(corners[1].max())) + 3)
            if x1 <= x0 or y1 <= y0:
                continue
            roi = m[:2].copy()
            roi[:, 2] += roi[:, :2] @ np.array([x0, y0], dtype=np.float64)
            patch = cv2.warpAffine(obj.rgba, roi, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            a = np.clip(patch[..., 3:], 0.0, 1.0)
            region = out[y0:y1, x0:x1]
            region *= 1.0 - a
            region += patch[..., :3]
            owner[y0:y1, x0:x1][a[..., 0] > 0.5] = j
        return np.clip(out, 0.0, 1.0), owner

    def path_lengths(self, t0: float, t1: float, step: int = 4, samples: int = 33) -> np.ndarray:
        """Per layer, on a grid of every ``step``-th output pixel, how far the content at that pixel at the
        middle of [t0, t1] travels in the frame over [t0, t1], px: (layers, gh, gw)."""
        ys, xs = np.mgrid[0:self.height:step, 0:self.width:step]
        pts = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)]).astype(np.float64)
        times = np.linspace(t0, t1, samples)
        mid = self.layer_maps(0.5 * (t0 + t1))
        per_time = [[np.linalg.inv(m) for m in self.layer_maps(tk)] for tk in times]
        out = []
        for j in range(len(mid)):
            local = mid[j] @ pts  # layer pixels seen at the mid-exposure time
            track = np.stack([(fwd[j] @ local)[:2] for fwd in per_time])  # (samples, 2, P) frame positions
            out.append(np.linalg.norm(np.diff(track, axis=0), axis=1).sum(0).reshape(xs.shape))
        return np.stack(out)


@dataclass
class LayeredClip:
    blurry: np.ndarray  # uint8 (F, H, W, 3)
    sharp: np.ndarray  # uint8 (F, H, W, 3): the composite at the middle of each exposure
    blur_extent: np.ndarray  # (F,) the mean per-pixel path length during the exposure, px
    blur_extent_p90: np.ndarray  # (F,) its 90th percentile over the pixels
    blur_extent_max: np.ndarray  # (F,) its maximum
    camera_extent: np.ndarray  # (F,) the same mean for the background alone: how much is the camera's
    owner: np.ndarray  # uint8 (F, H, W): which layer each sharp pixel shows (0 the background)
    subframe_times: list  # per frame, the times (frames) of the sub-frames averaged into it
    objects: list  # per object: {"source", "static", "top_speed"}
    fps: float
    config: LayeredConfig = field(default_factory=LayeredConfig)
    scene: LayeredScene | None = None

    def blurriest(self, fraction: float = 1 / 3) -> np.ndarray:
        """Indices of the blurriest ``fraction`` of frames (at least one), most blurred first."""
        k = max(1, int(round(len(self.blur_extent) * fraction)))
        return np.argsort(-self.blur_extent, kind="stable")[:k]

    def metadata(self) -> dict:
        r = lambda a: [round(float(x), 4) for x in a]  # noqa: E731
        return {"motion": "layered", "fps": self.fps, "blur_extent": r(self.blur_extent),
                "blur_extent_p90": r(self.blur_extent_p90), "blur_extent_max": r(self.blur_extent_max),
                "camera_extent": r(self.camera_extent),
                "subframes": [len(ts) for ts in self.subframe_times], "objects": self.objects,
                "config": asdict(self.config)}


# ------------------------------------------------------------------------------------------- objects
def _blob_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """An organic uint8 mask (0 / 255): smooth noise over a radial falloff, thresholded, its largest part."""
    small = max(4, size // 8)
    noise = cv2.resize(rng.standard_normal((small, small)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    yy, xx = (np.mgrid[0:size, 0:size] - (size - 1) / 2) / (size / 2)
    field_ = 1.0 - np.sqrt(xx ** 2 + yy ** 2) + 0.35 * noise
    m = (field_ > 0.3).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m)
    if n > 1:
        m = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    return m * 255


def _soft_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 (size, size) alpha in [0, 1]: a dead-leaves shape or a blob, edges softened by 0.4-1.2 px."""
    m = _blob_mask(rng, size) if rng.random() < 0.4 else cv2.resize(_shape_mask(rng, (size - 3) / 2), (size, size))
    a = m.astype(np.float32) / 255.0
    return cv2.GaussianBlur(a, (0, 0), float(rng.uniform(0.4, 1.2)))


def _object_texture(rng: np.random.Generator, photos: list, size: int) -> tuple[np.ndarray, str]:
    """uint8 (size, size, 3) fill of an object cut from a photo (a patch at 1-2x reduction), and which photo."""
    i = int(rng.integers(len(photos)))
    p = photos[i]
    side = int(min(min(p.shape[:2]), max(size, round(size * rng.uniform(1.0, 2.0)))))
    y, x = int(rng.integers(0, p.shape[0] - side + 1)), int(rng.integers(0, p.shape[1] - side + 1))
    patch = np.ascontiguousarray(p[y:y + side, x:x + side])
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interp), f"photo{i}"


def _procedural_texture(rng: np.random.Generator, photos: list, size: int) -> tuple[np.ndarray, str]:
    """uint8 (size, size, 3) procedural fill: a dead-leaves picture (leaves textured by ``photos``) or a shaded
    flat colour, and which."""
    if rng.random() < 0.5:
        return dead_leaves(size, size, rng, textures=photos, coverage=3.0), "dead_leaves"
    c = rng.uniform(0, 255, 3)
    c += rng.uniform(0.0, 0.8) * (c.mean() - c)  # pulled part way to grey, as photos' colours are
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    g = rng.normal(size=2) * 0.4
    shade = np.clip(1.0 + g[0] * yy + g[1] * xx, 0.5, 1.5)
    return np.clip(c[None, None] * shade[..., None] + 0.5, 0, 255).astype(np.uint8), "flat"


def _object_path(cfg: LayeredConfig, rng: np.random.Generator, t: np.ndarray, start: np.ndarray, static: bool):
    """Centre (T, 2), angle (T,), scale (T,) on the grid ``t`` and the top speed: no own motion when ``static``."""
    T = len(t)
    angle0 = rng.uniform(0, 2 * np.pi)
    if static:
        return np.tile(start, (T, 1)), np.full(T, angle0), np.ones(T), 0.0
    env = _envelope(cfg.num_frames + 2, GRID, cfg.camera, rng)[:T]
    top = math.exp(rng.uniform(math.log(cfg.speed_px[0]), math.log(cfg.speed_px[1])))
    heading = rng.uniform(0, 2 * np.pi) + rng.uniform(-cfg.turn_rad, cfg.turn_rad) * t
    speed = top * env * np.clip(1.0 + 0.3 * _smooth_noise(T, 2.0 * GRID, rng), 0.2, 2.0)
    vel = np.stack([np.cos(heading), np.sin(heading)], 1) * speed[:, None]
    pos = np.cumsum(vel, 0) / GRID
    mid = int(np.argmin(np.abs(t - 0.5 * (cfg.num_frames - 1))))
    pos = pos - pos[mid] + start  # the object is where it was put half-way through the clip
    spin = np.deg2rad(rng.uniform(-cfg.spin_deg, cfg.spin_deg)) * np.cumsum(env) / GRID
    grow = rng.uniform(-cfg.scale_rate, cfg.scale_rate) * np.cumsum(env) / GRID
    return pos, angle0 + spin - spin[mid], np.exp(grow - grow[mid]), top


# ------------------------------------------------------------------------------------------- the scene
def _load_all(photos) -> list[np.ndarray]:
    if isinstance(photos, np.ndarray) and photos.ndim in (3, 4):
        photos = [photos]
    return [to_rgb_uint8(p) if isinstance(p, np.ndarray) else load_photo(p) for p in photos]


def make_scene(background, object_photos, config: LayeredConfig | None = None,
               rng: np.random.Generator | None = None) -> tuple[LayeredScene, list]:
    """A scene: ``background`` (uint8 photo (H, W, 3) or sharp video (F, H, W, 3)) and objects cut from
    ``object_photos`` (uint8 photos; procedural objects only when there are none). Returns the scene and, per
    object, where it came from."""
    cfg = config or LayeredConfig()
    rng = rng if rng is not None else np.random.default_rng()
    cam_cfg = replace(cfg.camera, num_frames=cfg.num_frames, width=cfg.width, height=cfg.height,
                      exposure=cfg.exposure)
    if rng.random() < cfg.still_camera_fraction:
        cam_cfg = replace(cam_cfg, shake_px=0.0, rotation_deg=0.0, zoom=0.0)
    t, pos, rot, zoom = _trajectory(cam_cfg, rng, GRID)
    W, H = cfg.width, cfg.height
    frames = [background] if background.ndim == 3 else list(background[:cfg.num_frames])
    backgrounds, center_src = fit_view(frames, pos, cam_cfg, rng)
    scene = LayeredScene(backgrounds, [], t, pos, rot, zoom, center_src, W, H)

    photos = [p for p in object_photos if p.ndim == 3 and min(p.shape[:2]) >= 16]
    n_obj = int(rng.integers(cfg.num_objects[0], cfg.num_objects[1] + 1))
    view_mid = scene.camera(0.5 * (cfg.num_frames - 1))
    statics = rng.random(n_obj) < cfg.static_fraction
    if n_obj and statics.all() and cfg.static_fraction < 1:
        statics[-1] = False  # a clip of this kind is about object motion: the front object moves
    info = []
    for static in statics.tolist():
        side = max(8, int(round(rng.uniform(*cfg.object_size) * min(W, H))))
        if not photos or rng.random() < cfg.procedural_fraction:
            tex, label = _procedural_texture(rng, photos, side)
        else:
            tex, label = _object_texture(rng, photos, side)
        alpha = _soft_mask(rng, side)[..., None]
        lin = srgb_to_linear(tex.astype(np.float32) / 255.0)
        rgba = np.concatenate([lin * alpha, alpha], 2).astype(np.float32)
        where = view_mid @ np.array([rng.uniform(0, W - 1), rng.uniform(0, H - 1), 1.0])  # inside the view
        opos, oang, oscale, top = _object_path(cfg, rng, t, where[:2], static)
        scene.objects.append(SceneObject(rgba, t, opos, oang, oscale, label, static))
        info.append({"source": label, "static": static, "top_speed": round(float(top), 3)})
    return scene, info


def synthesize_layered(photos, config: LayeredConfig | None = None, seed: int = 0, background=None,
                       progress: bool = False) -> LayeredClip:
    """A layered clip: the background is one of ``photos`` (built-in names, paths or uint8 arrays) unless
    ``background`` (a photo or a sharp video) is given; objects are cut from ``photos``. Same ``seed``, same clip."""
    cfg = config or LayeredConfig()
    rng = np.random.default_rng(seed)
    loaded = _load_all(photos)
    if background is None:
        if not loaded:
            raise ValueError("synthesize_layered needs at least one photo or a background")
        background = loaded[int(rng.integers(len(loaded)))]
    else:
        background = to_rgb_uint8(background) if np.asarray(background).ndim == 3 else np.asarray(background)
        if background.ndim == 4 and len(background) < cfg.num_frames:
            raise ValueError(f"the sharp video has {len(background)} frames, fewer than the {cfg.num_frames} asked for")
    scene, info = make_scene(background, loaded, cfg, rng)
    W, H = cfg.width, cfg.height
    half = cfg.exposure / 2
    blurry, sharp, owners, times = [], [], [], []
    ext, ext_p90, ext_max, ext_cam = [], [], [], []
    step = 4
    for i in tqdm(range(cfg.num_frames), desc="layered clip", disable=not progress, leave=False):
        paths = scene.path_lengths(i - half, i + half, step=step)
        n_sub = int(np.clip(math.ceil(paths.max() / cfg.max_subframe_step) + 1, 9, cfg.max_subframes))
        ts = np.linspace(i - half, i + half, n_sub)
        acc = np.zeros((H, W, 3), np.float32)
        seen = np.zeros(paths.shape, bool)  # which layers each grid pixel shows during the exposure
        for tk in ts:
            img, own = scene.render(float(tk), i)
            acc += img
            g = own[::step, ::step]
            seen[g, np.arange(g.shape[0])[:, None], np.arange(g.shape[1])] = True
        gt, own = scene.render(float(i), i)
        per_pixel = np.where(seen, paths, 0.0).max(0)
        ext.append(float(per_pixel.mean()))
        ext_p90.append(float(np.percentile(per_pixel, 90)))
        ext_max.append(float(per_pixel.max()))
        ext_cam.append(float(paths[0].mean()))
        b = linear_to_srgb(acc / n_sub)
        b = b + rng.normal(0.0, cfg.noise_sigma, b.shape).astype(np.float32)
        blurry.append((np.clip(b, 0, 1) * 255 + 0.5).astype(np.uint8))
        sharp.append((np.clip(linear_to_srgb(gt), 0, 1) * 255 + 0.5).astype(np.uint8))
        owners.append(own)
        times.append(ts)
    return LayeredClip(blurry=np.stack(blurry), sharp=np.stack(sharp), blur_extent=np.array(ext),
                       blur_extent_p90=np.array(ext_p90), blur_extent_max=np.array(ext_max),
                       camera_extent=np.array(ext_cam), owner=np.stack(owners),
                       subframe_times=times, objects=info, fps=cfg.fps, config=cfg, scene=scene)
