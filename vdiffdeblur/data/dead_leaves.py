"""Procedural "dead leaves" pictures: an endless supply of new scenes for training on synthetic shake.

The ten built-in training photos are about ten scenes however many clips are drawn from them, and a network
trained on them for long learns those scenes (measured, docs/dtb.md). A dead-leaves picture is a stack of
opaque shapes whose sizes follow a power law, p(r) ~ r^-alpha with alpha ~ 3: its edges, occlusions and
scale invariance match the statistics of natural photos (Lee, Mumford & Huang 2001), and such pictures
have trained restoration networks to within a fraction of a dB of natural-photo training (Achddou,
Gousseau & Ladjal 2021). Here some leaves are filled with a patch of a training photo instead of a flat
colour, so textures come from real photos while the layout of every picture is new.

In the training data a source named ``dead_leaves`` (:data:`DEAD_LEAVES`) stands for a new picture per clip,
seeded by the clip (see :class:`~vdiffdeblur.data.shake_dataset.SyntheticShakeDataset`).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..blur import blur_image

#: the source name that stands for a new dead-leaves picture per clip
DEAD_LEAVES = "dead_leaves"


def check_fur_fraction(value: float) -> float:
    """``value`` as a float, or a ValueError naming ``fur_fraction`` if it is not a share in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"fur_fraction must be in [0, 1], got {value}")
    return float(value)


def _radii(rng: np.random.Generator, n: int, rmin: float, rmax: float, alpha: float) -> np.ndarray:
    """``n`` radii with density ~ r^-alpha on [rmin, rmax] (inverse CDF; alpha != 1)."""
    a = 1.0 - alpha
    u = rng.random(n)
    return (rmin ** a + u * (rmax ** a - rmin ** a)) ** (1.0 / a)


