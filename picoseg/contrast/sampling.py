"""Anchor sampling and per-anchor key selection for pixel contrast.

Everything here works on fixed-size tensors with validity masks, so that a training step has no host
synchronisation (no ``.item()``, ``.nonzero()`` or boolean-mask indexing) and no Python loop over
images x classes:

- :func:`sample_anchors` draws anchor pixels from the label map. Groups are (image, class) pairs;
  one ``sort`` of the pixels by (image, class, [correctness], random) ranks the pixels inside each
  group, and every group keeps its first ``n_view`` ranks.
- :func:`sample_group_pixels` uses the same ranking to pick ``V`` random pixels of every class in
  every image (for the memory bank).
- :func:`region_embeddings` averages the l2-normalised pixel embeddings of every (image, class).
- :func:`select_keys` chooses, for every anchor, a subset of the keys of a :class:`KeyPool` (the
  memory): hardest, semi-hard or random positives and negatives. It works on similarities
  ``s_ij = a_i . k_j`` computed block by block over the anchors, so no ``(N, K, D)`` tensor is
  built.

:class:`PixelSampler` bundles the strategies and their sizes for Hydra.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

AnchorStrategy = Literal["random", "seg_aware"]
KeyStrategy = Literal["random", "hardest", "semi_hard", "all"]

_RANDOM_BITS = 31
_CLASS_SHIFT = 32
_IMAGE_SHIFT = 48
_MAX_CLASSES = 1 << (_IMAGE_SHIFT - _CLASS_SHIFT)
_INVALID_KEY = 1 << 62
# Similarities of unit vectors lie in [-1, 1]; anything larger in magnitude is a +-inf sentinel.
_REAL = 1.5


# --------------------------------------------------------------------------------------------------
# Data holders
# --------------------------------------------------------------------------------------------------


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


@dataclass
class KeyPool:
    """A class-sorted set of keys, e.g. the filled slots of the memory bank.

    The pool's keys are rows of ``storage``; pool column ``j`` is storage row ``rows[j]``. Columns
    are sorted by class: the keys of class ``c`` are the columns
    ``[class_offset[c], class_offset[c] + class_count[c])``. ``runs`` lists the contiguous stretches
    of storage rows as host integers ``(row_start, length, column_start)`` so that similarities are
    computed with one matrix product per run, straight from the storage (no copy of the keys).

    Attributes:
        storage: (R, D) l2-normalised keys, detached.
        runs: host list of ``(row_start, length, column_start)``.
        size: number of columns M (host int).
        labels: (M,) int64 class of each column.
        rows: (M,) int64 storage row of each column.
        is_region: (M,) bool, True for region keys (only used to split the loss for logging).
        class_offset: (C,) int64 first column of each class.
        class_count: (C,) int64 number of columns of each class.
        max_count: host int, an upper bound of ``class_count`` (the queue capacity).
    """

    storage: Tensor
    runs: list[tuple[int, int, int]]
    size: int
    labels: Tensor
    rows: Tensor
    is_region: Tensor
    class_offset: Tensor
    class_count: Tensor
    max_count: int

    @property
    def num_classes(self) -> int:
        return self.class_count.shape[0]

    def storage_rows(self, columns: Tensor) -> Tensor:
        """Storage rows of pool columns (no gather when the columns are the rows)."""
        if self.runs == [(0, self.size, 0)]:
            return columns
        return self.rows[columns]

    @classmethod
    def from_counts(
        cls,
        storage: Tensor,
        slot_counts: Sequence[Sequence[int]],
        part_offsets: Sequence[int],
        part_sizes: Sequence[int],
        part_is_region: Sequence[bool],
        stride: int,
        slot_starts: Sequence[Sequence[int]] | None = None,
    ) -> KeyPool:
        """Builds the pool of the filled slots of per-class ring buffers.

        The storage holds, for every class ``c``, a block of ``stride`` rows starting at row
        ``c * stride``; inside it, part ``p`` (e.g. pixel queue, region queue) occupies the rows
        ``[part_offsets[p], part_offsets[p] + part_sizes[p])``. Its ``slot_counts[p][c]``
        keys are the slots ``slot_starts[p][c], +1, ...`` (mod the part's size); without
        ``slot_starts``, the first slots (a ring buffer fills from slot 0 and, once full, stays
        full). Only host integers are read: no synchronisation.

        Args:
            storage: (C * stride, D) keys.
            slot_counts: per part, the C numbers of keys (host ints).
            part_offsets: first row of each part inside a class block.
            part_sizes: capacity of each part.
            part_is_region: whether each part holds region keys.
            stride: rows per class block.
            slot_starts: per part, the C first slots of the keys (host ints; a stretch that
                passes the end of the part continues at its slot 0). ``None``: all 0.
        """
        device = storage.device
        num_classes = len(slot_counts[0])
        segments: list[tuple[int, int, int, bool]] = []  # (row_start, length, class, is_region)
        counts = []
        for c in range(num_classes):
            class_total = 0
            for p, offset in enumerate(part_offsets):
                length = int(slot_counts[p][c])
                start = int(slot_starts[p][c]) if slot_starts is not None else 0
                first = min(length, int(part_sizes[p]) - start)
                region = bool(part_is_region[p])
                if first > 0:
                    segments.append((c * stride + offset + start, first, c, region))
                if length > first:  # wraps around to the part's slot 0
                    segments.append((c * stride + offset, length - first, c, region))
                class_total += length
            counts.append(class_total)
        runs: list[tuple[int, int, int]] = []
        column = 0
        for row_start, length, _, _ in segments:
            if runs and runs[-1][0] + runs[-1][1] == row_start:
                runs[-1] = (runs[-1][0], runs[-1][1] + length, runs[-1][2])
            else:
                runs.append((row_start, length, column))
            column += length
        size = column
        if size > 0:
            lengths = torch.tensor([s[1] for s in segments], device=device)
            label_tensor = torch.repeat_interleave(
                torch.tensor([s[2] for s in segments], device=device), lengths, output_size=size
            )
            region_tensor = torch.repeat_interleave(
                torch.tensor([s[3] for s in segments], device=device), lengths, output_size=size
            )
            row_tensor = torch.cat([torch.arange(r, r + n, device=device) for r, n, _ in runs])
        else:
            label_tensor = torch.zeros(0, dtype=torch.long, device=device)
            row_tensor = torch.zeros(0, dtype=torch.long, device=device)
            region_tensor = torch.zeros(0, dtype=torch.bool, device=device)
        count_tensor = torch.tensor(counts, dtype=torch.long, device=device)
        return cls(
            storage=storage,
            runs=runs,
            size=size,
            labels=label_tensor,
            rows=row_tensor,
            is_region=region_tensor,
            class_offset=torch.cumsum(count_tensor, 0) - count_tensor,
            class_count=count_tensor,
            max_count=int(sum(part_sizes)),
        )

    @classmethod
    def from_keys(
        cls,
        keys: Tensor,
        labels: Tensor,
        num_classes: int,
        is_region: Tensor | None = None,
    ) -> KeyPool:
        """Builds a pool from arbitrary keys by sorting them by class (copies the keys).

        Meant for tests and small key sets; it reads the class counts on the host.

        Args:
            keys: (M, D) l2-normalised keys.
            labels: (M,) int64 classes in ``[0, num_classes)``.
            num_classes: C.
            is_region: optional (M,) bool.
        """
        order = torch.argsort(labels, stable=True)
        storage = keys[order].detach()
        sorted_labels = labels[order]
        counts = torch.bincount(sorted_labels, minlength=num_classes)
        size = keys.shape[0]
        region = (
            is_region[order]
            if is_region is not None
            else torch.zeros(size, dtype=torch.bool, device=keys.device)
        )
        return cls(
            storage=storage,
            runs=[(0, size, 0)] if size > 0 else [],
            size=size,
            labels=sorted_labels,
            rows=torch.arange(size, device=keys.device),
            is_region=region,
            class_offset=torch.cumsum(counts, 0) - counts,
            class_count=counts,
            max_count=int(counts.max()) if size > 0 else 0,
        )


@dataclass
class KeySelection:
    """Per-anchor subsets of the columns of a :class:`KeyPool`.

    Attributes:
        columns: (N, K) int64 pool columns (0 where not ``valid``).
        similarity: (N, K) float32 ``a_i . k_j`` of the chosen keys (detached, exact dot products).
        is_positive: (N, K) bool, True for positives (the first ``K_pos`` columns), False for
            negatives.
        valid: (N, K) bool, False for empty slots (fewer keys available than requested).
        hard_columns: (N, H) int64 columns of each anchor's H most similar negatives (for
            synthesis; H = 0 when not requested).
        hard_similarity: (N, H) float32 their similarities.
        hard_valid: (N, H) bool.
    """

    columns: Tensor
    similarity: Tensor
    is_positive: Tensor
    valid: Tensor
    hard_columns: Tensor
    hard_similarity: Tensor
    hard_valid: Tensor


# --------------------------------------------------------------------------------------------------
# Ranking pixels inside (image, class) groups
# --------------------------------------------------------------------------------------------------


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


def _valid_labels(labels: Tensor, ignore_index: int, num_classes: int | None = None) -> Tensor:
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
    valid = _valid_labels(labels, ignore_index)
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
    valid = _valid_labels(labels, ignore_index, num_classes)
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
    valid = _valid_labels(labels, ignore_index, num_classes)
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


# --------------------------------------------------------------------------------------------------
# Key selection
# --------------------------------------------------------------------------------------------------


def _random_subset(
    values: Tensor, count: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Chooses ``count`` entries of each row uniformly among its real entries (|value| <= 1).

    Args:
        values: (n, L) similarities, or +-inf for entries that are not eligible.
        count: how many to choose (<= L).

    Returns:
        ``index`` (n, count) into the row and ``valid`` (n, count) (False when the row had fewer
        eligible entries).
    """
    noise = torch.rand(values.shape, device=values.device, generator=generator)
    noise = torch.where(values.abs() <= _REAL, noise, -1.0)
    picked, index = torch.topk(noise, count, dim=1, sorted=False)
    return index, picked >= 0


