"""Two-stage training of the diffusion deblurrer (training/stage1.py, training/stage2.py, vdiffdeblur.trainer).

Tiny random models on the CPU. The command-line runs go through `accelerate launch` exactly as users run them;
the others call the library's `train` in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from vdiffdeblur.trainer.config import DiffusionTrainConfig, parse_config, read_yaml_options

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "training" / "configs" / "tiny.yaml"
ACCELERATE = str(Path(sys.executable).parent / "accelerate")


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1", **extra})
    return env


def _run(cmd, env=None, timeout=600):
    r = subprocess.run(cmd, cwd=ROOT, env=env or _env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return r


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _tiny_cfg(tmp_path, stage=1, **kw) -> DiffusionTrainConfig:
    """tiny.yaml's options for `stage`, small and quick, with overrides."""
    options = read_yaml_options(TINY_YAML, stage)
    options.update(dict(output_dir=str(tmp_path / f"stage{stage}"), max_train_steps=2, num_clips=4,
                        clip_len=4, crop=32, synth_width=48, synth_height=48, frames_per_clip=6,
                        validation_data=None, checkpointing_steps=0, report_to=None))
    options.update(kw)
    return DiffusionTrainConfig.from_dict({**options, "stage": stage})


def _train(cfg):
    from vdiffdeblur.trainer.loop import train

    _reset_accelerate()
    try:
        return train(cfg)
    finally:
        _reset_accelerate()


def _state(module) -> dict:
    return {k: v.detach().float().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, after: dict) -> set:
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def _load(folder):
    from vdiffdeblur.pipelines import DeblurVideoPipeline

    return DeblurVideoPipeline.from_pretrained(folder)


# ============================================================================ stage 1 from the command line
@pytest.fixture(scope="module")
def stage1_out(tmp_path_factory):
    """`accelerate launch training/stage1.py --config training/configs/tiny.yaml --max_train_steps 4` (output
    redirected to a temporary folder; validation once at the end, with fewer DDIM steps)."""
    out = tmp_path_factory.mktemp("cli") / "stage1"
    _run([ACCELERATE, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no", "training/stage1.py", "--config", str(TINY_YAML), "--max_train_steps", "4",
          "--output_dir", str(out), "--validation_inference_steps", "2"],
         env=_env(CUDA_VISIBLE_DEVICES=""))
    return out


def test_stage1_changes_only_blur_encoder_and_new_conv_in_channels(stage1_out):
    from vdiffdeblur.pipelines.tiny import tiny_components

    before = tiny_components(seed=0)  # tiny.yaml: pretrained tiny, tiny_seed 0, epsilon
    after = _load(stage1_out)
    assert not _changed(_state(before["vae"]), _state(after.vae))
    unet_changed = _changed(_state(before["unet"]), _state(after.unet))
    assert unet_changed == {"conv_in.weight"}
    w0, w1 = before["unet"].conv_in.weight.detach(), after.unet.conv_in.weight.detach()
    assert torch.equal(w0[:, :4], w1[:, :4])  # the pretrained input channels: bit-exact
    assert (w0[:, 4:] != w1[:, 4:]).float().mean() > 0.9  # the new ones learned
    enc_before, enc_after = _state(before["blur_encoder"]), _state(after.blur_encoder)
    changed = _changed(enc_before, enc_after)
    assert len(changed) >= 0.9 * len(enc_before), f"only {len(changed)} of {len(enc_before)} encoder tensors learned"


def test_stage1_output_loads_deblurs_and_has_a_model_card(stage1_out):
    pipe = _load(stage1_out)
    clip = (np.random.default_rng(0).random((5, 20, 28, 3)) * 255).astype(np.uint8)
    frames = pipe(clip, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 5, 20, 28, 3) and np.isfinite(frames).all()

    card = (stage1_out / "README.md").read_text()
    assert "base_model: tiny" in card and "library_name: diffusers" in card
    assert "| steps | 4 (of 4 asked) |" in card
    assert "astronaut" in card  # the training data
    state = json.loads((stage1_out / "trainer_state.json").read_text())
    val = state["final_validation"]
    assert f"| 4 | {val['diffusion']:.4g} | {val['psnr']:.4g} / {val['input_psnr']:.4g} |" in card
    assert 0 < val["psnr"] < 100 and 0 < val["ssim"] <= 1 and val["input_psnr"] > 20
    log = json.loads((stage1_out / "training_log.json").read_text())
    assert [h["step"] for h in log] == [1, 2, 3, 4] and all(np.isfinite(h["train/loss"]) for h in log)
    # the side-by-side PNG: 3 columns (blurry | deblurred | sharp) of 64 px with 2 px gaps, 3 frames
    from PIL import Image

    pngs = sorted((stage1_out / "validation").glob("step-000004-clip*.png"))
    assert len(pngs) == 2
    img = np.asarray(Image.open(pngs[0]))
    assert img.shape == (3 * 64 + 4, 3 * 64 + 4, 3)


