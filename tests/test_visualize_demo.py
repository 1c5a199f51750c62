import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from vdiffdeblur.video import read_video
from vdiffdeblur.visualize import comparison_image, most_detailed_crop, side_by_side

ROOT = Path(__file__).resolve().parents[1]


def test_side_by_side_and_comparison_shapes(natural_clip):
    a, b = natural_clip[:3], natural_clip[3:6]
    sbs = side_by_side([a, b, a], ["x", "y", "z"], gap=3)
    assert sbs.shape == (3, 120, 3 * 160 + 2 * 3, 3)
    assert side_by_side([a[:, :, :33]] * 2, gap=3).shape[2] == 33 * 2 + 3 + 1  # padded to an even width
    np.testing.assert_array_equal(sbs[:, 30:, 163 + 40:163 + 160], b[:, 30:, 40:])  # clip 2 away from its label
    img = comparison_image([a[0], b[0]], ["a", "b"], crop=32, zoom=2)
    assert img.shape[0] == 120 + 4 + 64 and img.dtype == np.uint8


def test_most_detailed_crop_finds_texture():
    f = np.full((100, 100, 3), 128, np.uint8)
    f[60:90, 10:40] = np.random.default_rng(0).integers(0, 255, (30, 30, 3))
    y, x = most_detailed_crop(f, 24)
    assert 60 - 24 < y <= 66 and 10 - 24 < x <= 16


def test_demo_runs_and_reports(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(out), "--frames", "8",
                        "--size", "96x64", "--methods", "transfer"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "transfer" in r.stdout and "blurry input" in r.stdout
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"blurry input", "transfer"} and res["transfer"]["frames_worse"] is not None
    assert read_video(out / "transfer.mkv").frames.shape == (8, 64, 96, 3)
    for name in ("blurry.mp4", "truth.mp4", "side_by_side.mp4", "comparison.png", "results.txt"):
        assert (out / name).is_file(), name
