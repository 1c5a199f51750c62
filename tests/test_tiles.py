"""Large frames and other devices: DTB's fused CPU inference, DTB and fit inference in spatial tiles (same output
as whole frames), and device / dtype plumbing checked on the CPU and the meta device (no GPU here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vdiffdeblur.models.dtb as dtb_model
from vdiffdeblur.devices import resolve_precision
from vdiffdeblur.methods.dtb import OnlineDeblurrer
from vdiffdeblur.methods.fit.stream import FitStream
from vdiffdeblur.methods.fit.tiles import tiled_residual
from vdiffdeblur.models.dtb import DTBNet, step_tiled
from vdiffdeblur.models.fit_unet import FitUNet
from vdiffdeblur.tiles import auto_tile, check_tile, resolve_tile, spans

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(variant="strcnn_dtb", **kw) -> DTBNet:
    """A small DTBNet with default initialisation and a non-zero output conv (a fresh one is the identity)."""
    torch.manual_seed(0)
    net = DTBNet(variant=variant, **{"channels": 8, "feature_channels": 4, "num_res_blocks": 1, **kw}).eval()
    torch.nn.init.normal_(net.out_conv.weight, std=0.3)
    return net


def _clip(t=6, h=70, w=90, seed=0):
    return torch.rand(t, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _run_steps(net, clip, tile):
    outs, state = [], None
    for t in range(len(clip) - 2):
        out, state = step_tiled(net, clip[t:t + 3][None], state, tile)
        outs.append(out)
    return torch.cat(outs), state


# ------------------------------------------------------------------------------------- tiles
def test_spans_cover_the_axis_once_with_clipped_halos():
    assert list(spans(70, 32, 10)) == [(0, 24, 0, 34), (24, 48, 14, 58), (48, 70, 38, 70)]  # 3 equal cores, even
    assert [s[:2] for s in spans(1080, 1024, 48)] == [(0, 540), (540, 1080)]
    assert [s[:2] for s in spans(9, 4, 1, align=1)] == [(0, 3), (3, 6), (6, 9)]
    assert list(spans(100, 32, 20, align=16)) == [(0, 32, 0, 64), (32, 64, 0, 96), (64, 96, 32, 100),
                                                  (96, 100, 64, 100)]  # on a stride-16 grid
    assert resolve_tile("auto", 1080, 1920) is None and resolve_tile("auto", 2160, 3840) == auto_tile(2160, 3840)
    assert resolve_tile(64, 60, 64) is None and resolve_tile(64, 60, 65) == 64
    for bad in (0, -3, 2.5, True, "big"):
        with pytest.raises(ValueError, match="tile size"):
            check_tile(bad)


# ------------------------------------------------------------------------------------- DTB
@pytest.mark.parametrize("variant", ["cnn", "strcnn", "strcnn_dtb"])
def test_fused_cpu_inference_computes_the_plain_ops(variant, monkeypatch):
    net, clip = _net(variant), _clip(5, 30, 34)
    assert dtb_model.FUSED_INFERENCE  # oneDNN is there on this CPU, so the first run below is the fused one
    with torch.no_grad():
        assert dtb_model._fusable(clip)
        fused = net(clip)
        monkeypatch.setattr(dtb_model, "FUSED_INFERENCE", False)
        plain = net(clip)
    assert fused.shape == plain.shape and (fused - plain).abs().max() < 1e-5
    assert (plain - clip).abs().max() > 0.05  # the network changes the frames: the comparison means something


@pytest.mark.parametrize("variant", ["cnn", "strcnn", "strcnn_dtb"])
def test_tiled_steps_give_the_untiled_output_and_state(variant, monkeypatch):
    net, clip = _net(variant), _clip(4, 58, 78)
    with torch.no_grad():
        whole, whole_state = _run_steps(net, clip, None)
        for tile in (24,):
            tiled, state = _run_steps(net, clip, tile)
            assert (tiled - whole).abs().max() < 1e-5
            for a, b in zip(state, whole_state):
                assert (a is None and b is None) or (a - b).abs().max() < 1e-5
        # a tile that covers the frame is the plain step, bit for bit
        covered, _ = _run_steps(net, clip, 78)
        assert torch.equal(covered, whole)
        # the halo is what makes the tiles exact: read less around each tile and the seams show
        monkeypatch.setattr(DTBNet, "reach", property(lambda self: 2))
        short, _ = _run_steps(net, clip, 24)
    assert (short - whole).abs().max() > 1e-3


def test_tiled_stream_matches_whole_frames_in_bfloat16():
    net = _net()
    frames = (np.random.default_rng(0).random((5, 46, 62, 3)) * 255).astype(np.uint8)
    whole = OnlineDeblurrer(net, precision="bfloat16", tile=None).deblur(frames)
    tiled = OnlineDeblurrer(net, precision="bfloat16", tile=20).deblur(frames)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1
    assert np.array_equal(OnlineDeblurrer(net, precision="bfloat16", tile=64).deblur(frames), whole)
    assert not np.array_equal(whole, frames)
    with pytest.raises(ValueError, match="tile size"):
        OnlineDeblurrer(net, tile=0)


def test_dtb_follows_the_device_and_dtype_of_its_input():
    """The meta device carries shapes, devices and dtypes but no data: nothing in a step or a tiled step may
    fall back to CPU tensors or to float32 where the weights are bfloat16."""
    net = _net().to(device="meta", dtype=torch.bfloat16)
    win = torch.empty(1, 3, 3, 70, 90, device="meta")
    with torch.no_grad():
        for tile in (None, 32):
            out, state = step_tiled(net, win, None, tile)
            out, state = step_tiled(net, win, state, tile)
            assert out.device.type == "meta" and out.dtype == torch.float32 and out.shape == (1, 3, 70, 90)
            assert all(t.device.type == "meta" and t.dtype == torch.bfloat16 for t in state)
            assert state.features.shape == (1, 4, 35, 45) and state.blended.shape == (1, 8, 35, 45)


def test_precisions_per_device(monkeypatch):
    assert resolve_precision("fp16", "cpu", "dtb") == "float16"  # explicit half precision, for GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda", "dtb") == "bfloat16"
    assert resolve_precision("auto", "cuda", "fit") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda", "dtb") == "float32"
    s = OnlineDeblurrer(_net(), device="cpu", precision="float16")
    with s.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16


# ------------------------------------------------------------------------------------- fit
def _unet():
    torch.manual_seed(0)
    unet = FitUNet(base_channels=8, levels=3, max_channels=16).eval()
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    return unet


def test_fit_pass_and_critic_follow_the_device_and_dtype():
    from vdiffdeblur.losses import gradient_penalty

    unet = _unet().to(device="meta", dtype=torch.bfloat16)
    x = torch.empty(2, 3, 72, 100, device="meta", dtype=torch.bfloat16)
    for tile in (None, 32):
        r = tiled_residual(unet, x, tile)
        assert r.device.type == "meta" and r.dtype == torch.bfloat16 and r.shape == x.shape
    # the WGAN-GP penalty draws with the fit's CPU generator and still works on another device
    critic = torch.nn.Conv2d(3, 1, 3).to("meta")
    real = torch.empty(2, 3, 16, 16, device="meta")
    gp = gradient_penalty(critic, real, real, generator=torch.Generator().manual_seed(0))
    assert gp.device.type == "meta" and gp.shape == ()


def test_fit_residual_in_tiles_matches_the_whole_frame():
    unet, x = _unet(), torch.rand(2, 3, 72, 100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = unet.residual(x)
        assert torch.equal(tiled_residual(unet, x, None), whole)
        near = tiled_residual(unet, x, 32, halo=48)  # a halo beyond the network's reach: rounding only
        far = tiled_residual(unet, x, 32, halo=4)
    assert whole.abs().max() > 0.05
    assert (near - whole).abs().max() < 1e-5
    assert (far - whole).abs().max() > 1e-4  # a short halo shows: the comparison can fail


def test_fit_deblur_uses_tiles_and_batches_by_pixels():
    from vdiffdeblur.methods.fit.config import FitConfig
    from vdiffdeblur.methods.fit.deblurrer import FitToTestDeblurrer

    d = FitToTestDeblurrer(init=_unet(), config=FitConfig(tile_size=None), device="cpu", progress=False)
    x = torch.rand(2, 3, 72, 100, generator=torch.Generator().manual_seed(2))
    whole = d.deblur_tensor(x, [1.0, 0.5])
    d.config.tile_size = 32
    tiled = d.deblur_tensor(x, [1.0, 0.5])
    assert (tiled - whole).abs().max() < 1e-4 and (whole - x).abs().max() > 0.01
    with pytest.raises(ValueError, match="tile size"):
        FitConfig(tile_size=0)
    # 4K frames go one at a time, 1080p four at a time
    runs = []
    stream = FitStream(d)
    stream._run = lambda: runs.append(len(stream.buf)) or stream.buf.clear() or []
    stream.push([np.zeros((2160, 3840, 3), np.uint8)] * 2)
    stream.push([np.zeros((1080, 1920, 3), np.uint8)] * 4)
    assert runs == [1, 1, 4]


# ------------------------------------------------------------------------------------- the benchmark
def test_benchmark_worker_reports_speed_flops_and_memory():
    from helpers import load_script

    bench = load_script("benchmark_dtb")
    row = bench.speed_worker({"model": None, "device": "cpu", "threads": 1, "width": 48, "height": 32, "frames": 2,
                              "precision": "auto", "layout": "channels_last", "fused": True, "compile": False,
                              "tile": 32, "matmul_size": 128})
    assert len(row["wall"]) == len(row["cpu"]) == 2 and min(row["wall"]) > 0
    assert row["precision"] in ("float32", "bfloat16")
    from vdiffdeblur.methods.dtb import load_dtb_model
    from vdiffdeblur.models.dtb import conv_flops_per_frame

    assert row["gflop_per_frame"] == pytest.approx(conv_flops_per_frame(load_dtb_model(), 32, 48) / 1e9)
    assert row["matmul_gflops"]["bfloat16"]["wall"] > 0 and row["peak_rss_mib"] > 0
    if not torch.cuda.is_available():  # an unavailable device is one line and exit status 2, before any work
        assert bench.main(["--device", "cuda", "--no-memory"]) == 2
