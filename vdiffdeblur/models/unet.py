"""Helpers for the deblurring UNet (diffusers' `UNet3DConditionModel`): widening `conv_in` for the
blurry-clip latents, gradient checkpointing."""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "widen_conv_in", "enable_unet_gradient_checkpointing", "disable_unet_gradient_checkpointing",
    "is_unet_gradient_checkpointing", "checkpointed_blocks",
]

logger = logging.getLogger(__name__)

_ORIGINAL_FORWARD = "_vdd_original_forward"


def widen_conv_in(unet, extra_channels: int):
    """Give `unet.conv_in` `extra_channels` more input channels, zero-initialised, in place.

    The pretrained channels keep their weights and the new ones start at zero, so the widened UNet computes
    exactly what the original did whatever the extra input holds. `unet.config.in_channels` is updated so the
    UNet saves and reloads with the new width. Returns the UNet.
    """
    if extra_channels < 0:
        raise ValueError(f"extra_channels must be >= 0, got {extra_channels}")
    if extra_channels == 0:
        return unet
    old = unet.conv_in
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"unet.conv_in is a {type(old).__name__}, expected nn.Conv2d")
    new = nn.Conv2d(
        old.in_channels + extra_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
        padding=old.padding, dilation=old.dilation, groups=old.groups, bias=old.bias is not None,
        padding_mode=old.padding_mode, device=old.weight.device, dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)
    logger.info("widened conv_in from %d to %d input channels", old.in_channels, new.in_channels)
    return unet


# --------------------------------------------------------------------------------------- checkpointing
def checkpointed_blocks(unet) -> list[nn.Module]:
    """The blocks whose activations gradient checkpointing recomputes: every down, mid and up block."""
    blocks = list(unet.down_blocks) + list(unet.up_blocks)
    if getattr(unet, "mid_block", None) is not None:
        blocks.insert(len(unet.down_blocks), unet.mid_block)
    return blocks


def _checkpointed_forward(block: nn.Module, forward, *args, **kwargs):
    # only while training with gradients: inference and eval keep the plain forward
    if block.training and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def enable_unet_gradient_checkpointing(unet) -> None:
    """Gradient checkpointing for `UNet3DConditionModel`, which refuses `enable_gradient_checkpointing()`:
    each down/mid/up block's forward runs under `torch.utils.checkpoint` (non-reentrant) while the UNet is in
    training mode with gradients enabled, trading recomputation in the backward pass for activation memory.
    The state dict is unchanged (the blocks are not wrapped in new modules)."""
    for block in checkpointed_blocks(unet):
        if _ORIGINAL_FORWARD in block.__dict__:
            continue
        original = block.forward
        setattr(block, _ORIGINAL_FORWARD, original)
        block.forward = functools.partial(_checkpointed_forward, block, original)
    unet._vdd_gradient_checkpointing = True


def disable_unet_gradient_checkpointing(unet) -> None:
    for block in checkpointed_blocks(unet):
        if _ORIGINAL_FORWARD in block.__dict__:
            del block.__dict__["forward"]
            del block.__dict__[_ORIGINAL_FORWARD]
    unet._vdd_gradient_checkpointing = False


def is_unet_gradient_checkpointing(unet) -> bool:
    return bool(getattr(unet, "_vdd_gradient_checkpointing", False))
