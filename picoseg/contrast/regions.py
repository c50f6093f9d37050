"""Region embeddings: the mean of the l2-normalised pixel embeddings of every (image, class),
l2-normalised; PiCo's pixel-to-region keys (in the batch and in the memory's region queue)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from picoseg.contrast.anchors import valid_labels

__all__ = ["region_embeddings", "squared_norms"]


def squared_norms(embeddings: Tensor) -> Tensor:
    """``sum_d x[b, d, p]^2`` of a (B, D, P) map, as (B, P) float32.

    On CPU, one in-place ``addcmul_`` per channel: the (B, P) accumulator stays in cache, which
    is about ten times faster than a reduction over the strided channel dim (``vector_norm``) or
    one that materialises ``x * x``. Elsewhere, one fused reduction.
    """
    if embeddings.device.type != "cpu":
        return torch.linalg.vecdot(embeddings.float(), embeddings.float(), dim=1)
    total = torch.zeros(
        embeddings.shape[0], embeddings.shape[2], device=embeddings.device, dtype=torch.float32
    )
    for channel in range(embeddings.shape[1]):
        plane = embeddings[:, channel].float()
        total.addcmul_(plane, plane)
    return total


def region_embeddings(
    projections: Tensor,
    labels: Tensor,
    num_classes: int,
    ignore_index: int = 255,
    max_elements: int = 1 << 24,
) -> tuple[Tensor, Tensor]:
    """Region embedding of every (image, class): the mean of its l2-normalised pixel embeddings,
    l2-normalised again.

    ``r_bc = normalize(sum_{p: label_p = c} e_p / ||e_p||)`` over the pixels of image b; the mean's
    1/n factor disappears in the normalisation. Computed as a batched product of the (B, D, hw)
    map with per-pixel weights ``1/||e_p||`` on a one-hot (hw, C) matrix, so the normalised map is
    never materialised; images go in chunks of at most ``max_elements`` one-hot entries.
    Differentiable; callers that want keys detach the input.

    Args:
        projections: (B, D, h, w) raw (not normalised) embeddings.
        labels: (B, h, w) int64 at the same resolution.
        num_classes: C.
        ignore_index: excluded label.
        max_elements: bound on ``images_per_chunk * h * w * C``.

    Returns:
        ``regions`` (B, C, D) float32 unit vectors (zero where invalid) and ``valid`` (B, C) bool
        (the class has at least one pixel in the image).
    """
    batch, dim, height, width = projections.shape
    if labels.shape != (batch, height, width):
        raise ValueError(
            f"region_embeddings: labels {tuple(labels.shape)} must be (B, h, w) = "
            f"{(batch, height, width)}"
        )
    num_pixels = height * width
    embeddings = projections.reshape(batch, dim, num_pixels)
    labels = labels.reshape(batch, num_pixels).long()
    valid = valid_labels(labels, ignore_index, num_classes)
    inverse_norm = squared_norms(embeddings).clamp_min(1e-24).rsqrt()
    weights = torch.where(valid, inverse_norm, 0.0)
    safe_labels = torch.where(valid, labels, 0)
    chunk = max(1, max_elements // max(1, num_pixels * num_classes))
    sums = []
    for start in range(0, batch, chunk):
        stop = min(batch, start + chunk)
        one_hot = torch.zeros(
            stop - start, num_pixels, num_classes, device=projections.device, dtype=torch.float32
        )
        one_hot.scatter_(
            2, safe_labels[start:stop].unsqueeze(-1), weights[start:stop].unsqueeze(-1)
        )
        sums.append(torch.bmm(embeddings[start:stop].float(), one_hot))
    region_sums = torch.cat(sums).transpose(1, 2)
    counts = torch.zeros(batch, num_classes, dtype=torch.long, device=projections.device)
    counts.scatter_add_(1, safe_labels, valid.long())
    region_valid = counts > 0
    regions = F.normalize(region_sums, dim=-1) * region_valid.unsqueeze(-1)
    return regions, region_valid
