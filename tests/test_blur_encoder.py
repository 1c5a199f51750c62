"""BlurImageEncoder: tokens, conditioning frames, differentiable preprocessing, save/load, and the two
constructors (transformers CLIP vision folder, open_clip checkpoint)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from vdiffdeblur.models.blur_encoder import (
    CLIP_MEAN,
    CLIP_STD,
    BlurImageEncoder,
    load_open_clip_model,
    open_clip_visual_to_transformers,
    select_condition_frames,
)
from vdiffdeblur.pipelines.tiny import TINY_CLIP_VISION_CONFIG

pytestmark = pytest.mark.usefixtures("one_thread")


def make_encoder(seed=0, **kw) -> BlurImageEncoder:
    torch.manual_seed(seed)
    kw.setdefault("cross_attention_dim", 16)
    return BlurImageEncoder(vision_config=TINY_CLIP_VISION_CONFIG, **kw).eval()


def test_tokens_shape_and_conditioning_frames():
    enc = make_encoder(num_tokens=4)
    clip = torch.rand(2, 3, 7, 20, 28)
    assert enc(clip).shape == (2, 4, 16)
    assert enc(clip[:, :, 0]).shape == (2, 4, 16)  # one image per sample
    enc3 = make_encoder(num_tokens=4, num_cond_frames=3)
    assert enc3(clip).shape == (2, 12, 16)
    assert select_condition_frames(7, 1) == [3]
    assert select_condition_frames(16, 1) == [8]
    assert select_condition_frames(7, 3) == [0, 3, 6]
    assert select_condition_frames(1, 3) == [0, 0, 0]
    with pytest.raises(ValueError):
        enc(torch.rand(2, 4, 7, 8, 8))


def test_central_frame_alone_conditions():
    enc = make_encoder()
    clip = torch.rand(1, 3, 5, 16, 16)
    base = enc(clip)
    other = clip.clone()
    other[:, :, [0, 1, 3, 4]] = torch.rand(1, 3, 4, 16, 16)
    assert torch.equal(enc(other), base)
    other[:, :, 2] = 1 - other[:, :, 2]
    assert not torch.allclose(enc(other), base)
    # evenly spaced frames: each of them matters, in its own tokens
    enc3 = make_encoder(num_cond_frames=3)
    t = enc3(clip)
    changed = clip.clone()
    changed[:, :, 4] = 0
    t2 = enc3(changed)
    assert torch.equal(t[:, :8], t2[:, :8]) and not torch.allclose(t[:, 8:], t2[:, 8:])


def test_preprocessing_is_clip_normalisation_and_differentiable():
    enc = make_encoder()
    x = torch.rand(2, 3, 16, 16)  # already the tower's size: no resize, only mean/std
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert torch.allclose(enc.preprocess(x), (x - mean) / std, atol=1e-6)
    big = torch.rand(2, 3, 40, 56, requires_grad=True)
    assert enc.preprocess(big).shape == (2, 3, 16, 16)
    enc.train()
    enc(big[:, :, None].expand(-1, -1, 3, -1, -1)).square().sum().backward()
    assert big.grad is not None and big.grad.abs().sum() > 0
    assert enc.projector[0].weight.grad.abs().sum() > 0
    assert enc.clip.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_save_load_round_trip(tmp_path):
    enc = make_encoder(num_tokens=2, num_cond_frames=2)
    enc.save_pretrained(tmp_path / "enc")
    files = sorted(p.name for p in (tmp_path / "enc").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    cfg = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert cfg["vision_config"] == TINY_CLIP_VISION_CONFIG and cfg["num_tokens"] == 2
    loaded = BlurImageEncoder.from_pretrained(tmp_path / "enc").eval()
    x = torch.rand(1, 3, 6, 16, 16)
    assert torch.allclose(loaded(x), enc(x), atol=1e-6)


def test_gradient_checkpointing_keeps_gradients():
    enc = make_encoder().train()
    x = torch.rand(2, 3, 16, 16)
    enc(x).sum().backward()
    ref = enc.projector[0].weight.grad.clone(), enc.clip.vision_model.encoder.layers[0].mlp.fc1.weight.grad.clone()
    enc.zero_grad()
    enc.enable_gradient_checkpointing()
    calls = []
    h = enc.clip.vision_model.encoder.layers[0].layer_norm1.register_forward_hook(lambda *a: calls.append(1))
    enc(x).sum().backward()
    h.remove()
    assert len(calls) == 2  # the layer ran again in the backward pass
    assert torch.allclose(enc.projector[0].weight.grad, ref[0], atol=1e-6)
    assert torch.allclose(enc.clip.vision_model.encoder.layers[0].mlp.fc1.weight.grad, ref[1], atol=1e-6)


# --------------------------------------------------------------------------------------------- constructors
def test_from_clip_vision_folder(tmp_path):
    torch.manual_seed(1)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_VISION_CONFIG)).eval()
    clip.save_pretrained(tmp_path / "clip")
    (tmp_path / "clip" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    enc = BlurImageEncoder.from_clip_vision(tmp_path / "clip", num_tokens=3).eval()
    assert enc.config.cross_attention_dim == TINY_CLIP_VISION_CONFIG["projection_dim"]
    assert enc.config.image_mean == (0.5, 0.5, 0.5)
    x = torch.rand(2, 3, 16, 16)
    ref = clip(pixel_values=(x - 0.5) / 0.25).image_embeds
    assert torch.allclose(enc.embed_images(x), ref, atol=1e-6)
    assert enc(x).shape == (2, 3, 16)
    with pytest.raises(FileNotFoundError):
        BlurImageEncoder.from_clip_vision(tmp_path / "nothing")


TINY_OPEN_CLIP = {
    "embed_dim": 12,
    "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "patch_size": 4, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def open_clip_checkpoint(tmp_path_factory):
    """A tiny open_clip architecture registered under its own name, and a checkpoint of random weights."""
    import open_clip
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("open_clip")
    out = {}
    for name, quick in (("vdd-tiny-vit", False), ("vdd-tiny-vit-quickgelu", True)):
        (d / f"{name}.json").write_text(json.dumps({**TINY_OPEN_CLIP, **({"quick_gelu": True} if quick else {})}))
        open_clip.add_model_config(d / f"{name}.json")
        torch.manual_seed(3)
        model = open_clip.create_model(name, pretrained=None).eval()
        with torch.no_grad():  # open_clip zero-inits nothing we map, but make every mapped tensor non-trivial
            for p in model.visual.parameters():
                p.add_(0.02 * torch.randn_like(p))
        ckpt = d / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt)
        out[name] = (model, ckpt)
    return out


@pytest.mark.parametrize("name", ["vdd-tiny-vit", "vdd-tiny-vit-quickgelu"])
def test_from_open_clip_matches_open_clip_embeddings(open_clip_checkpoint, name):
    model, ckpt = open_clip_checkpoint[name]
    enc = BlurImageEncoder.from_open_clip(name, ckpt, num_tokens=4, cross_attention_dim=16).eval()
    assert enc.config.vision_config["hidden_act"] == ("quick_gelu" if "quick" in name else "gelu")
    assert enc.config.vision_config["num_attention_heads"] == 2
    x = torch.rand(3, 3, 16, 16)
    mean = torch.tensor(model.visual.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model.encode_image((x - mean) / std)
        got = enc.embed_images(x)
    assert got.shape == ref.shape == (3, 12)
    assert (got - ref).abs().max() < 1e-4
    assert enc(x).shape == (3, 4, 16)


def test_open_clip_mapping_rejects_what_it_cannot_convert(open_clip_checkpoint, tmp_path):
    import open_clip

    with pytest.raises(ValueError, match="hf-hub"):
        load_open_clip_model("hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    with pytest.raises(FileNotFoundError):
        load_open_clip_model("vdd-tiny-vit", tmp_path / "missing.safetensors")
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_open_clip_model("no-such-arch", tmp_path / "w.safetensors")
    cfg = {**TINY_OPEN_CLIP, "vision_cfg": {**TINY_OPEN_CLIP["vision_cfg"], "pool_type": "avg"}}
    (tmp_path / "vdd-tiny-avg.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "vdd-tiny-avg.json")
    with pytest.raises(ValueError, match="pooling 'avg'"):
        open_clip_visual_to_transformers(open_clip.create_model("vdd-tiny-avg", pretrained=None))


def test_from_open_clip_local_dir(open_clip_checkpoint, tmp_path):
    model, ckpt = open_clip_checkpoint["vdd-tiny-vit"]
    d = tmp_path / "oc"
    d.mkdir()
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))
    (d / "open_clip_model.safetensors").write_bytes(ckpt.read_bytes())
    enc = BlurImageEncoder.from_open_clip(f"local-dir:{d}").eval()
    x = torch.rand(1, 3, 16, 16)
    mean = torch.tensor(model.visual.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert (enc.embed_images(x) - model.encode_image((x - mean) / std)).abs().max() < 1e-4
    assert np.isclose(enc.config.image_mean[0], float(mean[0, 0]))
