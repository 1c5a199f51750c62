"""DTBNet (three variants), the online streaming runner, the CLI path, training, and the shipped checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vdiffdeblur.methods.dtb import DEFAULT_CHECKPOINT, OnlineDeblurrer, load_dtb_model, make_stream
from vdiffdeblur.methods.options import DTBOptions, RunOptions
from vdiffdeblur.models.dtb import DTBNet, TemporalBlending, reflect_index


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster (much faster on a busy shared CPU); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomised(model: DTBNet, seed: int = 0, scale: float = 0.05) -> DTBNet:
    """A freshly built DTBNet is the identity (zero output conv); give every weight a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def _net(variant="strcnn_dtb", seed=0, scale=0.05, **kw):
    kw = {"channels": 8, "feature_channels": 4, "num_res_blocks": 1, **kw}
    return _randomised(DTBNet(variant=variant, **kw), seed, scale)


def _clip(t=7, h=20, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(t, 3, h, w, generator=g)


# ------------------------------------------------------------------------------------- variants
def test_variants_build_only_their_parts():
    cnn, st, dtb = (DTBNet(variant=v, channels=16, feature_channels=8) for v in ("cnn", "strcnn", "strcnn_dtb"))
    names = {v: {n for n, _ in m.named_parameters()} for v, m in (("cnn", cnn), ("st", st), ("dtb", dtb))}
    # CNN: no recurrence (no F input channels, no F_n head) and no blending parameters
    assert not any(n.startswith(("feature_head", "blend")) for n in names["cnn"])
    assert cnn.fuse.in_channels == 16 and not cnn.recurrent and cnn.blend is None
    # STRCNN: F recurrence, no blending cell at all
    assert any(n.startswith("feature_head") for n in names["st"]) and st.fuse.in_channels == 16 + 8
    assert st.blend is None and not any(isinstance(m, TemporalBlending) for m in st.modules())
    # STRCNN+DTB: exactly one 5x5 convolution (no bias) and beta more than STRCNN
    extra = names["dtb"] - names["st"]
    assert extra == {"blend.conv.weight", "blend.beta_logit"}
    assert dtb.blend.conv.weight.shape == (16, 32, 5, 5)
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in (("st", st), ("dtb", dtb))}
    assert n_params["dtb"] - n_params["st"] == 16 * 32 * 25 + 1
    with pytest.raises(ValueError, match="unknown DTBNet variant"):
        DTBNet(variant="rnn")


def test_cnn_has_no_memory_and_strcnn_does():
    clip = _clip(t=8)
    changed = clip.clone()
    changed[0] += 0.5  # change only the first frame
    for variant, remembers in (("cnn", False), ("strcnn", True), ("strcnn_dtb", True)):
        net = _net(variant)
        with torch.no_grad():
            a, b = net(clip), net(changed)
        # frames 3.. never see frame 0 through the 3-frame window: only a recurrent network carries it
        assert torch.equal(a[3:], b[3:]) != remembers, variant
        assert not torch.equal(a[:2], b[:2])


def test_switching_dtb_off_removes_the_cell():
    """With beta = 1 the blend weight is 1 everywhere: h~_n = h_n, so STRCNN+DTB equals an STRCNN with the
    same weights; with beta = 0.3 the cell blends and the output differs."""
    dtb = _net("strcnn_dtb", seed=1)
    st = DTBNet(**{**dtb.config, "variant": "strcnn"}).eval()
    missing, unexpected = st.load_state_dict(dtb.state_dict(), strict=False)
    assert not missing and set(unexpected) == {"blend.conv.weight", "blend.beta_logit"}
    clip = _clip()
    with torch.no_grad():
        dtb.blend.beta_logit.fill_(30.0)  # sigmoid -> 1
        same = dtb(clip)
        ref = st(clip)
        dtb.blend.beta_logit.fill_(math.log(0.3 / 0.7))
        blended = dtb(clip)
    assert torch.allclose(same, ref, atol=1e-6)
    assert (blended - ref).abs().max() > 1e-4


def test_blending_follows_equations_2_and_3():
    cell = TemporalBlending(4, 5, beta_init=0.25)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cell.conv.weight.copy_(torch.randn(cell.conv.weight.shape, generator=g) * 0.3)
    hp, h = torch.randn(2, 4, 9, 9, generator=g), torch.randn(2, 4, 9, 9, generator=g)
    with torch.no_grad():
        a = torch.nn.functional.conv2d(torch.cat([hp, h], 1), cell.conv.weight, padding=2)
        w = torch.minimum(torch.ones_like(a), torch.tanh(a).abs() + 0.25)
        assert torch.allclose(cell.weight(hp, h), w, atol=1e-6)
        assert torch.allclose(cell(hp, h), w * h + (1 - w) * hp, atol=1e-6)
        assert float(w.min()) >= 0.25 - 1e-6 and float(w.max()) <= 1.0
    assert 0.0 < float(cell.beta.detach()) < 1.0


