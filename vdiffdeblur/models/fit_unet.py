"""FitUNet: the small U-Net that the fit-to-test-data method fits to one video (paper section III-B.3).

It predicts a *residual* that is added to its input, and its last convolution starts at zero, so a fresh
network is exactly the identity: a sharp frame goes through unchanged until training teaches it otherwise.
The input is first folded by ``PixelUnshuffle`` (space-to-depth), so the full-resolution work is done at
1/``unshuffle`` of the size; this keeps a training step cheap on a CPU while the receptive field
(``levels`` scales of two 3x3 convolutions) still covers long motion blur. Any frame size works: the
input is reflect-padded to the network's size multiple and the output cropped back.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..frames import crop_to, pad_to_multiple


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=False)


class ConvBlock(nn.Module):
    """``n`` (3x3 conv, LeakyReLU) pairs; residual when the width does not change."""

    def __init__(self, cin: int, cout: int, n: int = 2):
        super().__init__()
        layers = []
        for i in range(n):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), _act()]
        self.body = nn.Sequential(*layers)
        self.skip = cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.skip else y


class FitUNet(ModelMixin, ConfigMixin):
    """U-Net predicting a residual: ``forward(x) = x + r(x)`` for frames (N, C, H, W) in [0, 1].

    Args:
        in_channels / out_channels: image channels (3).
        base_channels: width of the first scale; each deeper scale doubles it (capped at ``max_channels``).
        levels: number of scales (each after the first halves the size).
        convs_per_block: 3x3 convolutions per block.
        unshuffle: space-to-depth factor applied before the first convolution (1 turns it off).
        max_channels: width cap of the deepest scales.
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_channels: int = 32, levels: int = 4,
                 convs_per_block: int = 2, unshuffle: int = 2, max_channels: int = 256):
        super().__init__()
        if levels < 1 or unshuffle < 1 or base_channels < 1:
            raise ValueError(f"need levels >= 1, unshuffle >= 1 and base_channels >= 1, got levels={levels}, "
                             f"unshuffle={unshuffle}, base_channels={base_channels}")
        if in_channels != out_channels:
            raise ValueError("a residual network needs in_channels == out_channels")
        widths = [min(base_channels * 2 ** i, max_channels) for i in range(levels)]
        s2 = unshuffle * unshuffle
        self.space_to_depth = nn.PixelUnshuffle(unshuffle) if unshuffle > 1 else nn.Identity()
        self.depth_to_space = nn.PixelShuffle(unshuffle) if unshuffle > 1 else nn.Identity()
        self.conv_in = nn.Sequential(nn.Conv2d(in_channels * s2, widths[0], 3, padding=1), _act())
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i in range(levels):
            self.down_blocks.append(ConvBlock(widths[i], widths[i], convs_per_block))
            if i < levels - 1:
                self.downsamplers.append(nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1),
                                                       _act()))
        self.mid_block = ConvBlock(widths[-1], widths[-1], convs_per_block)
        self.upsamplers = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(levels - 1)):
            self.upsamplers.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                                 nn.Conv2d(widths[i + 1], widths[i], 3, padding=1), _act()))
            self.up_blocks.append(nn.Sequential(nn.Conv2d(2 * widths[i], widths[i], 1), _act(),
                                                ConvBlock(widths[i], widths[i], convs_per_block)))
        self.conv_out = nn.Conv2d(widths[0], out_channels * s2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # identity at initialisation
        nn.init.zeros_(self.conv_out.bias)

    @property
    def size_multiple(self) -> int:
        return self.config.unshuffle * 2 ** (self.config.levels - 1)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted correction r(x) (same size as ``x``), without adding it."""
        x, size = pad_to_multiple(x, self.size_multiple)
        h = self.conv_in(self.space_to_depth(x))
        skips = []
        for i, block in enumerate(self.down_blocks):
            h = block(h)
            if i < len(self.downsamplers):
                skips.append(h)
                h = self.downsamplers[i](h)
        h = self.mid_block(h)
        for up, block in zip(self.upsamplers, self.up_blocks):
            h = up(h)
            h = block(torch.cat([h, skips.pop()], dim=1))
        r = self.depth_to_space(self.conv_out(h))
        return crop_to(r, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"FitUNet takes (N, {self.config.in_channels}, H, W) frames, got {tuple(x.shape)}")
        return x + self.residual(x).to(x.dtype)
