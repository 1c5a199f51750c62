"""MAML (Algorithm 1) for the fit-to-test-data U-Net, its Accelerate training loop and the shipped initialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vdiffdeblur.data.synthetic import EVAL_PHOTOS, TRAIN_PHOTOS
from vdiffdeblur.models.fit_unet import FitUNet
from vdiffdeblur.models.perceptual import PerceptualLoss
from vdiffdeblur.trainer.maml import (
    MetaConfig,
    MetaTrainConfig,
    PhotoTasks,
    Task,
    adapt,
    meta_loss,
    meta_train,
    task_loss,
)

TINY = dict(base_channels=4, levels=2, max_channels=8)


class MSE:
    """A smooth per-sample loss for exact gradient checks, with the PerceptualLoss interface."""

    @staticmethod
    def per_sample(pred, target):
        return ((pred - target) ** 2).flatten(1).mean(1)


def _tiny_task(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 3, 16, 16, generator=g, dtype=dtype)
    blur = torch.nn.functional.avg_pool2d(target, 3, 1, 1)
    blur2 = torch.nn.functional.avg_pool2d(target, 5, 1, 2)
    return Task(support=blur, query=blur2, target=target, norm=1.0)


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    net = FitUNet(**TINY).double()
    for p in net.parameters():  # a non-trivial network (the residual head starts at zero otherwise)
        torch.nn.init.normal_(p, std=0.2)
    return net


def test_second_order_meta_gradient_is_exact_and_first_order_drops_a_term():
    net = _tiny_net()
    task = _tiny_task()
    cfg = MetaConfig(inner_lr=0.5, reweight=False)
    loss, _ = meta_loss(net, [task], MSE(), cfg)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    # finite differences of the meta-objective f(theta) = L(theta - alpha grad L_support(theta)) along a direction
    params = dict(net.named_parameters())
    g = torch.Generator().manual_seed(1)
    v = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}
    eps = 1e-5

    def f(sign):
        shifted = {k: (p + sign * eps * v[k]).detach().requires_grad_(True) for k, p in params.items()}
        adapted = adapt(net, shifted, task, MSE(), cfg)
        return float(task_loss(net, adapted, task.query, task.target, MSE(), None).detach())

    numeric = (f(+1) - f(-1)) / (2 * eps)
    analytic = sum(float((gr * v[k]).sum()) for gr, k in zip(grads, params))
    assert analytic == pytest.approx(numeric, rel=1e-4)
    fo_loss, _ = meta_loss(net, [task], MSE(), MetaConfig(inner_lr=0.5, reweight=False, first_order=True))
    fo = torch.autograd.grad(fo_loss, list(net.parameters()))
    fo_dir = sum(float((gr * v[k]).sum()) for gr, k in zip(fo, params))
    assert fo_loss.item() == pytest.approx(loss.item())  # same adapted network ...
    assert abs(fo_dir - numeric) > 1e-3 * abs(numeric)  # ... but without the second-order term


def test_inner_step_adapts_to_the_task():
    net = _tiny_net()
    task = _tiny_task()
    params = dict(net.named_parameters())
    before = float(task_loss(net, params, task.support, task.target, MSE(), None).detach())
    for steps in (1, 3):
        adapted = adapt(net, params, task, MSE(), MetaConfig(inner_lr=0.05, inner_steps=steps, reweight=False,
                                                            first_order=True))
        after = float(task_loss(net, adapted, task.support, task.target, MSE(), None).detach())
        assert after < before
    # the adapted parameters are new tensors; the network's own are untouched
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), params.values()))


def test_photo_tasks_use_training_photos_only_and_two_blurs_of_the_same_patches():
    cfg = MetaConfig(patch_size=32, patches_per_task=3, max_length=12, scales=(0.5,))
    with pytest.raises(ValueError, match="evaluation photos"):
        PhotoTasks(["astronaut", EVAL_PHOTOS[0]], cfg)
    tasks = PhotoTasks(["astronaut", "camera"], cfg)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    t = tasks.sample(rng, gen)
    assert t.support.shape == t.query.shape == t.target.shape == (3, 3, 32, 32)
    assert not torch.equal(t.support, t.query)  # Blur_i and Blur*_i: different kernels ...
    assert t.norm > 0
    # ... of the same ground truth: both stay close to it in their low frequencies
    low = lambda x: torch.nn.functional.avg_pool2d(x, 16)  # noqa: E731
    assert (low(t.support) - low(t.target)).abs().mean() < 0.08
    assert (low(t.query) - low(t.target)).abs().mean() < 0.08
    again = tasks.sample(np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert torch.equal(again.support, t.support)  # seeded
    assert set(TRAIN_PHOTOS).isdisjoint(EVAL_PHOTOS)


def test_photo_tasks_add_dead_leaves_pictures_but_validate_on_photos():
    from vdiffdeblur.trainer.maml import validation_tasks

    cfg = MetaConfig(patch_size=32, patches_per_task=2, max_length=12, scales=(0.5,))
    plain = PhotoTasks(["astronaut"], cfg)
    mixed = PhotoTasks(["astronaut"], MetaConfig(**{**cfg.__dict__, "dead_leaves": 3}))
    assert len(plain.images) == plain.num_photo_images == mixed.num_photo_images == 1
    assert len(mixed.images) == 4 and tuple(mixed.images[1].shape) == (3, 192, 256)  # 384x512 at scale 0.5
    assert torch.equal(mixed.images[0], plain.images[0]) and not torch.equal(mixed.images[1], mixed.images[2])
    a, b = validation_tasks(plain, n=3), validation_tasks(mixed, n=3)
    assert all(torch.equal(x.target, y.target) for x, y in zip(a, b))  # the same photo draws
    with pytest.raises(ValueError, match="dead_leaves"):
        MetaConfig(dead_leaves=-1)
    furry = PhotoTasks(["astronaut"], MetaConfig(**{**cfg.__dict__, "dead_leaves": 3, "fur_fraction": 1.0}))
    assert torch.equal(furry.images[0], plain.images[0]) and not torch.equal(furry.images[1], mixed.images[1])
    with pytest.raises(ValueError, match="fur_fraction"):
        MetaConfig(fur_fraction=2.0)


def test_meta_train_writes_a_loadable_init_and_resumes(tmp_path):
    meta = MetaConfig(patch_size=32, patches_per_task=2, tasks_per_step=1, max_length=8, scales=(0.5,),
                      first_order=True)
    cfg = MetaTrainConfig(output_dir=str(tmp_path / "run"), steps=4, log_steps=2, validation_steps=2,
                          checkpointing_steps=2, mixed_precision="no", lr_warmup_steps=1, num_threads=1,
                          base_channels=4, levels=2, max_channels=8, meta=meta)
    model = meta_train(cfg, photos=("astronaut",))
    out = tmp_path / "run"
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    info = json.loads((out / "meta_train.json").read_text())
    assert info["photos"] == ["astronaut"] and [h["step"] for h in info["history"]] == [2, 4]
    assert "val_gain_db" in info["history"][-1]
    loaded = FitUNet.from_pretrained(str(out))
    assert all(torch.equal(p, q) for p, q in zip(loaded.parameters(), model.parameters()))
    assert any(p.abs().sum() > 0 for p in loaded.conv_out.parameters())  # it learned something
    ckpt = out / "checkpoint-2"
    assert (ckpt / "fit_unet" / "config.json").is_file()
    cfg.resume_from_checkpoint = "latest"
    cfg.steps = 6
    meta_train(cfg, photos=("astronaut",))
    info = json.loads((out / "meta_train.json").read_text())
    assert [h["step"] for h in info["history"]] == [4, 6]  # resumed after checkpoint-2... at the latest one
    with pytest.raises(FileNotFoundError):
        meta_train(MetaTrainConfig(output_dir=str(tmp_path / "empty"), steps=1, resume_from_checkpoint="latest",
                                   mixed_precision="no", base_channels=4, levels=2, max_channels=8, meta=meta),
                   photos=("astronaut",))


def test_the_shipped_initialisation():
    from vdiffdeblur.methods.fit.initialisation import SHIPPED_INIT, load_init

    files = {p.name: p.stat().st_size for p in SHIPPED_INIT.iterdir()}
    assert "config.json" in files and "diffusion_pytorch_model.safetensors" in files
    assert sum(files.values()) < 12 * 2 ** 20  # a few MB
    net = load_init("maml")
    assert isinstance(net, FitUNet)
    # the stages it came from: tests/test_recipes.py checks their records against training/recipes/fit.yaml
    x = torch.rand(1, 3, 37, 45)
    with torch.no_grad():
        assert net(x).shape == x.shape
    # "random" builds the same layout as the shipped network
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert public(load_init("random").config) == public(net.config)


def test_perceptual_fallback_drives_meta_loss():
    net = FitUNet(**TINY)
    task = _tiny_task(dtype=torch.float32)
    loss, before = meta_loss(net, [task], PerceptualLoss(None), MetaConfig(reweight=True))
    assert loss.requires_grad and before > 0