def test_fresh_network_is_the_identity():
    net = DTBNet(channels=8, feature_channels=4, num_res_blocks=1).eval()
    frames = (np.random.default_rng(0).random((5, 17, 23, 3)) * 255).astype(np.uint8)
    out = OnlineDeblurrer(net, precision="float32").deblur(frames)
    assert np.array_equal(out, frames)


def test_reflect_index():
    assert [reflect_index(i, 5) for i in range(-2, 7)] == [2, 1, 0, 1, 2, 3, 4, 3, 2]
    assert [reflect_index(i, 1) for i in (-1, 0, 1)] == [0, 0, 0]
    assert [reflect_index(i, 2) for i in (-2, -1, 2, 3)] == [0, 1, 0, 1]


# ------------------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("variant", ["cnn", "strcnn", "strcnn_dtb"])
@pytest.mark.parametrize("m,t,size", [(1, 7, (20, 24)), (1, 1, (9, 11)), (1, 2, (15, 16)), (2, 6, (13, 21)),
                                      (2, 3, (10, 10))])
def test_streaming_equals_whole_clip_exactly(variant, m, t, size):
    net = _net(variant, num_neighbors=m)
    clip = _clip(t, *size)
    stream = OnlineDeblurrer(net, precision="float32")
    with torch.no_grad():
        whole = net(clip)
    outs, lags = [], []
    for i in range(t):
        ready = stream.push([clip[i]])
        assert len(ready) <= 1
        for o in ready:
            outs.append(o)
            lags.append(i - (len(outs) - 1))
    outs += stream.flush()
    assert len(outs) == t
    assert all(lag == m for lag in lags)  # each frame comes out once its m look-ahead frames are in
    assert torch.equal(torch.stack(outs), whole.clamp(0, 1))


def test_streaming_equals_whole_clip_with_encoder_skip():
    net = _net("strcnn_dtb", encoder_skip=True)
    clip = _clip(5, 14, 18)
    stream = OnlineDeblurrer(net, precision="float32")  # (makes the model channels_last, like the whole run)
    with torch.no_grad():
        whole = net(clip)
        no_skip = DTBNet(**{**net.config, "encoder_skip": False}).eval()
        no_skip.load_state_dict(net.state_dict())
        assert (no_skip(clip) - whole).abs().max() > 1e-4  # the skip is used
    outs = [o for f in clip for o in stream.push([f])] + stream.flush()
    assert torch.equal(torch.stack(outs), whole.clamp(0, 1))


def test_streaming_equals_whole_clip_in_bfloat16():
    net = _net("strcnn_dtb")
    clip = _clip(6, 18, 22)
    stream = OnlineDeblurrer(net, precision="bfloat16")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = net(clip)
    outs = [o for f in clip for o in stream.push([f])] + stream.flush()
    assert torch.equal(torch.stack(outs), whole.clamp(0, 1))
    # bfloat16 is a different computation from float32, but a close one
    with torch.no_grad():
        fp32 = net(clip)
    assert (whole - fp32).abs().max() < 0.05


def test_stream_memory_is_constant_and_resets():
    net = _net("strcnn_dtb", num_neighbors=2)
    stream = OnlineDeblurrer(net, precision="float32")
    frames = (np.random.default_rng(1).random((30, 12, 14, 3)) * 255).astype(np.uint8)
    for i, f in enumerate(frames):
        out = stream.push([f])
        assert len(stream._frames) <= 5
        assert len(out) == (0 if i < 2 else 1)
        for o in out:
            assert o.dtype == np.uint8 and o.shape == (12, 14, 3)
    assert len(stream.flush()) == 2
    # a second video with a different size starts cleanly
    assert stream.deblur(frames[:4, :9, :9]).shape == (4, 9, 9, 3)
    stream.push([frames[0]])
    with pytest.raises(ValueError, match="stream started at"):
        stream.push([frames[1, :10]])
    stream.reset()
    with pytest.raises(ValueError, match="wrap it in a list"):  # one frame is not a batch of frames
        stream.push(frames[0])
    # a batch at a time gives what one frame at a time gives
    batched = stream.push(frames[:7]) + stream.push(frames[7:]) + stream.flush()
    np.testing.assert_array_equal(np.stack(batched), stream.deblur(frames))


def test_channels_last_and_precision_options():
    net = _net()
    s = OnlineDeblurrer(net, precision="auto")
    assert s.precision in ("float32", "bfloat16")
    assert net.in_conv.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="precision"):
        OnlineDeblurrer(net, precision="float8")


