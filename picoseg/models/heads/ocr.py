"""OCRNet head: object-contextual representations (Yuan, Chen and Wang, ECCV 2020).

Each pixel is described by the classes it probably belongs to. A light auxiliary classifier gives
soft object regions (one map per class); each region's representation is the average of the pixel
representations weighted by that region's spatial softmax; each pixel then attends to the K region
representations, and the attended context is concatenated with the pixel's own representation::

    levels --fuse--> x --3x3--> pixels (B, channels, h, w) -----------------+
        \\                                                                   |
         aux levels --fuse--> conv-BN-ReLU --1x1--> region_logits (B, K, h, w)
                                                    |                        |
        regions = softmax_over_pixels(region_logits) @ pixels  (B, K, channels)
        context = softmax_over_K(q(pixels) . k(regions) / sqrt(d)) @ v(regions)
        features = conv1x1-BN-ReLU([up(context), pixels])   (B, channels, h, w)

``region_logits`` are returned as ``aux_logits["ocr_regions"]``: the training system adds
``aux_weight * CE(region_logits)`` (0.4 by default, the paper's weight).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from picoseg.models.heads.base import DecodeHead, concat_at_finest, resize_to, resolve_levels
from picoseg.models.layers import ConvBNReLU
from picoseg.models.output import SegmentationOutput


def gather_regions(features: torch.Tensor, region_logits: torch.Tensor) -> torch.Tensor:
    """Object region representations: per class, the pixel features averaged with that class's
    softmax over pixels.

    ``regions[b, k] = sum_i softmax_i(region_logits[b, k])[i] * features[b, :, i]``

    Args:
        features: (B, C, h, w) pixel representations.
        region_logits: (B, K, h, w) soft object regions (class scores) on the same grid.

    Returns:
        (B, K, C) one representation per class.
    """
    if features.shape[-2:] != region_logits.shape[-2:]:
        raise ValueError(
            f"gather_regions: features {tuple(features.shape)} and region logits "
            f"{tuple(region_logits.shape)} must share the spatial size"
        )
    weights = region_logits.flatten(2).softmax(dim=2)  # (B, K, N)
    return weights @ features.flatten(2).transpose(1, 2)  # (B, K, C)


def region_attention(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Scaled dot-product attention of every pixel over the K regions.

    ``out[b, :, i] = sum_k softmax_k(q_i . k_k / sqrt(d)) * v_k``

    Args:
        queries: (B, d, N) one query per pixel.
        keys: (B, d, K) one key per region.
        values: (B, d_v, K) one value per region.

    Returns:
        (B, d_v, N) the attended region values per pixel.
    """
    scores = queries.transpose(1, 2) @ keys / math.sqrt(queries.shape[1])  # (B, N, K)
    return values @ scores.softmax(dim=2).transpose(1, 2)  # (B, d_v, N)


class ObjectAttention(nn.Module):
    """Pixel-to-region attention with learned transforms.

    Queries and keys go through two 1x1 conv-BN-ReLU to ``key_channels``; values through one;
    the attended values are brought back to ``channels`` by one more 1x1 conv-BN-ReLU (the
    paper's transforms psi, phi, delta and rho).

    Args:
        channels: channels of the pixel and region representations.
        key_channels: width of queries, keys and values.
    """

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.query = nn.Sequential(
            ConvBNReLU(channels, key_channels, 1), ConvBNReLU(key_channels, key_channels, 1)
        )
        self.key = nn.Sequential(
            ConvBNReLU(channels, key_channels, 1), ConvBNReLU(key_channels, key_channels, 1)
        )
        self.value = ConvBNReLU(channels, key_channels, 1)
        self.out = ConvBNReLU(key_channels, channels, 1)

    def forward(self, pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) pixels, (B, K, C) regions -> (B, C, h, w) object context per pixel."""
        b, _, h, w = pixels.shape
        regions = regions.transpose(1, 2).unsqueeze(-1)  # (B, C, K, 1): convs act per region
        context = region_attention(
            self.query(pixels).flatten(2),
            self.key(regions).flatten(2),
            self.value(regions).flatten(2),
        )
        return self.out(context.reshape(b, -1, h, w))


class OCRHead(DecodeHead):
    """OCRNet: pixel representations refined by attention to soft object regions.

    The levels in ``in_index`` are upsampled to the finest of them and concatenated (HRNet: all
    four branches, ``in_index=[1, 2, 3, 4]``; a dilated ResNet: the last level), then a 3x3
    conv-BN-ReLU gives the pixel representations. The auxiliary branch reads ``aux_in_index``
    (by default the same levels), fuses them the same way and predicts the soft object regions
    with a conv-BN-ReLU and a 1x1 classifier. On a ResNet-D8 the regions are commonly read from
    layer3 (``in_index=-1, aux_in_index=-2``); the region logits are resized to the pixel grid
    when the two level sets end at different strides.

    Args: those of :class:`DecodeHead` (``channels``: width of the pixel, region and
    object-contextual representations, 512 in the paper), plus

    key_channels: width of the attention's queries, keys and values (256 in the paper).
    aux_in_index: the level(s) the soft-region branch reads; ``None`` = ``in_index``.
    aux_channels: width of the soft-region branch's conv; ``None`` = the channels of its fused
        input (HRNet-OCR's choice, 720 on HRNet-W48).
    aux_kernel_size: kernel of that conv (1 in HRNet-OCR; 3 is common on ResNet layer3).

    Returns (``forward``): logits (B, num_classes, h, w) and features (B, channels, h, w) at the
    stride of the finest level in ``in_index``, and ``aux_logits["ocr_regions"]``
    (B, num_classes, h', w') at the finest stride of ``aux_in_index``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        num_classes: int,
        in_index: int | Sequence[int] = -1,
        channels: int = 512,
        key_channels: int = 256,
        aux_in_index: int | Sequence[int] | None = None,
        aux_channels: int | None = None,
        aux_kernel_size: int = 1,
        dropout: float = 0.05,
        contrast_input: str = "decoder",
    ) -> None:
        super().__init__(
            in_channels, reductions, num_classes, in_index, channels, dropout, contrast_input
        )
        if aux_in_index is None:
            self.aux_index = list(self.in_index)
        else:
            self.aux_index = resolve_levels(aux_in_index, len(in_channels))
        self.aux_reductions = [reductions[i] for i in self.aux_index]
        aux_width = sum(in_channels[i] for i in self.aux_index)
        aux_channels = aux_width if aux_channels is None else aux_channels
        self.pixels = ConvBNReLU(sum(self.in_channels), channels, 3)
        self.regions = nn.Sequential(
            ConvBNReLU(aux_width, aux_channels, aux_kernel_size),
            nn.Conv2d(aux_channels, num_classes, 1),
        )
        self.attention = ObjectAttention(channels, key_channels)
        self.bottleneck = ConvBNReLU(2 * channels, channels, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> SegmentationOutput:
        fused = concat_at_finest(self.select(levels), self.in_reductions)
        if self.aux_index == self.in_index:
            aux_fused = fused
        else:
            aux_fused = concat_at_finest([levels[i] for i in self.aux_index], self.aux_reductions)
        region_logits = self.regions(aux_fused)
        pixels = self.pixels(fused)
        regions = gather_regions(pixels, resize_to(region_logits, pixels.shape[-2:]))
        context = self.attention(pixels, regions)
        features = self.bottleneck(torch.cat([context, pixels], dim=1))
        return SegmentationOutput(
            logits=self.classifier(self.dropout(features)),
            features=features,
            contrast_features=fused if self.contrast_input == "fused" else features,
            aux_logits={"ocr_regions": region_logits},
        )
