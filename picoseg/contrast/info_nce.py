"""The supervised pixel InfoNCE of PiCo: one formula, for dense keys and per-anchor key subsets.

For an anchor ``i`` of class ``c`` with positives ``P_i`` (keys of class c) and negatives ``N_i``
(keys of other classes, plus synthesised ones)::

    L_i = -1/|P_i| sum_{p in P_i} log(exp(s_ip/t) / (exp(s_ip/t) + sum_{n in N_i} exp(s_in/t)))
        =  1/|P_i| sum_{p in P_i} softplus(lse_i - s_ip/t),  lse_i = log sum_{n in N_i} exp(s_in/t)

with ``s = a . k`` (unit vectors) and ``t`` the temperature. Only the positive ``p`` itself and the
negatives form each denominator (the other positives do not). The loss is
``(t / base_t) * mean_i L_i`` over the anchors with at least one positive and one negative, and 0
(still attached to the graph) when there is none. Written with ``softplus`` and a log-sum-exp, it
never overflows and never produces a NaN, whatever the number of positives or negatives.

It is one formula written for three inputs, kept together (and so over 500 lines) so that the
formula and its numerics are read and tested once.

Ways in:

- :func:`info_nce`: dense keys. Small key sets (at most ``chunk_size``) go through plain autograd
  on one (N, M) block; larger ones through :class:`_ChunkedInfoNCE`, which walks the keys in chunks
  twice in the forward (log-sum-exp of the negatives, then the positive terms) and once in the
  backward (recomputing each chunk's similarities), so memory stays at one (N, chunk) block.
- :func:`info_nce_indexed`: each anchor has its own subset of key indices. The similarities are
  gathered, not the key vectors; the backward computes ``sum_j dL/ds_ij k_j`` with
  ``embedding_bag``, so no (N, K, D) tensor is built.
- :func:`per_anchor_info_nce`: the per-anchor losses of dense keys plus an extra block of
  similarities with explicit positive / negative masks (selected memory keys, synthesised
  negatives), and optionally a log-sum-exp of negatives computed elsewhere (every memory key,
  :mod:`picoseg.contrast.all_keys`), keyword arguments only; what
  :class:`~picoseg.contrast.PixelContrastLoss` calls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "gathered_similarity",
    "info_nce",
    "info_nce_indexed",
    "label_masks",
    "mean_over_valid",
    "per_anchor_info_nce",
]

_TINY = torch.finfo(torch.float32).tiny


# --------------------------------------------------------------------------------------------------
# Core: per-anchor losses from logits
# --------------------------------------------------------------------------------------------------


def label_masks(
    anchor_labels: Tensor, key_labels: Tensor, start: int, exclude_self: bool
) -> tuple[Tensor, Tensor]:
    """Positive and negative masks (N, m) of a chunk of keys starting at key ``start``.

    Keys with a label < 0 are empty slots (never keys); anchors with a label < 0 have neither
    positives nor negatives. With ``exclude_self`` key ``j`` is anchor ``j``: never its positive.
    """
    anchor_ok = (anchor_labels >= 0).unsqueeze(1)
    key_ok = (key_labels >= 0).unsqueeze(0)
    same = anchor_labels.unsqueeze(1) == key_labels.unsqueeze(0)
    positive = same & key_ok & anchor_ok
    negative = ~same & key_ok & anchor_ok
    if exclude_self:
        rows = torch.arange(anchor_labels.shape[0], device=anchor_labels.device).unsqueeze(1)
        cols = torch.arange(start, start + key_labels.shape[0], device=key_labels.device)
        positive = positive & (rows != cols.unsqueeze(0))
    return positive, negative


def _per_anchor_from_logits(
    logits: Tensor,
    positive: Tensor,
    negative: Tensor,
    group: Tensor | None,
    negative_lse: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-anchor ``L_i`` from a (N, L) logit block (plain autograd).

    Args:
        logits: (N, L) float32 similarities divided by the temperature.
        positive: (N, L) bool.
        negative: (N, L) bool, disjoint from ``positive``.
        group: optional (N, L) bool; the part of ``L_i`` coming from these positives is returned
            too (for logging).
        negative_lse: optional (N,) log-sum-exp of further negative logits computed elsewhere
            (-inf: none), joined to the block's.

    Returns:
        ``loss`` (N,) (0 for invalid anchors), ``group_loss`` (N,) detached, ``valid`` (N,) bool.
    """
    num_anchors = logits.shape[0]
    if logits.shape[1] == 0:
        zero = logits.sum(1) * 0.0
        return zero, zero.detach(), torch.zeros(num_anchors, dtype=torch.bool, device=logits.device)
    negative_logits = torch.where(negative, logits, -math.inf)
    shift = negative_logits.detach().amax(1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, 0.0)
    negative_sum = torch.exp(negative_logits - shift).sum(1)
    lse = torch.log(negative_sum.clamp_min(_TINY)) + shift.squeeze(1)
    has_negative = negative.any(1)
    if negative_lse is not None:
        elsewhere = torch.isfinite(negative_lse)
        other = torch.where(elsewhere, negative_lse, 0.0)
        joined = torch.where(has_negative, torch.logaddexp(lse, other), other)
        lse = torch.where(elsewhere, joined, lse)
        has_negative = has_negative | elsewhere
    terms = F.softplus(lse.unsqueeze(1) - logits)
    positive_terms = torch.where(positive, terms, 0.0)
    num_positive = positive.sum(1)
    valid = (num_positive > 0) & has_negative
    denominator = num_positive.clamp(min=1)
    loss = torch.where(valid, positive_terms.sum(1) / denominator, 0.0)
    if group is None:
        group_loss = torch.zeros_like(loss).detach()
    else:
        group_terms = torch.where(positive & group, terms.detach(), 0.0).sum(1)
        group_loss = torch.where(valid, group_terms / denominator, 0.0)
    return loss, group_loss, valid


