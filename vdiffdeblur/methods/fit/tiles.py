"""The fit network's correction of large frames, a tile at a time (4K within a few GB)."""

from __future__ import annotations

import torch

from ...tiles import spans

#: pixels each tile reads past its own part on every side: the U-Net sees far (four scales after a 2x fold), so
#: a tile is not exact, but at this distance its part differs from the whole frame's by rounding-sized amounts
#: (docs/dtb.md, "Speed": tiled against untiled)
HALO = 128


def tiles(height: int, width: int, tile: int | None, halo: int = HALO, align: int = 1):
    """``(core, read, core within read)`` slice pairs (rows, columns) of the tiles of a frame, starting at
    multiples of ``align``; one tile, the whole frame, when ``tile`` is None."""
    if tile is None:
        whole = (slice(0, height), slice(0, width))
        yield whole, whole, whole
        return
    for y0, y1, ry0, ry1 in spans(height, tile, halo, align):
        for x0, x1, rx0, rx1 in spans(width, tile, halo, align):
            yield ((slice(y0, y1), slice(x0, x1)), (slice(ry0, ry1), slice(rx0, rx1)),
                   (slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0)))


@torch.no_grad()
def tiled_residual(unet, x: torch.Tensor, tile: int | None, halo: int = HALO) -> torch.Tensor:
    """``unet.residual(x)`` for frames (N, 3, H, W), computed on tiles of ``tile`` pixels a side (None: the whole
    frame, exactly ``unet.residual(x)``)."""
    out = None
    for (cy, cx), (ry, rx), (iy, ix) in tiles(*x.shape[-2:], tile, halo, unet.size_multiple):
        r = unet.residual(x[..., ry, rx])
        if tile is None:
            return r
        if out is None:
            out = r.new_empty(x.shape[:-3] + r.shape[-3:-2] + x.shape[-2:])
        out[..., cy, cx] = r[..., iy, ix]
    return out
