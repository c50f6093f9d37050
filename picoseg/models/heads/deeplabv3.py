"""DeepLabV3 head: atrous spatial pyramid pooling (ASPP) with image pooling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from picoseg.models.heads.base import DecodeHead, resize_to
from picoseg.models.layers import ConvBNReLU


class ASPP(nn.Module):
    """Parallel 1x1 conv, 3x3 atrous convs at ``rates``, and global image pooling, concatenated
    and projected to ``channels``.

    Shapes: (B, in_channels, h, w) -> (B, channels, h, w).
    """

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, channels, 1)]
            + [ConvBNReLU(in_channels, channels, 3, dilation=r) for r in rates]
        )
        # No BatchNorm after pooling: a 1x1 map gives BN a single value per channel per image.
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True)
        )
        self.project = ConvBNReLU(channels * (len(rates) + 2), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        outs.append(resize_to(self.image_pool(x), x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Head(DecodeHead):
    """ASPP on the last level, then a 3x3 conv-BN-ReLU.

    Args: those of :class:`DecodeHead`, plus ``rates``, the atrous rates: (12, 24, 36) at output
    stride 8 as in the paper, (6, 12, 18) at output stride 16; scale them down for small inputs.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        num_classes: int,
        in_index: int = -1,
        channels: int = 256,
        rates: Sequence[int] = (12, 24, 36),
        dropout: float = 0.1,
        contrast_input: str = "decoder",
    ) -> None:
        super().__init__(
            in_channels, reductions, num_classes, in_index, channels, dropout, contrast_input
        )
        self.aspp = ASPP(self.in_channels[0], channels, rates)
        self.bottleneck = ConvBNReLU(channels, channels, 3)

    def decode(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.bottleneck(self.aspp(levels[0]))
