import json
import subprocess
import sys

import numpy as np
import pytest

from vdiffdeblur.cli import main
from vdiffdeblur.video import read_video, write_video


def run(*args):
    return subprocess.run([sys.executable, "-m", "vdiffdeblur.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("s") / "clip"
    assert main(["synth", "builtin:coffee", "-o", str(out), "--frames", "9", "--size", "96x64", "--seed", "2"]) == 0
    return out


def test_synth_layout(synth_dir):
    blur, sharp, mkv = (read_video(synth_dir / "blur"), read_video(synth_dir / "sharp"),
                        read_video(synth_dir / "blur.mkv"))
    assert blur.frames.shape == sharp.frames.shape == (9, 64, 96, 3)
    np.testing.assert_array_equal(mkv.frames, blur.frames)
    assert sorted(p.name for p in (synth_dir / "blur").glob("*.png"))[:2] == ["00000.png", "00001.png"]
    meta = json.loads((synth_dir / "meta.json").read_text())
    assert len(meta["blur_extent"]) == 9 and meta["seed"] == 2


def test_eval_reports_and_writes_json(synth_dir, tmp_path, capsys):
    js = tmp_path / "s.json"
    assert main(["eval", str(synth_dir / "blur.mkv"), str(synth_dir / "sharp"), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    d = json.loads(js.read_text())
    assert len(d["per_frame"]["psnr"]) == 9 and f"{d['psnr']:.3f}" in out
    assert len(d["hard_frames"]) == 3  # blurriest third from the clip's known blur extent
    assert d["ewarp"] > 0
    # against itself: infinite PSNR is reported, SSIM 1
    assert main(["eval", str(synth_dir / "sharp"), str(synth_dir / "sharp"), "--no-ewarp"]) == 0


def test_eval_mismatch_and_info(synth_dir, tmp_path):
    short = write_video(tmp_path / "short.mkv", read_video(synth_dir / "blur").frames[:4], fps=30, lossless=True)
    r = run("eval", short, synth_dir / "sharp")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "differ" in r.stderr
    r = run("info", synth_dir / "blur.mkv")
    assert r.returncode == 0 and "96x64, 9 frames, 30 fps, codec ffv1" in r.stdout


def test_deblur_refuses_to_overwrite_its_input(synth_dir):
    before = (synth_dir / "blur.mkv").read_bytes()
    r = run("deblur", synth_dir / "blur.mkv", "-o", synth_dir / "blur.mkv")
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    assert (synth_dir / "blur.mkv").read_bytes() == before


def test_bad_option_exits_2(synth_dir):
    r = run("synth", "builtin:coffee", "-o", "x", "--size", "big")
    assert r.returncode == 2 and "size" in r.stderr
    r = run("synth", "builtin:nope", "-o", synth_dir.parent / "nope")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown built-in photo")
    assert not (synth_dir.parent / "nope").exists()


def test_threads_option_sets_torch_threads_and_rejects_zero(synth_dir, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        out = tmp_path / "dtb.mkv"
        assert main(["deblur", str(synth_dir / "blur.mkv"), "-o", str(out), "--method", "dtb", "--threads", "1",
                     "--lossless"]) == 0
        assert torch.get_num_threads() == 1 and read_video(out).frames.shape == (9, 64, 96, 3)
    finally:
        torch.set_num_threads(before)
    r = run("deblur", synth_dir / "blur.mkv", "-o", tmp_path / "x.mkv", "--threads", "0")
    assert r.returncode == 2 and r.stderr == "error: --threads must be at least 1, got 0\n"
    assert not (tmp_path / "x.mkv").exists()


def test_compile_option_reaches_the_dtb_stream(monkeypatch, synth_dir, tmp_path):
    from vdiffdeblur.methods import dtb as online

    seen = {}
    real = online.OnlineDeblurrer.__init__

    def spy(self, *a, **kw):
        seen["compile"] = kw.get("compile")
        kw["compile"] = False  # compiling takes ~30 s; only the plumbing is under test
        real(self, *a, **kw)

    monkeypatch.setattr(online.OnlineDeblurrer, "__init__", spy)
    assert main(["deblur", str(synth_dir / "blur.mkv"), "-o", str(tmp_path / "c.mkv"), "--method", "dtb",
                 "--compile"]) == 0
    assert seen["compile"] is True
