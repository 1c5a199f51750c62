import numpy as np
import pytest

from vdiffdeblur.blur import apply_kernel, linear_motion_kernel
from vdiffdeblur.data.synthetic import load_photo
from vdiffdeblur.frames import as_frames_tensor, to_uint8_frames
from vdiffdeblur.sharpness import laplacian_variance, select_sharp_frames


@pytest.mark.parametrize("photo", ["coffee", "astronaut", "camera", "hubble_deep_field"])
def test_blurred_frames_rank_below_their_sharp_source(photo):
    img = load_photo(photo)[:200, :240]
    x = as_frames_tensor(img)
    sharp = laplacian_variance(img)[0]
    for length in (2, 4, 9):
        for angle in (0, 60, 135):
            blurred = to_uint8_frames(apply_kernel(x, linear_motion_kernel(length, angle)))
            assert laplacian_variance(blurred)[0] < sharp


def test_select_sharp_frames_one_per_run():
    rng = np.random.default_rng(0)
    scores = rng.random(45)
    scores[[7, 33, 41]] = 10 + np.arange(3)
    assert select_sharp_frames(scores, every=20) == [7, 33, 41]
    assert len(select_sharp_frames(rng.random(40), every=20)) == 2
    assert len(select_sharp_frames(rng.random(1), every=20)) == 1


def test_select_sharp_frames_on_frames(shake_clip):
    idx = select_sharp_frames(shake_clip.blurry, every=12)
    assert len(idx) == 2
    s = laplacian_variance(shake_clip.blurry).numpy()
    assert idx == [int(np.argmax(s[:12])), 12 + int(np.argmax(s[12:]))]
