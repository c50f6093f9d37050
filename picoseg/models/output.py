"""What a segmentation network returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SegmentationOutput:
    """The output of a head and of the :class:`~picoseg.models.Segmentor`.

    Attributes:
        logits: (B, num_classes, h, w) class scores at the decoder's stride (not upsampled).
        features: (B, channels, h', w') the decoder's per-pixel features right before the
            classifier; PiCo's projection head reads them. Usually h' == h.
        aux_logits: named auxiliary class scores for deep supervision (e.g. OCRNet's soft object
            regions), each (B, num_classes, h'', w''); empty for most heads.
    """

    logits: torch.Tensor
    features: torch.Tensor
    aux_logits: dict[str, torch.Tensor] = field(default_factory=dict)
