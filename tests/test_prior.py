"""Refinement of a fast method's output: a pipeline with `prior_method` takes `prior=`, its UNet sees the prior's
latents (conv_in widened, zero init), and the residuals are taken against the prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vdiffdeblur.models.conditioning import build_unet_input
from vdiffdeblur.pipelines import DeblurVideoPipeline, ModelFolderError
from vdiffdeblur.pipelines.prior import add_prior_input
from vdiffdeblur.pipelines.tiny import make_tiny_pipeline, tiny_components

pytestmark = pytest.mark.usefixtures("one_thread")


def clip(frames=5, h=16, w=24, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (frames, h, w, 3), dtype=np.uint8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def quiet(p):
    p.set_progress_bar_config(disable=True)
    return p


def test_widened_unet_starts_as_the_prior_free_one():
    base = quiet(make_tiny_pipeline(seed=3))
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    widened = quiet(make_tiny_pipeline(seed=3, prior_method="transfer"))
    w = widened.unet.conv_in.weight
    assert widened.unet.config.in_channels == 12 and widened.config.prior_method == "transfer"
    assert torch.equal(w[:, :8], before["conv_in.weight"]) and torch.count_nonzero(w[:, 8:]) == 0
    x, blur, prior = (torch.randn(1, 4, 3, 4, 6, generator=gen(i)) for i in range(3))
    tokens = torch.randn(1, 4, 16, generator=gen(4))
    with torch.no_grad():
        ref = base.unet(build_unet_input(x, blur), 500, encoder_hidden_states=tokens).sample
        out = widened.unet(build_unet_input(x, blur, prior), 500, encoder_hidden_states=tokens).sample
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            widened.unet.conv_in.weight[:, 8:].fill_(0.1)
        moved = widened.unet(build_unet_input(x, blur, prior), 500, encoder_hidden_states=tokens).sample
    assert (moved - ref).abs().max() > 1e-3  # the prior's channels do reach the UNet once trained


def test_prior_pipeline_equals_prior_free_one_before_training():
    """Without residuals against a base, the widened pipeline's output does not depend on the prior at first."""
    base = quiet(make_tiny_pipeline(seed=1))
    ref = base(clip(), num_inference_steps=2, generator=gen(), output_type="np").frames
    pipe = quiet(add_prior_input(make_tiny_pipeline(seed=1), "dtb"))
    out = pipe(clip(), prior=clip(seed=9), num_inference_steps=2, generator=gen(), output_type="np").frames
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_residuals_are_taken_against_the_prior():
    pipe = quiet(make_tiny_pipeline(seed=2, prior_method="transfer"))
    pipe.register_to_config(residual_latents=True, residual_decode=True, residual_scale=5.0)
    with torch.no_grad():
        pipe.unet.conv_out.weight.zero_()
        pipe.unet.conv_out.bias.zero_()
    prior = clip(seed=7)
    # a UNet predicting zero noise keeps zero initial latents at zero: the final latents are the prior's own
    zeros = torch.zeros(1, 4, 5, 4, 6)
    out = pipe(clip(), prior=prior, num_inference_steps=2, latents=zeros, output_type="np").frames[0]
    np.testing.assert_allclose(out, prior / 255.0, atol=1e-5)
    lat = pipe(clip(), prior=prior, num_inference_steps=2, latents=zeros, output_type="latent").frames
    z_prior = pipe.encode_condition(torch.from_numpy(prior).permute(3, 0, 1, 2)[None].float() / 255).latents
    assert (lat - pipe.encode_condition(torch.from_numpy(clip()).permute(3, 0, 1, 2)[None].float() / 255)
            .latents).abs().max() > 1e-2  # not the blurry clip's latents
    torch.testing.assert_close(lat, z_prior, rtol=1e-5, atol=1e-5)


def test_prior_required_and_refused_with_clear_errors():
    with_prior = quiet(make_tiny_pipeline(seed=0, prior_method="transfer"))
    without = quiet(make_tiny_pipeline(seed=0))
    with pytest.raises(ValueError, match="refines transfer output: pass prior="):
        with_prior(clip(), num_inference_steps=1)
    with pytest.raises(ValueError, match="takes no prior"):
        without(clip(), prior=clip(), num_inference_steps=1)
    with pytest.raises(ValueError, match="prior has shape"):
        with_prior(clip(), prior=clip(frames=4), num_inference_steps=1)
    stream = with_prior.open_stream(16, 24)
    with pytest.raises(ValueError, match="push the prior's frames too"):
        stream.push(torch.rand(1, 3, 2, 16, 24))
    with pytest.raises(ModelFolderError, match="prior_method must be one of"):
        DeblurVideoPipeline(**tiny_components(), prior_method="fit")
    with pytest.raises(ModelFolderError, match="needs 12"):
        DeblurVideoPipeline(**tiny_components(), prior_method="dtb")
    with pytest.raises(ModelFolderError, match="already refines"):
        add_prior_input(with_prior, "dtb")