class _ChunkedInfoNCE(torch.autograd.Function):
    """Per-anchor InfoNCE over dense keys walked in chunks, plus an (N, E) block of extra logits.

    Forward: pass 1 accumulates ``lse_i`` (log-sum-exp over the negative chunks), pass 2 the
    positive terms ``softplus(lse_i - x_ip)`` and ``c_i = sum_p sigmoid(lse_i - x_ip)``.
    Backward, one pass recomputing each chunk, with ``w_i = dOut_i / |P_i|``::

        dL/dx_ip = -w_i * sigmoid(lse_i - x_ip)           (positives)
        dL/dx_in =  w_i * c_i * exp(x_in - lse_i)          (negatives)

    and ``x = s / t``, ``grad_a = sum_j dL/ds_ij k_j``, ``grad_k_j = sum_i dL/ds_ij a_i``.
    Only (N,) vectors are saved; one (N, chunk) block lives at a time. Per chunk: one product, a
    label comparison for the positives, empty key slots folded in as a -inf bias, and the
    anchor's own key (``exclude_self``) cleared only in the chunks that hold it.
    """

    @staticmethod
    def _chunks(anchors_scaled, keys, anchor_labels, key_labels, key_group, exclude_self, size):
        """Yields (start, logits, positive, negative-logits, group) per chunk of keys."""
        num_anchors = anchors_scaled.shape[0]
        # Empty anchor slots get -2, empty keys -1: they never compare equal to anything valid.
        labels = torch.where(anchor_labels >= 0, anchor_labels, -2).unsqueeze(1)
        anchor_ok = (anchor_labels >= 0).unsqueeze(1)
        for start in range(0, keys.shape[0], size):
            stop = min(keys.shape[0], start + size)
            chunk_labels = key_labels[start:stop]
            logits = anchors_scaled @ keys[start:stop].T
            same = labels == chunk_labels.unsqueeze(0)
            bias = torch.where(chunk_labels >= 0, 0.0, -math.inf).unsqueeze(0)
            negative_logits = torch.where(same | ~anchor_ok, -math.inf, logits + bias)
            positive = same
            if exclude_self and start < num_anchors:
                positive = same.clone()
                diagonal = torch.arange(start, min(stop, num_anchors), device=keys.device)
                positive[diagonal, diagonal - start] = False
            group = None if key_group is None else key_group[start:stop].unsqueeze(0)
            yield start, stop, logits, positive, negative_logits, group

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        anchors: Tensor,
        keys: Tensor,
        extra: Tensor,
        anchor_labels: Tensor,
        key_labels: Tensor,
        key_group: Tensor | None,
        extra_positive: Tensor,
        extra_negative: Tensor,
        extra_group: Tensor,
        inverse_temperature: float,
        exclude_self: bool,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        anchors_scaled = anchors * inverse_temperature
        extra_logits = extra * inverse_temperature
        extra_negative_logits = torch.where(extra_negative, extra_logits, -math.inf)

        def chunks():
            return _ChunkedInfoNCE._chunks(
                anchors_scaled, keys, anchor_labels, key_labels, key_group, exclude_self, chunk_size
            )

        lse = torch.logsumexp(extra_negative_logits, 1) if extra.shape[1] > 0 else None
        num_positive = extra_positive.sum(1)
        for _, _, _, positive, negative_logits, _ in chunks():
            chunk_lse = torch.logsumexp(negative_logits, 1)
            lse = chunk_lse if lse is None else torch.logaddexp(lse, chunk_lse)
            num_positive += positive.sum(1)
        if lse is None:
            lse = anchors.new_full((anchors.shape[0],), -math.inf)
        valid = (num_positive > 0) & (lse > -math.inf)
        lse_column = torch.where(valid, lse, 0.0).unsqueeze(1)

        positive_sum = torch.zeros_like(lse_column.squeeze(1))
        sigmoid_sum = torch.zeros_like(positive_sum)
        group_sum = torch.zeros_like(positive_sum)

        def accumulate(logits, positive, group):
            # softplus on positives, 0 elsewhere; sigmoid(g) = 1 - exp(-softplus(g)).
            terms = F.softplus(lse_column - logits) * positive
            positive_sum.add_(terms.sum(1))
            sigmoid_sum.sub_(torch.expm1(-terms).sum(1))
            if group is not None:
                group_sum.add_((terms * group).sum(1))

        for _, _, logits, positive, _, group in chunks():
            accumulate(logits, positive, group)
        if extra.shape[1] > 0:
            accumulate(extra_logits, extra_positive, extra_group)
        denominator = num_positive.clamp(min=1)
        loss = torch.where(valid, positive_sum / denominator, 0.0)
        group_loss = torch.where(valid, group_sum / denominator, 0.0)
        ctx.save_for_backward(
            anchors_scaled,
            keys,
            extra_logits,
            anchor_labels,
            key_labels,
            extra_positive,
            extra_negative_logits,
            lse_column,
            sigmoid_sum,
            denominator,
            valid,
        )
        ctx.inverse_temperature = inverse_temperature
        ctx.exclude_self = exclude_self
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(group_loss, valid)
        return loss, group_loss, valid

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_group: Tensor, _grad_valid: Tensor):  # type: ignore[override]
        (
            anchors_scaled,
            keys,
            extra_logits,
            anchor_labels,
            key_labels,
            extra_positive,
            extra_negative_logits,
            lse_column,
            sigmoid_sum,
            denominator,
            valid,
        ) = ctx.saved_tensors
        inverse_temperature = ctx.inverse_temperature
        weight = torch.where(valid, grad_loss / denominator, 0.0)
        weight_positive = weight.unsqueeze(1)
        weight_negative = (weight * sigmoid_sum).unsqueeze(1)

        def grad_logits(logits: Tensor, positive: Tensor, negative_logits: Tensor) -> Tensor:
            """dL/dx of one block (rows of invalid anchors have zero weight)."""
            from_negative = weight_negative * torch.exp(negative_logits - lse_column)
            from_positive = weight_positive * torch.sigmoid(lse_column - logits) * positive
            return from_negative - from_positive

        need_anchor, need_keys, need_extra = ctx.needs_input_grad[:3]
        grad_anchors = torch.zeros_like(anchors_scaled) if need_anchor else None
        grad_keys = torch.zeros_like(keys) if need_keys else None
        chunks = _ChunkedInfoNCE._chunks(
            anchors_scaled, keys, anchor_labels, key_labels, None, ctx.exclude_self, ctx.chunk_size
        )
        for start, stop, logits, positive, negative_logits, _ in chunks:
            grad = grad_logits(logits, positive, negative_logits)
            if grad_anchors is not None:
                grad_anchors.addmm_(grad, keys[start:stop])
            if grad_keys is not None:
                grad_keys[start:stop] = grad.T @ anchors_scaled
        if grad_anchors is not None:
            grad_anchors.mul_(inverse_temperature)
        grad_extra = None
        if extra_logits.shape[1] > 0 and need_extra:
            grad_extra = (
                grad_logits(extra_logits, extra_positive, extra_negative_logits)
                * inverse_temperature
            )
        return (grad_anchors, grad_keys, grad_extra, *([None] * 9))


