"""Ground-truth labels on the embedding grid the contrast loss samples from.

The projection map is at the decoder's stride (4 for HRNet and the FCN head, 8 for dilated
ResNets), so every embedding stands for a cell of ``stride x stride`` pixels. Which label the
cell gets is a choice (``model.label_resize``):

- ``nearest``: the cell's top-left pixel (``F.interpolate(mode="nearest")``), as the reference
  code's nearest resizing. On a class border the top-left pixel may belong to a class that
  covers little of the cell.
- ``center``: the pixel at the cell's centre (``mode="nearest-exact"``: pixel
  ``floor((i + 0.5) * stride)``), the pixel the cell's bilinearly upsampled logits are closest to.
- ``pure``: the label shared by all of the cell's pixels, and the ignore label for a cell that
  mixes labels (two classes, or a class and ignored pixels): the majority rule with every mixed
  cell set to ignore, so border cells are neither anchors nor keys.

The ratio of the sizes is read from the tensors, never assumed; for sizes that do not divide,
``pure`` uses the windows of adaptive pooling (they cover every pixel and may overlap by one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["LABEL_RESIZE_MODES", "mixed_cells", "resize_labels"]

LABEL_RESIZE_MODES = ("nearest", "center", "pure")


def _label_range(labels: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest and smallest label of each cell, (B, h, w) float."""
    x = labels[:, None].float()
    largest = F.adaptive_max_pool2d(x, tuple(size))
    smallest = -F.adaptive_max_pool2d(-x, tuple(size))
    return largest[:, 0], smallest[:, 0]


def resize_labels(
    labels: torch.Tensor, size: Sequence[int], mode: str = "nearest", ignore_index: int = 255
) -> torch.Tensor:
    """(B, H, W) integer labels -> (B, h, w) labels of the grid cells (see the module docstring).

    Label ids are never mixed or invented: every output is one of the cell's labels or, for
    ``pure``, ``ignore_index``.

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in LABEL_RESIZE_MODES:
        raise ValueError(f"label_resize={mode!r}: expected one of {LABEL_RESIZE_MODES}")
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    if mode == "pure":
        largest, smallest = _label_range(labels, size)
        return torch.where(largest == smallest, largest, float(ignore_index)).to(labels.dtype)
    interpolation = "nearest" if mode == "nearest" else "nearest-exact"
    resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode=interpolation)
    return resized[:, 0].to(labels.dtype)


def mixed_cells(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, h, w) bool: cells whose pixels do not all carry the same label (the ignore label
    counts as a label)."""
    largest, smallest = _label_range(labels, size)
    return largest != smallest
