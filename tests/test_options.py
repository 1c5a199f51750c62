"""Typed method options: every CLI option reaches its method, a key no method knows fails, one stream protocol."""

import numpy as np
import pytest

from vdiffdeblur.cli import build_parser, deblur_options
from vdiffdeblur.methods.options import (
    DiffusionOptions,
    DTBOptions,
    FitOptions,
    RunOptions,
    TransferOptions,
    split_options,
)
from vdiffdeblur.methods.runner import build_stream, deblur_file
from vdiffdeblur.methods.stream import Chain, frame_list
from vdiffdeblur.video import write_video


def _parse(*argv):
    return deblur_options(build_parser().parse_args(["deblur", "in.mp4", "-o", "out.mp4", *argv]))


def test_cli_options_become_typed_options_of_each_method():
    opts = _parse("--method", "diffusion", "--steps", "3", "--tile-size", "64", "--vae-tiling", "--dtype",
                  "float32", "--transfer-radius", "2", "--no-guard", "--seed", "7", "--quiet")
    run, diffusion = split_options(opts, "diffusion")
    assert run == RunOptions(seed=7, guard=False, quiet=True)
    assert diffusion == DiffusionOptions(steps=3, tile_size=64, vae_tiling=True, dtype="float32")
    assert split_options(opts, "transfer")[1] == TransferOptions(transfer_radius=2)
    assert split_options(opts, "fit")[1] == FitOptions(steps=3, tile_size=64)  # --tile-size is shared
    assert split_options(opts, "dtb")[1] == DTBOptions(dtype="float32", tile_size=64)
    assert split_options({}, "dtb") == (RunOptions(), DTBOptions())  # defaults are the dataclasses'


def test_a_key_no_method_knows_is_refused(tmp_path):
    src = write_video(tmp_path / "a.mkv", np.zeros((3, 16, 16, 3), np.uint8), fps=25, lossless=True)
    for bad in ({"transfer_raduis": 2}, {"dtb_precision": "float32"}):
        with pytest.raises(ValueError, match="unknown option"):
            deblur_file(src, tmp_path / "o.mkv", options=bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mkv"]


def test_every_option_is_in_help_with_its_group(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["deblur", "--help"])
    text = capsys.readouterr().out
    for group in ("common options", "transfer options", "dtb options", "fit options", "diffusion options"):
        assert group in text
    for flag in ("--transfer-radius", "--tile-size", "--decode-chunk-size", "--cpu-offload", "--vae-slicing",
                 "--vae-tiling", "--quiet", "--dtype", "--compile", "--init"):
        assert flag in text
    assert "dtb: a DTBNet folder" in text and "diffusion: a DeblurVideoPipeline folder" in text  # one shared flag


def test_transfer_radius_reaches_the_stream(tmp_path):
    stream = build_stream(None, None, "transfer", {"transfer_radius": 2, "guard": False})
    assert stream.cfg.radius == 2
    frames = np.random.default_rng(0).integers(0, 255, (5, 24, 32, 3), dtype=np.uint8)
    ready = [len(stream.push([f])) for f in frames]
    assert ready == [0, 0, 1, 1, 1]  # two frames of look-ahead


def test_one_protocol_for_methods_chains_and_the_guard():
    frames = np.random.default_rng(1).integers(0, 255, (9, 24, 32, 3), dtype=np.uint8)
    guarded = build_stream(None, None, "transfer", {"transfer_radius": 1})  # transfer, then the guard
    one_by_one = [o for f in frames for o in guarded.push([f])] + guarded.flush()
    again = build_stream(None, None, "transfer", {"transfer_radius": 1})
    batched = again.push(frames[:4]) + again.push(list(frames[4:])) + again.flush()
    np.testing.assert_array_equal(np.stack(one_by_one), np.stack(batched))
    chain = Chain(build_stream(None, None, "transfer", {"guard": False}),
                  build_stream(None, None, "transfer", {"guard": False}))
    assert len(chain.push(frames) + chain.flush()) == len(frames)
    with pytest.raises(ValueError, match="wrap it in a list"):
        frame_list(frames[0])