def test_windows_tiles_and_stream_carry_the_prior():
    pipe = quiet(make_tiny_pipeline(seed=4, prior_method="dtb"))
    with torch.no_grad():
        pipe.unet.conv_in.weight[:, 8:].normal_(0, 0.3, generator=gen(5))
    video, prior, other_prior = clip(frames=7), clip(frames=7, seed=3), clip(frames=7, seed=4)
    kw = dict(num_inference_steps=1, guidance_scale=2.0, window_size=4, window_overlap=1, output_type="pt")
    whole = pipe(video, prior=prior, generator=gen(), **kw).frames
    other = pipe(video, prior=other_prior, generator=gen(), **kw).frames
    assert (whole - other).abs().max() > 1e-3  # the prior's latents reach every window
    tiled = pipe(video, prior=prior, generator=gen(), tile_size=8, tile_overlap=0, **kw).frames
    tiled_other = pipe(video, prior=other_prior, generator=gen(), tile_size=8, tile_overlap=0, **kw).frames
    assert tiled.shape == whole.shape and (tiled - tiled_other).abs().max() > 1e-3
    # pushed in uneven pieces, the stream gives what the call gives
    x = torch.from_numpy(video).permute(3, 0, 1, 2)[None].float() / 255
    p = torch.from_numpy(prior).permute(3, 0, 1, 2)[None].float() / 255
    stream = pipe.open_stream(16, 24, num_inference_steps=1, guidance_scale=2.0, window_size=4, window_overlap=1,
                              generator=gen())
    pieces = []
    for a, b in ((0, 2), (2, 3), (3, 7)):
        pieces += stream.push(x[:, :, a:b], p[:, :, a:b])
    pieces += stream.flush()
    torch.testing.assert_close(torch.cat(pieces, dim=2), whole.permute(0, 2, 1, 3, 4), rtol=0, atol=1e-6)


def test_prior_method_survives_save_and_load(tmp_path):
    pipe = quiet(make_tiny_pipeline(seed=5, prior_method="transfer"))
    with torch.no_grad():
        pipe.unet.conv_in.weight[:, 8:].normal_(0, 0.3, generator=gen(6))
    pipe.save_pretrained(tmp_path / "p", safe_serialization=True)
    loaded = quiet(DeblurVideoPipeline.from_pretrained(tmp_path / "p"))
    assert loaded.prior_method == "transfer" and loaded.unet.config.in_channels == 12
    a = pipe(clip(), prior=clip(seed=1), num_inference_steps=2, generator=gen()).frames
    b = loaded(clip(), prior=clip(seed=1), num_inference_steps=2, generator=gen()).frames
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def prior_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("prior-model") / "tiny-transfer"
    pipe = make_tiny_pipeline(seed=0, prior_method="transfer")
    pipe.register_to_config(residual_decode=True)  # output = prior + decoded change: the prior shows through
    with torch.no_grad():
        pipe.unet.conv_in.weight[:, 8:].normal_(0, 0.3, generator=gen(7))
    pipe.save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture(scope="module")
def blurry_file(tmp_path_factory):
    from vdiffdeblur.data.synthetic import ShakeConfig, synthesize_shake
    from vdiffdeblur.video import write_video

    frames = synthesize_shake("builtin:chelsea", ShakeConfig(num_frames=7, width=48, height=32), seed=7).blurry[:5]
    path = tmp_path_factory.mktemp("in") / "blurry.mkv"
    write_video(path, frames, fps=12, lossless=True)
    return path, frames


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_cli_and_ddim_script_feed_the_transfer_prior(prior_model, blurry_file, tmp_path, capsys):
    from helpers import load_script

    from vdiffdeblur.cli import main as cli_main
    from vdiffdeblur.frames import to_uint8_frames
    from vdiffdeblur.methods.stream import run
    from vdiffdeblur.methods.transfer import SharpTransfer, TransferConfig
    from vdiffdeblur.video import read_video

    src, frames = blurry_file
    prior = run(SharpTransfer(TransferConfig()), frames)
    assert not np.array_equal(prior, frames)
    pipe = quiet(DeblurVideoPipeline.from_pretrained(prior_model))
    want = to_uint8_frames(pipe(frames, prior=prior, num_inference_steps=2, window_size=4, window_overlap=1,
                                output_type="pt", generator=gen(3)).frames[0])
    wrong = to_uint8_frames(pipe(frames, prior=frames, num_inference_steps=2, window_size=4, window_overlap=1,
                                 output_type="pt", generator=gen(3)).frames[0])
    # the prior's content matters, so the checks below can fail
    assert np.abs(want.astype(int) - wrong).max() > 4
    run_args = ["--steps", "2", "--window", "4", "--overlap", "1", "--seed", "3"]
    # default --prior: what the model folder says (transfer)
    rc = cli_main(["deblur", str(src), "-o", str(tmp_path / "a.mkv"), "--method", "diffusion", "--model",
                   str(prior_model), "--no-guard", "--lossless", *run_args])
    assert rc == 0, capsys.readouterr().err
    # the file path streams frames in pieces: equal up to a rounding step of the uint8 conversion
    assert np.abs(read_video(tmp_path / "a.mkv").frames.astype(int) - want).max() <= 1
    rc = load_script("ddim_inference").main(["--model", str(prior_model), "--input", str(src), "--output",
                                             str(tmp_path / "b"), "--prior", "transfer", "--quiet", *run_args])
    assert rc == 0, capsys.readouterr().err
    assert np.abs(read_video(tmp_path / "b").frames.astype(int) - want).max() <= 1