def per_anchor_info_nce(
    *,
    anchors: Tensor,
    anchor_labels: Tensor,
    temperature: float,
    keys: Tensor | None = None,
    key_labels: Tensor | None = None,
    key_group: Tensor | None = None,
    exclude_self: bool = False,
    extra: Tensor | None = None,
    extra_positive: Tensor | None = None,
    extra_negative: Tensor | None = None,
    extra_group: Tensor | None = None,
    negative_lse: Tensor | None = None,
    chunk_size: int = 1 << 30,
) -> tuple[Tensor, Tensor, Tensor]:
    """``L_i`` (N,), its part from ``group`` positives (N,, detached) and validity (N,).

    Keys: dense ``keys`` (M, D) with ``key_labels`` (M,) (< 0: empty slot), and/or an ``extra``
    block of similarities (N, E) with explicit per-entry positive / negative masks (selected
    memory keys, synthesised negatives, a pool's own-class keys), and/or ``negative_lse`` (N,),
    the log-sum-exp of negative logits computed elsewhere (every key of a pool,
    :func:`picoseg.contrast.all_keys.all_keys`; -inf: none), not with chunked dense keys.
    Everything runs in float32 with autocast off.
    """
    num_anchors, dim = anchors.shape
    device = anchors.device
    if keys is None:
        keys = anchors.new_zeros(0, dim)
        key_labels = torch.zeros(0, dtype=torch.long, device=device)
    assert key_labels is not None
    chunk_group = key_group
    if key_group is None:
        key_group = torch.zeros(keys.shape[0], dtype=torch.bool, device=device)
    if extra is None:
        extra = anchors.new_zeros(num_anchors, 0)
        extra_positive = extra_negative = extra_group = torch.zeros(
            num_anchors, 0, dtype=torch.bool, device=device
        )
    assert extra_positive is not None and extra_negative is not None
    if extra_group is None:
        extra_group = torch.zeros_like(extra_positive)
    inverse_temperature = 1.0 / temperature
    with torch.autocast(device_type=device.type, enabled=False):
        anchors = anchors.float()
        keys = keys.float()
        extra = extra.float()
        if negative_lse is not None:
            negative_lse = negative_lse.float()
        if keys.shape[0] <= chunk_size:
            logits = torch.cat([anchors @ keys.T, extra], 1) * inverse_temperature
            positive, negative = label_masks(anchor_labels, key_labels, 0, exclude_self)
            positive = torch.cat([positive, extra_positive], 1)
            negative = torch.cat([negative, extra_negative], 1)
            group = torch.cat([key_group.unsqueeze(0).expand(num_anchors, -1), extra_group], 1)
            return _per_anchor_from_logits(logits, positive, negative, group, negative_lse)
        if negative_lse is not None:
            raise ValueError(
                "per_anchor_info_nce: negative_lse needs at most chunk_size dense keys"
            )
        return _ChunkedInfoNCE.apply(
            anchors,
            keys,
            extra,
            anchor_labels,
            key_labels,
            chunk_group,
            extra_positive,
            extra_negative,
            extra_group,
            inverse_temperature,
            exclude_self,
            chunk_size,
        )


