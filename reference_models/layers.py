"""Building blocks shared by the reference models."""

from __future__ import annotations

from torch import nn


def double_conv(c_in: int, c_out: int, batch_norm: bool = False) -> nn.Sequential:
    """Two 3x3 convolutions (padding 1), each followed by ReLU; with ``batch_norm``, each convolution
    has no bias and is followed by a BatchNorm2d before its ReLU."""
    layers: list[nn.Module] = []
    for cin in (c_in, c_out):
        layers.append(nn.Conv2d(cin, c_out, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def n_parameters(model: nn.Module) -> int:
    """Number of parameters of a model (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