# ============================================================================ stage 2
def test_stage2_from_stage1_trains_unet_and_encoder_not_vae(stage1_out, tmp_path):
    cfg = _tiny_cfg(tmp_path, stage=2, pretrained=str(stage1_out))
    assert cfg.coherence_weight == 0.1  # stage 2's default lambda
    _train(cfg)
    before, after = _load(stage1_out), _load(cfg.output_dir)
    assert not _changed(_state(before.vae), _state(after.vae))
    u0, u1 = _state(before.unet), _state(after.unet)
    assert len(_changed(u0, u1)) >= 0.9 * len(u0)
    e0, e1 = _state(before.blur_encoder), _state(after.blur_encoder)
    assert len(_changed(e0, e1)) >= 0.9 * len(e0)
    assert "stage 2" in (Path(cfg.output_dir) / "README.md").read_text()


def test_coherence_weight_changes_the_loss_on_a_moving_clip():
    from diffusers import DDPMScheduler

    from vdiffdeblur.pipelines.tiny import tiny_components
    from vdiffdeblur.trainer.components import DeblurTrainModel
    from vdiffdeblur.trainer.objective import LossWeights, compute_losses

    c = tiny_components(seed=0)
    model = DeblurTrainModel(c["unet"], c["blur_encoder"])
    sched = DDPMScheduler.from_config(c["scheduler"].config)
    rng = torch.Generator().manual_seed(0)
    sharp = torch.rand(1, 3, 4, 32, 32, generator=rng)  # frames differ from each other
    assert (sharp[:, :, 1:] - sharp[:, :, :-1]).abs().mean() > 0.1
    blurry = (sharp + torch.roll(sharp, 1, dims=-1)) / 2

    def losses(lam):
        return compute_losses(model, c["vae"], sched, blurry, sharp, LossWeights(coherence=lam),
                              torch.Generator().manual_seed(7))

    l0, l1 = losses(0.0), losses(0.1)
    assert torch.equal(l0["diffusion"], l1["diffusion"])  # the same draws
    assert l1["coherence"] > 0
    assert l1["loss"] != l0["loss"]
    torch.testing.assert_close(l1["loss"] - l0["loss"], 0.1 * l1["coherence"])


def test_training_scheduler_keeps_the_base_parameterisation():
    from vdiffdeblur.pipelines.tiny import tiny_components
    from vdiffdeblur.trainer.components import training_scheduler

    for kind in ("epsilon", "v_prediction"):
        ddim = tiny_components(seed=0, prediction_type=kind)["scheduler"]
        train_sched = training_scheduler(ddim)
        assert train_sched.config.prediction_type == kind and train_sched.config.num_train_timesteps == 1000
        torch.testing.assert_close(train_sched.alphas_cumprod, ddim.alphas_cumprod)
    assert train_sched.alphas_cumprod[-1] < 1e-6  # v: zero terminal SNR carried over


