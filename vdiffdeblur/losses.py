"""Training losses shared by the project's methods, one section per family.

Sections:
- re-weighting by sharpness (fit-to-test-data paper, eq. 3);
- pixel losses (the fallback of the perceptual loss when no VGG weights are given);
- adversarial: WGAN with gradient penalty (Gulrajani et al. 2017), used with the PatchGAN critic.

The perceptual loss itself (VGG-19 features from a local weights file) lives in
:mod:`vdiffdeblur.models.perceptual`, next to its weight loaders.
"""

from __future__ import annotations

import torch

from .sharpness import laplacian_variance


# ====================================================================== re-weighting by sharpness (eq. 3)
def patch_sharpness(patches: torch.Tensor) -> torch.Tensor:
    """M_VL of each patch (N, 3, h, w) in [0, 1], on the 0..255 scale of :func:`laplacian_variance`."""
    return laplacian_variance(patches.detach().float()).to(patches.dtype)


def reweight(per_sample_loss: torch.Tensor, sharpness: torch.Tensor, norm: float) -> torch.Tensor:
    """Eq. 3: the mean of ``M_VL / N * L`` over the batch.

    ``per_sample_loss`` (N,) is each patch's loss, ``sharpness`` (N,) each ground-truth patch's M_VL,
    ``norm`` the constant N (callers pass the mean M_VL of the frames they train on, so the weights
    average about one).
    """
    if norm <= 0:
        raise ValueError(f"the re-weighting constant N must be positive, got {norm}")
    if per_sample_loss.shape != sharpness.shape:
        raise ValueError(f"one loss per patch expected: loss {tuple(per_sample_loss.shape)}, "
                         f"sharpness {tuple(sharpness.shape)}")
    return (sharpness.to(per_sample_loss) / norm * per_sample_loss).mean()


# ====================================================================== pixel losses
def l1_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) mean absolute error of each sample."""
    return (pred - target).abs().flatten(1).mean(1)


def gradient_l1_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) mean absolute error of the horizontal and vertical finite differences (edges, texture); an image one
    pixel wide (or high) has no differences that way, and a 1x1 image none at all (zero)."""
    dx = (pred[..., :, 1:] - pred[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1])
    dy = (pred[..., 1:, :] - pred[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :])
    terms = [d.abs().flatten(1).mean(1) for d in (dx, dy) if d.numel()]
    return sum(terms) / len(terms) if terms else pred.new_zeros(pred.shape[0])


def pixel_loss_per_sample(pred: torch.Tensor, target: torch.Tensor, gradient_weight: float = 1.0) -> torch.Tensor:
    """(N,) L1 + ``gradient_weight`` x L1 of image gradients: the documented fallback of the perceptual loss."""
    loss = l1_per_sample(pred, target)
    if gradient_weight:
        loss = loss + gradient_weight * gradient_l1_per_sample(pred, target)
    return loss


# ====================================================================== adversarial: WGAN-GP
def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP: ``E[(||grad_x critic(x)||_2 - 1)^2]`` at random points ``x`` between real and fake samples.

    The interpolation weights are drawn with ``generator``; the penalty keeps the graph, so it can be
    back-propagated into the critic.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} samples differ in shape")
    # drawn where the generator lives (the CPU), then moved: a CPU generator cannot draw on a GPU
    gen_device = generator.device if generator is not None else real.device
    eps = torch.rand(real.shape[0], 1, 1, 1, generator=generator, device=gen_device, dtype=real.dtype).to(real.device)
    x = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(x)
    (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(critic, real: torch.Tensor, fake: torch.Tensor, gp_weight: float = 10.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The critic's WGAN-GP loss: ``E[D(fake)] - E[D(real)] + gp_weight * GP`` (fake is detached)."""
    return (critic(fake.detach()).mean() - critic(real).mean()
            + gp_weight * gradient_penalty(critic, real, fake, generator=generator))


def generator_adversarial_loss(critic, fake: torch.Tensor) -> torch.Tensor:
    """The generator's WGAN loss ``-E[D(fake)]``."""
    return -critic(fake).mean()


# ====================================================================== diffusion deblurrer (video diffusion paper)
# The losses of the two-stage training (DESIGN.md "The diffusion deblurrer"; paper eqs. 3-4). Videos are in
# diffusers' layout (B, C, F, h, w): the frame axis is dim 2.
def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet must predict, in the scheduler's parameterisation (``scheduler.config.prediction_type``):
    ``noise`` for ``epsilon``, ``scheduler.get_velocity(latents, noise, timesteps)`` for ``v_prediction``, the
    clean ``latents`` for ``sample``. A frozen UNet must be trained against its own parameterisation."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unknown scheduler prediction_type {kind!r}; expected epsilon, v_prediction or sample")


def diffusion_loss(model_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_base (eq. 3): the mean squared error between the UNet's output and the target, in float32."""
    if model_pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(model_pred.shape)} and target {tuple(target.shape)} differ in shape")
    return torch.nn.functional.mse_loss(model_pred.float(), target.float(), reduction="mean")


def temporal_coherence_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "sum_frames",
                            frame_dim: int = 2) -> torch.Tensor:
    """L_coherence (eq. 4): ``sum_j ||(v_{j+1} - v_j) - (o_{j+1} - o_j)||^2`` over consecutive frames ``j``, with
    ``o = pred`` the prediction and ``v = target`` its ground truth, frames along ``frame_dim`` (2 for diffusers'
    ``(B, C, F, h, w)``).

    ``reduction``: ``"sum_frames"`` (default) sums over the ``F - 1`` frame pairs and averages each pair's squared
    norm over its elements (and the batch), so a pair weighs like the MSE of L_base; ``"mean"`` also averages over
    the pairs; ``"sum"`` is the literal squared L2 norm summed over everything, averaged over the batch.
    A clip of one frame has no pair: the loss is 0 (keeping the graph).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if reduction not in ("sum_frames", "mean", "sum"):
        raise ValueError(f"reduction must be 'sum_frames', 'mean' or 'sum', got {reduction!r}")
    n = pred.shape[frame_dim]
    if n < 2:
        return (pred.float() * 0).sum()
    diff = torch.diff(pred.float(), dim=frame_dim) - torch.diff(target.float(), dim=frame_dim)
    sq = diff.pow(2).movedim(frame_dim, 1)  # (B, F-1, ...)
    if reduction == "sum":
        return sq.flatten(1).sum(1).mean()
    per_pair = sq.flatten(2).mean(2).mean(0)  # (F-1,)
    return per_pair.sum() if reduction == "sum_frames" else per_pair.mean()


def encoder_alignment_loss(student_embeds: torch.Tensor, teacher_embeds: torch.Tensor,
                           kind: str = "cosine") -> torch.Tensor:
    """Pulls image encoder 2's embedding of the blurry (centre) frame towards frozen image encoder 1's embedding of
    the sharp one (the teacher is detached). ``kind``: ``"cosine"`` (mean of ``1 - cos``) or ``"mse"``."""
    if student_embeds.shape != teacher_embeds.shape:
        raise ValueError(f"student {tuple(student_embeds.shape)} and teacher {tuple(teacher_embeds.shape)} "
                         "embeddings differ in shape")
    s, t = student_embeds.float(), teacher_embeds.detach().float()
    if kind == "cosine":
        return (1 - torch.nn.functional.cosine_similarity(s, t, dim=-1)).mean()
    if kind == "mse":
        return torch.nn.functional.mse_loss(s, t)
    raise ValueError(f"alignment loss kind must be 'cosine' or 'mse', got {kind!r}")
