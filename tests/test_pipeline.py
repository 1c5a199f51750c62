"""DeblurVideoPipeline with tiny random components: shapes, windows, guidance, determinism, save/load, the
diffusers pipeline surface."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, UNet3DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from helpers import REPO

from vdiffdeblur.frames import to_uint8_frames
from vdiffdeblur.pipelines import DeblurVideoPipeline, DeblurVideoPipelineOutput, ModelFolderError
from vdiffdeblur.pipelines.pipeline_deblur_video import ALLOW_PICKLE_ENV
from vdiffdeblur.pipelines.tiny import (
    TINY_T2V_UNET_CONFIG,
    TINY_V_SCHEDULER_CONFIG,
    make_tiny_pipeline,
    tiny_components,
)
from vdiffdeblur.pipelines.windows import num_windows, tile_starts
from vdiffdeblur.video import Video, VideoInfo

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    p = make_tiny_pipeline(seed=0)
    p.set_progress_bar_config(disable=True)
    return p


def clip(frames=6, h=20, w=28, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (frames, h, w, 3), dtype=np.uint8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class CountUNetCalls:
    """Counts UNet forward calls and records their batch sizes (a forward hook)."""

    def __init__(self, unet):
        self.batches = []
        self.handle = unet.register_forward_hook(lambda m, args, kwargs_out: self.batches.append(args[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


class PointwiseUNet(ModelMixin, ConfigMixin):
    """A stand-in UNet whose prediction at a pixel depends only on that pixel (no temporal or spatial context);
    with `token_gain` it adds the mean of the tokens, so that windows with different conditioning differ."""

    @register_to_config
    def __init__(self, in_channels=8, out_channels=4, cross_attention_dim=16, block_out_channels=(8, 16),
                 token_gain=0.0):
        super().__init__()
        self.mix = torch.nn.Conv3d(in_channels, out_channels, 1)
        with torch.no_grad():
            self.mix.weight.copy_(torch.linspace(-0.3, 0.3, out_channels * in_channels).view_as(self.mix.weight))
            self.mix.bias.zero_()

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=True):
        out = self.mix(sample)
        if self.config.token_gain:
            out = out + self.config.token_gain * encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
        return (out,)


def pointwise_pipe(token_gain=0.0):
    c = tiny_components(seed=0)
    c["unet"] = PointwiseUNet(token_gain=token_gain)
    p = DeblurVideoPipeline(**c)
    p.set_progress_bar_config(disable=True)
    return p


# ----------------------------------------------------------------------------------------------- windows
def test_long_clip_windows_keep_frame_count_and_size(pipe):
    video = clip(37, 50, 70)
    with CountUNetCalls(pipe.unet) as calls:
        out = pipe(video, num_inference_steps=2, guidance_scale=1.0, window_size=16, window_overlap=4,
                   generator=gen()).frames
    assert out.shape == (1, 37, 50, 70, 3)
    assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert num_windows(37, 16, 4) == 3
    assert len(calls.batches) == 3 * 2  # 3 windows x 2 steps


def test_window_covering_clip_equals_plain_path(pipe):
    video = clip(37, 50, 70)
    kw = dict(num_inference_steps=2, guidance_scale=1.0, generator=None)
    plain = pipe(video, window_size=0, **{**kw, "generator": gen(3)}).frames
    windowed = pipe(video, window_size=40, window_overlap=4, **{**kw, "generator": gen(3)}).frames
    assert np.array_equal(plain, windowed)
    # and windows do change the result of a UNet that sees the whole clip
    cut = pipe(video, window_size=16, window_overlap=4, **{**kw, "generator": gen(3)}).frames
    assert not np.allclose(plain, cut, atol=1e-4)


def test_windowed_equals_plain_for_frame_independent_unet():
    # with no temporal context, windows must reproduce the whole-clip result: same per-frame noise, every frame
    # emitted once and in order, blurry latents matched to their frames
    p = pointwise_pipe()
    video = clip(37, 50, 70, seed=1)
    plain = p(video, num_inference_steps=3, window_size=0, generator=gen(1), output_type="pt").frames
    windowed = p(video, num_inference_steps=3, window_size=16, window_overlap=4, generator=gen(1),
                 output_type="pt").frames
    assert windowed.shape == plain.shape == (1, 37, 3, 50, 70)
    assert torch.allclose(plain, windowed, atol=1e-5)


def test_overlap_frames_blend_from_previous_window_to_next():
    # each window predicts a different constant (from its own conditioning tokens); the frames the windows share
    # must move from the first window's value to the second's
    p = pointwise_pipe(token_gain=5.0)
    p.unet.mix.weight.data.zero_()
    video = np.zeros((28, 16, 16, 3), np.uint8)
    video[18:] = 255  # window 1 ([0, 16), central frame 8) sees black, window 2 ([12, 28), frame 20) white
    lat = torch.zeros(1, 4, 28, 4, 4)
    out = p(video, num_inference_steps=4, guidance_scale=1.0, window_size=16, window_overlap=4, latents=lat,
            output_type="latent").frames
    v = out[0, 0, :, 0, 0]  # one value per frame (the prediction is spatially uniform)
    first, second = v[0].item(), v[-1].item()
    assert abs(first - second) > 1e-3
    assert torch.allclose(v[:12], torch.full((12,), first), atol=1e-6)
    assert torch.allclose(v[16:], torch.full((12,), second), atol=1e-6)
    # the shared frames 12..15 take the two windows' updates with weights 4/5..1/5 -> 1/5..4/5: a linear ramp
    t = (v[11:17] - first) / (second - first)
    assert torch.allclose(t, torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]), atol=1e-4)


def test_spatial_tiles_count_and_blend():
    p = pointwise_pipe()
    video = clip(3, 40, 56)
    plain = p(video, num_inference_steps=2, generator=gen(), output_type="pt").frames
    with CountUNetCalls(p.unet) as calls:
        tiled = p(video, num_inference_steps=2, generator=gen(), tile_size=24, tile_overlap=8, output_type="pt").frames
    # latent 10x14, tiles of 6 overlapping by 2: 2 x 3 tiles per step
    assert tile_starts(10, 6, 2) == [0, 4] and tile_starts(14, 6, 2) == [0, 4, 8]
    assert len(calls.batches) == 2 * 2 * 3
    assert torch.allclose(plain, tiled, atol=1e-5)


def test_tiles_larger_than_frame_change_nothing(pipe):
    video = clip(4, 20, 28)
    a = pipe(video, num_inference_steps=2, generator=gen()).frames
    b = pipe(video, num_inference_steps=2, generator=gen(), tile_size=64).frames
    assert np.array_equal(a, b)


def test_stream_pushed_frame_by_frame_equals_call(pipe):
    video = clip(11, 20, 28, seed=4)
    ref = pipe(video, num_inference_steps=2, window_size=4, window_overlap=1, generator=gen(2), output_type="pt").frames
    s = pipe.open_stream(20, 28, num_inference_steps=2, window_size=4, window_overlap=1, generator=gen(2))
    x = torch.from_numpy(video).permute(3, 0, 1, 2)[None].float() / 255
    pieces = []
    for i in range(11):
        pieces += s.push(x[:, :, i : i + 1])
    pieces += s.flush()
    got = torch.cat(pieces, dim=2).permute(0, 2, 1, 3, 4)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-5)


def test_stream_takes_uint8_frames_and_gives_the_float_output_rounded(pipe):
    video = clip(7, 20, 28, seed=5)
    kw = dict(num_inference_steps=2, window_size=4, window_overlap=1, decode_chunk_size=2)
    ref = pipe(video, generator=gen(2), output_type="pt", **kw).frames[0]  # (F, 3, H, W)
    s = pipe.open_stream(20, 28, generator=gen(2), **kw)
    x = torch.from_numpy(video).permute(3, 0, 1, 2)[None]
    pieces = []
    for i in range(7):
        pieces += s.push(x[:, :, i : i + 1])
    pieces += s.flush()
    assert all(p.dtype == torch.uint8 for p in pieces)
    got = torch.cat(pieces, dim=2)[0].permute(1, 2, 3, 0).numpy()
    assert np.array_equal(got, to_uint8_frames(ref))
    with pytest.raises(ValueError, match="uint8 before"):
        s.push(x[:, :, :1].float() / 255)


@pytest.mark.parametrize("frames", [1, 2, 16, 17])
def test_any_frame_count(pipe, frames):
    out = pipe(clip(frames, 9, 13), num_inference_steps=1, window_size=16, window_overlap=4, generator=gen()).frames
    assert out.shape == (1, frames, 9, 13, 3)


# ----------------------------------------------------------------------------------------------- guidance
def test_guidance_one_makes_one_unet_call_per_step(pipe):
    video = clip(5)
    with CountUNetCalls(pipe.unet) as calls:
        pipe(video, num_inference_steps=3, guidance_scale=1.0, generator=gen())
    assert calls.batches == [1, 1, 1]
    with CountUNetCalls(pipe.unet) as calls:
        pipe(video, num_inference_steps=3, guidance_scale=4.0, generator=gen())
    assert calls.batches == [2, 2, 2]  # conditional and unconditional branches batched in one call
    assert pipe.guidance_scale == 4.0 and pipe.do_classifier_free_guidance and pipe.num_timesteps == 3


def test_guidance_uses_zero_tokens_for_unconditional_branch(pipe):
    seen = []
    h = pipe.unet.register_forward_hook(lambda m, a, kw, o: seen.append(kw["encoder_hidden_states"].clone()),
                                        with_kwargs=True)
    try:
        pipe(clip(5), num_inference_steps=1, guidance_scale=3.0, generator=gen())
    finally:
        h.remove()
    uncond, cond = seen[0].chunk(2)
    assert torch.count_nonzero(uncond) == 0 and torch.count_nonzero(cond) > 0


# ----------------------------------------------------------------------------------------------- surface
def test_deterministic_with_generator(pipe):
    video = clip(5)
    a = pipe(video, num_inference_steps=2, generator=gen(7)).frames
    b = pipe(video, num_inference_steps=2, generator=gen(7)).frames
    c = pipe(video, num_inference_steps=2, generator=gen(8)).frames
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_dict_and_tuple_outputs_equal(pipe):
    video = clip(5)
    d = pipe(video, num_inference_steps=2, generator=gen())
    t = pipe(video, num_inference_steps=2, generator=gen(), return_dict=False)
    assert isinstance(d, DeblurVideoPipelineOutput) and isinstance(t, tuple) and len(t) == 1
    assert np.array_equal(d.frames, t[0])


def test_batch_of_two_equals_each_alone(pipe):
    a, b = clip(9, seed=1), clip(9, seed=2)
    kw = dict(num_inference_steps=2, guidance_scale=2.5, window_size=4, window_overlap=1)
    both = pipe(np.stack([a, b]), generator=[gen(1), gen(2)], **kw).frames
    alone_a = pipe(a, generator=gen(1), **kw).frames
    alone_b = pipe(b, generator=gen(2), **kw).frames
    assert both.shape == (2, 9, 20, 28, 3)
    assert np.abs(both[0] - alone_a[0]).max() < 1e-4
    assert np.abs(both[1] - alone_b[0]).max() < 1e-4


def test_callback_on_step_end_can_change_latents(pipe):
    steps = []

    def zero_at_last_step(p, i, t, kw):
        steps.append((i, int(t), tuple(p.current_window)))
        assert set(kw) == {"latents", "blur_latents"}
        if i == p.num_timesteps - 1:
            return {"latents": torch.zeros_like(kw["latents"])}
        return {}

    out = pipe(clip(7), num_inference_steps=3, window_size=4, window_overlap=1, generator=gen(),
               callback_on_step_end=zero_at_last_step, callback_on_step_end_tensor_inputs=["latents", "blur_latents"],
               output_type="latent").frames
    assert torch.count_nonzero(out) == 0
    assert [s[0] for s in steps] == [0, 1, 2] * 2  # 2 windows
    assert steps[0][2] == (0, 1, 2, 3) and steps[-1][2] == (3, 4, 5, 6)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe(clip(3), num_inference_steps=1, callback_on_step_end=zero_at_last_step,
             callback_on_step_end_tensor_inputs=["noise"])


def test_output_types(pipe):
    video = clip(4, 20, 28)
    np_out = pipe(video, num_inference_steps=2, generator=gen(), output_type="np").frames
    pt_out = pipe(video, num_inference_steps=2, generator=gen(), output_type="pt").frames
    pil_out = pipe(video, num_inference_steps=2, generator=gen(), output_type="pil").frames
    lat = pipe(video, num_inference_steps=2, generator=gen(), output_type="latent").frames
    assert isinstance(np_out, np.ndarray) and np_out.shape == (1, 4, 20, 28, 3)
    assert isinstance(pt_out, torch.Tensor) and pt_out.shape == (1, 4, 3, 20, 28)
    assert np.allclose(pt_out.permute(0, 1, 3, 4, 2).numpy(), np_out)
    assert len(pil_out) == 1 and len(pil_out[0]) == 4
    assert all(isinstance(im, PIL.Image.Image) and im.size == (28, 20) for im in pil_out[0])
    assert np.abs(np.asarray(pil_out[0][2]) / 255.0 - np_out[0, 2]).max() <= 1 / 255 + 1e-6
    assert lat.shape == (1, 4, 4, 24 // 4, 32 // 4)  # padded to multiples of 8, VAE factor 4
    with pytest.raises(ValueError, match="output_type"):
        pipe(video, num_inference_steps=1, output_type="gif")


def test_input_forms_agree(pipe):
    video = clip(4, 20, 28, seed=5)
    ref = pipe(video, num_inference_steps=1, generator=gen()).frames
    forms = [
        Video(video, VideoInfo(fps=25, width=28, height=20, num_frames=4)),
        [PIL.Image.fromarray(f) for f in video],
        video.astype(np.float32) / 255,
        torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255,
        torch.from_numpy(video),
    ]
    for form in forms:
        out = pipe(form, num_inference_steps=1, generator=gen()).frames
        assert np.allclose(out, ref, atol=1e-6), type(form)


def test_bad_inputs_raise_clear_errors(pipe):
    with pytest.raises(ValueError, match="uint8 video"):
        pipe(np.zeros((4, 8, 8), np.uint8), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipe(np.full((2, 8, 8, 3), 3.0, np.float32), num_inference_steps=1)
    with pytest.raises(ValueError, match="window_overlap"):
        pipe(clip(3), num_inference_steps=1, window_size=4, window_overlap=4)
    with pytest.raises(ValueError, match="latents must have shape"):
        pipe(clip(3), num_inference_steps=1, latents=torch.zeros(1, 4, 2, 6, 8))
    with pytest.raises(ValueError, match="generators"):
        pipe(clip(3), num_inference_steps=1, generator=[gen(), gen()])


def test_to_dtype(pipe):
    video = clip(3, 12, 12)
    ref = pipe(video, num_inference_steps=2, generator=gen(), output_type="pt").frames
    p64 = make_tiny_pipeline(seed=0).to(torch.float64)
    p64.set_progress_bar_config(disable=True)
    assert p64.unet.dtype == p64.vae.dtype == p64.blur_encoder.dtype == torch.float64
    out64 = p64(video, num_inference_steps=2, generator=gen(), output_type="pt").frames
    assert out64.dtype == torch.float32 and torch.allclose(out64, ref, atol=1e-4)
    pbf = make_tiny_pipeline(seed=0).to(torch.bfloat16)
    pbf.set_progress_bar_config(disable=True)
    assert pbf.unet.dtype == torch.bfloat16
    outbf = pbf(video, num_inference_steps=2, generator=gen(), output_type="pt").frames
    assert torch.isfinite(outbf).all() and (outbf - ref).abs().mean() < 0.05


def test_v_prediction_scheduler():
    c = tiny_components(seed=0, prediction_type="v_prediction")
    p = DeblurVideoPipeline(**c)
    p.set_progress_bar_config(disable=True)
    assert p.scheduler.config.prediction_type == "v_prediction"
    v = p(clip(4), num_inference_steps=2, generator=gen()).frames
    p.scheduler = DDIMScheduler.from_config(p.scheduler.config, prediction_type="epsilon")
    e = p(clip(4), num_inference_steps=2, generator=gen()).frames
    assert v.shape == e.shape and not np.allclose(v, e, atol=1e-3)


def test_vae_slicing_and_decode_chunks(pipe):
    video = clip(5)
    a = pipe(video, num_inference_steps=1, generator=gen(), decode_chunk_size=2).frames
    pipe.vae.enable_slicing()
    try:
        b = pipe(video, num_inference_steps=1, generator=gen(), decode_chunk_size=None).frames
    finally:
        pipe.vae.disable_slicing()
    assert np.abs(a - b).max() < 1e-5
    assert pipe.model_cpu_offload_seq.split("->") == ["blur_encoder", "unet", "vae"]


def test_progress_bar_can_be_disabled(capsys):
    p = make_tiny_pipeline(seed=0)
    p.set_progress_bar_config(disable=False)
    p(clip(3), num_inference_steps=2, generator=gen())
    assert "2/2" in capsys.readouterr().err
    p.set_progress_bar_config(disable=True)
    p(clip(3), num_inference_steps=2, generator=gen())
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------------------------- save / load
@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe") / "tiny"
    pipe.save_pretrained(d)
    return d


def test_save_then_load_gives_identical_output(pipe, saved):
    files = [p.name for p in saved.rglob("*") if p.is_file()]
    assert sum(f.endswith(".safetensors") for f in files) == 3
    assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in files)
    index = json.loads((saved / "model_index.json").read_text())
    assert index["blur_encoder"] == ["vdiffdeblur.models.blur_encoder", "BlurImageEncoder"]
    loaded = DeblurVideoPipeline.from_pretrained(saved)
    loaded.set_progress_bar_config(disable=True)
    video = clip(6)
    a = pipe(video, num_inference_steps=2, window_size=4, window_overlap=1, generator=gen(5)).frames
    b = loaded(video, num_inference_steps=2, window_size=4, window_overlap=1, generator=gen(5)).frames
    assert np.array_equal(a, b)


def test_load_in_fresh_process_and_as_custom_pipeline(pipe, saved, tmp_path):
    video = clip(4)
    np.save(tmp_path / "in.npy", video)
    code = f"""
