"""Motion-blur synthesis: kernels, sRGB <-> linear light, blurring, and the random degradations of synthetic
training pairs (kernel lengths, crops, blur + sensor noise + 8-bit rounding).

Kernels follow the fit-to-test-data paper (section III-B): a motion vector (length, angle) drawn as an
anti-aliased (sub-pixel) line; *symmetric* kernels centre the line on the kernel centre (the sharp frame
is the middle of the exposure), *asymmetric* ones start it there. Blurring happens in linear light
(inverse gamma, blur, gamma), as real blur happens on raw sensor values.

Two blurs: :func:`fft_blur` for tensors (everything in torch: :func:`apply_kernel`, training pairs, the fit's
blur calibration) and :func:`blur_image` for numpy images (OpenCV: the guard, transfer, baselines).
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------------------- gamma
def srgb_to_linear(x):
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1). Tensor or array in, same type out."""
    if isinstance(x, torch.Tensor):
        x = x.clamp(0, 1)
        return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    x = np.clip(np.asarray(x, dtype=np.float32), 0, 1)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x):
    """Linear light in [0, 1] -> sRGB-encoded values."""
    if isinstance(x, torch.Tensor):
        x = x.clamp(0, 1)
        return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
    x = np.clip(np.asarray(x, dtype=np.float32), 0, 1)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.maximum(x, 1e-12) ** (1 / 2.4) - 0.055).astype(np.float32)


# --------------------------------------------------------------------------------------- kernels
def _odd(n: float) -> int:
    n = int(math.ceil(n))
    return n if n % 2 else n + 1


