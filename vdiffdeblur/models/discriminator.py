"""The Markovian (PatchGAN) critic of the fit-to-test-data method (paper section III-B.4, after Li & Wand and
SinGAN): five hidden convolution layers, then a 1-channel convolution that scores every patch of the input.

It is a WGAN critic (trained with the gradient penalty in :mod:`vdiffdeblur.losses`), so it has no batch
normalisation (the penalty is per sample) and no sigmoid: its output is an unbounded score map.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class PatchCritic(ModelMixin, ConfigMixin):
    """``forward(x)`` (N, C, H, W) in [0, 1] -> (N, 1, h, w) scores, one per receptive-field patch.

    Args:
        in_channels: image channels.
        base_channels: width of the first hidden layer; doubles every layer up to ``max_channels``.
        hidden_layers: number of hidden (conv, LeakyReLU) layers; the paper uses five.
        strided_layers: how many of the first hidden layers halve the resolution.
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, base_channels: int = 32, hidden_layers: int = 5,
                 strided_layers: int = 3, max_channels: int = 256):
        super().__init__()
        if hidden_layers < 1 or not 0 <= strided_layers <= hidden_layers:
            raise ValueError(f"need hidden_layers >= 1 and 0 <= strided_layers <= hidden_layers, got "
                             f"{hidden_layers} and {strided_layers}")
        layers, c = [], in_channels
        for i in range(hidden_layers):
            w = min(base_channels * 2 ** i, max_channels)
            stride = 2 if i < strided_layers else 1
            layers += [nn.Conv2d(c, w, 4 if stride == 2 else 3, stride=stride, padding=1), nn.LeakyReLU(0.2)]
            c = w
        self.hidden = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.hidden(x * 2 - 1))