def test_prior_mismatch_exits_2_with_one_line(prior_model, blurry_file, tmp_path, capsys):
    from helpers import load_script

    from vdiffdeblur.cli import main as cli_main

    src, _ = blurry_file
    plain = tmp_path / "plain"
    make_tiny_pipeline(seed=0).save_pretrained(plain, safe_serialization=True)
    out = tmp_path / "out.mkv"
    base = ["--method", "diffusion", "--steps", "1", "--no-guard"]
    assert cli_main(["deblur", str(src), "-o", str(out), *base, "--model", str(prior_model), "--prior", "none"]) == 2
    assert "refines transfer output" in _one_line(capsys.readouterr().err)
    assert cli_main(["deblur", str(src), "-o", str(out), *base, "--model", str(plain), "--prior", "dtb"]) == 2
    assert "takes no prior" in _one_line(capsys.readouterr().err)
    ddim = load_script("ddim_inference").main
    assert ddim(["--model", str(prior_model), "--input", str(src), "--output", str(out), "--prior", "dtb"]) == 2
    assert "--prior dtb" in _one_line(capsys.readouterr().err)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------- training
def test_prior_items_are_cut_from_the_clip_prior_computed_once(monkeypatch):
    import vdiffdeblur.methods.diffusion as diffusion
    from vdiffdeblur.methods.stream import run
    from vdiffdeblur.methods.transfer import SharpTransfer, TransferConfig
    from vdiffdeblur.trainer.config import DiffusionTrainConfig
    from vdiffdeblur.trainer.data import build_train_dataset, collate

    cfg = DiffusionTrainConfig(pretrained="tiny", num_clips=2, samples_per_clip=2, clip_len=4, crop=32,
                               synth_width=48, synth_height=48, frames_per_clip=6)
    ds = build_train_dataset(cfg, "transfer")
    calls = []
    real = diffusion.prior_frames
    monkeypatch.setattr(diffusion, "prior_frames", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    items = [ds[i] for i in range(len(ds))]
    assert calls == ["transfer", "transfer"]  # once per synthetic clip, not per item
    inner = ds.dataset.dataset
    for it in items:
        k = it["index"] % inner.num_clips
        whole = run(SharpTransfer(TransferConfig()), inner.clip(k)[1])
        t, left, s = it["top"], it["left"], it["start"]
        want = whole[s:s + 4, t:t + 32, left:left + 32]
        got = (it["prior"].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        assert it["prior"].shape == it["blurry"].shape and np.array_equal(got, want)
    assert any(not torch.equal(it["prior"], it["blurry"]) for it in items)
    assert collate(items[:2])["prior"].shape == (2, 4, 3, 32, 32)


def test_training_with_a_prior_feeds_it_to_the_unet(tmp_path):
    import copy

    from accelerate.state import AcceleratorState, GradientState

    from vdiffdeblur.models.unet import widen_conv_in
    from vdiffdeblur.trainer.config import DiffusionTrainConfig
    from vdiffdeblur.trainer.loop import train

    cfg = DiffusionTrainConfig(
        stage=1, pretrained="tiny", prior_method="transfer", output_dir=str(tmp_path / "s1"), max_train_steps=2,
        num_clips=2, clip_len=4, crop=32, synth_width=48, synth_height=48, frames_per_clip=6,
        num_validation_clips=1, validation_frames=4, validation_size=32, validation_inference_steps=1,
        validation_loss_draws=1, checkpointing_steps=0, report_to=None, mixed_precision="no", num_threads=1,
        learning_rate=1e-3)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        val = train(cfg)  # validation runs the pipeline with the held-out clip's prior
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    out = tmp_path / "s1"
    pipe = DeblurVideoPipeline.from_pretrained(out)
    assert pipe.prior_method == "transfer" and pipe.unet.config.in_channels == 12
    before = copy.deepcopy(tiny_components(seed=0)["unet"])
    widen_conv_in(before, 4)
    w0, w1 = before.conv_in.weight.detach(), pipe.unet.conv_in.weight.detach()
    assert torch.equal(w0[:, :4], w1[:, :4])
    # the prior's channels started at zero and learned: gradients reached them through the prior's latents
    assert torch.count_nonzero(w0[:, 8:]) == 0 and (w1[:, 8:] != 0).float().mean() > 0.9
    assert np.isfinite(val["diffusion"]) and 0 < val["psnr"] < 100
    with pytest.raises(ValueError, match="pass prior="):
        quiet(pipe)(clip(), num_inference_steps=1)


class _Echo(torch.nn.Module):
    """A stand-in training model whose prediction is always `target`; it records the prior latents it is given."""

    def __init__(self, target):
        super().__init__()
        self.target, self.prior_latents = target, None

    def forward(self, *args, prior_latents=None, **kwargs):
        self.prior_latents = prior_latents
        return self.target, None


def test_training_target_is_the_residual_against_the_prior():
    from vdiffdeblur.losses import diffusion_target
    from vdiffdeblur.models.conditioning import encode_video_latents
    from vdiffdeblur.trainer.components import training_scheduler
    from vdiffdeblur.trainer.objective import LossWeights, compute_losses

    c = tiny_components(seed=3, prediction_type="v_prediction")  # v: the target depends on the latents
    sched = training_scheduler(c["scheduler"])
    sharp, blurry, prior = (torch.rand(1, 3, 3, 16, 16, generator=gen(i)) for i in range(3))
    t = torch.tensor([500])
    with torch.no_grad():  # compute_losses's draws: the sharp latents' posterior sample, then the noise
        g = gen(9)
        zs = encode_video_latents(c["vae"], sharp, generator=g, sample=True)
        noise = torch.randn(zs.shape, generator=g)
        zp = encode_video_latents(c["vae"], prior)
    w = LossWeights(residual_latents=True, residual_scale=2.0)
    echo = _Echo(diffusion_target(sched, (zs - zp) * 2.0, noise, t))
    out = compute_losses(echo, c["vae"], sched, blurry, sharp, w, gen(9), timesteps=t, prior=prior)
    assert float(out["diffusion"]) < 1e-10
    torch.testing.assert_close(echo.prior_latents, zp)
    out = compute_losses(echo, c["vae"], sched, blurry, sharp, w, gen(9), timesteps=t)  # against the blurry clip
    assert float(out["diffusion"]) > 1e-4 and echo.prior_latents is None


def test_small_factory_and_dtb_prior():
    from vdiffdeblur.methods.diffusion import prior_frames
    from vdiffdeblur.pipelines.small import SMALL_SAMPLING, make_small_pipeline

    vae = tiny_components(seed=0)["vae"]
    pipe = make_small_pipeline(vae, prior_method="dtb")
    c = vae.config.latent_channels
    assert pipe.prior_method == "dtb" and pipe.unet.config.in_channels == 3 * c
    assert torch.count_nonzero(pipe.unet.conv_in.weight[:, 2 * c:]) == 0
    assert all(pipe.config[k] == v for k, v in SMALL_SAMPLING.items())  # the sampling defaults are kept
    frames = clip(frames=3, h=32, w=48)
    out = prior_frames("dtb", frames)  # the shipped DTB model, its defaults
    assert out.shape == frames.shape and out.dtype == np.uint8 and not np.array_equal(out, frames)


def test_quality_check_feeds_the_prior_and_scores_against_it():
    from vdiffdeblur.methods.diffusion import prior_frames
    from vdiffdeblur.trainer.quality import _figures, evaluate_pipeline, quality_clips

    clips = quality_clips(photos=("coins",), num_frames=4, size=(48, 32))
    pipe = quiet(make_tiny_pipeline(seed=0, prior_method="transfer"))
    report = evaluate_pipeline(pipe, clips, num_inference_steps=1, with_guard=False)
    (row,) = report["clips"]
    prior = prior_frames("transfer", clips[0].blurry)
    assert row["prior"]["method"] == "transfer"
    assert row["prior"]["hard_gain"] == pytest.approx(_figures(prior, clips[0])["hard_gain"])
    assert row["prior"]["hard_psnr"] != pytest.approx(row["input_hard_psnr"])  # transfer changed the clip
    assert 0 <= row["frames_worse_than_prior"] <= 4
    m = report["mean"]
    assert m["hard_gain_over_prior"] == pytest.approx(m["hard_gain"] - row["prior"]["hard_gain"])
    # a pipeline without a prior: no prior figures
    plain = evaluate_pipeline(quiet(make_tiny_pipeline(seed=0)), clips, num_inference_steps=1, with_guard=False)
    assert "prior" not in plain["clips"][0] and "hard_gain_over_prior" not in plain["mean"]
