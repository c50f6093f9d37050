"""Anchor sampling: which pixels of a batch become PiCo's anchors, and which pixels of every
class in every image the memory bank keeps.

Everything works on fixed-size tensors with validity masks, so that a training step has no host
synchronisation (no ``.item()``, ``.nonzero()`` or boolean-mask indexing) and no Python loop over
images x classes:

- :func:`sample_anchors` draws anchor pixels from the label map. Groups are (image, class) pairs;
  one ``sort`` of the pixels by (image, class, [correctness], random) ranks the pixels inside each
  group, and every group keeps its first ``n_view`` ranks.
- :func:`sample_group_pixels` uses the same ranking to pick ``V`` random pixels of every class in
  every image (for the memory bank).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["AnchorSample", "AnchorStrategy", "sample_anchors", "sample_group_pixels"]

AnchorStrategy = Literal["random", "seg_aware"]

_RANDOM_BITS = 31
_CLASS_SHIFT = 32
_IMAGE_SHIFT = 48
_MAX_CLASSES = 1 << (_IMAGE_SHIFT - _CLASS_SHIFT)
_INVALID_KEY = 1 << 62


@dataclass
class AnchorSample:
    """Anchors drawn from a label map, as fixed-size tensors.

    Attributes:
        batch: (N,) int64 image index of each anchor.
        pixel: (N,) int64 flat pixel index ``y * w + x`` inside its image.
        labels: (N,) int64 class of each anchor; -1 for empty slots.
        valid: (N,) bool, False for empty slots (N = ``max_anchors`` always).
    """

    batch: Tensor
    pixel: Tensor
    labels: Tensor
    valid: Tensor


def _random_bits(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None):
    return torch.randint(
        0, 1 << _RANDOM_BITS, shape, device=device, dtype=torch.long, generator=generator
    )


@dataclass
class _GroupRanks:
    """Pixels sorted by (image, class, [easy], random) and their ranks inside groups."""

    order: Tensor  # (P,) flat pixel index (over B*h*w) of each sorted position
    valid: Tensor  # (P,) bool, pixel is labelled (sorted order)
    image: Tensor  # (P,) image index
    label: Tensor  # (P,) class (sorted order)
    group_start: Tensor  # (P,) bool, first position of its (image, class) group
    group_first: Tensor  # (P,) sorted position of its group's first pixel
    group_rank: Tensor  # (P,) rank inside the (image, class) group
    group_size: Tensor  # (P,) size of its (image, class) group
    easy: Tensor | None  # (P,) bool, correctly classified (seg-aware only)
    sub_rank: Tensor | None  # (P,) rank inside its (image, class, easy) subgroup
    hard_count: Tensor | None  # (P,) number of misclassified pixels of its group


def _rank_groups(
    labels: Tensor,
    valid: Tensor,
    easy: Tensor | None,
    generator: torch.Generator | None,
) -> _GroupRanks:
    """Sorts the pixels of a batch by (image, class, [easy], random) with one int64 sort.

    Args:
        labels: (B, h, w) int64 classes in ``[0, 65536)`` where ``valid``.
        valid: (B, h, w) bool.
        easy: optional (B, h, w) bool; misclassified pixels sort before correct ones in a group.
        generator: random generator (None: the global one).
    """
    pixels_per_image = max(1, labels.shape[1] * labels.shape[2])
    flat_labels = labels.reshape(-1)
    flat_valid = valid.reshape(-1)
    num = flat_labels.shape[0]
    device = labels.device
    positions = torch.arange(num, device=device)
    image = positions // pixels_per_image
    keys = (image << _IMAGE_SHIFT) | (flat_labels.clamp(0, _MAX_CLASSES - 1) << _CLASS_SHIFT)
    keys = keys | _random_bits((num,), device, generator)
    if easy is not None:
        keys = keys | (easy.reshape(-1).long() << _RANDOM_BITS)
    keys = torch.where(flat_valid, keys, torch.full_like(keys, _INVALID_KEY) | positions)
    sorted_keys, order = torch.sort(keys)
    group = sorted_keys >> _CLASS_SHIFT
    sorted_valid = sorted_keys < _INVALID_KEY
    start = torch.ones(num, dtype=torch.bool, device=device)
    start[1:] = group[1:] != group[:-1]
    first = torch.cummax(torch.where(start, positions, torch.zeros_like(positions)), 0).values
    rank = positions - first
    group_id = torch.cumsum(start.long(), 0) - 1
    sizes = torch.zeros(num, dtype=torch.long, device=device)
    sizes.scatter_add_(0, group_id, torch.ones_like(group_id))
    group_size = sizes[group_id]
    sorted_easy = sub_rank = hard_count = None
    if easy is not None:
        sub = sorted_keys >> _RANDOM_BITS
        sub_start = torch.ones(num, dtype=torch.bool, device=device)
        sub_start[1:] = sub[1:] != sub[:-1]
        sub_first = torch.cummax(
            torch.where(sub_start, positions, torch.zeros_like(positions)), 0
        ).values
        sub_rank = positions - sub_first
        sorted_easy = (sub & 1).bool()
        hard = torch.zeros(num, dtype=torch.long, device=device)
        hard.scatter_add_(0, group_id, (~sorted_easy).long())
        hard_count = hard[group_id]
    return _GroupRanks(
        order=order,
        valid=sorted_valid,
        image=group >> (_IMAGE_SHIFT - _CLASS_SHIFT),
        label=group & (_MAX_CLASSES - 1),
        group_start=start,
        group_first=first,
        group_rank=rank,
        group_size=group_size,
        easy=sorted_easy,
        sub_rank=sub_rank,
        hard_count=hard_count,
    )


def valid_labels(labels: Tensor, ignore_index: int, num_classes: int | None = None) -> Tensor:
    """Labelled pixels: not ``ignore_index``, not negative and, if given, below ``num_classes``."""
    valid = (labels != ignore_index) & (labels >= 0)
    if num_classes is not None:
        valid = valid & (labels < num_classes)
    return valid


def sample_anchors(
    labels: Tensor,
    predictions: Tensor | None = None,
    *,
    strategy: AnchorStrategy = "random",
    max_anchors: int = 1024,
    max_views: int = 100,
    min_pixels: int = 10,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
) -> AnchorSample:
    """Draws anchor pixels per (image, class) group.

    Groups are the (image, class) pairs with at least ``min_pixels`` labelled pixels (the ignore
    label never forms a group). With G such groups, every group gets
    ``n_view = min(max_anchors // G, max_views)`` anchors, or all its pixels when it has fewer
    (the reference keeps only groups with more than ``max_views`` pixels, which drops every small
    object; here a small object contributes the pixels it has). The unused quota of small groups is
    not redistributed, so at most ``max_anchors`` anchors are drawn.

    - ``random``: the anchors of a group are uniform without replacement among its pixels.
    - ``seg_aware``: half of a group's anchors (``n // 2``) are misclassified pixels
      (``prediction != label``), the rest correctly classified ones; when one kind is short, the
      other fills the quota.

    Args:
        labels: (B, h, w) int64 classes at the embedding resolution; ``ignore_index`` excluded.
        predictions: (B, h, w) int64 predicted classes (``seg_aware`` only).
        strategy: ``random`` or ``seg_aware``.
        max_anchors: N, the size of the output (empty slots are marked invalid).
        max_views: cap on the anchors of one group.
        min_pixels: smallest group that gives anchors.
        ignore_index: label of unlabelled pixels.
        generator: random generator (None: the global one, reproducible under
            ``torch.manual_seed``).

    Returns:
        An :class:`AnchorSample` with N = ``max_anchors`` slots, grouped by image then class.
    """
    if labels.dim() != 3:
        raise ValueError(f"sample_anchors: labels must be (B, h, w), got {tuple(labels.shape)}")
    if strategy not in ("random", "seg_aware"):
        raise ValueError(f"sample_anchors: unknown anchor strategy {strategy!r}")
    labels = labels.long()
    valid = valid_labels(labels, ignore_index)
    easy = None
    if strategy == "seg_aware":
        if predictions is None:
            raise ValueError("sample_anchors: strategy 'seg_aware' needs predictions (B, h, w)")
        if predictions.shape != labels.shape:
            raise ValueError(
                f"sample_anchors: predictions {tuple(predictions.shape)} must match labels "
                f"{tuple(labels.shape)}"
            )
        easy = predictions.long() == labels
    ranks = _rank_groups(labels, valid, easy, generator)
    eligible = ranks.valid & (ranks.group_size >= max(1, min_pixels))
    num_groups = (eligible & ranks.group_start).sum()
    n_view = torch.clamp(max_anchors // num_groups.clamp(min=1), max=max_views)
    take = torch.minimum(ranks.group_size, n_view)
    if strategy == "random":
        selected = eligible & (ranks.group_rank < take)
        order_in_group = ranks.group_rank
    else:
        assert ranks.easy is not None and ranks.sub_rank is not None
        assert ranks.hard_count is not None
        easy_count = ranks.group_size - ranks.hard_count
        n_hard = torch.minimum(ranks.hard_count, torch.maximum(take // 2, take - easy_count))
        n_easy = take - n_hard
        selected = eligible & torch.where(
            ranks.easy, ranks.sub_rank < n_easy, ranks.sub_rank < n_hard
        )
        order_in_group = torch.where(ranks.easy, n_hard + ranks.sub_rank, ranks.sub_rank)
    contribution = torch.where(eligible & ranks.group_start, take, torch.zeros_like(take))
    inclusive = torch.cumsum(contribution, 0)
    offset = inclusive[ranks.group_first] - contribution[ranks.group_first]
    slot = torch.where(selected, offset + order_in_group, torch.full_like(offset, max_anchors))
    device = labels.device
    flat_pixel = torch.zeros(max_anchors + 1, dtype=torch.long, device=device)
    flat_pixel.scatter_(0, slot, ranks.order)
    out_valid = torch.zeros(max_anchors + 1, dtype=torch.bool, device=device)
    out_valid.scatter_(0, slot, selected)
    flat_pixel, out_valid = flat_pixel[:max_anchors], out_valid[:max_anchors]
    flat_pixel = torch.where(out_valid, flat_pixel, torch.zeros_like(flat_pixel))
    pixels_per_image = labels.shape[1] * labels.shape[2]
    out_labels = torch.where(out_valid, labels.reshape(-1)[flat_pixel], -1)
    return AnchorSample(
        batch=flat_pixel // pixels_per_image,
        pixel=flat_pixel % pixels_per_image,
        labels=out_labels,
        valid=out_valid,
    )


def sample_group_pixels(
    labels: Tensor,
    num_classes: int,
    per_group: int,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Picks ``per_group`` random pixels of every class in every image, from that class's pixels.

    Args:
        labels: (B, h, w) int64.
        num_classes: C; labels outside ``[0, C)`` and ``ignore_index`` are never picked.
        per_group: V; a class with fewer pixels in an image gives all of them.
        ignore_index: label of unlabelled pixels.
        generator: random generator (None: the global one).

    Returns:
        ``pixels`` (B, C, V) int64 flat pixel index inside the image (0 where invalid) and
        ``valid`` (B, C, V) bool.
    """
    batch, height, width = labels.shape
    labels = labels.long()
    valid = valid_labels(labels, ignore_index, num_classes)
    ranks = _rank_groups(labels, valid, None, generator)
    keep = ranks.valid & (ranks.group_rank < per_group)
    num_slots = batch * num_classes * per_group
    slot = (ranks.image * num_classes + ranks.label) * per_group + ranks.group_rank
    slot = torch.where(keep, slot, torch.full_like(slot, num_slots))
    device = labels.device
    pixels = torch.zeros(num_slots + 1, dtype=torch.long, device=device)
    pixels.scatter_(0, slot, ranks.order % (height * width))
    out_valid = torch.zeros(num_slots + 1, dtype=torch.bool, device=device)
    out_valid.scatter_(0, slot, keep)
    pixels = torch.where(out_valid[:num_slots], pixels[:num_slots], 0)
    shape = (batch, num_classes, per_group)
    return pixels.view(shape), out_valid[:num_slots].view(shape)
