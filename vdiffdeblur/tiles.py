"""Spatial tiles for running a network on frames too large to hold its activations at once (4K): which tiles,
and the size ``"auto"`` picks. The networks' own rules for how far a tile must read past its edges live beside
them (:func:`vdiffdeblur.models.dtb.step_tiled`, :func:`vdiffdeblur.methods.fit.tiles.tiled_residual`)."""

from __future__ import annotations

#: ``tile="auto"``: frames with more pixels than this (1080p, padded) are run in tiles of AUTO_TILE a side
AUTO_TILE_ABOVE = 1920 * 1088
AUTO_TILE = 1024


def auto_tile(height: int, width: int) -> int | None:
    """The tile size ``"auto"`` means for frames of ``height`` x ``width`` (None: whole frames)."""
    return AUTO_TILE if height * width > AUTO_TILE_ABOVE else None


def resolve_tile(tile, height: int, width: int) -> int | None:
    """``tile`` ("auto", None or pixels a side) for frames of this size: None when one tile would cover them."""
    if tile == "auto":
        tile = auto_tile(height, width)
    if tile is None or (tile >= height and tile >= width):
        return None
    return int(tile)


def check_tile(tile):
    """``tile`` unchanged if it is "auto", None or a whole number of pixels >= 1; else ValueError."""
    if tile != "auto" and tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 1):
        raise ValueError(f"tile size must be 'auto', None or a number of pixels >= 1, got {tile!r}")
    return tile


def spans(length: int, tile: int, halo: int, align: int = 2):
    """``(core start, core end, read start, read end)`` along one axis: as few cores of about ``tile`` pixels as
    cover ``[0, length)``, of equal size (a last short one would cost as much halo as a full one), each read with
    ``halo`` pixels more on both sides, clipped to the frame. Cores and reads start at multiples of ``align``
    (a network's stride grid: a tile read off the grid would not compute what the whole frame does)."""
    halo += -halo % align
    n = -(-length // tile)
    core = -(-length // n)
    core += -core % align
    for a in range(0, length, core):
        b = min(a + core, length)
        yield a, b, max(0, a - halo), min(length, b + halo)
