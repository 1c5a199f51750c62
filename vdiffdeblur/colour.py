"""Colour description of a video (primaries, transfer, matrix, range), as FFmpeg numbers it.

Reading converts YUV to RGB with the matrix and range the file declares; writing converts back with the same ones
and tags the stream with all four, so a player shows the output's colours as it showed the input's. A file that
declares nothing is read the way players read it: BT.709 from 720 lines (or 1280 columns) up, BT.601 below.
"""

from __future__ import annotations

from dataclasses import dataclass

# FFmpeg's enum values (AVColorPrimaries, AVColorTransferCharacteristic, AVColorSpace, AVColorRange)
UNSPECIFIED = 2
BT709, BT470BG, SMPTE170M = 1, 5, 6
RGB_MATRIX = 0
TV_RANGE, PC_RANGE = 1, 2

# AVColorSpace -> the name swscale's reformatter takes (it knows five matrices; 601 variants share one)
_SWSCALE_MATRIX = {1: "itu709", 4: "fcc", 5: "itu601", 6: "itu601", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
_RANGE_NAME = {TV_RANGE: "MPEG", PC_RANGE: "JPEG"}


def _decode_interpolation():
    """swscale's default YUV->RGB path truncates and drifts 1-2 levels darker per read-write pass on saturated
    colours; accurate rounding with full chroma interpolation keeps a pass within one level."""
    from av.video.reformatter import Interpolation

    return Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


@dataclass(frozen=True)
class ColourInfo:
    primaries: int
    transfer: int
    matrix: int
    range: int

    @classmethod
    def default_for(cls, width: int, height: int) -> "ColourInfo":
        """What players assume for an untagged file of this size (tv range)."""
        if height >= 720 or width >= 1280:
            return cls(BT709, BT709, BT709, TV_RANGE)
        return cls(SMPTE170M, SMPTE170M, SMPTE170M, TV_RANGE)

    @classmethod
    def from_codec(cls, ctx, width: int, height: int) -> "ColourInfo":
        """The tags of a decoder context or frame, each unspecified one filled with the size's default."""
        d = cls.default_for(width, height)

        def pick(value, default, unset=(0, UNSPECIFIED)):
            value = int(value or 0)
            return default if value in unset else value

        return cls(primaries=pick(ctx.color_primaries, d.primaries), transfer=pick(ctx.color_trc, d.transfer),
                   matrix=pick(ctx.colorspace, d.matrix, unset=(UNSPECIFIED,)),
                   range=pick(ctx.color_range, d.range, unset=(0,)))

    @property
    def is_rgb(self) -> bool:
        return self.matrix == RGB_MATRIX

    def swscale_matrix(self) -> str:
        return _SWSCALE_MATRIX.get(self.matrix, "itu709" if self.matrix == BT709 else "itu601")

    def decode_args(self) -> dict:
        """Keyword arguments of ``VideoFrame.to_ndarray`` / ``reformat`` reading YUV into full-range RGB."""
        if self.is_rgb:
            return {}
        return {"src_colorspace": self.swscale_matrix(), "src_color_range": _RANGE_NAME[self.range],
                "dst_color_range": "JPEG", "interpolation": _decode_interpolation()}

    def encode_args(self) -> dict:
        """Keyword arguments of ``VideoFrame.reformat`` turning full-range RGB into this YUV."""
        return {"src_colorspace": self.swscale_matrix(), "dst_colorspace": self.swscale_matrix(),
                "src_color_range": "JPEG", "dst_color_range": _RANGE_NAME[self.range]}

    def tag(self, ctx, rgb: bool = False) -> None:
        """Write the four tags on an encoder context (an RGB-coded stream gets the RGB matrix, full range)."""
        ctx.color_primaries = self.primaries
        ctx.color_trc = self.transfer
        ctx.colorspace = RGB_MATRIX if rgb else self.matrix
        ctx.color_range = PC_RANGE if rgb else self.range

    def describe(self) -> str:
        names = {1: "bt709", 5: "bt470bg", 6: "smpte170m", 9: "bt2020", 0: "rgb", 16: "smpte2084", 18: "arib-std-b67"}
        rng = {TV_RANGE: "tv", PC_RANGE: "pc"}.get(self.range, "?")
        return (f"{names.get(self.matrix, self.matrix)}/{names.get(self.primaries, self.primaries)}/"
                f"{names.get(self.transfer, self.transfer)} {rng}")
