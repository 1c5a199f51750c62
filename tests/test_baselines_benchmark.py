import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from vdiffdeblur.baselines import richardson_lucy, unsharp_mask
from vdiffdeblur.data.synthetic import ShakeConfig, synthesize_shake
from vdiffdeblur.metrics import psnr
from vdiffdeblur.sharpness import laplacian_variance

ROOT = Path(__file__).resolve().parents[1]


def test_richardson_lucy_with_the_true_kernel_helps_and_unsharp_sharpens():
    cfg = ShakeConfig(num_frames=8, width=128, height=96, rotation_deg=0, zoom=0, noise_sigma=0)
    c = synthesize_shake("coffee", cfg, seed=1)
    i = int(np.argmax(c.blur_extent))
    rl = richardson_lucy(c.blurry[i], c.kernel(i))
    assert psnr(rl[None], c.sharp[i:i + 1])[0] > psnr(c.blurry[i:i + 1], c.sharp[i:i + 1])[0] + 2.0
    us = unsharp_mask(c.blurry[:2])
    assert us.shape == (2, 96, 128, 3) and us.dtype == np.uint8
    assert (laplacian_variance(us) > laplacian_variance(c.blurry[:2])).all()


def _bench(out, *methods, fresh=False):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--methods", *methods,
                        "--photos", "coins", "--seeds", "0", "--frames", "6", "--size", "96x64", "--out", str(out)]
                       + (["--fresh"] if fresh else []), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "benchmarks.json").read_text())
    return (out / "benchmarks.md").read_text(), {s["method"]: s for s in data["summary"]}


def test_benchmark_writes_its_report_and_keeps_earlier_rows(tmp_path):
    md, rows = _bench(tmp_path, "blurry", "transfer", "dtb")
    assert "| transfer |" in md and "| blurry |" in md and "| dtb |" in md
    assert rows["blurry"]["gain_all"] == 0 and rows["transfer"]["frames"] == 6
    assert rows["dtb"]["frames"] == 6  # the shipped checkpoint runs
    assert (tmp_path / "benchmark_gain_vs_blur.png").is_file()
    # re-running one method keeps the other methods' rows of the same clips, in the registry's order
    md2, rows2 = _bench(tmp_path, "unsharp")
    assert list(rows2) == ["blurry", "unsharp", "transfer", "dtb"]
    assert rows2["transfer"]["psnr"] == rows["transfer"]["psnr"] and rows2["transfer"]["kept_from_previous_run"]
    assert rows2["unsharp"]["gain_all"] < 0
    _, rows3 = _bench(tmp_path, "unsharp", fresh=True)
    assert list(rows3) == ["unsharp"]


def test_peak_rss_is_this_process_and_grows_with_allocation():
    code = ("from vdiffdeblur.profiling import peak_rss_mb; import numpy as np; a = peak_rss_mb(); "
            "b = np.ones(200 * 2**20, np.uint8); print(a, peak_rss_mb())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = map(float, r.stdout.split())
    assert before < 200 and after >= before + 190  # a fresh process's own peak, not its parent's
