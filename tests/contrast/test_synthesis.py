"""Hard negative synthesis: norms, mixing geometry, validity, no gradient into the anchor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from picoseg.contrast import NegativeSynthesis, info_nce, plan_anchor_negatives


def _one_hot_case(num_anchors=6, hard=5, dim=12):
    """Anchor i = e_0; its hard negatives are e_1..e_hard, some marked invalid."""
    anchors = torch.zeros(num_anchors, dim)
    anchors[:, 0] = 1.0
    negatives = torch.zeros(num_anchors, hard, dim)
    negatives[:, torch.arange(hard), torch.arange(1, hard + 1)] = 1.0
    valid = torch.ones(num_anchors, hard, dtype=torch.bool)
    valid[0, 3:] = False  # anchor 0: negatives e_1..e_3 only
    valid[1, 1:] = False  # anchor 1: a single negative
    valid[2] = False  # anchor 2: none
    return anchors, negatives, valid


def test_negative_pairs_mix_two_distinct_valid_negatives():
    torch.manual_seed(0)
    _, negatives, valid = _one_hot_case()
    anchors = torch.zeros(6, 12)
    synthesis = NegativeSynthesis(num_neg_neg=50, num_neg_anchor=0, neg_neg_mix=(0.1, 0.9))
    mixed, mixed_valid = synthesis(anchors, negatives, valid)
    assert mixed.shape == (6, 50, 12)
    assert not mixed_valid[2].any() and mixed_valid[[0, 1, 3, 4, 5]].all()
    norms = mixed[mixed_valid].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    for i in (0, 3):
        allowed = {j + 1 for j in range(5) if valid[i, j]}
        for vector in mixed[i]:
            support = set(torch.nonzero(vector.abs() > 1e-6).flatten().tolist())
            assert len(support) == 2 and support <= allowed  # two distinct valid negatives
            weights = vector[sorted(support)] / vector[sorted(support)].sum()
            assert weights.min() >= 0.1 - 1e-5 and weights.max() <= 0.9 + 1e-5
    # A single valid negative can only be mixed with itself: the result is that negative.
    torch.testing.assert_close(mixed[1], negatives[1, :1].expand(50, -1))


def test_anchor_negatives_stay_closer_to_the_negative():
    torch.manual_seed(1)
    anchors, negatives, valid = _one_hot_case()
    mixed, mixed_valid = NegativeSynthesis(num_neg_neg=0, num_neg_anchor=40)(
        anchors, negatives, valid
    )
    assert not mixed_valid[2].any() and mixed_valid[[0, 1, 3, 4, 5]].all()
    for i in (0, 1, 3):
        allowed = {j + 1 for j in range(5) if valid[i, j]}
        for vector in mixed[i]:
            torch.testing.assert_close(vector.norm(), torch.tensor(1.0))
            support = torch.nonzero(vector[1:].abs() > 1e-6).flatten() + 1
            assert len(support) == 1 and int(support[0]) in allowed
            # The negative is orthogonal to the anchor: the anchor's share beta < 0.5 shows as
            # similarity to the anchor below similarity to the negative.
            assert vector[0] < vector[int(support[0])]


def test_anchor_share_above_half_is_rejected():
    with pytest.raises(ValueError, match="0.5"):
        NegativeSynthesis(neg_anchor_mix=(0.2, 0.6))
    with pytest.raises(ValueError, match="0.5"):
        plan_anchor_negatives(torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool), 1, (0.0, 0.7))


def test_no_gradient_flows_into_the_anchor_through_synthesis():
    torch.manual_seed(2)
    anchors = F.normalize(torch.randn(8, 16), dim=1).requires_grad_()
    keys = F.normalize(torch.randn(20, 16), dim=1)
    labels = torch.randint(0, 3, (8,))
    key_labels = torch.randint(0, 3, (20,))
    hard = keys[:5].unsqueeze(0).expand(8, -1, -1)
    synthesis = NegativeSynthesis(num_neg_neg=3, num_neg_anchor=6, hard_pool=5, seed=4)
    negatives, valid = synthesis(anchors, hard, torch.ones(8, 5, dtype=torch.bool))
    assert negatives.shape == (8, 9, 16) and valid.all()
    assert not negatives.requires_grad
    loss = info_nce(anchors, labels, keys, key_labels, extra_negatives=negatives)
    loss.backward()
    # Same loss with the synthetic negatives as plain constants: identical gradient, i.e. the
    # anchor receives d(a . n)/da = n only, nothing through n's dependence on a.
    again = anchors.detach().clone().requires_grad_()
    info_nce(again, labels, keys, key_labels, extra_negatives=negatives.clone()).backward()
    torch.testing.assert_close(anchors.grad, again.grad)


def test_seeded_synthesis_is_reproducible():
    anchors = F.normalize(torch.randn(4, 8), dim=1)
    hard = F.normalize(torch.randn(4, 6, 8), dim=-1)
    valid = torch.ones(4, 6, dtype=torch.bool)
    first = NegativeSynthesis(5, 5, 6, seed=3)(anchors, hard, valid)[0]
    second = NegativeSynthesis(5, 5, 6, seed=3)(anchors, hard, valid)[0]
    torch.testing.assert_close(first, second)
    assert NegativeSynthesis(5, 5, 6).num_synthetic == 10


def test_similarities_equal_the_explicit_vectors():
    """The loss's fast path (no (N, K, D) tensor) equals a . n with the vectors built."""
    anchors = F.normalize(torch.randn(7, 10), dim=1)
    hard = F.normalize(torch.randn(7, 6, 10), dim=-1)
    valid = torch.rand(7, 6) < 0.7
    valid[0] = False
    fast_anchors = anchors.clone().requires_grad_()
    sims, sims_valid = NegativeSynthesis(5, 4, 6, seed=9).similarities(fast_anchors, hard, valid)
    vectors, vectors_valid = NegativeSynthesis(5, 4, 6, seed=9)(anchors, hard, valid)
    assert torch.equal(sims_valid, vectors_valid) and not sims_valid[0].any()
    norms = vectors[vectors_valid].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    slow_anchors = anchors.clone().requires_grad_()
    expected = torch.einsum("nd,nkd->nk", slow_anchors, vectors)
    torch.testing.assert_close(sims, expected)
    weights = torch.randn(7, 9)
    (sims * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(fast_anchors.grad, slow_anchors.grad)
