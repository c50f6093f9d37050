"""Key strategy ``all``: every key of a class-sorted :class:`KeyPool` (the memory) in the InfoNCE.

This is the reference code's memory contrast: no key sampling; each queued key of another class
is a negative of an anchor, each key of its class a positive. With M keys (190,000 for the
paper's memory of 19 x (5000 + 5000)) the (N, M) similarities are too large to keep, and any
pass over them is as slow as the matrix product that makes them, so the work is arranged around
the pool's class-sorted layout, with the anchors sorted by class too:

- **Negatives** enter the loss only through ``lse_i = log sum_{n: class(n) != c_i} exp(s_in / t)``
  (see :mod:`picoseg.contrast.info_nce`), computed by one custom autograd op. Forward, per chunk
  of keys: one ``addmm`` that also subtracts a fixed shift, ``exp_`` in place, the anchors'
  own-class rectangle set to 0 (anchors and keys are both sorted by class, so it is one slice
  per class), a row sum. The shift ``|a_i| max_j |k_j| / t`` bounds every logit from above
  (Cauchy-Schwarz), so nothing overflows and no max pass is needed; the caller checks it cannot
  underflow. Backward, per chunk: the same three steps again (recomputed, not stored), then one
  ``addmm`` accumulating ``E @ K``; the rows are scaled by ``dL/dlse_i / S_i`` once at the end.
  Three (N, M) matrix products in all, against two for the forward and backward of a bare
  ``(anchors @ keys.T).sum()``, and one (N, chunk) block of memory.
- **Positives**, the anchor's own class, are 1 / C of the keys: their similarities are computed
  block by block per class with plain autograd and returned as an (N, max_count) block that the
  loss treats like any other block of positives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from picoseg.contrast.key_pool import KeyPool

__all__ = ["AllKeys", "all_keys", "fits_fixed_shift"]

# exp(-_MAX_SPAN) is far from float32's smallest normal number (exp(-87.3)): a logit at most
# this far below the shift keeps its full precision after ``exp``.
_MAX_SPAN = 80.0


@dataclass
class AllKeys:
    """An anchor set's InfoNCE inputs from every key of a pool.

    Attributes:
        negative_lse: (N,) ``log sum exp(s_in / t)`` over the keys of other classes (differentiable
            w.r.t. the anchors; -inf for an anchor without negatives or without a class).
        positive_similarity: (N, P) similarities ``s_ip`` to the keys of the anchor's class,
            padded to the largest class (differentiable w.r.t. the anchors).
        positive_valid: (N, P) bool, False in the padding.
        positive_is_region: (N, P) bool, True where the positive is a region key (for logging).
    """

    negative_lse: Tensor
    positive_similarity: Tensor
    positive_valid: Tensor
    positive_is_region: Tensor


def fits_fixed_shift(anchors: Tensor, pool: KeyPool, temperature: float) -> bool:
    """Whether :func:`all_keys` keeps full precision: every logit lies within ``_MAX_SPAN`` of its
    shift, i.e. ``2 |a_i| max |k| / t <= 80`` (unit vectors: t >= 0.025)."""
    if pool.size == 0 or anchors.shape[0] == 0:
        return True
    span = 2.0 * float(anchors.detach().norm(dim=1).max()) * pool.max_norm / temperature
    return span <= _MAX_SPAN


@dataclass
class _Layout:
    """Anchors sorted by class and, per class, its rows among them and its pool columns."""

    order: Tensor  # (N,) original index of each sorted row
    inverse: Tensor  # (N,) sorted row of each original anchor
    classes: list[tuple[int, int, int, int, int]]  # (class, row_start, rows, column_start, count)
    labels: Tensor  # (N,) sorted labels, -1 for anchors without a class in the pool
    unlabelled: int  # anchors without a class (the first sorted rows)


def _layout(anchor_labels: Tensor, pool: KeyPool) -> _Layout:
    labels = anchor_labels.long()
    labels = torch.where((labels >= 0) & (labels < pool.num_classes), labels, -1)
    order = torch.argsort(labels, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.shape[0], device=order.device)
    rows_per_class = torch.bincount(labels + 1, minlength=pool.num_classes + 1).tolist()
    offsets, counts = pool.class_offset.tolist(), pool.class_count.tolist()
    classes, row = [], rows_per_class[0]  # anchors without a class come first
    for c in range(pool.num_classes):
        rows = rows_per_class[c + 1]
        if rows > 0:
            classes.append((c, row, rows, int(offsets[c]), int(counts[c])))
        row += rows
    return _Layout(
        order=order,
        inverse=inverse,
        classes=classes,
        labels=labels[order],
        unlabelled=rows_per_class[0],
    )


def _chunks(pool: KeyPool, size: int):
    """Yields ``(keys, column_start)`` for runs of at most ``size`` pool columns (storage views)."""
    for row_start, length, column_start in pool.runs:
        for offset in range(0, length, size):
            stop = min(length, offset + size)
            keys = pool.storage[row_start + offset : row_start + stop]
            yield keys, column_start + offset


def _exp_block(anchors_scaled, shift, keys, column_start, layout, out) -> Tensor:
    """``exp(a_i . k_j / t - shift_i)`` for one chunk of keys, own-class entries set to 0."""
    block = out[:, : keys.shape[0]]
    torch.addmm(shift, anchors_scaled, keys.T, beta=-1.0, out=block)
    block.exp_()
    column_stop = column_start + keys.shape[0]
    for _, row_start, rows, class_start, count in layout.classes:
        low, high = max(class_start, column_start), min(class_start + count, column_stop)
        if low < high:
            block[row_start : row_start + rows, low - column_start : high - column_start] = 0.0
    return block


class _NegativeLogSumExp(torch.autograd.Function):
    """``lse_i`` over the pool's keys of other classes, for anchors sorted by class."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, anchors_scaled: Tensor, shift: Tensor, pool: KeyPool, layout: _Layout, chunk: int
    ) -> Tensor:
        num_anchors = anchors_scaled.shape[0]
        out = anchors_scaled.new_empty(num_anchors, min(chunk, pool.size))
        total = anchors_scaled.new_zeros(num_anchors)
        for keys, column_start in _chunks(pool, chunk):
            total += _exp_block(anchors_scaled, shift, keys, column_start, layout, out).sum(1)
        total = torch.where(layout.labels >= 0, total, 0.0)
        ctx.save_for_backward(anchors_scaled, shift, total)
        ctx.pool, ctx.layout, ctx.chunk = pool, layout, chunk
        return torch.log(total) + shift.squeeze(1)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        anchors_scaled, shift, total = ctx.saved_tensors
        pool, layout = ctx.pool, ctx.layout
        # d lse_i / d x_in = exp(x_in - shift_i) / S_i for the negatives n.
        scale = torch.where(total > 0, grad / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
        accumulated = torch.zeros_like(anchors_scaled)
        out = anchors_scaled.new_empty(anchors_scaled.shape[0], min(ctx.chunk, pool.size))
        for keys, column_start in _chunks(pool, ctx.chunk):
            block = _exp_block(anchors_scaled, shift, keys, column_start, layout, out)
            accumulated.addmm_(block, keys)
        return accumulated * scale.unsqueeze(1), None, None, None, None


def all_keys(
    anchors: Tensor,
    anchor_labels: Tensor,
    pool: KeyPool,
    *,
    temperature: float,
    chunk_size: int = 2048,
) -> AllKeys:
    """The negatives' log-sum-exp and the positives' similarities of anchors against every key.

    Args:
        anchors: (N, D) float32 l2-normalised anchors (the pool's keys are constants).
        anchor_labels: (N,) int64; < 0 (or a class the pool lacks) marks an anchor without keys.
        pool: class-sorted keys (:meth:`MemoryBank.key_pool`).
        temperature: t.
        chunk_size: keys per (N, chunk) block of the negatives' passes (2048: fastest of
            1024-8192 for 1024 anchors x 190,000 keys on a 2-core CPU, 2.41 s against 2.60 s).

    Returns:
        An :class:`AllKeys`, rows in the order of ``anchors``. Use only where
        :func:`fits_fixed_shift` holds (the loss falls back to the chunked InfoNCE otherwise).
    """
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        anchors = anchors.float()
        layout = _layout(anchor_labels, pool)
        sorted_anchors = anchors[layout.order]
        anchors_scaled = sorted_anchors * (1.0 / temperature)
        if pool.size > 0:
            # Every logit is at most |a_i| max |k| / t (Cauchy-Schwarz).
            shift = anchors_scaled.detach().norm(dim=1, keepdim=True) * pool.max_norm
            lse = _NegativeLogSumExp.apply(anchors_scaled, shift, pool, layout, chunk_size)
        else:
            lse = anchors.new_full((anchors.shape[0],), -math.inf)
        similarity, valid, region = _own_class_blocks(sorted_anchors, pool, layout)
        inverse = layout.inverse
        return AllKeys(
            negative_lse=lse[inverse],
            positive_similarity=similarity[inverse],
            positive_valid=valid[inverse],
            positive_is_region=region[inverse],
        )


def _own_class_blocks(
    sorted_anchors: Tensor, pool: KeyPool, layout: _Layout
) -> tuple[Tensor, Tensor, Tensor]:
    """Similarities of the sorted anchors to their class's keys, (N, P) padded to the largest
    class, with the validity and region masks of the padded block."""
    width = max((count for *_, count in layout.classes), default=0)
    num_anchors = sorted_anchors.shape[0]
    valid = torch.zeros(num_anchors, width, dtype=torch.bool, device=sorted_anchors.device)
    region = torch.zeros_like(valid)
    blocks = [sorted_anchors.new_zeros(layout.unlabelled, width)]
    for _, row_start, rows, class_start, count in layout.classes:
        sims = [
            sorted_anchors[row_start : row_start + rows] @ keys.T
            for keys in _class_keys(pool, class_start, count)
        ]
        block = torch.cat(sims, 1) if sims else sorted_anchors.new_zeros(rows, 0)
        blocks.append(F.pad(block, (0, width - count)))
        valid[row_start : row_start + rows, :count] = True
        region[row_start : row_start + rows, :count] = pool.is_region[
            class_start : class_start + count
        ]
    return torch.cat(blocks, 0), valid, region


def _class_keys(pool: KeyPool, class_start: int, count: int):
    """Storage views of the pool columns ``[class_start, class_start + count)``."""
    class_stop = class_start + count
    for row_start, length, column_start in pool.runs:
        low, high = max(class_start, column_start), min(class_stop, column_start + length)
        if low < high:
            yield pool.storage[row_start + low - column_start : row_start + high - column_start]
