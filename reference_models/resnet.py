"""ResNets in plain PyTorch (torchvision's architecture, without torchvision).

``resnet50`` is the STEMDL reference: 3 input channels (the three projections),
a 231-way head (space groups 0..230). ``resnet_small`` is a 4-stage
basic-block ResNet for the CPU demo and tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from scibench_data.formats.stemdl import N_CLASSES


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(c_in, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


@dataclass(frozen=True)
class ResNetConfig:
    """Architecture of a ResNet; validated at construction."""

    block: str = "bottleneck"  # or "basic"
    layers: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: int = 64
    stem_kernel: int = 7
    stem_pool: bool = True  # the 3x3/2 max-pool after the stem
    in_channels: int = 3
    num_classes: int = N_CLASSES

    def __post_init__(self) -> None:
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
        if len(self.layers) != len(self.widths) or not self.layers or min(self.layers) < 1:
            raise ValueError(f"layers {self.layers} and widths {self.widths} must be non-empty, same length, >= 1")
        if self.stem_kernel not in (3, 5, 7):
            raise ValueError(f"stem_kernel must be 3, 5 or 7, got {self.stem_kernel}")
        if self.in_channels < 1 or self.num_classes < 2:
            raise ValueError(f"in_channels must be >= 1 and num_classes >= 2, got {self.in_channels}, {self.num_classes}")


class ResNet(nn.Module):
    """Stem (7x7/2 conv + 3x3/2 max-pool by default), stages, global average pool, linear head."""

    def __init__(self, config: ResNetConfig = ResNetConfig()) -> None:
        super().__init__()
        self.config = config
        block = Bottleneck if config.block == "bottleneck" else BasicBlock
        k = config.stem_kernel
        self.conv1 = nn.Conv2d(config.in_channels, config.stem, k, 2, k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(config.stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if config.stem_pool else nn.Identity()
        stages, c = [], config.stem
        for i, (n, w) in enumerate(zip(config.layers, config.widths)):
            blocks = []
            for j in range(n):
                blocks.append(block(c, w, 2 if (j == 0 and i > 0) else 1))
                c = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, config.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layers(x)).flatten(1)
        return self.fc(x)


def resnet50(in_channels: int = 3, num_classes: int = N_CLASSES) -> ResNet:
    """The reference ResNet-50 (bottleneck blocks 3-4-6-3, widths 64-512)."""
    return ResNet(ResNetConfig(in_channels=in_channels, num_classes=num_classes))


def resnet_small(in_channels: int = 3, num_classes: int = N_CLASSES, width: int = 16,
                 layers: Sequence[int] = (1, 1, 1, 1)) -> ResNet:
    """A small basic-block ResNet (widths ``width`` x 1, 2, 4, 8) for CPU demos and tests, with a
    3x3/2 stem and no max-pool: small patterns (32-128 pixels) keep spatial detail for longer."""
    return ResNet(ResNetConfig(block="basic", layers=tuple(layers), widths=tuple(width * m for m in (1, 2, 4, 8)),
                               stem=width, stem_kernel=3, stem_pool=False, in_channels=in_channels,
                               num_classes=num_classes))


MODELS = {"resnet50": resnet50, "resnet-small": resnet_small}


def build(name: str, in_channels: int = 3, num_classes: int = N_CLASSES) -> ResNet:
    """A model by name: ``resnet50`` (reference) or ``resnet-small`` (demo)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](in_channels=in_channels, num_classes=num_classes)
