"""The CloudMask reference U-Net (sciml-bench ``slstr_cloud``), in PyTorch.

Encoder 32-64-128, bottleneck 256, decoder 128-64-32; two 3x3 convolutions with
ReLU per level, 2x2 max-pooling down, nearest-neighbour upsampling and skip
concatenation up, a 1x1 convolution to one output. 1,948,609 parameters with
9 input channels. ``forward`` returns logits (train with ``BCEWithLogitsLoss``,
numerically safer than sigmoid + BCE); :meth:`UNet.predict_proba` applies the
sigmoid of the reference's last layer.
"""

from __future__ import annotations

import torch
from torch import nn

from reference_models.layers import double_conv, n_parameters

__all__ = ["UNet", "n_parameters"]


class UNet(nn.Module):
    def __init__(self, in_channels: int = 9, widths: tuple[int, ...] = (32, 64, 128), bottleneck: int = 256) -> None:
        super().__init__()
        if in_channels < 1 or not widths:
            raise ValueError(f"bad U-Net shape: in_channels={in_channels}, widths={widths}")
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.down.append(double_conv(c, w))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.bottom = double_conv(c, bottleneck)
        self.up = nn.ModuleList()
        c = bottleneck
        for w in reversed(widths):
            self.up.append(double_conv(c + w, w))
            c = w
        self.head = nn.Conv2d(c, 1, 1)
        self.factor = 2 ** len(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {self.factor}")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward(x))
