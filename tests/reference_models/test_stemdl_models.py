"""STEMDL reference models: architecture facts and shapes."""

from __future__ import annotations

import pytest
import torch

from reference_models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from reference_models.layers import n_parameters
from reference_models.resnet import ResNetConfig, build, resnet50, resnet_small


def test_resnet50_is_torchvisions_architecture():
    # torchvision.models.resnet50() has 25,557,032 parameters with its 1000-way head.
    assert n_parameters(resnet50(num_classes=1000)) == 25_557_032
    model = resnet50()
    assert model.fc.out_features == 231 and model.conv1.in_channels == 3
    assert n_parameters(model) == 25_557_032 - 2049 * (1000 - 231)


def test_models_map_inputs_to_the_right_shapes():
    model = resnet_small(in_channels=1, num_classes=231).eval()
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 231)
    assert build("resnet-small")(torch.zeros(1, 3, 64, 64)).shape == (1, 231)
    net = EncoderDecoder(EncoderDecoderConfig(size=32)).eval()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="input size"):
        net(torch.zeros(1, 3, 64, 64))


def test_configs_are_validated():
    with pytest.raises(ValueError, match="block must be"):
        ResNetConfig(block="dense")
    with pytest.raises(ValueError, match="unknown model"):
        build("vgg")
    with pytest.raises(ValueError, match="multiple of 4"):
        EncoderDecoderConfig(size=30)
