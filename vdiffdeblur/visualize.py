"""Pictures for people: side-by-side videos and a comparison image of one frame with enlarged crops."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _label(img: np.ndarray, text: str) -> np.ndarray:
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    box = d.textbbox((0, 0), text, font=font)
    d.rectangle((0, 0, box[2] + 6, box[3] + 4), fill=(0, 0, 0))
    d.text((3, 1), text, fill=(255, 255, 255), font=font)
    return np.asarray(im)


def side_by_side(videos: list[np.ndarray], labels: list[str] | None = None, gap: int = 4) -> np.ndarray:
    """Several clips of one shape (F, H, W, 3) -> one clip with them next to each other, labelled."""
    f, h, w, _ = videos[0].shape
    if any(v.shape != videos[0].shape for v in videos):
        raise ValueError("side_by_side needs clips of one shape")
    out = np.zeros((f, h, len(videos) * (w + gap) - gap, 3), np.uint8)
    for k, v in enumerate(videos):
        x = k * (w + gap)
        out[:, :, x:x + w] = v
        if labels:
            for i in range(f):
                out[i, :, x:x + w] = _label(np.ascontiguousarray(out[i, :, x:x + w]), labels[k])
    if out.shape[2] % 2:  # H.264 in yuv420p wants even sizes
        out = np.pad(out, ((0, 0), (0, 0), (0, 1), (0, 0)))
    return out


def most_detailed_crop(frame: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` square with the most gradient energy (where blur shows most)."""
    g = frame.astype(np.float32).mean(-1)
    e = np.abs(np.diff(g, axis=0))[:, :-1] + np.abs(np.diff(g, axis=1))[:-1]
    h, w = e.shape
    best, pos = -1.0, (0, 0)
    step = max(4, size // 4)
    for y in range(0, max(1, h - size + 1), step):
        for x in range(0, max(1, w - size + 1), step):
            s = float(e[y:y + size, x:x + size].sum())
            if s > best:
                best, pos = s, (y, x)
    return pos


def comparison_image(frames: list[np.ndarray], labels: list[str], crop: int = 64, zoom: int = 3,
                     crop_from: int = -1) -> np.ndarray:
    """One frame from several versions (truth, blurry, methods...): a row of full frames with the crop
    marked, and below each its crop enlarged ``zoom`` times (nearest neighbour, so pixels stay honest)."""
    h, w, _ = frames[0].shape
    crop = min(crop, h, w)
    y, x = most_detailed_crop(frames[crop_from], crop)
    cw = crop * zoom
    col_w = max(w, cw)
    rows_h = h + 4 + cw
    out = np.full((rows_h, len(frames) * (col_w + 6), 3), 255, np.uint8)
    for k, (f, lab) in enumerate(zip(frames, labels)):
        x0 = k * (col_w + 6)
        full = Image.fromarray(f.copy())
        ImageDraw.Draw(full).rectangle((x, y, x + crop - 1, y + crop - 1), outline=(255, 40, 40))
        out[:h, x0:x0 + w] = _label(np.asarray(full), lab)
        c = np.asarray(Image.fromarray(f[y:y + crop, x:x + crop]).resize((cw, cw), Image.NEAREST))
        out[h + 4:h + 4 + cw, x0:x0 + cw] = c
    return out