def _pool_size(count: Tensor, fraction: float) -> Tensor:
    return torch.ceil(count.double() * fraction).long().clamp(max=count)


def select_keys(
    anchors: Tensor,
    anchor_labels: Tensor,
    pool: KeyPool,
    *,
    strategy: KeyStrategy = "semi_hard",
    num_positives: int = 1024,
    num_negatives: int = 2048,
    semi_hard_fraction: float = 0.1,
    num_hard: int = 0,
    generator: torch.Generator | None = None,
    block_elements: int = 1 << 25,
) -> KeySelection:
    """Selects, for every anchor, positives and negatives among the keys of a pool.

    For anchor i of class c, the positives are the pool's keys of class c and the negatives all
    the others (anchors with label < 0 have neither). With ``n`` candidates of a kind and ``K``
    requested (``num_positives`` or ``num_negatives``):

    - ``hardest``: the K negatives most similar to the anchor and the K positives least similar;
    - ``semi_hard``: the pool of the ``ceil(fraction * n)`` most similar negatives (least similar
      positives), then K of them uniformly at random without replacement (all of the pool when it
      has fewer than K). With the defaults and a full memory, an anchor's 180,000 negatives give
      a pool of 18,000 from which 2,048 are drawn, and its class's 10,000 positives a pool of
      1,000, all of which are used;
    - ``random``: K uniformly at random without replacement;
    - when fewer than K candidates exist, all of them are used and the rest of the K slots are
      marked invalid.

    The similarities are computed block by block over the anchors: a block of n anchors
    materialises one (n, M) float block, n = ``block_elements // M``. Each block's
    similarities come from one matrix product per contiguous run of storage rows; the anchor's
    own class is masked out of the negatives with one ``scatter`` of its (n, max_count) columns,
    and one ``topk`` per block does the selection. To make the per-anchor semi-hard pool exact
    with a single fixed-k ``topk``, ``k* - pool_i`` of the anchor's own-class columns are set to
    +inf (dummies that fill the top of the row and are discarded afterwards); ``k* - pool_i`` never
    exceeds the number of own-class columns.

    ``num_hard`` > 0 also returns each anchor's H most similar negatives (synthesis uses them).
    They come from the same ``topk`` when its result is guaranteed to contain them (hardest with
    K >= H, semi-hard when every pool holds at least H), otherwise from one extra ``topk``.

    Runs without autograd; the returned similarities are exact dot products (from the same matrix
    product), so the loss can reuse them and only back-propagate.

    Args:
        anchors: (N, D) l2-normalised anchors (detached inside).
        anchor_labels: (N,) int64; < 0 marks empty anchor slots.
        pool: the keys.
        strategy: ``hardest``, ``semi_hard`` or ``random`` (``all`` is handled by the loss, which
            then uses every key).
        num_positives: K_pos.
        num_negatives: K_neg.
        semi_hard_fraction: the fraction q of the semi-hard pool.
        num_hard: H, hardest negatives to return as well.
        generator: random generator (None: the global one).
        block_elements: bound on the entries of one similarity block.

    Returns:
        A :class:`KeySelection` with ``min(K_pos, max_count) + min(K_neg, M)`` columns per anchor
        (semi-hard: ``min(K_pos, ceil(q max_count)) + min(K_neg, ceil(q M))``), positives first.
    """
    if strategy not in ("hardest", "semi_hard", "random"):
        raise ValueError(f"select_keys: unknown key strategy {strategy!r}")
    if not 0.0 < semi_hard_fraction <= 1.0:
        raise ValueError(
            f"select_keys: semi_hard_fraction must be in (0, 1], got {semi_hard_fraction}"
        )
    device = anchors.device
    num_anchors = anchors.shape[0]
    size = pool.size
    max_count = max(pool.max_count, 0) if size > 0 else 0
    k_pos = min(num_positives, max_count)
    k_neg = min(num_negatives, size)
    k_hard = min(num_hard, size)
    empty_long = torch.zeros(num_anchors, 0, dtype=torch.long, device=device)
    if size == 0 or num_anchors == 0:
        zero_f = torch.zeros(num_anchors, 0, device=device)
        zero_b = torch.zeros(num_anchors, 0, dtype=torch.bool, device=device)
        return KeySelection(empty_long, zero_f, zero_b, zero_b, empty_long, zero_f, zero_b)

    with torch.no_grad():
        anchors = anchors.detach().float()
        labels = anchor_labels.long()
        has_class = (labels >= 0) & (labels < pool.num_classes)
        class_index = torch.where(has_class, labels, 0)
        own_offset = pool.class_offset[class_index]
        own_count = torch.where(has_class, pool.class_count[class_index], 0)
        neg_count = torch.where(has_class, size - own_count, 0)
        pos_count = own_count

        # Negative pool sizes and the static k of the big topk.
        if strategy == "semi_hard":
            neg_pool = _pool_size(neg_count, semi_hard_fraction)
            k_big = min(size, math.ceil(semi_hard_fraction * size))
            pos_pool = _pool_size(pos_count, semi_hard_fraction)
            k_pos_big = min(max_count, math.ceil(semi_hard_fraction * max_count))
            hard_from_big = k_hard > 0 and (
                math.ceil(semi_hard_fraction * (size - max_count)) >= k_hard
            )
            # Dummies (+inf) that push all but the pool out of the top k_big (see docstring).
            neg_dummies = torch.where(has_class, k_big - neg_pool, 0)
        else:
            k_big = k_neg
            k_pos_big = k_pos
            pos_pool = pos_count
            hard_from_big = strategy == "hardest" and 0 < k_hard <= k_neg
            neg_dummies = torch.zeros_like(neg_count)
        k_pos = min(k_pos, k_pos_big)
        k_neg = min(k_neg, k_big)

        columns_out = torch.zeros(num_anchors, k_pos + k_neg, dtype=torch.long, device=device)
        sims_out = torch.zeros(num_anchors, k_pos + k_neg, device=device)
        valid_out = torch.zeros(num_anchors, k_pos + k_neg, dtype=torch.bool, device=device)
        hard_columns = torch.zeros(num_anchors, k_hard, dtype=torch.long, device=device)
        hard_sims = torch.full((num_anchors, k_hard), -math.inf, device=device)

        # Per block of anchors (temporaries of a block stay small enough to be recycled by the
        # allocator): similarities, own-class columns, positive and negative selection.
        block = max(1, min(num_anchors, block_elements // size))
        buffer = torch.empty(block, size, device=device)
        noise_buffer = torch.empty(block, size, device=device) if strategy == "random" else None
        own_range = torch.arange(max_count, device=device).unsqueeze(0)
        for start in range(0, num_anchors, block):
            stop = min(num_anchors, start + block)
            rows = stop - start
            sims = buffer[:rows]
            for row_start, length, column_start in pool.runs:
                chunk = pool.storage[row_start : row_start + length]
                if length == size:
                    torch.mm(anchors[start:stop], chunk.T, out=sims)
                else:
                    sims[:, column_start : column_start + length] = anchors[start:stop] @ chunk.T
            # Own-class columns (rows, max_count). Slots past the class's count repeat its last
            # column; for a class absent from the pool they point at some column whose value is
            # written back unchanged.
            count = own_count[start:stop].unsqueeze(1)
            in_own = own_range < count
            rank = torch.minimum(own_range, (count - 1).clamp(min=0))
            columns = (own_offset[start:stop].unsqueeze(1) + rank).clamp(max=size - 1)
            own_sims = torch.gather(sims, 1, columns)

            if k_pos > 0:
                if strategy == "random":
                    noise = torch.rand(own_sims.shape, device=device, generator=generator)
                    scores = torch.where(in_own, noise, -math.inf)
                else:
                    scores = torch.where(in_own, -own_sims, -math.inf)
                if strategy == "semi_hard":
                    # Dummies in the free slots past the count (there are always enough).
                    dummies = (k_pos_big - pos_pool[start:stop]).unsqueeze(1) + count
                    scores = torch.where(in_own | (own_range >= dummies), scores, math.inf)
                    values, index = torch.topk(scores, k_pos_big, dim=1, sorted=False)
                    pick, chosen_valid = _random_subset(values, k_pos, generator)
                    chosen = torch.gather(index, 1, pick)
                else:
                    values, chosen = torch.topk(scores, k_pos, dim=1, sorted=False)
                    chosen_valid = values > -_REAL
                columns_out[start:stop, :k_pos] = torch.gather(columns, 1, chosen)
                sims_out[start:stop, :k_pos] = torch.gather(own_sims, 1, chosen)
                valid_out[start:stop, :k_pos] = chosen_valid
            if k_neg == 0 and k_hard == 0:
                continue

            # Negatives: -inf on the own class, except +inf on its first ``neg_dummies`` columns
            # (semi-hard): the top k_big of a row are then the dummies plus the anchor's pool.
            present = count > 0
            keep = torch.where(present, -math.inf, own_sims)
            if k_hard > 0 and not hard_from_big:
                sims.scatter_(1, columns, keep)
                values, index = torch.topk(sims, k_hard, dim=1, sorted=False)
                hard_columns[start:stop] = index
                hard_sims[start:stop] = values
            if strategy == "random":
                assert noise_buffer is not None
                scores = noise_buffer[:rows]
                torch.rand(scores.shape, out=scores, generator=generator)
                current = torch.gather(scores, 1, columns)
                scores.scatter_(1, columns, torch.where(present, -math.inf, current))
            else:
                scores = sims
                if strategy == "semi_hard":
                    dummies = neg_dummies[start:stop].unsqueeze(1)
                    keep = torch.where(present & (rank < dummies), math.inf, keep)
                scores.scatter_(1, columns, keep)
            if k_neg == 0 and not hard_from_big:
                continue
            values, index = torch.topk(scores, k_big, dim=1, sorted=False)
            if hard_from_big:
                real_values = torch.where(values < _REAL, values, -math.inf)
                top_values, top_index = torch.topk(real_values, k_hard, dim=1, sorted=False)
                hard_columns[start:stop] = torch.gather(index, 1, top_index)
                hard_sims[start:stop] = top_values
            if k_neg == 0:
                continue
            if strategy == "semi_hard":
                pick, chosen_valid = _random_subset(values, k_neg, generator)
                chosen = torch.gather(index, 1, pick)
                chosen_sims = torch.gather(values, 1, pick)
            elif strategy == "random":
                chosen, chosen_valid = index, values > -_REAL
                chosen_sims = torch.gather(sims, 1, chosen)
            else:
                chosen, chosen_valid, chosen_sims = index, values > -_REAL, values
            columns_out[start:stop, k_pos:] = chosen
            sims_out[start:stop, k_pos:] = chosen_sims
            valid_out[start:stop, k_pos:] = chosen_valid

        is_positive = torch.zeros(num_anchors, k_pos + k_neg, dtype=torch.bool, device=device)
        is_positive[:, :k_pos] = True
        valid_out &= has_class.unsqueeze(1)
        hard_valid = (hard_sims.abs() <= _REAL) & has_class.unsqueeze(1)
        return KeySelection(
            columns=torch.where(valid_out, columns_out, 0),
            similarity=torch.where(valid_out, sims_out, 0.0),
            is_positive=is_positive,
            valid=valid_out,
            hard_columns=torch.where(hard_valid, hard_columns, 0),
            hard_similarity=torch.where(hard_valid, hard_sims, 0.0),
            hard_valid=hard_valid,
        )


# --------------------------------------------------------------------------------------------------
# The configurable sampler
# --------------------------------------------------------------------------------------------------


def generator_states(generators: Mapping[torch.device, torch.Generator]) -> dict[str, Tensor]:
    """``{device name: state}`` of per-device generators (CPU uint8 tensors, checkpoint-safe)."""
    return {str(device): generator.get_state() for device, generator in generators.items()}


def restore_generators(states: Mapping[str, Tensor]) -> dict[torch.device, torch.Generator]:
    """Generators rebuilt from :func:`generator_states`, skipping CUDA devices that are absent."""
    generators = {}
    for name, state in states.items():
        device = torch.device(name)
        if device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
        ):
            continue
        generator = torch.Generator(device=device)
        generator.set_state(state.cpu())
        generators[device] = generator
    return generators


class PixelSampler:
    """Anchor sampling and key selection strategies with their sizes (Hydra group ``sampler``).

    Args:
        anchor_strategy: ``random`` (uniform per group) or ``seg_aware`` (half misclassified, half
            correct anchors per group; needs predictions).
        key_strategy: how each anchor's memory keys are chosen: ``hardest``, ``semi_hard``,
            ``random`` or ``all`` (every memory key, as the reference code does; no selection).
            In-batch keys are always used in full.
        max_anchors: anchors per batch (N).
        max_views: anchors per (image, class) group at most.
        min_pixels: smallest (image, class) group that gives anchors.
        num_positives: memory positives per anchor.
        num_negatives: memory negatives per anchor.
        semi_hard_fraction: q, the fraction of candidates that form the semi-hard pool.
        seed: None draws from torch's global generator (reproducible under ``torch.manual_seed``,
            e.g. Lightning's ``seed_everything``); an int gives the sampler its own generator,
            created on first use on the data's device and seeded with it.
    """

    def __init__(
        self,
        anchor_strategy: AnchorStrategy = "random",
        key_strategy: KeyStrategy = "semi_hard",
        max_anchors: int = 1024,
        max_views: int = 100,
        min_pixels: int = 10,
        num_positives: int = 1024,
        num_negatives: int = 2048,
        semi_hard_fraction: float = 0.1,
        seed: int | None = None,
    ) -> None:
        if anchor_strategy not in ("random", "seg_aware"):
            raise ValueError(
                f"PixelSampler: anchor_strategy must be 'random' or 'seg_aware', "
                f"got {anchor_strategy!r}"
            )
        if key_strategy not in ("random", "hardest", "semi_hard", "all"):
            raise ValueError(
                "PixelSampler: key_strategy must be 'random', 'hardest', 'semi_hard' or 'all', "
                f"got {key_strategy!r}"
            )
        if max_anchors < 1 or max_views < 1:
            raise ValueError(
                f"PixelSampler: max_anchors ({max_anchors}) and max_views ({max_views}) "
                "must be >= 1"
            )
        if not 0.0 < semi_hard_fraction <= 1.0:
            raise ValueError(
                f"PixelSampler: semi_hard_fraction must be in (0, 1], got {semi_hard_fraction}"
            )
        self.anchor_strategy: AnchorStrategy = anchor_strategy
        self.key_strategy: KeyStrategy = key_strategy
        self.max_anchors = int(max_anchors)
        self.max_views = int(max_views)
        self.min_pixels = int(min_pixels)
        self.num_positives = int(num_positives)
        self.num_negatives = int(num_negatives)
        self.semi_hard_fraction = float(semi_hard_fraction)
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def __repr__(self) -> str:
        return (
            f"PixelSampler(anchor_strategy={self.anchor_strategy!r}, "
            f"key_strategy={self.key_strategy!r}, max_anchors={self.max_anchors}, "
            f"max_views={self.max_views}, min_pixels={self.min_pixels}, "
            f"num_positives={self.num_positives}, num_negatives={self.num_negatives}, "
            f"semi_hard_fraction={self.semi_hard_fraction}, seed={self.seed})"
        )

    def rng_state(self) -> dict[str, Tensor]:
        """The states of the sampler's own generators by device name (empty without a seed).

        The training system saves them in checkpoints, so that a resumed run draws the anchors
        and keys the uninterrupted run would have drawn (see :meth:`load_rng_state`).
        """
        return generator_states(self._generators)

    def load_rng_state(self, state: Mapping[str, Tensor]) -> None:
        """Restores generators saved by :meth:`rng_state` (a device this machine lacks is
        skipped: its generator starts again from ``seed`` on first use)."""
        self._generators.update(restore_generators(state))

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The sampler's own generator on ``device``, or None (global RNG) without a seed."""
        if self.seed is None:
            return None
        device = torch.device(device)
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def sample_anchors(
        self, labels: Tensor, predictions: Tensor | None = None, ignore_index: int = 255
    ) -> AnchorSample:
        """Draws the anchors of a batch; see :func:`sample_anchors`."""
        return sample_anchors(
            labels,
            predictions,
            strategy=self.anchor_strategy,
            max_anchors=self.max_anchors,
            max_views=self.max_views,
            min_pixels=self.min_pixels,
            ignore_index=ignore_index,
            generator=self.generator(labels.device),
        )

    def select_keys(
        self,
        anchors: Tensor,
        anchor_labels: Tensor,
        pool: KeyPool,
        num_hard: int = 0,
        strategy: KeyStrategy | None = None,
        block_elements: int = 1 << 25,
    ) -> KeySelection:
        """Chooses each anchor's keys in ``pool``; see :func:`select_keys`.

        ``strategy`` overrides ``key_strategy`` (the loss passes ``hardest`` with no keys to get
        only the hard negatives for synthesis when the strategy is ``all``).
        """
        strategy = strategy or self.key_strategy
        num_positives, num_negatives = self.num_positives, self.num_negatives
        if strategy == "all":
            strategy, num_positives, num_negatives = "hardest", 0, 0
        return select_keys(
            anchors,
            anchor_labels,
            pool,
            strategy=strategy,
            num_positives=num_positives,
            num_negatives=num_negatives,
            semi_hard_fraction=self.semi_hard_fraction,
            num_hard=num_hard,
            generator=self.generator(anchors.device),
            block_elements=block_elements,
        )