def mean_over_valid(per_anchor: Tensor, valid: Tensor) -> Tensor:
    """Mean of the valid anchors' losses; 0 (attached to the graph) when none is valid."""
    return torch.where(valid, per_anchor, 0.0).sum() / valid.sum().clamp(min=1)


def _check_unit(name: str, tensor: Tensor) -> None:
    if tensor.dim() != 2:
        raise ValueError(f"info_nce: {name} must be (rows, D), got {tuple(tensor.shape)}")


def info_nce(
    anchors: Tensor,
    anchor_labels: Tensor,
    keys: Tensor,
    key_labels: Tensor,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    exclude_self: bool = False,
    extra_negatives: Tensor | None = None,
    *,
    extra_negatives_mask: Tensor | None = None,
    chunk_size: int = 8192,
) -> Tensor:
    """Supervised InfoNCE of anchors against dense keys (see the module docstring for ``L_i``).

    Args:
        anchors: (N, D) l2-normalised.
        anchor_labels: (N,) int classes; < 0 marks an empty anchor slot (never counted).
        keys: (M, D) l2-normalised.
        key_labels: (M,) int classes; < 0 marks an empty key slot (never a key).
        temperature: t.
        base_temperature: the result is scaled by ``t / base_temperature`` (reference code).
        exclude_self: keys are the anchors themselves (M == N): key i is never a positive of
            anchor i (nor a negative: it has the anchor's class).
        extra_negatives: optional (N, K, D) per-anchor extra negatives (e.g. synthesised), in the
            denominator only; gradients flow through them if they require grad.
        extra_negatives_mask: optional (N, K) bool, False for empty extra slots.
        chunk_size: keys per block; above it, the chunked path bounds memory to one
            (N, chunk_size) block in forward and backward.

    Returns:
        Scalar float32: ``(t / base_t) * mean_i L_i`` over anchors with >= 1 positive and >= 1
        negative; 0 (attached to the graph) when none qualifies. Computed in float32 even under
        autocast.
    """
    _check_unit("anchors", anchors)
    _check_unit("keys", keys)
    if exclude_self and keys.shape[0] != anchors.shape[0]:
        raise ValueError(
            f"info_nce: exclude_self needs keys == anchors, got M={keys.shape[0]} and "
            f"N={anchors.shape[0]}"
        )
    extra = extra_positive = extra_negative = None
    if extra_negatives is not None:
        with torch.autocast(device_type=anchors.device.type, enabled=False):
            extra = torch.einsum("nd,nkd->nk", anchors.float(), extra_negatives.float())
        extra_negative = (
            extra_negatives_mask.bool()
            if extra_negatives_mask is not None
            else torch.ones_like(extra, dtype=torch.bool)
        )
        extra_positive = torch.zeros_like(extra_negative)
    loss, _, valid = per_anchor_info_nce(
        anchors=anchors,
        anchor_labels=anchor_labels.long(),
        keys=keys,
        key_labels=key_labels.long(),
        exclude_self=exclude_self,
        extra=extra,
        extra_positive=extra_positive,
        extra_negative=extra_negative,
        temperature=temperature,
        chunk_size=chunk_size,
    )
    return (temperature / base_temperature) * mean_over_valid(loss, valid)


