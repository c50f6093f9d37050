"""FCN head: a stack of convolutions on one level, or on several levels brought to the finest.

Several levels are upsampled to the finest, concatenated and fused by a 1x1 conv-BN-ReLU before
the stack. With ``in_index=[1, 2, 3, 4]`` and ``num_convs=0`` it is HRNetV2's head (upsample all
branches, concatenate, 1x1 conv-BN-ReLU, classifier).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from picoseg.models.heads.base import DecodeHead, concat_at_finest, resolve_levels
from picoseg.models.layers import ConvBNReLU


class FCNHead(DecodeHead):
    """Args: those of :class:`DecodeHead`, plus

    channels: as in :class:`DecodeHead`; ``None`` = the sum of the channels of the levels read
        (HRNetV2's head width: 720 on HRNet-W48).
    num_convs: conv-BN-ReLU layers after the fusion (or on the single level).
    kernel_size: their kernel size.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        num_classes: int,
        in_index: int | Sequence[int] = -1,
        channels: int | None = 256,
        num_convs: int = 2,
        kernel_size: int = 3,
        dropout: float = 0.1,
        contrast_input: str = "decoder",
    ) -> None:
        if channels is None:
            channels = sum(in_channels[i] for i in resolve_levels(in_index, len(in_channels)))
        super().__init__(
            in_channels, reductions, num_classes, in_index, channels, dropout, contrast_input
        )
        layers: list[nn.Module] = []
        width = sum(self.in_channels)
        if len(self.in_index) > 1 or num_convs == 0:
            layers.append(ConvBNReLU(width, channels, 1))
            width = channels
        for _ in range(num_convs):
            layers.append(ConvBNReLU(width, channels, kernel_size))
            width = channels
        self.convs = nn.Sequential(*layers)

    def decode(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.convs(concat_at_finest(levels, self.in_reductions))
