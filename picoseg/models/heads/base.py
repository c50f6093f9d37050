"""The part all segmentation heads share: picking backbone levels and the final classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from picoseg.models.output import SegmentationOutput

#: Where PiCo's projection head can attach (:class:`DecodeHead`'s ``contrast_input``).
CONTRAST_INPUTS = ("decoder", "fused")


def resolve_levels(in_index: int | Sequence[int], num_levels: int) -> list[int]:
    """Non-negative level indices of ``in_index`` (negative ones count from the last level).

    Raises:
        ValueError: an index outside ``[-num_levels, num_levels)``. Wrapping it around would
            silently read another level (``[1, 2, 3, 4]`` on a 4-level MiT would read level 0).
    """
    indices = [in_index] if isinstance(in_index, int) else list(in_index)
    bad = [i for i in indices if not -num_levels <= i < num_levels]
    if bad:
        raise ValueError(
            f"in_index {list(indices)}: {bad} out of range for a backbone with {num_levels} "
            f"levels (valid: 0..{num_levels - 1}, or -{num_levels}..-1 from the last)"
        )
    return [i % num_levels for i in indices]


class DecodeHead(nn.Module):
    """Base class: subclasses build ``decode(levels) -> features`` with ``self.channels`` outputs.

    Args:
        in_channels: channels of every backbone level (``Backbone.channels``).
        reductions: stride of every backbone level (``Backbone.reductions``).
        num_classes: number of classes of the classifier.
        in_index: the level(s) the head reads; negative indices count from the last level.
        channels: channels of the decoder features (the classifier's input).
        dropout: dropout before the 1x1 classifier.
        contrast_input: what PiCo's projection head reads (``SegmentationOutput.
            contrast_features``): ``decoder``, the decoder features the classifier reads, or
            ``fused``, the backbone levels the head reads, upsampled to the finest of them and
            concatenated (before any layer of the head): the reference code's branch point
            (HRNet and HRNet-OCR: the 720-channel concatenation of the branches; DeepLabV3: the
            backbone's last level), where the contrast shapes shared features and CE keeps
            layers of its own.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        num_classes: int,
        in_index: int | Sequence[int] = -1,
        channels: int = 256,
        dropout: float = 0.1,
        contrast_input: str = "decoder",
    ) -> None:
        super().__init__()
        if contrast_input not in CONTRAST_INPUTS:
            raise ValueError(
                f"contrast_input={contrast_input!r}: expected one of {CONTRAST_INPUTS}"
            )
        self.contrast_input = contrast_input
        self.in_index = resolve_levels(in_index, len(in_channels))
        self.in_channels = [in_channels[i] for i in self.in_index]
        self.in_reductions = [reductions[i] for i in self.in_index]
        self.channels = channels
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    @property
    def contrast_channels(self) -> int:
        """Channels of the features PiCo's projection head reads."""
        return sum(self.in_channels) if self.contrast_input == "fused" else self.channels

    def contrast_features(
        self, selected: Sequence[torch.Tensor], features: torch.Tensor
    ) -> torch.Tensor:
        """What the projection head reads: ``features`` (decoder) or the ``selected`` levels
        concatenated at the finest of them (fused)."""
        if self.contrast_input == "fused":
            return concat_at_finest(selected, self.in_reductions)
        return features

    @property
    def reduction(self) -> int:
        """Stride of the decoder features and logits (the finest level the head reads)."""
        return min(self.in_reductions)

    def select(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [levels[i] for i in self.in_index]

    def decode(self, levels: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, levels: Sequence[torch.Tensor]) -> SegmentationOutput:
        selected = self.select(levels)
        features = self.decode(selected)
        return SegmentationOutput(
            logits=self.classifier(self.dropout(features)),
            features=features,
            contrast_features=self.contrast_features(selected, features),
        )


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) to ``size``; a no-op when it already has that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def finest_size(levels: Sequence[torch.Tensor], reductions: Sequence[int]) -> torch.Size:
    """(h, w) of the finest level (smallest reduction) among ``levels``."""
    return levels[list(reductions).index(min(reductions))].shape[-2:]


def concat_at_finest(levels: Sequence[torch.Tensor], reductions: Sequence[int]) -> torch.Tensor:
    """Upsample ``levels`` to the finest of them and concatenate: (B, sum C_i, h_min, w_min)."""
    size = finest_size(levels, reductions)
    return torch.cat([resize_to(x, size) for x in levels], dim=1)
