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
            classifier. Usually h' == h.
        aux_logits: named auxiliary class scores for deep supervision (e.g. OCRNet's soft object
            regions), each (B, num_classes, h'', w''); empty for most heads.
        class_logits: (B, N, num_classes + 1) class scores of N mask predictions, the last class
            being "no object"; set by mask classification heads (MaskFormer), else ``None``.
        mask_logits: (B, N, h, w) mask logits (before the sigmoid) of the same N predictions, at
            the stride of ``logits``; set by mask classification heads, else ``None``.
        aux_mask_outputs: ``(class_logits, mask_logits)`` of each earlier decoder layer, shaped
            as those two, for deep supervision; filled by mask classification heads in training
            mode only, else empty.
        contrast_features: what PiCo's projection head reads: ``features`` by default, or
            features from before the head's own layers (a head's ``contrast_input``).
            ``None`` means ``features`` (see :attr:`projection_input`).
    """

    logits: torch.Tensor
    features: torch.Tensor
    aux_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    class_logits: torch.Tensor | None = None
    mask_logits: torch.Tensor | None = None
    aux_mask_outputs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    contrast_features: torch.Tensor | None = None

    @property
    def projection_input(self) -> torch.Tensor:
        """The features PiCo's projection head reads."""
        return self.features if self.contrast_features is None else self.contrast_features