def splat_points(points: np.ndarray, size: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Bilinearly splat points (N, 2) given as (x, y) offsets from the kernel centre onto a size x size grid.

    Bilinear splatting keeps each point's centroid exactly, which is what makes the kernels sub-pixel.
    """
    c = (size - 1) / 2.0
    k = np.zeros((size, size), dtype=np.float64)
    w = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=np.float64)
    x = points[:, 0] + c
    y = points[:, 1] + c
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    for dx, dy, ww in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        np.add.at(k, (yi[ok], xi[ok]), (w * ww)[ok])
    s = k.sum()
    if s <= 0:
        raise ValueError("kernel points fall outside the kernel; use a larger size")
    return (k / s).astype(np.float32)


def linear_motion_kernel(length: float, angle_deg: float, size: int | None = None, symmetric: bool = True,
                         samples_per_px: int = 16) -> np.ndarray:
    """A normalised, anti-aliased straight-line motion kernel (rows = y down, cols = x right).

    ``length`` is the extent of the motion in pixels (0 gives the identity); ``angle_deg`` is measured
    counter-clockwise from the x axis. Symmetric: the line is centred on the kernel centre. Asymmetric:
    it starts at the centre and runs ``length`` pixels along the angle.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    reach = length / 2 if symmetric else length
    if size is None:
        size = _odd(2 * reach + 3)
    elif size % 2 == 0:
        raise ValueError(f"kernel size must be odd, got {size}")
    if 2 * reach + 1 > size:
        raise ValueError(f"a {length}px motion does not fit a {size}x{size} kernel")
    n = max(2, int(math.ceil(length * samples_per_px)) + 1)
    # points sit at the centres of n equal segments, so the line's second moment is exactly length^2 / 12
    t = (np.arange(n) + 0.5) / n
    s = (t - 0.5) * length if symmetric else t * length
    a = math.radians(angle_deg)
    pts = np.stack([s * math.cos(a), -s * math.sin(a)], axis=1)  # image y points down
    if length == 0:
        pts = np.zeros((1, 2))
    return splat_points(pts, size)


def random_trajectory_kernel(size: int = 31, length: float | None = None, anxiety: float = 0.005,
                             num_steps: int = 2000, generator: np.random.Generator | int | None = None) -> np.ndarray:
    """A camera-shake kernel from a random trajectory (Boracchi & Foi 2012, the "simulated" kernels).

    The trajectory is a random walk with inertia and occasional abrupt jerks; it is scaled so that its
    path length is ``length`` (default: size / 2), centred on its centroid and splatted sub-pixel.
    """
    rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
    length = size / 2 if length is None else length
    centripetal = 0.7 * rng.random()
    gaussian = 10 * rng.random()
    jerk = 0.2 * rng.random()
    v = np.exp(1j * 2 * np.pi * rng.random())
    x = np.zeros(num_steps, dtype=np.complex128)
    for t in range(num_steps - 1):
        if rng.random() < jerk * anxiety:
            dv = 2 * v * np.exp(1j * (np.pi + (rng.random() - 0.5)))
        else:
            dv = 0
        dv = dv - centripetal * x[t] + (gaussian * (rng.standard_normal() + 1j * rng.standard_normal())) * anxiety
        v = v + dv
        v = v / (abs(v) + 1e-12) * (1.0 / num_steps)
        x[t + 1] = x[t] + v
    path = float(np.abs(np.diff(x)).sum())
    x = (x - x.mean()) * (length / max(path, 1e-12))
    span = max(np.abs(x.real).max(), np.abs(x.imag).max())
    limit = (size - 3) / 2
    if span > limit:  # keep it inside the kernel
        x *= limit / span
    return splat_points(np.stack([x.real, x.imag], axis=1), size)


def kernel_centroid(kernel: np.ndarray) -> tuple[float, float]:
    """(x, y) centroid offset from the kernel centre, in pixels."""
    k = np.asarray(kernel, dtype=np.float64)
    k = k / k.sum()
    c = (k.shape[0] - 1) / 2.0
    ys, xs = np.mgrid[: k.shape[0], : k.shape[1]]
    return float((k * xs).sum() - c), float((k * ys).sum() - c)


def kernel_extent(kernel: np.ndarray) -> float:
    """Motion extent in pixels from the kernel's largest principal second moment (sqrt(12 * var))."""
    k = np.asarray(kernel, dtype=np.float64)
    k = k / k.sum()
    ys, xs = np.mgrid[: k.shape[0], : k.shape[1]]
    mx, my = (k * xs).sum(), (k * ys).sum()
    cov = np.array([[(k * (xs - mx) ** 2).sum(), (k * (xs - mx) * (ys - my)).sum()],
                    [(k * (xs - mx) * (ys - my)).sum(), (k * (ys - my) ** 2).sum()]])
    return float(math.sqrt(12 * max(np.linalg.eigvalsh(cov)[-1], 0.0)))


# --------------------------------------------------------------------------------------- random training kernels
KERNEL_TYPES = ("symmetric", "asymmetric", "simulated")


def make_kernel(kind: str, length: float, angle: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """One blur kernel of the given type: the paper's symmetric line, a line starting at the centre, or a
    random camera-shake trajectory ("simulated", Kupyn et al.) of the same path length."""
    if kind == "symmetric":
        return linear_motion_kernel(length, angle, size=size, symmetric=True)
    if kind == "asymmetric":
        return linear_motion_kernel(length, angle, size=size, symmetric=False)
    if kind == "simulated":
        if length < 1:
            return linear_motion_kernel(length, angle, size=size, symmetric=True)
        return random_trajectory_kernel(size=size, length=length, generator=rng)
    raise ValueError(f"unknown kernel type {kind!r}; choose from {', '.join(KERNEL_TYPES)}")


def kernel_size_for(max_length: float, kind: str) -> int:
    """The odd kernel size that holds a ``kind`` kernel of ``max_length`` px, with a pixel to spare each side."""
    reach = max_length if kind == "asymmetric" else max_length / 2
    return int(2 * math.ceil(reach) + 3) | 1


def random_kernels(lengths: list[float], kind: str, rng: np.random.Generator) -> np.ndarray:
    """One kernel per length, each at a random angle, all on one grid just large enough: (n, k, k)."""
    size = kernel_size_for(max(lengths), kind)
    return np.stack([make_kernel(kind, l, float(rng.uniform(0, 180)), size, rng) for l in lengths])


class LengthSampler:
    """Draws training kernel lengths (px): ``zero_fraction`` near zero (0..1 px); of the rest, two thirds copy the
    blur of a frame of the video (an ``observed`` length of at least 1 px scaled by a random factor in ``jitter``)
    and the others (all of them when nothing is observed) are uniform in 1..``max_length``, or log-uniform
    with ``log_uniform``."""

    def __init__(self, max_length: float, observed=(), zero_fraction: float = 0.25, jitter=(0.7, 1.3),
                 log_uniform: bool = False):
        self.max_length = float(max_length)
        self.observed = np.asarray([l for l in observed if l >= 1.0], dtype=np.float64)
        self.zero_fraction = zero_fraction
        self.jitter = tuple(jitter)
        self.log_uniform = log_uniform

    def __call__(self, rng: np.random.Generator) -> float:
        if rng.random() < self.zero_fraction:
            return float(rng.uniform(0.0, 1.0))
        if len(self.observed) and rng.random() < 2 / 3:
            return float(min(self.max_length, rng.choice(self.observed) * rng.uniform(*self.jitter)))
        if self.log_uniform:
            return float(math.exp(rng.uniform(0.0, math.log(self.max_length))))
        return float(rng.uniform(1.0, self.max_length))


# --------------------------------------------------------------------------------------- blurring
def fft_blur(x: torch.Tensor, kernels, margin: int, spectrum: torch.Tensor | None = None) -> torch.Tensor:
    """True convolution of images (N, C, H, W) by kernels (N, k, k), one per image, or (k, k) for all, by FFT.

    The FFT wraps around, so the result leaves out ``margin`` px all round (k <= 2 * margin + 1): pad or crop
    with that margin first. ``spectrum``: ``torch.fft.rfft2(x)``, reused when one image gets many kernels.
    """
    k = kernels.shape[-1]
    if k > 2 * margin + 1:
        raise ValueError(f"a {k}x{k} kernel needs a margin of {k // 2} px, got {margin}")
    kernels = torch.as_tensor(kernels, dtype=x.dtype)
    if kernels.ndim == 2:
        kernels = kernels[None]
    hh, ww = x.shape[-2:]
    kk = torch.zeros(kernels.shape[0], hh, ww, dtype=x.dtype, device=x.device)
    kk[:, :k, :k] = kernels
    kk = torch.roll(kk, shifts=(-(k // 2), -(k // 2)), dims=(1, 2))  # kernel centre on pixel (0, 0)
    xf = torch.fft.rfft2(x) if spectrum is None else spectrum
    y = torch.fft.irfft2(xf * torch.fft.rfft2(kk)[:, None], s=(hh, ww))
    return y[..., margin:hh - margin, margin:ww - margin]


def apply_kernel(frames: torch.Tensor, kernel, linear_light: bool = True) -> torch.Tensor:
    """Blur frames (F, 3, H, W) in [0, 1] by a kernel (k, k) shared by all frames or one per frame (F, k, k).

    A true convolution (:func:`fft_blur`), reflect-padded so the output keeps the input's size.
    With ``linear_light`` the blur is done on linearised values and re-encoded to sRGB.
    """
    if frames.ndim != 4:
        raise ValueError(f"expected frames (F, C, H, W), got shape {tuple(frames.shape)}")
    k = torch.as_tensor(np.asarray(kernel) if not isinstance(kernel, torch.Tensor) else kernel,
                        dtype=frames.dtype, device=frames.device)
    if k.ndim == 2:
        k = k[None]
    if k.ndim != 3 or k.shape[0] not in (1, frames.shape[0]) or k.shape[1] % 2 == 0 or k.shape[1] != k.shape[2]:
        raise ValueError(f"kernel must be (k, k) or (F, k, k) with odd k, got {tuple(k.shape)}")
    h, w = frames.shape[-2:]
    x = srgb_to_linear(frames) if linear_light else frames
    p = k.shape[-1] // 2
    mode = "reflect" if p < h and p < w else "replicate"
    y = fft_blur(F.pad(x, (p, p, p, p), mode=mode), k, p)
    return linear_to_srgb(y) if linear_light else y.clamp(0, 1)


def blur_image(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve an (H, W) or (H, W, C) float image with a kernel (true convolution, reflect borders)."""
    return cv2.filter2D(image, -1, np.ascontiguousarray(kernel[::-1, ::-1]), borderType=cv2.BORDER_REFLECT)


def average_subframes(subframes, tau: int | None = None, linear_light: bool = True):
    """DTB paper eq. (1): a blurry frame is the mean of ``tau`` consecutive sharp sub-frames.

    ``subframes``: (N, ...) tensor/array in [0, 1] with N >= tau; the first ``tau`` are averaged (all of
    them when tau is None). Returns (blurry, sharp); sharp is the middle averaged sub-frame, index
    tau // 2 (eq. (1) writes ceil(tau / 2) with 1-based sub-frames, the same frame for odd tau).
    """
    n = subframes.shape[0]
    tau = n if tau is None else int(tau)
    if not 1 <= tau <= n:
        raise ValueError(f"tau must be in [1, {n}], got {tau}")
    sub = subframes[:tau]
    if linear_light:
        blurry = linear_to_srgb(srgb_to_linear(sub).mean(0))
    else:
        blurry = sub.mean(0)
    sharp = subframes[tau // 2]
    return blurry, sharp


# --------------------------------------------------------------------------------------- training pairs
def cut_patches(frames: list[torch.Tensor], n: int, patch_size: int, margin: int, rng: np.random.Generator):
    """``n`` random ``patch_size`` crops of the frames (3, H, W) with ``margin`` extra pixels all round (taken
    from the frame where it exists, reflected where it does not). Patches are capped by the smallest frame.

    Returns (crops (n, 3, P + 2m, P + 2m), frame index of each, (y, x) of each patch's top-left corner).
    """
    if not frames:
        raise ValueError("no training frames")
    p = min(patch_size, min(f.shape[-2] for f in frames), min(f.shape[-1] for f in frames))
    m = margin
    crops, ids, pos = [], [], []
    for _ in range(n):
        i = int(rng.integers(len(frames)))
        f = frames[i]
        fh, fw = f.shape[-2:]
        y, x = int(rng.integers(0, fh - p + 1)), int(rng.integers(0, fw - p + 1))
        crop = f[:, max(0, y - m): y + p + m, max(0, x - m): x + p + m]
        pads = (m - (x - max(0, x - m)), m - (min(fw, x + p + m) - x - p), m - (y - max(0, y - m)),
                m - (min(fh, y + p + m) - y - p))
        if any(pads):
            mode = "reflect" if max(pads) < min(crop.shape[-2:]) else "replicate"
            crop = F.pad(crop[None], pads, mode=mode)[0]
        crops.append(crop), ids.append(i), pos.append((y, x))
    return torch.stack(crops), ids, pos


def noise_and_quantise(x: torch.Tensor, noise_sigma: float = 0.0, generator: torch.Generator | None = None):
    """What a camera adds to a blurred image: Gaussian sensor noise of ``noise_sigma``, then 8-bit levels."""
    if noise_sigma > 0:
        x = x + torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * noise_sigma
    return (x.clamp(0, 1) * 255).round() / 255


def blur_crops(crops: torch.Tensor, kernels: np.ndarray, margin: int, inverse_gamma: bool = True,
               noise_sigma: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Blur each crop (n, 3, P + 2m, P + 2m) by its kernel (n, k, k), k <= 2m + 1, and keep the centre P x P:
    :func:`fft_blur`, in linear light with ``inverse_gamma``, then :func:`noise_and_quantise`, like a video."""
    x = srgb_to_linear(crops) if inverse_gamma else crops
    y = fft_blur(x, kernels, margin).clamp(0, 1)
    y = linear_to_srgb(y) if inverse_gamma else y
    return noise_and_quantise(y, noise_sigma, generator)


# --------------------------------------------------------------------------------------- fitting a kernel
@functools.lru_cache(maxsize=1024)
def _line_kernel(length: float, angle: float) -> np.ndarray:
    """:func:`linear_motion_kernel` (symmetric, own size), remembered: a fit tries the same grid every frame."""
    k = linear_motion_kernel(length, angle)
    k.flags.writeable = False
    return k


DEFAULT_FIT_LENGTHS = (0, 1, 2, 3, 4, 6, 8, 11, 15, 20, 26)


def fit_linear_kernel(sharp: np.ndarray, blurry: np.ndarray, lengths=DEFAULT_FIT_LENGTHS, n_angles: int = 12,
                      scale: float = 0.5, fast: bool = False) -> tuple[float, float, np.ndarray]:
    """The symmetric linear motion kernel that best blurs ``sharp`` into ``blurry`` (grey float images,
    ideally linear light): a grid search over ``lengths`` (px) and ``n_angles`` angles in [0, 180).

    Both images are band-passed and scaled to unit energy before comparing, so a change of brightness,
    colour or overall contrast (which no kernel explains) does not pass for blur: only a change in the
    shape of the spectrum does. Runs at ``scale`` for speed. Returns (length, angle_deg, kernel) at full scale.
    ``fast``: the same error from OpenCV means and one product per kernel (equal up to rounding, so a near tie may
    fall the other way).
    """

    if min(np.shape(blurry)[:2]) * scale < 24:  # tiny frames: fit at full size
        scale = 1.0

    def prep(im):
        im = cv2.resize(im, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale != 1 else im
        return im - cv2.GaussianBlur(im, (0, 0), 6.0)

    o, i = prep(np.asarray(sharp, np.float32)), prep(np.asarray(blurry, np.float32))
    m = max(0, min(4, (min(i.shape[:2]) - 8) // 2))  # borders, where padding differs, are left out
    crop = (slice(m, -m), slice(m, -m)) if m else (slice(None), slice(None))
    i = i[crop] / (i[crop].std() + 1e-6)
    ii = float(cv2.mean(cv2.multiply(i, i))[0]) if fast else 0.0
    best = (np.inf, 0.0, 0.0)
    for length in lengths:
        angles = [0.0] if length == 0 else np.arange(n_angles) * 180.0 / n_angles
        for a in angles:
            ko = blur_image(o, _line_kernel(length * scale, float(a)))[crop]
            if fast:  # mean((ko / sd - i)^2) expanded: mean(ko^2) / sd^2 - 2 mean(ko i) / sd + mean(i^2)
                mu, sd = (float(v[0, 0]) for v in cv2.meanStdDev(ko))
                sd += 1e-6
                err = (sd * sd + mu * mu) / (sd * sd) - 2 * cv2.mean(cv2.multiply(ko, i))[0] / sd + ii
            else:
                err = float(((ko / (ko.std() + 1e-6) - i) ** 2).mean())
            if err < best[0]:
                best = (err, float(length), float(a))
    _, length, angle = best
    return length, angle, linear_motion_kernel(length, angle)