def _shape_mask(rng: np.random.Generator, r: float) -> np.ndarray:
    """A uint8 mask (0 / 255, anti-aliased) of one leaf inscribed in a (2r+1)-pixel square: a disk, an
    ellipse, a rotated rectangle or a triangle."""
    size = int(np.ceil(2 * r)) + 3
    m = np.zeros((size, size), np.uint8)
    c = (size - 1) / 2
    kind = rng.choice(4, p=(0.4, 0.2, 0.25, 0.15))
    shift = 4  # cv2 sub-pixel coordinates: 1/16 px
    k = 1 << shift
    if kind == 0:
        cv2.circle(m, (int(c * k), int(c * k)), int(r * k), 255, -1, cv2.LINE_AA, shift)
        return m
    if kind == 1:
        axes = (int(r * k), int(r * rng.uniform(0.3, 1.0) * k))
        cv2.ellipse(m, (int(c * k), int(c * k)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA, shift)
        return m
    if kind == 2:
        half = np.array([1.0, rng.uniform(0.15, 1.0)])
        half /= np.linalg.norm(half)
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half * r
    else:
        angles = np.sort(rng.uniform(0, 2 * np.pi, 3))
        corners = np.stack([np.cos(angles), np.sin(angles)], 1) * r
    t = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    pts = np.round((corners @ rot.T + c) * k).astype(np.int32)
    cv2.fillPoly(m, [pts], 255, cv2.LINE_AA, shift)
    return m


def dead_leaves(height: int = 384, width: int = 512, rng: np.random.Generator | None = None, *,
                textures=(), texture_fraction: float = 0.5, alpha: float = 2.5, rmin: float = 2.0,
                rmax_fraction: float = 0.35, coverage: float = 6.0, max_leaves: int = 40_000,
                fur_fraction: float = 0.0) -> np.ndarray:
    """A dead-leaves picture, uint8 RGB (height, width, 3).

    Leaves are dropped back to front until their total area is ``coverage`` times the picture's (an
    uncovered pixel is left with probability ~exp(-coverage); the background is one colour). Radii follow
    r^-``alpha`` between ``rmin`` and ``rmax_fraction`` of the shorter side. A leaf's colour is a pixel of one
    of ``textures`` (70%) or uniform in RGB, partly desaturated (uint8 (H, W, 3) photos); with probability
    ``texture_fraction`` a leaf of radius >= 6 px is filled with a patch of a texture photo instead
    (random scale 0.5-1.5, quarter turn and channel order). With probability ``fur_fraction`` such a leaf is
    filled with procedural fur instead (:func:`_fur_patch`; also when there are no texture photos): networks
    trained on flat leaves turn fine strands, such as a cat's fur, into blobs. Each picture gets a smooth
    shading field and a light Gaussian blur of random width, so that edges are not all perfectly crisp.
    ``fur_fraction=0`` draws exactly the pictures drawn before the option existed.
    """
    if height < 8 or width < 8:
        raise ValueError(f"a dead-leaves picture needs at least 8x8 pixels, got {width}x{height}")
    if alpha <= 1:
        raise ValueError(f"alpha must be > 1, got {alpha}")
    check_fur_fraction(fur_fraction)
    rng = rng if rng is not None else np.random.default_rng()
    textures = [t for t in textures if t.ndim == 3 and min(t.shape[:2]) >= 16]
    rmax = max(rmin * 2, rmax_fraction * min(height, width))
    # expected leaf area pi E[r^2] decides how many leaves give the asked coverage
    r_sample = _radii(rng, 4096, rmin, rmax, alpha)
    n = int(min(max_leaves, coverage * height * width / (np.pi * np.mean(r_sample ** 2))))
    radii = _radii(rng, n, rmin, rmax, alpha)

    def colour():
        if textures and rng.random() < 0.7:
            t = textures[int(rng.integers(len(textures)))]
            pixel = t[int(rng.integers(t.shape[0])), int(rng.integers(t.shape[1]))]
            return pixel[rng.permutation(3)].astype(np.float32)
        c = rng.uniform(0, 255, 3)  # uniform, pulled part way to grey: saturated colours are rare in photos
        return (c + rng.uniform(0.0, 0.8) * (c.mean() - c)).astype(np.float32)

    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = colour()
    for r in radii:  # back to front: later leaves cover earlier ones
        m = _shape_mask(rng, r)
        s = m.shape[0]
        cy, cx = int(rng.integers(-s // 2, height - s // 2)), int(rng.integers(-s // 2, width - s // 2))
        y0, x0, y1, x1 = max(cy, 0), max(cx, 0), min(cy + s, height), min(cx + s, width)
        if y1 <= y0 or x1 <= x0:
            continue
        a = m[y0 - cy:y1 - cy, x0 - cx:x1 - cx, None].astype(np.float32) / 255.0
        # (draws from rng only as before when fur_fraction is 0, so earlier pictures stay reproducible)
        if r >= 6 and (textures or fur_fraction > 0) and rng.random() < texture_fraction:
            if fur_fraction > 0 and (not textures or rng.random() < fur_fraction):
                fill = _fur_patch(rng, s, colour())[y0 - cy:y1 - cy, x0 - cx:x1 - cx]
            else:
                fill = _texture_patch(rng, textures, s)[y0 - cy:y1 - cy, x0 - cx:x1 - cx]
        else:
            fill = colour()
        region = canvas[y0:y1, x0:x1]
        region += a * (fill - region)
    # shading: a smooth multiplicative field, as light falls unevenly on real scenes
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    g = rng.normal(size=2)
    shade = 1.0 + rng.uniform(0.0, 0.25) * ((g[0] * (yy / height - 0.5) + g[1] * (xx / width - 0.5)))
    canvas *= np.clip(shade, 0.6, 1.4)[..., None]
    sigma = rng.uniform(0.0, 0.8)
    if sigma > 0.2:
        canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def _texture_patch(rng: np.random.Generator, textures, size: int) -> np.ndarray:
    """A float32 (size, size, 3) patch of a random texture photo at a random scale, turn and channel order."""
    t = textures[int(rng.integers(len(textures)))]
    scale = rng.uniform(0.5, 1.5)
    side = int(min(min(t.shape[:2]), max(4, round(size / scale))))
    y, x = int(rng.integers(0, t.shape[0] - side + 1)), int(rng.integers(0, t.shape[1] - side + 1))
    patch = np.rot90(t[y:y + side, x:x + side], int(rng.integers(4)))[..., rng.permutation(3)]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=interp).astype(np.float32)


def _fur_patch(rng: np.random.Generator, size: int, base: np.ndarray) -> np.ndarray:
    """A float32 (size, size, 3) patch of fur-like strands around the colour ``base``: white noise at a
    random strand width (1-2.5 px), smeared along one random direction by a random strand length (3-14 px),
    modulating the colour by a random contrast (10-45%, each channel a little differently)."""
    theta = rng.uniform(0.0, np.pi)
    length = rng.uniform(3.0, 14.0)
    width = rng.uniform(1.0, 2.5)
    small = max(2, int(round(size / width)))
    noise = rng.standard_normal((small, small)).astype(np.float32)
    if small != size:
        noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_LINEAR)
    ks = int(np.ceil(length)) | 1
    k = np.zeros((ks, ks), np.uint8)  # an anti-aliased line through the centre: the smear kernel
    c, dx, dy = (ks - 1) / 2, np.cos(theta) * length / 2, np.sin(theta) * length / 2
    pts = np.round(np.array([[c - dx, c - dy], [c + dx, c + dy]]) * 16).astype(np.int32)
    cv2.line(k, tuple(int(v) for v in pts[0]), tuple(int(v) for v in pts[1]), 255, 1, cv2.LINE_AA, 4)
    k = k.astype(np.float32) / max(float(k.sum()), 1.0)
    streak = blur_image(noise, k[::-1, ::-1])  # a correlation with k: blur_image convolves, so k goes in flipped
    streak /= float(streak.std()) + 1e-6
    tint = 1.0 + 0.3 * rng.standard_normal(3)
    gain = 1.0 + rng.uniform(0.1, 0.45) * streak[..., None] * tint.astype(np.float32)
    return base.astype(np.float32) * np.clip(gain, 0.2, 2.0)