# --------------------------------------------------------------------------------------------------
# Per-anchor selected keys
# --------------------------------------------------------------------------------------------------


class _GatheredSimilarity(torch.autograd.Function):
    """``s_ij = a_i . keys[index_ij]`` without building the (N, K, D) gathered tensor.

    Forward: the given ``values`` (exact similarities from the selection pass) or, without them,
    one product of a block of anchors with all keys followed by a gather (bounded blocks).
    Backward: ``grad_a_i = sum_j g_ij keys[index_ij]`` with ``embedding_bag`` (weighted sum of
    rows) and ``grad_keys`` with ``index_add_``, in anchor blocks.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, anchors: Tensor, keys: Tensor, index: Tensor, values: Tensor | None, block: int
    ) -> Tensor:
        if values is None:
            out = anchors.new_empty(index.shape)
            step = max(1, block // max(1, keys.shape[0]))
            for start in range(0, anchors.shape[0], step):
                sims = anchors[start : start + step] @ keys.T
                out[start : start + step] = torch.gather(sims, 1, index[start : start + step])
        else:
            out = values.detach().clone()
        ctx.save_for_backward(anchors, keys, index)
        ctx.block = block
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        anchors, keys, index = ctx.saved_tensors
        grad_anchors = grad_keys = None
        if ctx.needs_input_grad[0]:
            grad_anchors = F.embedding_bag(
                index, keys, per_sample_weights=grad.contiguous(), mode="sum"
            )
        if ctx.needs_input_grad[1]:
            grad_keys = torch.zeros_like(keys)
            step = max(1, ctx.block // max(1, index.shape[1] * keys.shape[1]))
            for start in range(0, anchors.shape[0], step):
                g = grad[start : start + step].unsqueeze(2) * anchors[start : start + step, None]
                grad_keys.index_add_(0, index[start : start + step].reshape(-1), g.flatten(0, 1))
        return grad_anchors, grad_keys, None, None, None


def gathered_similarity(
    anchors: Tensor,
    keys: Tensor,
    index: Tensor,
    values: Tensor | None = None,
    block_elements: int = 1 << 24,
) -> Tensor:
    """Differentiable ``s_ij = anchors[i] . keys[index[i, j]]``.

    Args:
        anchors: (N, D) float32.
        keys: (R, D) float32.
        index: (N, K) int64 rows of ``keys``.
        values: optional (N, K) precomputed similarities (trusted, e.g. from :func:`select_keys`).
        block_elements: bound on a forward similarity block when ``values`` is None.

    Returns:
        (N, K) float32 similarities; the backward never builds an (N, K, D) tensor.
    """
    return _GatheredSimilarity.apply(anchors, keys, index, values, block_elements)


def info_nce_indexed(
    anchors: Tensor,
    anchor_labels: Tensor,
    keys: Tensor,
    key_labels: Tensor,
    index: Tensor,
    index_mask: Tensor | None = None,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    extra_negatives: Tensor | None = None,
    extra_negatives_mask: Tensor | None = None,
) -> Tensor:
    """InfoNCE where anchor i sees only the keys ``index[i]`` (same formula as :func:`info_nce`).

    Positives of anchor i are the selected keys of its class, negatives the selected keys of other
    classes (and ``extra_negatives[i]``). Works on gathered similarities: memory is O(N K), never
    O(N K D).

    Args:
        anchors: (N, D) l2-normalised.
        anchor_labels: (N,) int; < 0 marks an empty anchor slot.
        keys: (M, D) l2-normalised.
        key_labels: (M,) int; < 0 marks an empty key slot.
        index: (N, K) int64 key indices per anchor.
        index_mask: optional (N, K) bool, False for unused slots.
        temperature: t.
        base_temperature: scale ``t / base_t``.
        extra_negatives: optional (N, E, D).
        extra_negatives_mask: optional (N, E) bool.

    Returns:
        Scalar float32 loss.
    """
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        anchors32 = anchors.float()
        sims = gathered_similarity(anchors32, keys.float(), index)
        selected_labels = key_labels.long()[index]
        mask = index_mask.bool() if index_mask is not None else torch.ones_like(index, dtype=bool)
        anchor_labels = anchor_labels.long()
        usable = mask & (selected_labels >= 0) & (anchor_labels >= 0).unsqueeze(1)
        same = selected_labels == anchor_labels.unsqueeze(1)
        blocks = [sims]
        positives = [usable & same]
        negatives = [usable & ~same]
        if extra_negatives is not None:
            blocks.append(torch.einsum("nd,nkd->nk", anchors32, extra_negatives.float()))
            extra_mask = (
                extra_negatives_mask.bool()
                if extra_negatives_mask is not None
                else torch.ones(blocks[-1].shape, dtype=torch.bool, device=anchors.device)
            )
            positives.append(torch.zeros_like(extra_mask))
            negatives.append(extra_mask)
        loss, _, valid = _per_anchor_from_logits(
            torch.cat(blocks, 1) / temperature,
            torch.cat(positives, 1),
            torch.cat(negatives, 1),
            None,
        )
    return (temperature / base_temperature) * mean_over_valid(loss, valid)