# ------------------------------------------------------------------------------------- saving, CLI
def test_save_load_roundtrip_safetensors(tmp_path):
    net = _net("strcnn")
    net.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert "config.json" in files and any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    loaded = load_dtb_model(tmp_path / "m")
    assert loaded.config.variant == "strcnn" and loaded.config.channels == 8
    clip = _clip(4)
    with torch.no_grad():
        assert torch.equal(loaded(clip), net(clip))
    with pytest.raises(FileNotFoundError, match="no DTBNet model folder"):
        load_dtb_model(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        load_dtb_model(tmp_path / "bad")


def test_cli_dtb_streams_to_a_file(tmp_path):
    from vdiffdeblur.cli import main
    from vdiffdeblur.video import read_video, write_video

    net = _net("strcnn_dtb", seed=3, scale=0.02)
    net.save_pretrained(tmp_path / "model")
    frames = (np.random.default_rng(2).random((6, 30, 34, 3)) * 255).astype(np.uint8)
    write_video(tmp_path / "in.mkv", frames, lossless=True)
    rc = main(["deblur", str(tmp_path / "in.mkv"), "-o", str(tmp_path / "out.mkv"), "--method", "dtb",
               "--model", str(tmp_path / "model"), "--no-guard", "--lossless", "--device", "cpu"])
    assert rc == 0
    out = read_video(tmp_path / "out.mkv").frames
    expect = OnlineDeblurrer(load_dtb_model(tmp_path / "model")).deblur(frames)
    assert out.shape == frames.shape and np.array_equal(out, expect)
    # a missing model folder is a one-line error, and nothing is written
    rc = main(["deblur", str(tmp_path / "in.mkv"), "-o", str(tmp_path / "out2.mkv"), "--method", "dtb",
               "--model", str(tmp_path / "nope"), "--no-guard"])
    assert rc == 2 and not (tmp_path / "out2.mkv").exists()


def test_make_stream_loads_the_shipped_checkpoint_by_default():
    stream = make_stream(None, None, RunOptions(device="cpu"), DTBOptions())
    net = stream.model
    assert net.config.variant == "strcnn_dtb"
    size_mb = sum(p.stat().st_size for p in DEFAULT_CHECKPOINT.glob("*.safetensors")) / 1e6
    assert size_mb < 10
    frames = np.zeros((3, 16, 20, 3), np.uint8) + 128
    outs = [o for f in frames for o in stream.push([f])] + stream.flush()
    assert len(outs) == 3 and outs[0].shape == (16, 20, 3)


# ------------------------------------------------------------------------------------- training
def _tiny_train_cfg(out, **kw):
    from vdiffdeblur.trainer.dtb import DTBTrainConfig

    base = dict(output_dir=str(out), channels=8, feature_channels=4, num_res_blocks=1, train_batch_size=2,
                clip_len=3, crop=24, num_clips=2, frames_per_clip=4, synth_width=40, synth_height=32,
                max_train_steps=4, checkpointing_steps=2, checkpoints_total_limit=1, validation_steps=0,
                num_validation_clips=1, validation_frames=4, learning_rate=1e-3, photos=("astronaut", "rocket"),
                report_to=None, num_threads=1, mixed_precision="no")
    base.update(kw)
    return DTBTrainConfig(**base)


def test_training_writes_model_and_resume_is_exact(tmp_path):
    from safetensors.torch import load_file

    from vdiffdeblur.trainer.dtb import train

    # the last 2 of 4 steps are the log-MSE phase: the resumed run restarts at the switch, as the straight one did
    ft = dict(finetune_steps=2, finetune_learning_rate=5e-4)
    train(_tiny_train_cfg(tmp_path / "straight", **ft))
    assert (tmp_path / "straight" / "config.json").is_file()
    assert [p.name for p in (tmp_path / "straight").glob("checkpoint-*")] == ["checkpoint-4"]  # limit 1
    log = json.loads((tmp_path / "straight" / "training_log.json").read_text())
    assert log[-1]["step"] == 4
    train(_tiny_train_cfg(tmp_path / "resumed", max_train_steps=2, finetune_steps=0))
    train(_tiny_train_cfg(tmp_path / "resumed", resume_from_checkpoint="latest", **ft))
    a = load_file(str(tmp_path / "straight" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    fresh = DTBNet(**DTBNet.from_pretrained(tmp_path / "straight").config)
    assert any(not torch.equal(fresh.state_dict()[k], a[k]) for k in a)  # it did train


def test_training_takes_dead_leaves_and_validates_on_photos(tmp_path):
    from vdiffdeblur.data import ShakeConfig, synthesize_shake
    from vdiffdeblur.data.dead_leaves import DEAD_LEAVES
    from vdiffdeblur.trainer.dtb import build_train_dataset, train, validation_clips

    cfg = _tiny_train_cfg(tmp_path, photos=("astronaut", DEAD_LEAVES), max_train_steps=2, checkpointing_steps=0,
                          num_validation_clips=2, fur_fraction=0.5)
    assert build_train_dataset(cfg, 4).fur_fraction == 0.5
    shake = ShakeConfig(num_frames=4, width=40, height=32)
    for i, c in enumerate(validation_clips(cfg)):  # the procedural source is left out of validation
        assert np.array_equal(c.sharp, synthesize_shake("astronaut", shake, seed=10_000 + cfg.seed * 100 + i).sharp)
    train(cfg)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()


def test_training_refuses_evaluation_photos(tmp_path):
    from vdiffdeblur.trainer.dtb import train

    with pytest.raises(ValueError, match="kept for evaluation"):
        train(_tiny_train_cfg(tmp_path / "x", photos=("astronaut", "coffee")))


def test_training_lowers_the_loss():
    """Sixty steps on one fixed batch of synthetic shake bring the MSE well down."""
    from vdiffdeblur.data import ShakeConfig, SyntheticShakeDataset

    torch.manual_seed(0)
    ds = SyntheticShakeDataset(["astronaut"], num_clips=2, clip_len=3, crop=32, config=ShakeConfig(width=48, height=40))
    batch = torch.stack([ds[i]["blurry"] for i in range(2)]), torch.stack([ds[i]["sharp"] for i in range(2)])
    net = DTBNet(channels=8, feature_channels=4, num_res_blocks=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(net(batch[0]), batch[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.8 * losses[0]


def test_train_script_parses_config(tmp_path):
    import importlib.util

    from vdiffdeblur.trainer.dtb import dtb_cli

    spec = importlib.util.spec_from_file_location("train_dtb", Path(__file__).parents[1] / "training" / "train_dtb.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("channels: 9\nvariant: cnn\nbogus_option: 1\n")
    assert mod.main(["--config", str(cfg_file)]) == 2  # unknown option: a clear error, no training
    args = dtb_cli().parser.parse_args(["--residual", "false", "--checkpoints_total_limit", "none"])
    assert args.residual is False and args.checkpoints_total_limit is None


# ------------------------------------------------------------------------------------- shipped checkpoint quality
CNN_CHECKPOINT = DEFAULT_CHECKPOINT / "cnn"  # the CNN variant trained the same way, kept for the comparison


def _coffee_row(path=None):
    from vdiffdeblur.trainer.dtb import evaluate_shake

    return evaluate_shake(load_dtb_model(path), photos=("coffee",), seeds=(0,))[0]


@pytest.mark.slow
def test_shipped_checkpoint_meets_the_quality_bar():
    """On builtin:coffee (never trained on), 40 frames, streamed as the CLI runs it, the network alone
    (no guard) gains >= 1.5 dB on the blurriest third and makes no frame worse by more than 0.5 dB."""
    r = _coffee_row()
    assert r["gain_hard"] >= 1.5, r  # measured +1.59
    assert r["worst_loss"] <= 0.5, r  # measured 0.37
    assert r["gain_all"] > 0.7, r  # measured +0.88


@pytest.mark.slow
def test_shipped_checkpoint_helps_on_every_evaluation_photo():
    """Seed 0 of each evaluation photo: every clip gains on its blurriest third and over all its frames."""
    from vdiffdeblur.data import EVAL_PHOTOS
    from vdiffdeblur.trainer.dtb import evaluate_shake

    rows = evaluate_shake(load_dtb_model(), photos=EVAL_PHOTOS, seeds=(0,))
    # measured: coffee +1.59 / +0.88, chelsea +0.52 / +0.11, motorcycle +1.30 / +0.80, coins +2.54 / +1.59
    for r in rows:
        assert r["gain_hard"] > 0.3 and r["gain_all"] > 0.0, r
    assert np.mean([r["gain_hard"] for r in rows]) >= 1.3  # measured +1.49


@pytest.mark.slow
def test_strcnn_dtb_beats_the_cnn_variant_trained_the_same_way():
    from vdiffdeblur.data import EVAL_PHOTOS
    from vdiffdeblur.trainer.dtb import evaluate_shake

    dtb = evaluate_shake(load_dtb_model(), photos=EVAL_PHOTOS, seeds=(0,))
    cnn = evaluate_shake(load_dtb_model(CNN_CHECKPOINT), photos=EVAL_PHOTOS, seeds=(0,))
    assert load_dtb_model(CNN_CHECKPOINT).config.variant == "cnn"
    for key in ("gain_hard", "gain_all"):
        assert np.mean([r[key] for r in dtb]) > np.mean([r[key] for r in cnn]), key
