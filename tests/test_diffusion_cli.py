"""The diffusion deblurrer from the command line: `vdiffdeblur deblur --method diffusion` and
scripts/ddim_inference.py, end to end with a tiny pipeline folder; user errors exit 2 with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import load_script

from vdiffdeblur.cli import main as cli_main
from vdiffdeblur.frames import to_uint8_frames
from vdiffdeblur.methods.diffusion import load_pipeline, measure_deblur_file, resolve_device, resolve_dtype
from vdiffdeblur.pipelines import DeblurVideoPipeline
from vdiffdeblur.video import probe, read_video, write_video

pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "tiny"
    assert load_script("make_tiny_pipeline").main(["--out", str(d), "--seed", "0"]) == 0
    assert load_script("make_tiny_pipeline").main(["--out", str(d)]) == 2  # refuses to overwrite
    return d


@pytest.fixture(scope="module")
def blurry(tmp_path_factory):
    frames = np.random.RandomState(0).randint(0, 256, (10, 20, 24, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("in") / "blurry.mkv"
    write_video(path, frames, fps=12, lossless=True)
    return path, frames


def expected(model_dir, frames, seed=3, color_fix=None):
    pipe = DeblurVideoPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(frames, num_inference_steps=2, window_size=4, window_overlap=1, output_type="pt",
               generator=torch.Generator().manual_seed(seed), color_fix=color_fix).frames[0]
    return to_uint8_frames(out)


def test_cli_deblurs_a_file_end_to_end(model_dir, blurry, tmp_path, capsys):
    src, frames = blurry
    out = tmp_path / "sharp.mkv"
    rc = cli_main(["deblur", str(src), "-o", str(out), "--method", "diffusion", "--model", str(model_dir),
                   "--steps", "2", "--window", "4", "--overlap", "1", "--seed", "3", "--no-guard", "--lossless"])
    assert rc == 0, capsys.readouterr().err
    info = probe(out)
    assert (info.num_frames, info.width, info.height) == (10, 24, 20) and info.fps == pytest.approx(12)
    got = read_video(out).frames
    # the streamed run (frame by frame from the reader) equals the pipeline on the whole clip
    assert np.array_equal(got, expected(model_dir, frames))
    assert "wrote" in capsys.readouterr().out


def test_ddim_script_deblurs_a_file_end_to_end(model_dir, blurry, tmp_path, capsys):
    src, frames = blurry
    out = tmp_path / "frames"  # no suffix: a PNG folder
    rc = load_script("ddim_inference").main(
        ["--model", str(model_dir), "--input", str(src), "--output", str(out), "--steps", "2", "--window", "4",
         "--overlap", "1", "--seed", "3", "--device", "cpu", "--dtype", "float32", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    got = read_video(out).frames
    assert got.shape == (10, 20, 24, 3)
    assert np.array_equal(got, expected(model_dir, frames))


def test_color_fix_option_in_cli_and_ddim_script(model_dir, blurry, tmp_path, capsys):
    src, frames = blurry
    run = ["--steps", "2", "--window", "4", "--overlap", "1", "--seed", "3"]
    # one thread, as `expected`: AdaIN's statistics are reductions whose order follows the thread count
    rc = cli_main(["deblur", str(src), "-o", str(tmp_path / "a"), "--method", "diffusion", "--model",
                   str(model_dir), "--no-guard", "--color-fix", "adain", "--threads", "1", *run])
    assert rc == 0, capsys.readouterr().err
    adain = expected(model_dir, frames, color_fix="adain")
    assert np.array_equal(read_video(tmp_path / "a").frames, adain)
    assert not np.array_equal(adain, expected(model_dir, frames))
    rc = load_script("ddim_inference").main(["--model", str(model_dir), "--input", str(src), "--output",
                                             str(tmp_path / "w"), "--color-fix", "wavelet", "--quiet", *run])
    assert rc == 0, capsys.readouterr().err
    assert np.array_equal(read_video(tmp_path / "w").frames, expected(model_dir, frames, color_fix="wavelet"))
    with pytest.raises(SystemExit) as e:
        load_script("ddim_inference").main(["--model", str(model_dir), "--input", str(src), "--output",
                                            str(tmp_path / "x"), "--color-fix", "hist"])
    assert e.value.code == 2 and "invalid choice: 'hist'" in capsys.readouterr().err


def test_cli_guard_default(model_dir, blurry, tmp_path):
    src, _ = blurry
    out = tmp_path / "guarded.mkv"
    rc = cli_main(["deblur", str(src), "-o", str(out), "--method", "diffusion", "--model", str(model_dir),
                   "--steps", "1", "--window", "4", "--overlap", "1"])
    assert rc == 0 and probe(out).num_frames == 10


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def corrupt(tmp_path):
    p = tmp_path / "broken.mp4"
    p.write_bytes(b"this is not a video" * 50)
    return p


def test_bad_input_exits_2_and_writes_nothing(model_dir, corrupt, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    base = ["--method", "diffusion", "--model", str(model_dir), "--steps", "1", "--no-guard"]
    assert cli_main(["deblur", str(corrupt), "-o", str(out), *base]) == 2
    assert "broken.mp4" in _one_line_error(capsys.readouterr().err)
    assert cli_main(["deblur", str(tmp_path / "missing.mp4"), "-o", str(out), *base]) == 2
    assert "missing.mp4" in _one_line_error(capsys.readouterr().err)
    ddim = load_script("ddim_inference").main
    assert ddim(["--model", str(model_dir), "--input", str(corrupt), "--output", str(out), "--quiet"]) == 2
    assert "broken.mp4" in _one_line_error(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4"]


def test_model_problems_exit_2_naming_them(model_dir, blurry, tmp_path, capsys, monkeypatch):
    import shutil

    import vdiffdeblur.methods.diffusion as diffusion

    src, _ = blurry
    out = tmp_path / "out.mkv"
    # no --model and no shipped model: the error names --model
    monkeypatch.setattr(diffusion, "DEFAULT_MODEL", tmp_path / "no-shipped-model")
    assert cli_main(["deblur", str(src), "-o", str(out), "--method", "diffusion", "--no-guard"]) == 2
    assert "--model" in _one_line_error(capsys.readouterr().err)
    broken = tmp_path / "broken-model"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "unet")
    ddim = load_script("ddim_inference").main
    assert ddim(["--model", str(broken), "--input", str(src), "--output", str(out), "--quiet"]) == 2
    assert "'unet' is missing" in _one_line_error(capsys.readouterr().err)
    assert cli_main(["deblur", str(src), "-o", str(out), "--method", "diffusion", "--model", str(model_dir),
                     "--dtype", "float8", "--no-guard"]) == 2
    assert "float8" in _one_line_error(capsys.readouterr().err)
    assert ddim(["--model", str(model_dir), "--input", str(src), "--output", str(src), "--quiet"]) == 2
    assert "input" in _one_line_error(capsys.readouterr().err)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken-model"]


def test_device_and_dtype_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_measure_deblur_file_reports_time_and_memory(model_dir, blurry, tmp_path):
    src, _ = blurry
    pipe = load_pipeline(model_dir, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    r = measure_deblur_file(pipe, src, tmp_path / "o.mkv", num_inference_steps=1, window_size=4, window_overlap=1,
                            repeat=2)
    assert r["frames"] == 10 and r["size"] == "24x20"
    assert 0 < r["cpu_seconds_per_frame"] and 0 < r["seconds_per_frame"] < r["seconds"]
    assert r["rss_peak_mb"] >= r["rss_baseline_mb"] > 0
    assert probe(tmp_path / "o.mkv").num_frames == 10


def test_large_frames_go_through_unet_and_vae_in_tiles(model_dir):
    from vdiffdeblur.methods.diffusion import (
        DECODE_CHUNK_SIZE,
        HUGE_FRAME_WINDOW,
        LARGE_FRAME_TILE,
        DiffusionFrameStream,
    )

    pipe = load_pipeline(model_dir, device="cpu", dtype="float32")
    small = DiffusionFrameStream(pipe, 384, 512, num_inference_steps=1)
    assert small.session.tile is None and not pipe.vae.use_tiling  # 512x384 and below: whole frames
    assert small.session.decode_chunk_size == DECODE_CHUNK_SIZE and small.session.window == pipe.default_window_size
    big = DiffusionFrameStream(pipe, 400, 600, num_inference_steps=1, window_size=2, window_overlap=0)
    assert big.session.tile * pipe.vae_scale_factor == LARGE_FRAME_TILE and big.session.decode_chunk_size == 1
    assert pipe.vae.use_tiling and pipe.vae.tile_sample_min_size == LARGE_FRAME_TILE
    assert pipe.vae.tile_latent_min_size * pipe.vae_scale_factor == LARGE_FRAME_TILE
    told = DiffusionFrameStream(pipe, 400, 600, num_inference_steps=1, tile_size=64, decode_chunk_size=3)
    assert told.session.tile * pipe.vae_scale_factor == 64 and told.session.decode_chunk_size == 3  # options win
    assert told.session.window == pipe.default_window_size
    huge = DiffusionFrameStream(pipe, 2160, 3840, num_inference_steps=1)  # 4K: short windows
    assert (huge.session.window, huge.session.overlap) == (HUGE_FRAME_WINDOW, 1)
    # the stream's output is the pipeline's with the same tiles (up to a level's rounding on a few pixels)
    frames = np.random.RandomState(1).randint(0, 256, (2, 400, 600, 3), dtype=np.uint8)
    got = np.stack(big.push(frames) + big.flush())
    ref = pipe(frames, num_inference_steps=1, window_size=2, window_overlap=0, tile_size=LARGE_FRAME_TILE,
               decode_chunk_size=1, output_type="pt", generator=torch.Generator().manual_seed(0)).frames[0]
    diff = np.abs(got.astype(int) - to_uint8_frames(ref))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4
