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
    if strategy not in _STRATEGIES:
        raise ValueError(f"select_keys: unknown key strategy {strategy!r}")
    if not 0.0 < semi_hard_fraction <= 1.0:
        raise ValueError(
            f"select_keys: semi_hard_fraction must be in (0, 1], got {semi_hard_fraction}"
        )
    device = anchors.device
    num_anchors = anchors.shape[0]
    size = pool.size
    if size == 0 or num_anchors == 0:
        empty_long = torch.zeros(num_anchors, 0, dtype=torch.long, device=device)
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
        rule = _STRATEGIES[strategy]
        plan = rule.plan(
            pool, own_count, has_class, num_positives, num_negatives, num_hard, semi_hard_fraction
        )
        k_pos, k_neg, k_hard = plan.k_pos, plan.k_neg, plan.k_hard

        columns_out = torch.zeros(num_anchors, k_pos + k_neg, dtype=torch.long, device=device)
        sims_out = torch.zeros(num_anchors, k_pos + k_neg, device=device)
        valid_out = torch.zeros(num_anchors, k_pos + k_neg, dtype=torch.bool, device=device)
        hard_columns = torch.zeros(num_anchors, k_hard, dtype=torch.long, device=device)
        hard_sims = torch.full((num_anchors, k_hard), -math.inf, device=device)

        # Per block of anchors (temporaries of a block stay small enough to be recycled by the
        # allocator): similarities, own-class columns, positive and negative selection.
        rows_per_block = max(1, min(num_anchors, block_elements // size))
        buffer = torch.empty(rows_per_block, size, device=device)
        scratch = torch.empty(rows_per_block, size, device=device) if rule.needs_scratch else None
        own_range = torch.arange(max(pool.max_count, 0), device=device).unsqueeze(0)
        for start in range(0, num_anchors, rows_per_block):
            stop = min(num_anchors, start + rows_per_block)
            block = _block(
                anchors[start:stop], pool, buffer, own_offset[start:stop], own_count[start:stop],
                own_range, slice(start, stop),
            )  # fmt: skip
            if k_pos > 0:
                chosen, chosen_valid = rule.positives(block, plan, generator)
                columns_out[start:stop, :k_pos] = torch.gather(block.columns, 1, chosen)
                sims_out[start:stop, :k_pos] = torch.gather(block.own_sims, 1, chosen)
                valid_out[start:stop, :k_pos] = chosen_valid
            if k_neg == 0 and k_hard == 0:
                continue
            # The anchor's own class leaves the negatives (-inf), or is a +inf dummy (semi-hard).
            keep = torch.where(block.present, -math.inf, block.own_sims)
            if k_hard > 0 and not plan.hard_from_big:
                block.sims.scatter_(1, block.columns, keep)
                values, index = torch.topk(block.sims, k_hard, dim=1, sorted=False)
                hard_columns[start:stop] = index
                hard_sims[start:stop] = values
            scores = rule.negative_scores(block, keep, plan, scratch, generator)
            if k_neg == 0 and not plan.hard_from_big:
                continue
            values, index = torch.topk(scores, plan.k_big, dim=1, sorted=False)
            if plan.hard_from_big:
                real_values = torch.where(values < _REAL, values, -math.inf)
                top_values, top_index = torch.topk(real_values, k_hard, dim=1, sorted=False)
                hard_columns[start:stop] = torch.gather(index, 1, top_index)
                hard_sims[start:stop] = top_values
            if k_neg == 0:
                continue
            chosen, chosen_sims, chosen_valid = rule.negatives(
                block, values, index, plan, generator
            )
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
# The shared block, and one rule per key strategy
# --------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """Sizes of one selection. ``k_big``: the k of the negatives' ``topk`` (the semi-hard pool
    bound, else K_neg); ``k_pos_big`` the same for positives; ``pos_pool`` (N,) and
    ``neg_dummies`` (N,) the per-anchor semi-hard pool sizes and dummy counts."""

    k_pos: int
    k_neg: int
    k_hard: int
    k_big: int
    k_pos_big: int
    hard_from_big: bool
    pos_pool: Tensor
    neg_dummies: Tensor


@dataclass
class _Block:
    """One block of anchors: their similarities to every pool column and their own class."""

    sims: Tensor  # (n, M) similarities to every column (modified in place by the selection)
    own_sims: Tensor  # (n, max_count) similarities to the own-class columns
    columns: Tensor  # (n, max_count) own-class columns (repeated past the class's count)
    in_own: Tensor  # (n, max_count) bool, slot holds an own-class key
    rank: Tensor  # (n, max_count) slot index, clamped to the class's count
    count: Tensor  # (n, 1) own-class keys
    present: Tensor  # (n, 1) bool, the class has keys
    own_range: Tensor  # (1, max_count) slot indices
    rows: slice  # the block's anchors


def _block(
    anchors: Tensor,
    pool: KeyPool,
    buffer: Tensor,
    own_offset: Tensor,
    own_count: Tensor,
    own_range: Tensor,
    rows: slice,
) -> _Block:
    """Similarities of a block of anchors to the pool (one matrix product per contiguous run of
    storage rows) and their own-class columns. Slots past a class's count repeat its last
    column; for a class absent from the pool they point at some column whose value is written
    back unchanged."""
    size = pool.size
    sims = buffer[: anchors.shape[0]]
    for row_start, length, column_start in pool.runs:
        chunk = pool.storage[row_start : row_start + length]
        if length == size:
            torch.mm(anchors, chunk.T, out=sims)
        else:
            sims[:, column_start : column_start + length] = anchors @ chunk.T
    count = own_count.unsqueeze(1)
    rank = torch.minimum(own_range, (count - 1).clamp(min=0))
    columns = (own_offset.unsqueeze(1) + rank).clamp(max=size - 1)
    return _Block(
        sims=sims,
        own_sims=torch.gather(sims, 1, columns),
        columns=columns,
        in_own=own_range < count,
        rank=rank,
        count=count,
        present=count > 0,
        own_range=own_range,
        rows=rows,
    )


class _Hardest:
    """The K most similar negatives and the K least similar positives."""

    needs_scratch = False
    scores_are_similarities = True

    def plan(self, pool, own_count, has_class, k_pos, k_neg, k_hard, fraction) -> _Plan:
        max_count = max(pool.max_count, 0)
        k_pos, k_neg, k_hard = min(k_pos, max_count), min(k_neg, pool.size), min(k_hard, pool.size)
        return _Plan(
            k_pos=k_pos,
            k_neg=k_neg,
            k_hard=k_hard,
            k_big=k_neg,
            k_pos_big=k_pos,
            # The K most similar negatives contain the H most similar when K >= H; random
            # negatives do not.
            hard_from_big=self.scores_are_similarities and 0 < k_hard <= k_neg,
            pos_pool=own_count,
            neg_dummies=torch.zeros_like(own_count),
        )

    def positive_scores(self, block: _Block, generator: torch.Generator | None) -> Tensor:
        return torch.where(block.in_own, -block.own_sims, -math.inf)

    def positives(self, block: _Block, plan: _Plan, generator: torch.Generator | None):
        scores = self.positive_scores(block, generator)
        values, chosen = torch.topk(scores, plan.k_pos, dim=1, sorted=False)
        return chosen, values > -_REAL

    def negative_scores(self, block, keep, plan, scratch, generator) -> Tensor:
        block.sims.scatter_(1, block.columns, keep)
        return block.sims

    def negatives(self, block, values, index, plan, generator):
        return index, values, values > -_REAL


class _SemiHard(_Hardest):
    """The ceil(q n) hardest candidates of a kind, then K of them at random."""

    def plan(self, pool, own_count, has_class, k_pos, k_neg, k_hard, fraction) -> _Plan:
        size, max_count = pool.size, max(pool.max_count, 0)
        k_hard = min(k_hard, size)
        neg_count = torch.where(has_class, size - own_count, 0)
        k_big = min(size, math.ceil(fraction * size))
        k_pos_big = min(max_count, math.ceil(fraction * max_count))
        return _Plan(
            k_pos=min(k_pos, max_count, k_pos_big),
            k_neg=min(k_neg, size, k_big),
            k_hard=k_hard,
            k_big=k_big,
            k_pos_big=k_pos_big,
            hard_from_big=k_hard > 0 and math.ceil(fraction * (size - max_count)) >= k_hard,
            pos_pool=_pool_size(own_count, fraction),
            # Dummies (+inf) that push all but the pool out of the top k_big (see select_keys).
            neg_dummies=torch.where(has_class, k_big - _pool_size(neg_count, fraction), 0),
        )

    def positives(self, block: _Block, plan: _Plan, generator: torch.Generator | None):
        scores = self.positive_scores(block, generator)
        # Dummies in the free slots past the count (there are always enough).
        dummies = (plan.k_pos_big - plan.pos_pool[block.rows]).unsqueeze(1) + block.count
        scores = torch.where(block.in_own | (block.own_range >= dummies), scores, math.inf)
        values, index = torch.topk(scores, plan.k_pos_big, dim=1, sorted=False)
        pick, chosen_valid = _random_subset(values, plan.k_pos, generator)
        return torch.gather(index, 1, pick), chosen_valid

    def negative_scores(self, block, keep, plan, scratch, generator) -> Tensor:
        dummies = plan.neg_dummies[block.rows].unsqueeze(1)
        keep = torch.where(block.present & (block.rank < dummies), math.inf, keep)
        block.sims.scatter_(1, block.columns, keep)
        return block.sims

    def negatives(self, block, values, index, plan, generator):
        pick, chosen_valid = _random_subset(values, plan.k_neg, generator)
        return torch.gather(index, 1, pick), torch.gather(values, 1, pick), chosen_valid


class _Random(_Hardest):
    """K candidates of each kind uniformly at random: random scores in place of similarities."""

    needs_scratch = True
    scores_are_similarities = False

    def positive_scores(self, block: _Block, generator: torch.Generator | None) -> Tensor:
        noise = torch.rand(block.own_sims.shape, device=block.sims.device, generator=generator)
        return torch.where(block.in_own, noise, -math.inf)

    def negative_scores(self, block, keep, plan, scratch, generator) -> Tensor:
        scores = scratch[: block.sims.shape[0]]
        torch.rand(scores.shape, out=scores, generator=generator)
        current = torch.gather(scores, 1, block.columns)
        scores.scatter_(1, block.columns, torch.where(block.present, -math.inf, current))
        return scores

    def negatives(self, block, values, index, plan, generator):
        return index, torch.gather(block.sims, 1, index), values > -_REAL


_STRATEGIES = {"hardest": _Hardest(), "semi_hard": _SemiHard(), "random": _Random()}
