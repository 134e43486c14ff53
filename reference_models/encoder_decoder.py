"""Encoder-decoder for STEMDL reconstruction: three CBED patterns -> projected potential.

Diffraction is a global (Fourier) view of the crystal: a pixel of the potential
depends on the whole pattern, not on the pixels around it, so a purely
convolutional U-Net cannot place atoms. This network is a U-Net with a
fully connected latent: convolutional encoder (two 3x3 conv + BatchNorm + ReLU
per level, max-pool down) -> global average pool -> MLP -> a linear map onto
``template_channels`` feature maps at the bottleneck resolution (where
absolute positions are learned) -> concatenated with the bottleneck features ->
transposed-conv decoder with skip connections -> linear 1x1 output (a
regression, no activation). Input (B, 3, size, size); output (B, 1, size, size).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from reference_models.layers import double_conv


@dataclass(frozen=True)
class EncoderDecoderConfig:
    size: int = 128
    in_channels: int = 3
    out_channels: int = 1
    widths: tuple[int, ...] = (16, 32, 64)
    latent: int = 128
    template_channels: int = 8

    def __post_init__(self) -> None:
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"widths must have >= 2 positive entries, got {self.widths}")
        if self.size < 1 or self.size % self.factor:
            raise ValueError(f"size must be a positive multiple of {self.factor}, got {self.size}")
        if min(self.in_channels, self.out_channels, self.latent, self.template_channels) < 1:
            raise ValueError("in_channels, out_channels, latent and template_channels must be >= 1")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.widths) - 1)


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return double_conv(c_in, c_out, batch_norm=True)


class EncoderDecoder(nn.Module):
    def __init__(self, config: EncoderDecoderConfig = EncoderDecoderConfig()) -> None:
        super().__init__()
        self.config = config
        w, c = config.widths, config
        self.coarse = config.size // config.factor
        self.down = nn.ModuleList([_conv_bn(c.in_channels, w[0])] +
                                  [_conv_bn(a, b) for a, b in pairwise(w)])
        self.pool = nn.MaxPool2d(2)
        self.latent = nn.Sequential(nn.Linear(w[-1], c.latent), nn.ReLU(inplace=True),
                                    nn.Linear(c.latent, c.template_channels * self.coarse**2))
        self.bottleneck = _conv_bn(w[-1] + c.template_channels, w[-1])
        self.up = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in pairwise(w)][::-1])
        self.merge = nn.ModuleList([_conv_bn(2 * a, a) for a in w[:-1]][::-1])
        self.head = nn.Conv2d(w[0], c.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.config.size, self.config.size):
            raise ValueError(f"input size {tuple(x.shape[-2:])} != configured ({self.config.size}, {self.config.size})")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        t = self.latent(x.mean(dim=(2, 3))).view(len(x), self.config.template_channels, self.coarse, self.coarse)
        x = self.bottleneck(torch.cat([x, t], dim=1))
        for up, merge, skip in zip(self.up, self.merge, skips[-2::-1]):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)
