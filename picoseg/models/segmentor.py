"""The inference network: backbone -> decoder head -> classifier."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from picoseg.inference import predict_probabilities
from picoseg.models.backbone import Backbone
from picoseg.models.heads.base import DecodeHead
from picoseg.models.output import SegmentationOutput


class Segmentor(nn.Module):
    """A plain ``nn.Module`` composing a backbone and a head.

    The head is given as a factory (Hydra ``_partial_: true``) and built here with the backbone's
    advertised ``channels`` and ``reductions``, so no channel count is ever written by hand.
    PiCo's projection head is not part of this module: the training system owns it, and this
    module is exactly what is exported for inference.

    Args:
        backbone: the feature extractor.
        head: ``head(in_channels=..., reductions=..., num_classes=...) -> DecodeHead``.
        num_classes: number of classes.
    """

    def __init__(
        self, backbone: Backbone, head: Callable[..., DecodeHead], num_classes: int
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head(
            in_channels=backbone.channels, reductions=backbone.reductions, num_classes=num_classes
        )
        self.num_classes = num_classes

    @property
    def feature_channels(self) -> int:
        """Channels of ``SegmentationOutput.features``, the classifier's input."""
        return self.head.channels

    @property
    def contrast_channels(self) -> int:
        """Channels of ``SegmentationOutput.projection_input``, what the projection head reads
        (the decoder features unless the head attaches the contrast elsewhere)."""
        return getattr(self.head, "contrast_channels", self.head.channels)

    @property
    def size_divisor(self) -> int:
        """What input heights and widths must be multiples of (the backbone's patch size for a
        ViT, 1 otherwise); inference pads to it (:func:`picoseg.inference.size_divisor`)."""
        return self.backbone.size_divisor

    def forward(self, images: torch.Tensor) -> SegmentationOutput:
        """(B, 3, H, W) -> logits and decoder features at the head's stride."""
        return self.head(self.backbone(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> class probabilities (B, num_classes, H, W) at the input size, one
        whole-image pass (see :func:`picoseg.inference.predict_probabilities` for sliding
        windows, scales and flips)."""
        return predict_probabilities(self, images)
