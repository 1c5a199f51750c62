"""User mistakes on the command line: each is one line ``error: ...`` on stderr, exit status 2, and nothing left
under the output name (no output, no hidden ``.NAME.partial-*``), found before any work where it can be."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_script

import vdiffdeblur
from vdiffdeblur import cli
from vdiffdeblur.cli import build_parser, error_message, main
from vdiffdeblur.video import read_video, write_video

pytestmark = pytest.mark.usefixtures("one_thread")

CHECKPOINTS = Path(vdiffdeblur.__file__).resolve().parent / "checkpoints"
DTB, DIFFUSION, FIT = CHECKPOINTS / "dtb", CHECKPOINTS / "diffusion", CHECKPOINTS / "fit_maml"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    # progress bars (tqdm) may come before the error of a run that got going: they are not error lines
    lines = [ln for ln in err.splitlines() if ln.strip() and not re.search(r"\[\d+:\d\d[<,]", ln)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err, err
    return lines[0]


def left_in(folder, *keep) -> list[str]:
    """What is in ``folder`` besides ``keep``: a failed run must leave nothing, not even a hidden partial file."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def clip_of(path, width, height, n=6):
    from vdiffdeblur.data.synthetic import load_photo

    img = load_photo("builtin:astronaut")
    frames = np.stack([img[100 + i: 100 + i + height, 150 + 2 * i: 150 + 2 * i + width] for i in range(n)])
    write_video(path, frames, fps=10, lossless=True)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return clip_of(tmp_path_factory.mktemp("in") / "clip.mkv", 32, 24)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "tiny"
    assert load_script("make_tiny_pipeline").main(["--out", str(d), "--seed", "0"]) == 0
    return d


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a command starts working: the mistake must be caught while parsing."""
    def refuse(args):
        raise AssertionError(f"{args.command} ran")

    monkeypatch.setattr(cli, "cmd_deblur", refuse)
    monkeypatch.setattr(cli, "cmd_synth", refuse)


# ------------------------------------------------------------------------------------------ tiny frames
METHOD_ARGS = {
    "transfer": ["--method", "transfer"],
    "dtb": ["--method", "dtb"],
    "fit": ["--method", "fit", "--steps", "2"],
    "diffusion": ["--method", "diffusion", "--steps", "1", "--window", "4", "--overlap", "1"],
}


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "no-guard"])
@pytest.mark.parametrize("size", [(16, 12), (8, 8), (2, 3), (1, 1)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("method", list(METHOD_ARGS))
def test_tiny_frames_are_deblurred_at_their_size(method, size, guard, tiny_model, tmp_path, capsys):
    w, h = size
    src = clip_of(tmp_path / "in.mkv", w, h)
    out = tmp_path / "out.mkv"
    extra = ["--model", str(tiny_model)] if method == "diffusion" else []
    rc = main(["deblur", str(src), "-o", str(out), *METHOD_ARGS[method], *extra, "--lossless", "--device", "cpu",
               *([] if guard else ["--no-guard"])])
    assert rc == 0, capsys.readouterr().err
    assert read_video(out).frames.shape == (6, h, w, 3)
    assert left_in(tmp_path, "in.mkv") == ["out.mkv"]


def test_flow_pads_frames_below_what_dis_accepts():
    from vdiffdeblur.flow import dis_flow, robust_flow

    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (3, 40), (11, 11), (40, 2)]:
        a, b = (rng.integers(0, 256, (h, w), dtype=np.uint8) for _ in range(2))
        assert dis_flow(a, b).shape == (h, w, 2)
        assert robust_flow(a / 255.0, b / 255.0).shape == (h, w, 2)


def test_sharpness_and_fit_losses_take_frames_a_pixel_wide():
    from vdiffdeblur.losses import gradient_l1_per_sample
    from vdiffdeblur.methods.fit.blur_lengths import estimate_noise_sigma
    from vdiffdeblur.models.perceptual import DEFAULT_LAYERS, PerceptualLoss
    from vdiffdeblur.models.vgg import VGGFeatures
    from vdiffdeblur.sharpness import laplacian_variance

    loss = PerceptualLoss()
    loss.vgg = VGGFeatures(depth=19, layers=DEFAULT_LAYERS)  # random weights: only the sizes are under test
    gen = torch.Generator().manual_seed(0)
    for h, w in [(1, 1), (1, 5), (5, 1), (2, 3), (8, 8), (15, 20)]:
        a, b = torch.rand(2, 3, h, w, generator=gen), torch.rand(2, 3, h, w, generator=gen)
        assert torch.isfinite(gradient_l1_per_sample(a, b)).all() and torch.isfinite(loss.per_sample(a, b)).all()
        frame = (a[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        assert np.isfinite(float(laplacian_variance(frame)[0])) and np.isfinite(estimate_noise_sigma(frame))
    a, b = torch.rand(1, 3, 4, 6, generator=gen), torch.rand(1, 3, 4, 6, generator=gen)
    dx = (a.diff(dim=-1) - b.diff(dim=-1)).abs().mean()
    dy = (a.diff(dim=-2) - b.diff(dim=-2)).abs().mean()
    assert torch.allclose(gradient_l1_per_sample(a, b), 0.5 * (dx + dy))  # unchanged where both directions exist


# ------------------------------------------------------------------------------------------ --device
def test_unknown_or_missing_device_is_refused_before_any_work(clip, tmp_path, capsys, no_work):
    out = tmp_path / "out.mkv"
    bad = ["potato", "cuda:99", "meta", "cpu:x"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:0"])
    for device in bad:
        assert main(["deblur", str(clip), "-o", str(out), "--method", "dtb", "--device", device]) == 2, device
        line = one_error_line(capsys)
        assert line.startswith("error: --device: ") and device in line, line
    assert not any(tmp_path.iterdir())
    assert build_parser().parse_args(["deblur", "x", "-o", "y", "--device", "CPU"]).device == "cpu"


def test_library_device_names_are_checked():
    from vdiffdeblur.devices import check_device, resolve_device
    from vdiffdeblur.methods.fit.deblurrer import resolve_device as fit_device

    assert check_device("cpu") == torch.device("cpu") and resolve_device("auto").type in ("cpu", "cuda")
    for name in ("potato", "cuda:x", "xla"):
        with pytest.raises(ValueError, match="unknown device"):
            fit_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


# ------------------------------------------------------------------------------------------ numeric options
DEBLUR_RANGES = [
    (["--crf", "-5"], "error: --crf must be between 0 and 51, got -5"),
    (["--crf", "99"], "error: --crf must be between 0 and 51, got 99"),
    (["--crf", "high"], "error: --crf: invalid int value: 'high'"),
    (["--threads", "0"], "error: --threads must be at least 1, got 0"),
    (["--steps", "0"], "error: --steps must be at least 1, got 0"),
    (["--guidance", "-1"], "error: --guidance must be at least 0, got -1"),
    (["--guidance", "nan"], "error: --guidance must be a finite number, got nan"),
    (["--window", "0"], "error: --window must be at least 1, got 0"),
    (["--overlap", "-1"], "error: --overlap must be at least 0, got -1"),
    (["--window", "4", "--overlap", "4"], "error: --overlap must be less than --window (4), got 4"),
    (["--learning-rate", "0"], "error: --learning-rate must be greater than 0, got 0"),
    (["--learning-rate", "inf"], "error: --learning-rate must be a finite number, got inf"),
    (["--seed", "-1"], "error: --seed must be between 0 and 4294967295, got -1"),
    (["--method", "magic"], "error: --method: invalid choice: 'magic'"),
]
SYNTH_RANGES = [
    (["--frames", "0"], "error: --frames must be at least 1, got 0"),
    (["--fps", "0"], "error: --fps must be greater than 0, got 0"),
    (["--fps", "-3"], "error: --fps must be greater than 0, got -3"),
    (["--size", "0x10"], "error: --size must be positive, got 0x10"),
    (["--seed", "-1"], "error: --seed must be between 0 and 4294967295, got -1"),
]


@pytest.mark.parametrize("args,message", DEBLUR_RANGES, ids=[" ".join(a) for a, _ in DEBLUR_RANGES])
def test_deblur_option_out_of_range_is_one_line_before_any_work(args, message, clip, tmp_path, capsys, no_work):
    out = tmp_path / "out.mkv"
    assert main(["deblur", str(clip), "-o", str(out), *args]) == 2
    assert one_error_line(capsys).startswith(message)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args,message", SYNTH_RANGES, ids=[" ".join(a) for a, _ in SYNTH_RANGES])
def test_synth_option_out_of_range_is_one_line_before_any_work(args, message, tmp_path, capsys, no_work):
    assert main(["synth", "builtin:coffee", "-o", str(tmp_path / "clip"), *args]) == 2
    assert one_error_line(capsys) == message
    assert not any(tmp_path.iterdir())


def test_range_limits_themselves_are_accepted():
    p = build_parser()
    a = p.parse_args(["deblur", "x", "-o", "y", "--crf", "0", "--threads", "1", "--steps", "1", "--guidance", "0",
                      "--window", "1", "--overlap", "0", "--learning-rate", "1e-6", "--seed", "4294967295"])
    assert (a.crf, a.threads, a.steps, a.guidance, a.window, a.overlap) == (0, 1, 1, 0.0, 1, 0)
    assert p.parse_args(["deblur", "x", "-o", "y", "--crf", "51"]).crf == 51
    s = p.parse_args(["synth", "p", "-o", "y", "--frames", "1", "--fps", "0.5", "--size", "8x8"])
    assert (s.frames, s.fps, s.size) == (1, 0.5, (8, 8))


def test_usage_mistakes_are_one_line_too(capsys):
    assert main([]) == 2
    assert one_error_line(capsys).startswith("error: the following arguments are required")
    assert main(["deblur", "in.mkv"]) == 2
    assert "-o/--output" in one_error_line(capsys)
    assert main(["deblur", "in.mkv", "-o", "out.mkv", "--no-such-option"]) == 2
    assert one_error_line(capsys) == "error: unrecognized arguments: --no-such-option"


def test_every_option_has_help_naming_its_default(capsys):
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in subs.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.dest} has no help"
            takes_value = action.option_strings and action.nargs != 0 and not action.required
            assert not takes_value or "default" in action.help, f"{name} {action.dest}: {action.help}"
    with pytest.raises(SystemExit):
        main(["deblur", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "how to deblur (default: transfer" in text and "0 to 51" in text


# ------------------------------------------------------------------------------------------ OSError paths
def test_oserror_messages_name_the_path():
    assert error_message(PermissionError(13, "Permission denied", "/some/path")) == "/some/path: Permission denied"
    assert error_message(FileExistsError(17, "File exists", "/a", None, "/b")) == "/a -> /b: File exists"
    assert error_message(OSError(28, "No space left on device")) == "[Errno 28] No space left on device"
    assert error_message(FileNotFoundError("/m: no such model folder")) == "/m: no such model folder"


def test_permission_denied_names_the_path(clip, tmp_path, capsys, monkeypatch):
    import os

    ro = tmp_path / "read-only"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the writer fail the way a read-only folder does
        import vdiffdeblur.methods.runner as runner

        def denied(source, output, *a, **kw):
            raise PermissionError(13, "Permission denied", str(output))

        monkeypatch.setattr(runner, "deblur_file", denied)
        argv = ["deblur", str(clip), "-o", str(ro / "out.mkv"), "--no-guard"]
    else:
        ro.chmod(0o555)
        argv = ["synth", "builtin:coffee", "-o", str(ro / "clip"), "--frames", "2", "--size", "16x16"]
    try:
        assert main(argv) == 2
        line = one_error_line(capsys)
    finally:
        ro.chmod(0o755)
    assert "Permission denied" in line and str(ro) in line and "[Errno" not in line, line
    assert left_in(ro) == []


def test_an_unwritable_output_folder_is_refused_before_any_work(clip, tmp_path, capsys, monkeypatch):
    import os

    ro = tmp_path / "read-only"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real(p, mode, **kw))
    for out in (ro / "out.mp4", ro / "frames", ro / "new" / "out.mp4"):
        assert main(["deblur", str(clip), "-o", str(out)]) == 2
        line = one_error_line(capsys)
        assert str(out) in line and f"cannot write into {ro}" in line, line
    assert left_in(ro) == []


def test_options_of_another_method_are_refused(clip, tmp_path, capsys):
    for argv, word in ((["--method", "fit", "--model", str(DTB)], "--init"),
                       (["--method", "transfer", "--model", str(DTB)], "--model"),
                       (["--method", "dtb", "--init", "random"], "--init")):
        assert main(["deblur", str(clip), "-o", str(tmp_path / "o.mp4"), *argv]) == 2
        assert word in one_error_line(capsys)
    assert left_in(tmp_path) == []


def test_ddim_script_checks_its_ranges_too(clip, tmp_path, capsys):
    ddim = load_script("ddim_inference").main
    for argv in (["--crf", "99"], ["--steps", "0"], ["--device", "potato"]):
        with pytest.raises(SystemExit) as e:
            ddim(["--model", str(DIFFUSION), "--input", str(clip), "--output", str(tmp_path / "o.mp4"), *argv])
        assert e.value.code == 2
        assert argv[0] in capsys.readouterr().err
    assert left_in(tmp_path) == []


# ------------------------------------------------------------------------------------------ wrong kind of model
def test_a_model_of_another_method_is_named(clip, tiny_model, tmp_path, capsys):
    out = tmp_path / "out.mkv"
    cases = [
        (["--method", "dtb", "--model", str(DIFFUSION)],
         f"error: {DIFFUSION}: not a DTB model folder (expected config.json of DTBNet; found a DeblurVideoPipeline "
         "folder"),
        (["--method", "dtb", "--model", str(tiny_model)], "found a DeblurVideoPipeline folder"),
        (["--method", "dtb", "--model", str(FIT)], "not a DTB model folder (expected config.json of DTBNet; found a "
                                                   "FitUNet folder"),
        (["--method", "dtb", "--model", str(DIFFUSION / "unet")], "found a UNet3DConditionModel folder"),
        (["--method", "diffusion", "--model", str(DTB)],
         f"error: {DTB}: not a diffusion model folder (expected model_index.json of DeblurVideoPipeline; found a "
         "DTBNet folder"),
        (["--method", "diffusion", "--model", str(FIT)], "found a FitUNet folder"),
        (["--method", "diffusion", "--model", str(clip)], "found a file"),
        (["--method", "fit", "--init", str(DTB)],
         f"error: {DTB}: not a fit initialisation folder (expected config.json of FitUNet; found a DTBNet folder"),
        (["--method", "fit", "--init", str(DIFFUSION)], "found a DeblurVideoPipeline folder"),
    ]
    for args, message in cases:
        assert main(["deblur", str(clip), "-o", str(out), *args, "--device", "cpu"]) == 2, args
        line = one_error_line(capsys)
        assert message in line, (args, line)
        assert not any(tmp_path.iterdir()), args


# ------------------------------------------------------------------------------------------ non-finite output
def _poison(module):
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1:  # a convolution's weight: every output below it is NaN then
                p.view(-1)[0] = float("nan")
                return


def test_a_model_that_outputs_nan_is_refused_and_nothing_is_written(clip, tiny_model, tmp_path, capsys):
    from vdiffdeblur.methods.dtb import load_dtb_model
    from vdiffdeblur.methods.fit.initialisation import load_init
    from vdiffdeblur.pipelines import DeblurVideoPipeline

    models = tmp_path / "models"
    dtb = load_dtb_model()
    _poison(dtb)
    dtb.save_pretrained(models / "nan-dtb")
    fit = load_init("maml")
    _poison(fit)
    fit.save_pretrained(models / "nan-fit")
    pipe = DeblurVideoPipeline.from_pretrained(tiny_model)
    _poison(pipe.unet)
    pipe.save_pretrained(models / "nan-diffusion", safe_serialization=True)

    work = tmp_path / "work"
    work.mkdir()
    out = work / "out.mkv"
    cases = [
        (["--method", "dtb", "--model", str(models / "nan-dtb")],
         f"error: {models / 'nan-dtb'}: the dtb model has non-finite weights (NaN/inf)"),
        (["--method", "fit", "--steps", "2", "--init", str(models / "nan-fit")],
         "the fit network (init " + str(models / "nan-fit") + ") produced non-finite values (NaN/inf)"),
        (["--method", "diffusion", "--model", str(models / "nan-diffusion"), "--steps", "1", "--window", "4",
          "--overlap", "1"], f"error: {models / 'nan-diffusion'}: the diffusion model produced non-finite values"),
    ]
    for args, message in cases:
        for guard in ([], ["--no-guard"]):
            assert main(["deblur", str(clip), "-o", str(out), *args, *guard, "--device", "cpu"]) == 2, args
            line = one_error_line(capsys)
            assert message in line, (args, line)
            assert not any(work.iterdir()), (args, left_in(work))


def test_check_finite_passes_finite_and_names_the_model():
    from vdiffdeblur.frames import NonFiniteOutputError, check_finite

    x = torch.rand(2, 3, 4, 4)
    assert check_finite(x) is x
    x[1, 2, 3, 3] = float("inf")
    with pytest.raises(NonFiniteOutputError, match="^/m: the dtb model produced non-finite values"):
        check_finite(x, "/m: the dtb model")
    assert issubclass(NonFiniteOutputError, ValueError)
