"""UNet helpers (widen_conv_in, gradient checkpointing) and the conditioning functions shared with training."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, UNet3DConditionModel

from vdiffdeblur.models.conditioning import (
    build_unet_input,
    decode_video_latents,
    drop_tokens,
    encode_condition,
    encode_video_latents,
)
from vdiffdeblur.models.unet import (
    disable_unet_gradient_checkpointing,
    enable_unet_gradient_checkpointing,
    is_unet_gradient_checkpointing,
    widen_conv_in,
)
from vdiffdeblur.pipelines.tiny import TINY_T2V_UNET_CONFIG, TINY_UNET_CONFIG, TINY_VAE_CONFIG, tiny_components

pytestmark = pytest.mark.usefixtures("one_thread")


def t2v_unet(seed=0) -> UNet3DConditionModel:
    torch.manual_seed(seed)
    return UNet3DConditionModel(**TINY_T2V_UNET_CONFIG).eval()


def unet_inputs(seed=0, b=2, f=4, h=8, w=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, f, h, w, generator=g)
    extra = torch.randn(b, 4, f, h, w, generator=g) * 5
    tokens = torch.randn(b, 4, 16, generator=g)
    return x, extra, tokens


# ----------------------------------------------------------------------------------------------- widen_conv_in
def test_widen_conv_in_leaves_output_unchanged(tmp_path):
    unet = t2v_unet()
    x, extra, tokens = unet_inputs()
    with torch.no_grad():
        before = unet(x, 500, encoder_hidden_states=tokens).sample
    old_w = unet.conv_in.weight.detach().clone()
    widen_conv_in(unet, 4)
    assert unet.conv_in.in_channels == 8 and unet.config.in_channels == 8
    assert torch.equal(unet.conv_in.weight[:, :4], old_w)
    assert torch.count_nonzero(unet.conv_in.weight[:, 4:]) == 0
    with torch.no_grad():
        after = unet(build_unet_input(x, extra), 500, encoder_hidden_states=tokens).sample
    assert (after - before).abs().max().item() == 0.0
    # the config change saves and loads
    unet.save_pretrained(tmp_path / "unet")
    loaded = UNet3DConditionModel.from_pretrained(tmp_path / "unet")
    assert loaded.config.in_channels == 8 and torch.equal(loaded.conv_in.weight, unet.conv_in.weight)
    # once the new weights are non-zero the blurry latents matter
    with torch.no_grad():
        unet.conv_in.weight[:, 4:] = 0.1
        changed = unet(build_unet_input(x, extra), 500, encoder_hidden_states=tokens).sample
    assert (changed - before).abs().max() > 1e-3


def test_widen_conv_in_keeps_trainability_and_rejects_bad_counts():
    unet = t2v_unet()
    unet.conv_in.weight.requires_grad_(False)
    assert widen_conv_in(unet, 0) is unet and unet.conv_in.in_channels == 4
    widen_conv_in(unet, 4)
    assert not unet.conv_in.weight.requires_grad
    with pytest.raises(ValueError):
        widen_conv_in(unet, -1)


# ----------------------------------------------------------------------------------------------- checkpointing
def _loss_and_grads(unet, x, tokens):
    unet.zero_grad()
    torch.manual_seed(0)  # same dropout masks in every run (checkpointing replays the RNG state)
    out = unet(x, 500, encoder_hidden_states=tokens).sample
    out.square().mean().backward()
    return {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_recomputes_and_keeps_gradients():
    torch.manual_seed(0)
    unet = UNet3DConditionModel(**TINY_UNET_CONFIG).train()
    x, extra, tokens = unet_inputs(b=1, f=3)
    inp = build_unet_input(x, extra)
    with pytest.raises(ValueError):
        unet.enable_gradient_checkpointing()  # what diffusers does for this UNet: hence the wrapper
    ref = _loss_and_grads(unet, inp, tokens)
    keys = set(unet.state_dict())

    calls = []
    hook = unet.down_blocks[0].resnets[0].register_forward_hook(lambda *a: calls.append(1))
    enable_unet_gradient_checkpointing(unet)
    assert is_unet_gradient_checkpointing(unet)
    got = _loss_and_grads(unet, inp, tokens)
    assert len(calls) == 2  # forward, then recomputed during backward
    assert got.keys() == ref.keys()
    for n in ref:
        assert torch.allclose(got[n], ref[n], atol=1e-6, rtol=1e-5), n
    assert set(unet.state_dict()) == keys  # nothing wrapped: checkpoints still load

    calls.clear()
    with torch.no_grad():
        unet(inp, 500, encoder_hidden_states=tokens)
    assert len(calls) == 1
    disable_unet_gradient_checkpointing(unet)
    assert not is_unet_gradient_checkpointing(unet)
    _loss_and_grads(unet, inp, tokens)
    assert len(calls) == 2  # one forward, no recomputation
    hook.remove()


# ----------------------------------------------------------------------------------------------- conditioning
@pytest.fixture(scope="module")
def comps():
    return tiny_components(seed=0)


def test_encode_video_latents_scales_and_keeps_layout(comps):
    vae = comps["vae"]
    video = torch.rand(2, 3, 5, 16, 24)
    with torch.no_grad():
        z = encode_video_latents(vae, video, chunk_size=3)
        frames = video.permute(0, 2, 1, 3, 4).reshape(10, 3, 16, 24) * 2 - 1
        ref = vae.encode(frames).latent_dist.mode() * vae.config.scaling_factor
    assert z.shape == (2, 4, 5, 4, 6)
    assert torch.allclose(z.permute(0, 2, 1, 3, 4).reshape(10, 4, 4, 6), ref, atol=1e-5)
    # frame j of video b stays frame j of video b
    with torch.no_grad():
        single = encode_video_latents(vae, video[1:, :, 3:4])
    assert torch.allclose(z[1:, :, 3:4], single, atol=1e-5)
    with torch.no_grad():
        dec = decode_video_latents(vae, z, chunk_size=4)
    assert dec.shape == video.shape and dec.min() >= 0 and dec.max() <= 1
    with pytest.raises(ValueError):
        encode_video_latents(vae, torch.rand(2, 5, 3, 16, 24))


def test_encode_condition_gives_latents_and_tokens_with_gradients(comps):
    vae, enc = comps["vae"], comps["blur_encoder"]
    video = torch.rand(1, 3, 4, 16, 16)
    cond = encode_condition(vae, enc, video)
    assert cond.latents.shape == (1, 4, 4, 4, 4) and cond.tokens.shape == (1, 4, 16)
    assert torch.allclose(cond.tokens, enc(video))
    cond.tokens.sum().backward()
    assert enc.projector[2].weight.grad is not None
    # sampling the posterior is seeded
    a = encode_condition(vae, enc, video, sample=True, generator=torch.Generator().manual_seed(1)).latents
    b = encode_condition(vae, enc, video, sample=True, generator=torch.Generator().manual_seed(1)).latents
    assert torch.equal(a, b) and not torch.allclose(a, cond.latents)


def test_build_unet_input_and_token_dropout():
    noisy, blur = torch.randn(2, 4, 3, 5, 6), torch.randn(2, 4, 3, 5, 6)
    x = build_unet_input(noisy, blur)
    assert x.shape == (2, 8, 3, 5, 6) and torch.equal(x[:, :4], noisy) and torch.equal(x[:, 4:], blur)
    with pytest.raises(ValueError, match="differ"):
        build_unet_input(noisy, blur[:, :, :2])
    tokens = torch.randn(64, 4, 16)
    assert torch.equal(drop_tokens(tokens, 0.0), tokens)
    assert torch.count_nonzero(drop_tokens(tokens, 1.0)) == 0
    d1 = drop_tokens(tokens, 0.5, torch.Generator().manual_seed(0))
    d2 = drop_tokens(tokens, 0.5, torch.Generator().manual_seed(0))
    dropped = (d1.abs().sum(dim=(1, 2)) == 0).sum().item()
    assert torch.equal(d1, d2) and 16 < dropped < 48


def test_tiny_vae_config_scale_factor():
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 4
