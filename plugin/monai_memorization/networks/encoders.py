# Copyright (c) monai-memorization contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Embedding networks for the contrastive copy detector.

Two families, both built from MONAI components and both taking a one-channel image
``[B, 1, *spatial]`` in [0, 1] and returning an embedding ``[B, embed_dim]``:

* :class:`ResNetEncoder` -- ``monai.networks.nets.ResNet`` with bottleneck blocks; the default
  ``layers=(3, 4, 6, 3)`` is ResNet-50 (the study's 2D encoder, 128-d embedding).
* :class:`ConvEncoder` -- a strided convolutional encoder of MONAI ``ResidualUnit`` blocks with
  global average pooling and a linear head (the study's 3D encoder, 32-d embedding).

:func:`build_encoder` rebuilds either from the JSON-serialisable description stored in a
detector checkpoint, so a checkpoint never needs pickled code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ResidualUnit
from monai.networks.layers.factories import Pool
from monai.networks.nets import ResNet
from torch import nn

__all__ = ["ResNetEncoder", "ConvEncoder", "build_encoder", "ENCODERS"]


class ResNetEncoder(ResNet):
    """MONAI ResNet (bottleneck blocks) whose fully connected layer outputs the embedding.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (1 for grey-scale medical images).
        embed_dim: size of the embedding (the ResNet's ``num_classes``).
        layers: blocks per stage; ``(3, 4, 6, 3)`` is ResNet-50.
        block_inplanes: channels per stage before the bottleneck expansion.
        block: ``"bottleneck"`` (ResNet-50 style) or ``"basic"``.
        conv1_t_size: kernel size of the stem convolution.
        conv1_t_stride: stride of the stem convolution.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        embed_dim: int = 128,
        layers: Sequence[int] = (3, 4, 6, 3),
        block_inplanes: Sequence[int] = (64, 128, 256, 512),
        block: str = "bottleneck",
        conv1_t_size: int = 7,
        conv1_t_stride: int = 2,
    ) -> None:
        super().__init__(
            block=block,
            layers=list(layers),
            block_inplanes=list(block_inplanes),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=conv1_t_size,
            conv1_t_stride=conv1_t_stride,
            num_classes=embed_dim,
            feed_forward=True,
        )
        self.spatial_dims = spatial_dims
        self.embed_dim = embed_dim


class ConvEncoder(nn.Module):
    """Strided convolutional encoder: MONAI ``ResidualUnit`` stages, global pooling, linear head.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        embed_dim: size of the embedding.
        channels: output channels of each stage.
        strides: stride of each stage (2 halves the resolution).
        num_res_units: residual sub-units per stage.
        norm: MONAI norm layer name (e.g. ``"batch"``, ``"instance"``).
        dropout: dropout probability inside the residual units.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        embed_dim: int = 32,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 2,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError(f"channels {tuple(channels)} and strides {tuple(strides)} differ in length")
        self.spatial_dims = spatial_dims
        self.embed_dim = embed_dim
        stages = []
        c_in = in_channels
        for c_out, stride in zip(channels, strides):
            stages.append(
                ResidualUnit(
                    spatial_dims=spatial_dims,
                    in_channels=c_in,
                    out_channels=c_out,
                    strides=stride,
                    subunits=num_res_units,
                    norm=norm,
                    dropout=dropout,
                )
            )
            c_in = c_out
        self.features = nn.Sequential(*stages)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.head = nn.Linear(c_in, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C, *spatial]`` to ``[B, embed_dim]``."""
        x = self.pool(self.features(x)).flatten(1)
        return self.head(x)


ENCODERS = {"resnet": ResNetEncoder, "conv": ConvEncoder}


def build_encoder(name: str, **kwargs) -> nn.Module:
    """Build an encoder from its registered name and keyword arguments.

    Args:
        name: ``"resnet"`` (:class:`ResNetEncoder`) or ``"conv"`` (:class:`ConvEncoder`).
        kwargs: constructor arguments (JSON-serialisable).

    Returns:
        the encoder module.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; expected one of {sorted(ENCODERS)}")
    return ENCODERS[name](**kwargs)
