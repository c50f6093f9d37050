"""Key selection: for every anchor, a subset of the keys of a :class:`KeyPool` (the memory).

:func:`select_keys` picks hardest, semi-hard or random positives and negatives. It works on
similarities ``s_ij = a_i . k_j`` computed block by block over the anchors, so no ``(N, K, D)``
tensor is built, and returns the chosen columns with their exact similarities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from picoseg.contrast.key_pool import KeyPool

__all__ = ["KeySelection", "KeyStrategy", "select_keys"]

KeyStrategy = Literal["random", "hardest", "semi_hard", "all"]

# Similarities of unit vectors lie in [-1, 1]; anything larger in magnitude is a +-inf sentinel.
_REAL = 1.5


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
