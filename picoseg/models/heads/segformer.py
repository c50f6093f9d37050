"""SegFormer head: the all-MLP decoder of SegFormer (Xie et al., 2021).

Every level is mapped to ``embed_dim`` channels by a per-pixel linear layer (a 1x1 conv with
bias), upsampled to the finest level read (stride 4 on MiT), concatenated, and fused by a 1x1
conv-BN-ReLU to ``channels``; dropout and the 1x1 classifier follow (in :class:`DecodeHead`).
The paper uses ``embed_dim`` 256 on MiT-B0/B1 and 768 on MiT-B2..B5, with the fused width equal
to ``embed_dim``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from picoseg.models.heads.base import DecodeHead, finest_size, resize_to
from picoseg.models.layers import ConvBNReLU


class SegFormerHead(DecodeHead):
    """Args: those of :class:`DecodeHead`, plus

    embed_dim: width each level is mapped to before the fusion.

    Shapes: levels (B, in_channels[i], H / s_i, W / s_i) -> features (B, channels, H / s, W / s)
    and logits (B, num_classes, H / s, W / s), ``s`` the finest stride read.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        num_classes: int,
        in_index: int | Sequence[int] = (-4, -3, -2, -1),
        channels: int = 256,
        embed_dim: int = 256,
        dropout: float = 0.1,
        contrast_input: str = "decoder",
    ) -> None:
        super().__init__(
            in_channels, reductions, num_classes, in_index, channels, dropout, contrast_input
        )
        self.embed_dim = embed_dim
        self.linears = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in self.in_channels)
        self.fuse = ConvBNReLU(embed_dim * len(self.in_channels), channels, 1)

    def decode(self, levels: list[torch.Tensor]) -> torch.Tensor:
        size = finest_size(levels, self.in_reductions)
        embedded = [
            resize_to(linear(x), size) for linear, x in zip(self.linears, levels, strict=True)
        ]
        return self.fuse(torch.cat(embedded, dim=1))
