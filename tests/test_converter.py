"""scripts/convert_t2v_to_deblur.py on a tiny text-to-video folder in diffusers' TextToVideoSDPipeline layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from helpers import load_script
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection

from vdiffdeblur.pipelines import DeblurVideoPipeline
from vdiffdeblur.pipelines.tiny import (
    TINY_CLIP_TEXT_CONFIG,
    TINY_CLIP_VISION_CONFIG,
    TINY_SCHEDULER_CONFIG,
    TINY_T2V_UNET_CONFIG,
    TINY_V_SCHEDULER_CONFIG,
    TINY_VAE_CONFIG,
)

pytestmark = pytest.mark.usefixtures("one_thread")




def tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer built offline from a minimal vocabulary (letters, no merges)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for i, c in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[c] = 3 + i
        vocab[c + "</w>"] = 29 + i
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!")


def write_t2v_folder(folder: Path, scheduler_config: dict, seed=0) -> UNet3DConditionModel:
    from diffusers import TextToVideoSDPipeline  # deprecated, only to write its exact folder layout

    torch.manual_seed(seed)
    unet = UNet3DConditionModel(**TINY_T2V_UNET_CONFIG)
    t2v = TextToVideoSDPipeline(
        vae=AutoencoderKL(**TINY_VAE_CONFIG), text_encoder=CLIPTextModel(CLIPTextConfig(**TINY_CLIP_TEXT_CONFIG)),
        tokenizer=tiny_tokenizer(folder.parent / f"{folder.name}-tok-src"), unet=unet,
        scheduler=DDIMScheduler(**scheduler_config),
    )
    t2v.save_pretrained(folder)
    return unet


@pytest.fixture(scope="module")
def t2v_and_clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("convert")
    unet = write_t2v_folder(d / "t2v", TINY_SCHEDULER_CONFIG)
    torch.manual_seed(1)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_VISION_CONFIG))
    clip.save_pretrained(d / "clip")
    return d, unet, clip


def test_converter_builds_a_pipeline_that_loads_and_runs(t2v_and_clip, capsys):
    d, base_unet, clip = t2v_and_clip
    assert {p.name for p in (d / "t2v").iterdir()} >= {"unet", "vae", "scheduler", "text_encoder", "tokenizer"}
    rc = load_script("convert_t2v_to_deblur").main(
        ["--t2v", str(d / "t2v"), "--clip", str(d / "clip"), "--out", str(d / "deblur"), "--num-tokens", "3"])
    assert rc == 0, capsys.readouterr().err
    assert not any(p.name.startswith(".deblur.partial") for p in d.iterdir())
    assert not list((d / "deblur").rglob("*.bin"))

    pipe = DeblurVideoPipeline.from_pretrained(d / "deblur")
    pipe.set_progress_bar_config(disable=True)
    w = pipe.unet.conv_in.weight
    assert pipe.unet.config.in_channels == 8
    assert torch.equal(w[:, :4], base_unet.conv_in.weight) and torch.count_nonzero(w[:, 4:]) == 0
    assert torch.equal(pipe.unet.up_blocks[1].resnets[0].conv1.weight, base_unet.up_blocks[1].resnets[0].conv1.weight)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.blur_encoder.config.num_tokens == 3
    assert pipe.blur_encoder.config.cross_attention_dim == pipe.unet.config.cross_attention_dim
    assert torch.equal(pipe.blur_encoder.clip.visual_projection.weight, clip.visual_projection.weight)

    video = np.random.RandomState(0).randint(0, 256, (5, 20, 28, 3), dtype=np.uint8)
    out = pipe(video, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames
    assert out.shape == (1, 5, 20, 28, 3) and np.isfinite(out).all()


def test_converter_keeps_v_prediction_and_uses_open_clip(tmp_path, t2v_and_clip, capsys):
    import open_clip
    from safetensors.torch import save_file

    write_t2v_folder(tmp_path / "t2v-v", TINY_V_SCHEDULER_CONFIG, seed=2)
    cfg = {"embed_dim": 12,
           "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8, "head_width": 8},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "vdd-conv-vit.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "vdd-conv-vit.json")
    model = open_clip.create_model("vdd-conv-vit", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "oc.safetensors")

    rc = load_script("convert_t2v_to_deblur").main(
        ["--t2v", str(tmp_path / "t2v-v"), "--clip", str(tmp_path / "oc.safetensors"),
         "--open-clip-model", "vdd-conv-vit", "--out", str(tmp_path / "deblur-v")])
    assert rc == 0, capsys.readouterr().err
    pipe = DeblurVideoPipeline.from_pretrained(tmp_path / "deblur-v")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.rescale_betas_zero_snr and pipe.scheduler.config.timestep_spacing == "trailing"
    assert pipe.blur_encoder.config.vision_config["projection_dim"] == 12
    assert pipe.blur_encoder.config.cross_attention_dim == 16
    pipe.set_progress_bar_config(disable=True)
    out = pipe(np.zeros((3, 16, 16, 3), np.uint8), num_inference_steps=1, generator=torch.Generator()).frames
    assert out.shape == (1, 3, 16, 16, 3)


def test_converter_errors_name_the_problem(tmp_path, t2v_and_clip, capsys):
    d, _, _ = t2v_and_clip
    convert = load_script("convert_t2v_to_deblur").main
    bad = tmp_path / "t2v-no-unet"
    bad.mkdir()
    (bad / "vae").mkdir()
    rc = convert(["--t2v", str(bad), "--clip", str(d / "clip"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "'unet' is missing" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    (tmp_path / "exists").mkdir()
    rc = convert(["--t2v", str(d / "t2v"), "--clip", str(d / "clip"), "--out", str(tmp_path / "exists")])
    assert rc == 2 and "exists" in capsys.readouterr().err
    rc = convert(["--t2v", str(d / "t2v"), "--clip", str(tmp_path / "no-clip"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no-clip" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_converter_builds_a_prior_pipeline(t2v_and_clip, tmp_path, capsys):
    d, base_unet, _ = t2v_and_clip
    rc = load_script("convert_t2v_to_deblur").main(
        ["--t2v", str(d / "t2v"), "--clip", str(d / "clip"), "--out", str(tmp_path / "refine"), "--prior", "dtb"])
    assert rc == 0, capsys.readouterr().err
    assert "prior dtb" in capsys.readouterr().out
    pipe = DeblurVideoPipeline.from_pretrained(tmp_path / "refine")
    w = pipe.unet.conv_in.weight
    assert pipe.config.prior_method == "dtb" and pipe.unet.config.in_channels == 12
    assert torch.equal(w[:, :4], base_unet.conv_in.weight) and torch.count_nonzero(w[:, 4:]) == 0
    pipe.set_progress_bar_config(disable=True)
    video = np.random.RandomState(0).randint(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    out = pipe(video, prior=video, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).frames
    assert out.shape == (1, 3, 16, 16, 3)
    with pytest.raises(ValueError, match="pass prior="):
        pipe(video, num_inference_steps=1)
