"""How `DeblurVideoPipeline` cuts a video into overlapping temporal windows and a frame into overlapping spatial
tiles, and how overlapping tiles are blended back together."""

from __future__ import annotations

import math
from typing import Callable

import torch


def num_windows(num_frames: int, window_size: int, overlap: int) -> int:
    """How many windows cover `num_frames` frames: windows start every `window_size - overlap` frames and the
    last one ends at the last frame (it may be shorter), as `vdiffdeblur.video.iter_windows` cuts them."""
    if num_frames <= window_size:
        return 1
    return 1 + math.ceil((num_frames - window_size) / (window_size - overlap))


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of overlapping tiles along one axis; the last tile ends at `size`."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def edge_ramp(n: int, lead: int, trail: int, device, dtype) -> torch.Tensor:
    """Weights along one axis of a tile: linear ramps over `lead` / `trail` entries at its edges, 1 inside."""
    w = torch.ones(n, device=device, dtype=torch.float32)
    if lead:
        w[:lead] = torch.arange(1, lead + 1, dtype=torch.float32, device=device) / (lead + 1)
    if trail:
        w[n - trail :] = torch.minimum(
            w[n - trail :], torch.arange(trail, 0, -1, dtype=torch.float32, device=device) / (trail + 1)
        )
    return w.to(dtype)


def apply_in_tiles(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int | None,
                   tile_overlap: int) -> torch.Tensor:
    """`fn(x)` for `x` of shape `(..., h, w)`, in overlapping `tile` x `tile` tiles blended with edge-tapered
    weights (`edge_ramp`, over `tile_overlap` entries) when `x` is larger than `tile`; `fn` keeps the last two
    dimensions' size."""
    h, w = x.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return fn(x)
    out = None
    weight = torch.zeros(h, w, device=x.device, dtype=torch.float32)
    ys, xs = tile_starts(h, tile, tile_overlap), tile_starts(w, tile, tile_overlap)
    for y in ys:
        th = min(tile, h)
        wy = edge_ramp(th, tile_overlap if y > 0 else 0, tile_overlap if y + th < h else 0, x.device, torch.float32)
        for x0 in xs:
            tw = min(tile, w)
            wx = edge_ramp(tw, tile_overlap if x0 > 0 else 0, tile_overlap if x0 + tw < w else 0, x.device,
                           torch.float32)
            pred = fn(x[..., y : y + th, x0 : x0 + tw])
            if out is None:
                out = torch.zeros(*pred.shape[:-2], h, w, device=pred.device, dtype=torch.float32)
            wt = wy[:, None] * wx[None, :]
            out[..., y : y + th, x0 : x0 + tw] += pred.float() * wt
            weight[y : y + th, x0 : x0 + tw] += wt
    return (out / weight).to(x.dtype)
