"""The diffusion deblurrer's losses (vdiffdeblur.losses, "diffusion deblurrer" section)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from vdiffdeblur.losses import diffusion_loss, diffusion_target, encoder_alignment_loss, temporal_coherence_loss
from vdiffdeblur.pipelines.tiny import TINY_SCHEDULER_CONFIG, TINY_V_SCHEDULER_CONFIG


def _video(seed: int, shape=(2, 4, 5, 6, 7)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- diffusion target
def test_epsilon_target_is_the_noise():
    sched = DDPMScheduler.from_config(TINY_SCHEDULER_CONFIG)
    x, n, t = _video(0), _video(1), torch.tensor([10, 900])
    assert torch.equal(diffusion_target(sched, x, n, t), n)


def test_v_target_is_the_velocity_per_sample_timestep():
    sched = DDPMScheduler.from_config(TINY_V_SCHEDULER_CONFIG)
    x, n, t = _video(0), _video(1), torch.tensor([10, 900])
    v = diffusion_target(sched, x, n, t)
    a = sched.alphas_cumprod[t].view(2, 1, 1, 1, 1)
    expected = a.sqrt() * n - (1 - a).sqrt() * x
    torch.testing.assert_close(v, expected)
    # it is neither the noise nor the sample, and the two samples use their own timesteps
    assert not torch.allclose(v, n) and not torch.allclose(v, x)
    torch.testing.assert_close(diffusion_target(sched, x[1:], n[1:], t[1:]), expected[1:])


def test_sample_target_and_unknown_type():
    x, n, t = _video(0), _video(1), torch.tensor([3, 4])
    sched = DDPMScheduler.from_config({**TINY_SCHEDULER_CONFIG, "prediction_type": "sample"})
    assert torch.equal(diffusion_target(sched, x, n, t), x)
    sched.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match="prediction_type 'flow'"):
        diffusion_target(sched, x, n, t)


def test_diffusion_loss_is_the_mse_in_float32():
    p, y = _video(0).half(), _video(1).half()
    loss = diffusion_loss(p, y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ((p.float() - y.float()) ** 2).mean())
    with pytest.raises(ValueError, match="differ in shape"):
        diffusion_loss(p, y[:, :, :3])


# ---------------------------------------------------------------------------------------- temporal coherence
def _coherence_by_loop(pred, target):
    """Eq. 4 written out: sum over j of ||(v_{j+1} - v_j) - (o_{j+1} - o_j)||^2 (squared L2 norm of the frame-pair
    difference, per sample), then the batch mean."""
    total = torch.zeros(pred.shape[0])
    for j in range(pred.shape[2] - 1):
        d = (target[:, :, j + 1] - target[:, :, j]) - (pred[:, :, j + 1] - pred[:, :, j])
        total += d.pow(2).flatten(1).sum(1)
    return total.mean()


def test_coherence_matches_eq4_written_out():
    pred, target = _video(0), _video(1)
    literal = _coherence_by_loop(pred, target)
    torch.testing.assert_close(temporal_coherence_loss(pred, target, reduction="sum"), literal)
    # default: each pair's squared norm averaged over its elements, summed over the F - 1 pairs
    per_pair_elems = pred[:, :, 0].numel()
    torch.testing.assert_close(temporal_coherence_loss(pred, target), literal * pred.shape[0] / per_pair_elems)
    torch.testing.assert_close(temporal_coherence_loss(pred, target, reduction="mean"),
                               literal * pred.shape[0] / per_pair_elems / (pred.shape[2] - 1))


def test_coherence_ignores_static_errors_and_sees_flicker():
    target = _video(1)
    static = target + torch.randn(2, 4, 1, 6, 7)  # the same error on every frame: no temporal change is wrong
    assert diffusion_loss(static, target) > 0.5
    assert temporal_coherence_loss(static, target).abs() < 1e-5
    flicker = target.clone()
    flicker[:, :, 2] += 1.0  # one frame off: two frame differences wrong
    assert temporal_coherence_loss(flicker, target) > 1.0


def test_coherence_single_frame_is_zero_with_graph_and_gradient_flows():
    p = _video(0, (1, 4, 1, 3, 3)).requires_grad_(True)
    loss = temporal_coherence_loss(p, torch.zeros_like(p))
    assert loss.item() == 0.0 and loss.requires_grad
    p2 = _video(0).requires_grad_(True)
    temporal_coherence_loss(p2, _video(1)).backward()
    assert p2.grad is not None and p2.grad.abs().sum() > 0


def test_coherence_frame_axis_and_errors():
    pred, target = _video(0), _video(1)
    torch.testing.assert_close(temporal_coherence_loss(pred.movedim(2, 1), target.movedim(2, 1), frame_dim=1),
                               temporal_coherence_loss(pred, target))
    with pytest.raises(ValueError, match="reduction"):
        temporal_coherence_loss(pred, target, reduction="max")
    with pytest.raises(ValueError, match="differ in shape"):
        temporal_coherence_loss(pred, target[:, :, :2])


# ---------------------------------------------------------------------------------------- encoder alignment
def test_alignment_loss_zero_when_aligned_and_teacher_gets_no_gradient():
    s = torch.randn(3, 16, requires_grad=True)
    t = torch.randn(3, 16, requires_grad=True)
    assert encoder_alignment_loss(s.detach() * 2.5, s.detach()).abs() < 1e-6  # cosine: scale-free
    assert encoder_alignment_loss(s.detach(), s.detach(), kind="mse") == 0
    loss = encoder_alignment_loss(s, t)
    assert 0 < loss < 2
    loss.backward()
    assert s.grad is not None and t.grad is None
    torch.testing.assert_close(encoder_alignment_loss(s, -s.detach()), torch.tensor(2.0))
    with pytest.raises(ValueError, match="cosine"):
        encoder_alignment_loss(s, t, kind="l1")