import sys, numpy as np, torch
torch.set_num_threads(1)
from vdiffdeblur import DeblurVideoPipeline
from diffusers import DiffusionPipeline
v = np.load({str(tmp_path / 'in.npy')!r})
p = DeblurVideoPipeline.from_pretrained({str(saved)!r})
p.set_progress_bar_config(disable=True)
np.save({str(tmp_path / 'a.npy')!r}, p(v, num_inference_steps=2, generator=torch.Generator().manual_seed(3)).frames)
c = DiffusionPipeline.from_pretrained({str(saved)!r},
                                      custom_pipeline={str(REPO / 'pipelines' / 'pipeline_deblur_video.py')!r},
                                      trust_remote_code=True)
c.set_progress_bar_config(disable=True)
assert type(c).__name__ == "DeblurVideoPipeline"
np.save({str(tmp_path / 'b.npy')!r}, c(v, num_inference_steps=2, generator=torch.Generator().manual_seed(3)).frames)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = pipe(video, num_inference_steps=2, generator=gen(3)).frames
    assert np.array_equal(np.load(tmp_path / "a.npy"), ref)
    assert np.array_equal(np.load(tmp_path / "b.npy"), ref)


def test_import_paths_and_cheap_package_import():
    import vdiffdeblur
    import vdiffdeblur.pipelines

    assert vdiffdeblur.DeblurVideoPipeline is vdiffdeblur.pipelines.DeblurVideoPipeline is DeblurVideoPipeline
    r = subprocess.run([sys.executable, "-c", "import sys, vdiffdeblur; print('torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


def copy_pipeline(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_component_is_named(saved, tmp_path):
    d = copy_pipeline(saved, tmp_path / "p1")
    shutil.rmtree(d / "blur_encoder")
    with pytest.raises(ModelFolderError, match="'blur_encoder' is missing"):
        DeblurVideoPipeline.from_pretrained(d)
    d = copy_pipeline(saved, tmp_path / "p2")
    (d / "model_index.json").unlink()
    with pytest.raises(ModelFolderError, match="model_index.json"):
        DeblurVideoPipeline.from_pretrained(d)
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        DeblurVideoPipeline.from_pretrained(tmp_path / "nowhere")


def test_pickled_weights_are_refused(saved, tmp_path):
    d = copy_pipeline(saved, tmp_path / "p")
    (d / "vae" / "diffusion_pytorch_model.safetensors").rename(d / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelFolderError, match="'vae'.*safetensors only"):
        DeblurVideoPipeline.from_pretrained(d)


def test_mismatched_components_are_named(saved, tmp_path):
    d = copy_pipeline(saved, tmp_path / "p1")
    shutil.rmtree(d / "unet")
    UNet3DConditionModel(**TINY_T2V_UNET_CONFIG).save_pretrained(d / "unet")  # an unwidened text-to-video UNet
    with pytest.raises(ModelFolderError, match="unet conv_in takes 4 channels"):
        DeblurVideoPipeline.from_pretrained(d)
    d = copy_pipeline(saved, tmp_path / "p2")
    cfg = json.loads((d / "blur_encoder" / "config.json").read_text())
    c = tiny_components()
    enc = type(c["blur_encoder"])(**{**{k: v for k, v in cfg.items() if not k.startswith("_")},
                                     "cross_attention_dim": 8})
    shutil.rmtree(d / "blur_encoder")
    enc.save_pretrained(d / "blur_encoder")
    with pytest.raises(ModelFolderError, match="blur_encoder makes tokens of width 8"):
        DeblurVideoPipeline.from_pretrained(d)


def test_v_prediction_pipeline_round_trip(tmp_path):
    c = tiny_components(seed=1, prediction_type="v_prediction")
    DeblurVideoPipeline(**c).save_pretrained(tmp_path / "v")
    loaded = DeblurVideoPipeline.from_pretrained(tmp_path / "v")
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.scheduler.config.rescale_betas_zero_snr is TINY_V_SCHEDULER_CONFIG["rescale_betas_zero_snr"]


# ----------------------------------------------------------------------------------------- diffusers conventions
# (scripts/run_diffusers_mixin.py runs diffusers' own PipelineTesterMixin)
def unet_batches(pipe):
    """Records the batch size of every UNet call (2: with the unconditional branch)."""
    batches = []
    handle = pipe.unet.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    return batches, handle


# ----------------------------------------------------------------------------------------- num_videos_per_prompt
def test_num_videos_per_prompt_shapes_and_independence(pipe):
    a, b = clip(4, 16, 24, seed=1), clip(4, 16, 24, seed=2)
    kw = dict(num_inference_steps=2, guidance_scale=2.0)
    out = pipe(np.stack([a, b]), num_videos_per_prompt=2, generator=[gen(1), gen(2), gen(3), gen(4)], **kw).frames
    assert out.shape == (4, 4, 16, 24, 3)
    # the results of each input come together, each the input alone with its own generator
    for k, (video, seed) in enumerate([(a, 1), (a, 2), (b, 3), (b, 4)]):
        assert np.abs(out[k] - pipe(video, generator=gen(seed), **kw).frames[0]).max() < 1e-4
    assert np.abs(out[0] - out[1]).max() > 1e-3  # independent noise, different results
    one_gen = pipe(a, num_videos_per_prompt=3, generator=gen(0), **kw).frames
    assert one_gen.shape[0] == 3 and np.abs(one_gen[0] - one_gen[2]).max() > 1e-3
    with pytest.raises(ValueError, match="2 generators for a batch of 4"):
        pipe(np.stack([a, b]), num_videos_per_prompt=2, generator=[gen(1), gen(2)], **kw)
    with pytest.raises(ValueError, match=r"latents must have shape \(2,"):
        pipe(a, num_videos_per_prompt=2, latents=torch.zeros(1, 4, 4, 4, 6), **kw)
    with pytest.raises(ValueError, match="num_videos_per_prompt must be a positive integer"):
        pipe(a, num_videos_per_prompt=0, **kw)


# ----------------------------------------------------------------------------------------- guidance in callbacks
def test_callback_cfg_cutoff_runs_the_rest_unguided(pipe):
    video, steps, cut = clip(5), 4, 1
    kw = dict(num_inference_steps=steps, output_type="latent", window_size=3, window_overlap=1)
    full_trajectory = []

    def record(p, i, t, cb):
        full_trajectory.append(cb["latents"].clone())
        return {}

    def cfg_cutoff(p, i, t, cb):  # diffusers' SDCFGCutoffCallback does this at its cutoff step
        if i == cut:
            p._guidance_scale = 0.0
        return {}

    full = pipe(video, guidance_scale=3.0, generator=gen(), callback_on_step_end=record, **kw).frames
    batches, handle = unet_batches(pipe)
    try:
        cutoff = pipe(video, guidance_scale=3.0, generator=gen(), callback_on_step_end=cfg_cutoff, **kw).frames
    finally:
        handle.remove()
    # two windows, each starting guided: both branches up to the cutoff step, the conditional one after
    assert batches == [2, 2, 1, 1] * 2
    assert pipe.guidance_scale == 0.0 and not pipe.do_classifier_free_guidance
    assert np.abs(cutoff - full).max() > 1e-4

    # the same as a run without guidance that starts from the guided latents at the cutoff, window by window
    windows = iter(range(2))

    def splice(p, i, t, cb):
        if i == cut:
            return {"latents": full_trajectory[next(windows) * steps + cut]}
        return {}

    spliced = pipe(video, guidance_scale=1.0, generator=gen(), callback_on_step_end=splice, **kw).frames
    assert torch.equal(cutoff, spliced)


def test_callback_guidance_takes_effect_from_the_next_step(pipe):
    seen = []

    def raise_guidance(p, i, t, cb):
        seen.append(p.guidance_scale)
        p._guidance_scale += 1.0
        return cb

    pipe(clip(3), num_inference_steps=3, guidance_scale=2.0, generator=gen(), callback_on_step_end=raise_guidance,
         callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
    assert seen == [2.0, 3.0, 4.0] and pipe.guidance_scale == 2.0 + pipe.num_timesteps


# ----------------------------------------------------------------------------------------- callback tensors
def test_callback_tensors_other_than_latents_are_honoured(pipe):
    inputs = []
    handle = pipe.unet.register_forward_hook(
        lambda m, args, kwargs, out: inputs.append((args[0].clone(), kwargs["encoder_hidden_states"].clone())),
        with_kwargs=True)
    replaced = {}

    def replace_conditioning(p, i, t, cb):
        if i == 0:
            replaced["blur"] = torch.full_like(cb["blur_latents"], 0.5)
            return {"blur_latents": replaced["blur"], "encoder_hidden_states": torch.zeros_like(
                cb["encoder_hidden_states"])}
        return {}

    try:
        pipe(clip(3), num_inference_steps=3, guidance_scale=1.0, generator=gen(),
             callback_on_step_end=replace_conditioning,
             callback_on_step_end_tensor_inputs=["latents", "blur_latents", "encoder_hidden_states"])
    finally:
        handle.remove()
    (x0, tokens0), (x1, tokens1), (x2, tokens2) = inputs
    assert torch.count_nonzero(tokens0) > 0 and torch.count_nonzero(tokens1) == 0 and torch.count_nonzero(tokens2) == 0
    c = x0.shape[1] // 2  # the UNet's input: noisy latents ++ blurry-clip latents
    assert not torch.equal(x0[:, c:], replaced["blur"])
    assert torch.equal(x1[:, c:], replaced["blur"]) and torch.equal(x2[:, c:], replaced["blur"])


# ----------------------------------------------------------------------------------------- pickled weights
@pytest.fixture(scope="module")
def pickled_folder(pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("pickled") / "tiny"
    pipe.save_pretrained(d, safe_serialization=False)
    assert not list(d.rglob("*.safetensors")) and len(list(d.rglob("*.bin"))) == 3
    return d


def test_pickled_weights_refused_by_default(pickled_folder, monkeypatch):
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    with pytest.raises(ModelFolderError, match=r"'vae' has only diffusion_pytorch_model\.bin.*safetensors only.*"
                                               r"allow_pickle=True.*VDIFFDEBLUR_ALLOW_PICKLE=1"):
        DeblurVideoPipeline.from_pretrained(pickled_folder)
    monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")
    with pytest.raises(ModelFolderError, match="safetensors only"):  # an explicit False wins over the environment
        DeblurVideoPipeline.from_pretrained(pickled_folder, allow_pickle=False)


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_pickled_weights_load_with_opt_in_and_warning(pipe, pickled_folder, monkeypatch, caplog, how):
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    kwargs = {"allow_pickle": True}
    if how == "environment":
        monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")
        kwargs = {}
    with caplog.at_level(logging.WARNING, logger="vdiffdeblur.pipelines.pipeline_deblur_video"):
        loaded = DeblurVideoPipeline.from_pretrained(pickled_folder, **kwargs)
    warned = [r.getMessage() for r in caplog.records if "pickled .bin weights" in r.getMessage()]
    assert len(warned) == 1 and "vae, unet, blur_encoder" in warned[0] and str(pickled_folder) in warned[0]
    loaded.set_progress_bar_config(disable=True)
    video = clip(3)
    a = pipe(video, num_inference_steps=2, generator=gen(4)).frames
    b = loaded(video, num_inference_steps=2, generator=gen(4)).frames
    assert np.array_equal(a, b)