def test_alignment_loss_pulls_encoder2_on_blurry_towards_teacher_on_sharp():
    from vdiffdeblur.pipelines.tiny import tiny_components
    from vdiffdeblur.trainer.components import DeblurTrainModel, load_teacher, training_scheduler
    from vdiffdeblur.trainer.objective import LossWeights, compute_losses

    c = tiny_components(seed=0)
    cfg = DiffusionTrainConfig(pretrained="tiny", alignment_weight=0.5)
    teacher = load_teacher(cfg, c["blur_encoder"])  # default: a frozen copy of the starting encoder
    assert not any(p.requires_grad for p in teacher.parameters())
    model = DeblurTrainModel(c["unet"], c["blur_encoder"])
    sharp = torch.rand(1, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blurry = sharp.mean(dim=2, keepdim=True).expand_as(sharp).contiguous()
    w = LossWeights(alignment=0.5)
    out = compute_losses(model, c["vae"], training_scheduler(c["scheduler"]), blurry, sharp, w,
                         torch.Generator().manual_seed(0), teacher=teacher)
    assert out["alignment"] > 0
    torch.testing.assert_close(out["loss"], out["diffusion"] + 0.5 * out["alignment"])
    out["alignment"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert c["blur_encoder"].clip.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    same = compute_losses(model, c["vae"], training_scheduler(c["scheduler"]), sharp, sharp, w,
                          torch.Generator().manual_seed(0), teacher=teacher)
    assert same["alignment"].abs() < 1e-5  # the same frame through the same weights
    with pytest.raises(ValueError, match="teacher"):
        compute_losses(model, c["vae"], training_scheduler(c["scheduler"]), sharp, sharp, w,
                       torch.Generator().manual_seed(0))


def test_report_to_auto_and_missing_tensorboard(monkeypatch):
    import importlib.util

    from vdiffdeblur.trainer.toolkit import resolve_report_to

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tensorboard") else real(name, *a))
    assert resolve_report_to("auto") is None and resolve_report_to(None) is None
    with pytest.raises(ValueError, match="tensorboard is not installed"):
        resolve_report_to("tensorboard")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert resolve_report_to("auto") == "tensorboard"


# ============================================================================ two processes on the CPU
AUDIT = textwrap.dedent('''
    # Installed as sitecustomize in the 2-process test: on every rank but 0, record any write under WATCH.
    import os, sys
    _rank, _watch, _log = os.environ.get("RANK"), os.environ.get("VDD_WATCH"), os.environ.get("VDD_VIOLATIONS")
    if _rank not in (None, "0") and _watch and _log:
        _watch = os.path.realpath(_watch)
        _busy = []
        _W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        def _hook(event, args):
            if _busy:
                return
            if event == "open":
                path, mode, flags = (list(args) + [None, None, 0])[:3]
                writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _W)
                if not writes:
                    return
            elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.symlink",
                           "os.truncate", "shutil.copyfile", "shutil.move"):
                path = args[0]
            else:
                return
            try:
                p = os.path.realpath(os.fsdecode(path))
            except TypeError:
                return
            if p == _watch or p.startswith(_watch + os.sep):
                _busy.append(1)
                try:
                    with open(_log, "a") as f:
                        f.write(f"rank {_rank}: {event} {p}\\n")
                finally:
                    _busy.pop()
        sys.addaudithook(_hook)
''')


def test_two_cpu_processes_same_weights_different_samples_main_writes(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(AUDIT)
    out, violations = tmp_path / "ddp", tmp_path / "violations.txt"
    env = _env(ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=f"{site}{os.pathsep}{ROOT}",
               VDD_WATCH=str(out), VDD_VIOLATIONS=str(violations))
    _run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "training/stage1.py", "--config", str(TINY_YAML),
          "--max_train_steps", "3", "--output_dir", str(out), "--checkpointing_steps", "2",
          "--validation_steps", "2", "--validation_inference_steps", "1", "--num_validation_clips", "1",
          "--clip_len", "4", "--crop", "32"], env=env)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["global_step"] == 3
    d = state["parameter_digests"]
    assert len(d) == 2 and d[0] == d[1], "the two processes ended with different weights"
    seen = {s["process"]: s["ids"] for s in state["samples_seen"]}
    assert len(seen[0]) == len(seen[1]) == 3
    assert not set(seen[0]) & set(seen[1]), "the two processes saw the same clips"
    assert not violations.exists(), "a process other than the main one wrote:\n" + violations.read_text()
    assert (out / "checkpoint-2" / "blur_encoder").is_dir() and (out / "model_index.json").is_file()
    _load(out)


# ============================================================================ resume
@pytest.mark.parametrize("stage", [1, 2])
def test_resume_is_exact(tmp_path, stage):
    """6 steps straight == 3 steps, stop, resume from the latest checkpoint, 3 more (with gradient accumulation
    and, in stage 2, EMA, whose state must survive the checkpoint too)."""
    kw = dict(max_train_steps=6, checkpointing_steps=3, gradient_accumulation_steps=2, condition_dropout=0.5,
              num_clips=4)
    if stage == 2:
        kw.update(use_ema=True, ema_decay=0.5)
    kw["pretrained"] = "tiny"
    straight = _tiny_cfg(tmp_path / "a", stage=stage, **kw)
    _train(straight)
    first = _tiny_cfg(tmp_path / "b", stage=stage, **{**kw, "max_train_steps": 3})
    _train(first)
    assert (Path(first.output_dir) / "checkpoint-3").is_dir()
    after3 = _state(_load(first.output_dir).blur_encoder)
    resumed = _tiny_cfg(tmp_path / "b", stage=stage, **kw, resume_from_checkpoint="latest")
    _train(resumed)
    a, b = _load(straight.output_dir), _load(resumed.output_dir)
    worst = 0.0
    for name in ("unet", "blur_encoder"):
        sa, sb = _state(getattr(a, name)), _state(getattr(b, name))
        worst = max(worst, max((sa[k] - sb[k]).abs().max().item() for k in sa))
    assert worst <= 1e-6, f"resumed run differs by {worst}"
    # the comparison can fail: 3 steps differ from 6
    assert _changed(after3, _state(a.blur_encoder))
    log = json.loads((Path(resumed.output_dir) / "training_log.json").read_text())
    assert [h["step"] for h in log] == [1, 2, 3, 4, 5, 6]
    # the resumed run read exactly the clips the straight run read after step 3 (epochs of 4 clips: step 3
    # starts mid-epoch, so this needs the skipped batches and the epoch's order)
    ids = lambda cfg: json.loads((Path(cfg.output_dir) / "trainer_state.json").read_text())["samples_seen"][0]["ids"]  # noqa: E731
    assert ids(resumed) == ids(straight)[6:]


# ============================================================================ pieces
def test_stage1_conv_in_mask_keeps_pretrained_channels_under_adamw():
    from vdiffdeblur.pipelines.tiny import tiny_components
    from vdiffdeblur.trainer.components import configure_trainable

    c = tiny_components(seed=1)
    unet = c["unet"]
    with torch.no_grad():
        unet.conv_in.weight[:, 4:].normal_()
    w0 = unet.conv_in.weight.detach().clone()
    groups = configure_trainable(1, c["vae"], unet, c["blur_encoder"])
    assert [n for n, p in unet.named_parameters() if p.requires_grad] == ["conv_in.weight"]
    assert not any(p.requires_grad for p in c["vae"].parameters())
    opt = torch.optim.AdamW([{"params": groups["decay"], "weight_decay": 0.1},
                             {"params": groups["no_decay"], "weight_decay": 0.0}], lr=1e-2)
    x = torch.randn(1, 8, 2, 8, 8)
    for _ in range(2):
        unet(x, torch.tensor([5]), encoder_hidden_states=torch.randn(1, 4, 16)).sample.pow(2).mean().backward()
        assert unet.conv_in.weight.grad[:, :4].abs().sum() == 0 and unet.conv_in.weight.grad[:, 4:].abs().sum() > 0
        opt.step()
        opt.zero_grad()
    w1 = unet.conv_in.weight.detach()
    assert torch.equal(w0[:, :4], w1[:, :4]) and not torch.equal(w0[:, 4:], w1[:, 4:])


def test_condition_dropout_zeroes_tokens_at_the_asked_rate():
    from vdiffdeblur.trainer.components import DeblurTrainModel

    class Enc(torch.nn.Module):
        def forward(self, x):
            return torch.ones(x.shape[0], 4, 16)

    class SpyUNet(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states=None, return_dict=False):
            self.tokens = encoder_hidden_states
            return (x[:, :4],)

    unet = SpyUNet()
    model = DeblurTrainModel(unet, Enc())
    g = torch.Generator().manual_seed(0)
    zeroed = []
    for _ in range(50):
        model(torch.zeros(40, 4, 1, 2, 2), torch.zeros(40, 4, 1, 2, 2), torch.zeros(40), torch.zeros(40, 3, 1, 4, 4),
              drop_prob=0.1, generator=g)
        zeroed += (unet.tokens.flatten(1).abs().sum(1) == 0).tolist()
        assert set(unet.tokens.unique().tolist()) <= {0.0, 1.0}  # a sample's tokens are dropped whole or kept
    assert 0.07 < np.mean(zeroed) < 0.13


def test_gradient_checkpointing_gives_the_same_gradients():
    from diffusers import DDPMScheduler

    from vdiffdeblur.pipelines.tiny import tiny_components
    from vdiffdeblur.trainer.components import DeblurTrainModel, configure_trainable, enable_gradient_checkpointing
    from vdiffdeblur.trainer.objective import LossWeights, compute_losses

    c = tiny_components(seed=0)
    configure_trainable(2, c["vae"], c["unet"], c["blur_encoder"])
    model = DeblurTrainModel(c["unet"], c["blur_encoder"]).train()
    sched = DDPMScheduler.from_config(c["scheduler"].config)
    clip = torch.rand(1, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def grads():
        model.zero_grad()
        torch.manual_seed(0)  # the UNet's temporal convolutions have dropout
        compute_losses(model, c["vae"], sched, clip, clip, LossWeights(coherence=0.1),
                       torch.Generator().manual_seed(3))["loss"].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    enable_gradient_checkpointing(c["unet"], c["blur_encoder"])
    ckpt = grads()
    assert plain.keys() == ckpt.keys() and len(plain) > 50
    for n in plain:
        torch.testing.assert_close(plain[n], ckpt[n], rtol=1e-4, atol=1e-6)


def test_bf16_mixed_precision_saves_untouched_frozen_weights(tmp_path):
    from vdiffdeblur.pipelines.tiny import tiny_components

    cfg = _tiny_cfg(tmp_path, stage=1, mixed_precision="bf16", max_train_steps=1)
    _train(cfg)
    before, after = tiny_components(seed=0), _load(cfg.output_dir)
    assert after.unet.dtype == torch.float32
    assert not _changed(_state(before["vae"]), _state(after.vae))
    assert _changed(_state(before["unet"]), _state(after.unet)) == {"conv_in.weight"}
    assert torch.equal(before["unet"].conv_in.weight[:, :4], after.unet.conv_in.weight[:, :4])


def test_config_yaml_sections_cli_overrides_and_errors(tmp_path):
    cfg1 = parse_config(["--config", str(TINY_YAML), "--max_train_steps", "7", "--use_ema"], stage=1)
    assert (cfg1.stage, cfg1.pretrained, cfg1.max_train_steps, cfg1.use_ema) == (1, "tiny", 7, True)
    assert cfg1.output_dir == "runs/tiny/stage1" and cfg1.coherence_weight == 0.0
    cfg2 = parse_config(["--config", str(TINY_YAML), "--coherence_weight", "0", "--checkpoints_total_limit", "none"],
                        stage=2)
    assert cfg2.pretrained == "runs/tiny/stage1" and cfg2.output_dir == "runs/tiny/stage2"
    assert cfg2.coherence_weight == 0.0 and cfg2.checkpoints_total_limit is None
    assert parse_config([], stage=2).coherence_weight == 0.1 and parse_config([], stage=2).learning_rate == 5e-5

    ms1 = parse_config(["--config", str(TINY_YAML.with_name("modelscope.yaml"))], stage=1)
    ms2 = parse_config(["--config", str(TINY_YAML.with_name("modelscope.yaml"))], stage=2)
    assert (ms1.clip_len, ms1.crop, ms1.learning_rate, ms1.adam_beta1, ms1.adam_beta2) == (16, 256, 5e-5, 0.9, 0.999)
    assert ms1.coherence_weight == 0.0 and ms2.coherence_weight == 0.1 and ms2.pretrained == ms1.output_dir

    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrained: tiny\nlearning_rat: 1e-4\n")
    with pytest.raises(ValueError, match="unknown training option.*learning_rat"):
        parse_config(["--config", str(bad)], stage=1)
    with pytest.raises(ValueError, match="kept for evaluation"):
        DiffusionTrainConfig(photos=("astronaut", "coffee"))
    with pytest.raises(ValueError, match="crop 256 is larger"):
        DiffusionTrainConfig(synth_width=128)
    with pytest.raises(FileNotFoundError, match="config file"):
        parse_config(["--config", str(tmp_path / "nope.yaml")], stage=1)


def test_script_errors_are_one_line(tmp_path):
    from vdiffdeblur.trainer.cli import main

    assert main(["--output_dir", str(tmp_path / "x"), "--max_train_steps", "1"], stage=1) == 2  # no --pretrained
    _reset_accelerate()
    assert main(["--pretrained", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "y")], stage=2) == 2
    _reset_accelerate()


def test_checkpoint_rotation_and_resume_resolution(tmp_path):
    from vdiffdeblur.trainer.checkpoints import list_checkpoints, prune_checkpoints, resolve_resume

    assert resolve_resume("latest", tmp_path) is None and resolve_resume(None, tmp_path) is None
    for s in (5, 10, 15):
        (tmp_path / f"checkpoint-{s}").mkdir()
    (tmp_path / "checkpoint-final").mkdir()  # not a step: ignored
    assert resolve_resume("latest", tmp_path).name == "checkpoint-15"
    assert resolve_resume("checkpoint-5", tmp_path) == tmp_path / "checkpoint-5"
    with pytest.raises(FileNotFoundError, match="checkpoint-7"):
        resolve_resume("checkpoint-7", tmp_path)
    prune_checkpoints(tmp_path, 2)  # runs after a checkpoint is complete: the newest 2 stay
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-15"]
    prune_checkpoints(tmp_path, 1, keep=tmp_path / "checkpoint-10")  # the one just written always stays
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10"]


def test_side_by_side_layout():
    from vdiffdeblur.trainer.validation import side_by_side

    f = np.zeros((5, 6, 8, 3), np.uint8)
    img = side_by_side(f + 10, f + 20, f + 30, rows=3, gap=2)
    assert img.shape == (3 * 6 + 4, 3 * 8 + 4, 3)
    assert img[0, 0, 0] == 10 and img[0, 10, 0] == 20 and img[0, 20, 0] == 30 and img[6, 0, 0] == 255


def test_training_data_order_is_seeded_and_validation_is_held_out():
    from vdiffdeblur.data.synthetic import EVAL_PHOTOS
    from vdiffdeblur.trainer.data import build_train_dataset, collate, validation_clips

    cfg = DiffusionTrainConfig(pretrained="tiny", clip_len=3, crop=32, synth_width=48, synth_height=48,
                               frames_per_clip=4, num_clips=4, samples_per_clip=2, num_validation_clips=2,
                               validation_frames=3, validation_size=32)
    a, b = build_train_dataset(cfg), build_train_dataset(cfg)
    ids_a = collate([a[i] for i in range(8)])["ids"]
    assert ids_a == collate([b[i] for i in range(8)])["ids"]
    assert [a[i]["index"] for i in range(8)] != list(range(8))  # shuffled
    a.set_epoch(1)
    assert collate([a[i] for i in range(8)])["ids"] != ids_a
    clips = validation_clips(cfg)
    assert len(clips) == 2 and all(c.name.split("#")[0] in EVAL_PHOTOS for c in clips)
    assert clips[0].blurry.shape == (3, 32, 32, 3)
    assert not validation_clips(DiffusionTrainConfig(pretrained="tiny", validation_data=None))


@pytest.mark.slow
def test_learning_happens_stage1_then_stage2(tmp_path):
    """A few hundred tiny steps on synthetic shake lower the validation loss in both stages (the documented run:
    docs/training.md "Learning curve")."""
    s1 = DiffusionTrainConfig.from_dict({**read_yaml_options(TINY_YAML, 1), "stage": 1,
                                         "output_dir": str(tmp_path / "s1"), "report_to": None,
                                         "validation_at_start": True})
    _train(s1)
    s2 = DiffusionTrainConfig.from_dict({**read_yaml_options(TINY_YAML, 2), "stage": 2,
                                         "pretrained": str(tmp_path / "s1"), "output_dir": str(tmp_path / "s2"),
                                         "report_to": None, "validation_at_start": True})
    _train(s2)
    for out in (s1.output_dir, s2.output_dir):
        curve = [h["val_diffusion"] for h in json.loads((Path(out) / "training_log.json").read_text())
                 if "val_diffusion" in h]
        assert len(curve) >= 7 and curve[-1] < 0.95 * curve[0], curve
