"""The encoder's RGB -> YUV 4:2:0 conversion (OpenCV) against swscale's, and what it gives after a write and read."""

import av
import numpy as np
import pytest
from media import scene

from vdiffdeblur.colour import PC_RANGE, TV_RANGE, ColourInfo
from vdiffdeblur.video import read_video, write_video
from vdiffdeblur.yuv import rgb_to_yuv420p, rgb_to_yuv_matrix


def _swscale_i420(rgb, colour):
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p",
                                                                    **colour.encode_args()).to_ndarray()


@pytest.mark.parametrize("matrix", [1, 5, 6, 9])
@pytest.mark.parametrize("colour_range", [TV_RANGE, PC_RANGE])
def test_luma_and_flat_chroma_match_swscale(matrix, colour_range):
    colours = np.array([[0, 255, 0], [255, 0, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [128, 128, 128],
                        [224, 172, 105], [30, 200, 220]], np.uint8)
    rgb = np.kron(colours.reshape(2, 4, 3), np.ones((16, 16, 1), np.uint8))
    colour = ColourInfo(1, 1, matrix, colour_range)
    ours, ref = rgb_to_yuv420p(rgb, rgb_to_yuv_matrix(matrix, colour_range)), _swscale_i420(rgb, colour)
    assert ours.shape == ref.shape == (48, 64)
    assert np.abs(ours[:32].astype(int) - ref[:32]).max() <= 1  # luma
    chroma, ref_chroma = ours[32:].reshape(2, 16, 32), ref[32:].reshape(2, 16, 32)  # U and V planes
    interior = np.zeros((16, 32), bool)  # chroma pixels away from the patches' edges
    for y in range(2):
        for x in range(4):
            interior[8 * y + 2:8 * y + 6, 8 * x + 2:8 * x + 6] = True
    assert np.abs(chroma[:, interior].astype(int) - ref_chroma[:, interior]).max() <= 1
    white = ours[0, 3 * 16 + 4]  # the white patch's luma
    assert white == (235 if colour_range == TV_RANGE else 255)


def test_unknown_matrices_are_left_to_swscale():
    assert rgb_to_yuv_matrix(8, TV_RANGE) is None  # YCgCo
    assert rgb_to_yuv_matrix(1, 0) is None
    assert rgb_to_yuv_matrix(1, TV_RANGE).shape == (3, 4)


def test_written_and_read_back_the_frames_come_closer_than_through_swscale(tmp_path, monkeypatch):
    clip = scene(3, 256, 128)  # sharp edges between saturated colours: where chroma filters differ
    fast = read_video(write_video(tmp_path / "a.mp4", clip, fps=25, crf=0)).frames  # crf 0: the conversion's loss
    import vdiffdeblur.writer as writer

    monkeypatch.setattr(writer, "rgb_to_yuv_matrix", lambda *a: None)  # the swscale path, as before
    slow = read_video(write_video(tmp_path / "b.mp4", clip, fps=25, crf=0)).frames

    def psnr(a):
        return 10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - clip) ** 2))

    assert psnr(fast) > psnr(slow) + 0.3  # 19.16 against 18.59 dB (random colour blocks: chroma loses much)
