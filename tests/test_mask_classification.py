import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from picoseg.mask_classification import (
    MaskClassificationLoss,
    class_masks,
    hungarian_match,
    pairwise_dice_cost,
    pairwise_focal_cost,
)
from picoseg.models.output import SegmentationOutput

IGNORE = 255


def _brute_force(cost: torch.Tensor) -> tuple[float, set[tuple[int, int]]]:
    """The minimal total cost over every injective assignment, and its (query, target) pairs."""
    num_queries, num_targets = cost.shape
    best, best_pairs = math.inf, set()
    if num_queries >= num_targets:
        for queries in itertools.permutations(range(num_queries), num_targets):
            pairs = {(q, t) for t, q in enumerate(queries)}
            total = sum(cost[q, t].item() for q, t in pairs)
            if total < best:
                best, best_pairs = total, pairs
    else:
        for targets in itertools.permutations(range(num_targets), num_queries):
            pairs = {(q, t) for q, t in enumerate(targets)}
            total = sum(cost[q, t].item() for q, t in pairs)
            if total < best:
                best, best_pairs = total, pairs
    return best, best_pairs


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (4, 4), (5, 3), (6, 2), (5, 1), (2, 3)])
def test_hungarian_match_equals_brute_force(shape):
    generator = torch.Generator().manual_seed(sum(shape))
    for _ in range(5):
        cost = torch.randn(shape, generator=generator)
        rows, cols = hungarian_match(cost)
        best, pairs = _brute_force(cost)
        assert len(rows) == min(shape)
        assert cols.tolist() == sorted(cols.tolist())
        assert cost[rows, cols].sum().item() == pytest.approx(best, abs=1e-5)
        assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == pairs


def test_hungarian_match_without_targets_is_empty():
    rows, cols = hungarian_match(torch.zeros(4, 0))
    assert rows.shape == cols.shape == (0,) and rows.dtype == torch.long


# A 4 x 4 image: class 0 on the left half, class 2 on the right half, one ignored pixel;
# class 1 is absent. Three queries, four class logits (3 classes + "no object").
LABELS = torch.tensor([[[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, IGNORE], [0, 0, 2, 2]]])


def _tiny_case():
    generator = torch.Generator().manual_seed(0)
    left = torch.tensor([1.0, 1.0, -1.0, -1.0]).expand(4, 4)
    mask_logits = torch.stack([-3 * left, torch.zeros(4, 4), 3 * left])[None]  # q0 right, q2 left
    mask_logits = mask_logits + 0.3 * torch.randn(mask_logits.shape, generator=generator)
    class_logits = torch.tensor(
        [[[0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 3.0], [3.0, 0.0, 0.0, 0.0]]]
    )
    class_logits = class_logits + 0.3 * torch.randn(class_logits.shape, generator=generator)
    return class_logits, mask_logits


def _focal(logit: float, target: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = 1 / (1 + math.exp(-logit))
    if target == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def _naive_pair_losses(mask: torch.Tensor, labels: torch.Tensor, cls: int) -> tuple[float, float]:
    """Focal (mean over valid pixels) and dice of one (h, w) mask against class ``cls``."""
    focal, inter, p_sum, t_sum, n_valid = 0.0, 0.0, 0.0, 0.0, 0
    for i in range(labels.shape[0]):
        for j in range(labels.shape[1]):
            if labels[i, j] == IGNORE:
                continue
            target = float(labels[i, j] == cls)
            p = 1 / (1 + math.exp(-mask[i, j].item()))
            focal += _focal(mask[i, j].item(), target)
            inter += p * target
            p_sum += p
            t_sum += target
            n_valid += 1
    return focal / max(n_valid, 1), 1 - (2 * inter + 1) / (p_sum + t_sum + 1)


def test_tiny_case_matches_the_expected_pairs_and_a_naive_cost():
    class_logits, mask_logits = _tiny_case()
    criterion = MaskClassificationLoss(3, IGNORE)
    [(queries, classes)] = criterion.match(class_logits, mask_logits, LABELS)
    assert classes.tolist() == [0, 2] and queries.tolist() == [2, 0]
    # The same assignment from a naive cost and brute force.
    probs = class_logits[0].softmax(-1)
    cost = torch.zeros(3, 2)
    for q in range(3):
        for t, cls in enumerate([0, 2]):
            focal, dice = _naive_pair_losses(mask_logits[0, q], LABELS[0], cls)
            cost[q, t] = -probs[q, cls] + 20 * focal + dice
    _, pairs = _brute_force(cost)
    assert pairs == {(2, 0), (0, 1)}


def test_pairwise_costs_equal_a_naive_loop_over_valid_pixels():
    _, mask_logits = _tiny_case()
    masks, valid = class_masks(LABELS, 3, IGNORE)
    assert valid.sum() == 15 and masks.sum() == 15 and masks[0, 1].sum() == 0
    focal = pairwise_focal_cost(mask_logits.flatten(2), masks, valid)
    dice = pairwise_dice_cost(mask_logits.flatten(2), masks, valid)
    assert focal.shape == dice.shape == (1, 3, 3)
    for q in range(3):
        for cls in range(3):
            expected_focal, expected_dice = _naive_pair_losses(mask_logits[0, q], LABELS[0], cls)
            assert focal[0, q, cls].item() == pytest.approx(expected_focal, rel=1e-5)
            assert dice[0, q, cls].item() == pytest.approx(expected_dice, rel=1e-5)


@pytest.mark.parametrize("no_object_weight", [0.1, 0.5])
def test_tiny_case_loss_equals_a_naive_loop(no_object_weight):
    class_logits, mask_logits = _tiny_case()
    criterion = MaskClassificationLoss(3, IGNORE, no_object_weight=no_object_weight)
    out = SegmentationOutput(
        logits=torch.zeros(1, 3, 4, 4),
        features=torch.zeros(1, 1, 4, 4),
        class_logits=class_logits,
        mask_logits=mask_logits,
    )
    terms = criterion(out, LABELS)
    assert set(terms) == {"mask_ce", "mask_focal", "mask_dice"}
    # Query 1 is unmatched: its target is "no object" (id 3), weighted no_object_weight.
    targets, weights = [2, 3, 0], [1.0, no_object_weight, 1.0]
    log_probs = class_logits[0].log_softmax(-1)
    ce = -sum(w * log_probs[q, t] for q, (t, w) in enumerate(zip(targets, weights, strict=True)))
    ce = ce / sum(weights)
    pairs = [_naive_pair_losses(mask_logits[0, q], LABELS[0], c) for q, c in [(2, 0), (0, 2)]]
    focal = sum(f for f, _ in pairs) / 2
    dice = sum(d for _, d in pairs) / 2
    torch.testing.assert_close(terms["mask_ce"], torch.as_tensor(ce, dtype=torch.float32))
    assert terms["mask_focal"].item() == pytest.approx(20 * focal, rel=1e-5)
    assert terms["mask_dice"].item() == pytest.approx(dice, rel=1e-5)


def test_labels_are_nearest_downsampled_to_the_masks():
    torch.manual_seed(0)
    class_logits, mask_logits = torch.randn(2, 5, 4), torch.randn(2, 5, 4, 4)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[0, :3] = IGNORE
    out = SegmentationOutput(
        torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), {}, class_logits, mask_logits
    )
    criterion = MaskClassificationLoss(3, IGNORE)
    full = criterion(out, labels)
    small = criterion(out, labels[:, ::2, ::2])
    for name in full:
        torch.testing.assert_close(full[name], small[name])


def test_all_ignored_images_give_a_finite_loss_and_gradients():
    torch.manual_seed(0)
    class_logits = torch.randn(2, 5, 4, requires_grad=True)
    mask_logits = torch.randn(2, 5, 4, 4, requires_grad=True)
    labels = torch.full((2, 4, 4), IGNORE)
    labels[1, :2] = 1
    criterion = MaskClassificationLoss(3, IGNORE)
    out = SegmentationOutput(
        torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), {}, class_logits, mask_logits
    )
    matches = criterion.match(class_logits, mask_logits, labels)
    assert len(matches[0][0]) == 0 and matches[1][1].tolist() == [1]
    loss = sum(criterion(out, labels).values())
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(class_logits.grad).all() and torch.isfinite(mask_logits.grad).all()
    # Every image ignored: no target; only the class term ("no object" everywhere) remains.
    terms = criterion(out, torch.full((2, 4, 4), IGNORE))
    assert terms["mask_focal"].item() == 0 and terms["mask_dice"].item() == 0
    expected = F.cross_entropy(class_logits.detach().reshape(-1, 4), torch.full((10,), 3))
    torch.testing.assert_close(terms["mask_ce"], expected)


def test_class_zero_is_a_real_class():
    torch.manual_seed(0)
    class_logits, mask_logits = torch.randn(1, 4, 3), torch.randn(1, 4, 4, 4)
    criterion = MaskClassificationLoss(2, IGNORE)
    [(queries, classes)] = criterion.match(class_logits, mask_logits, torch.zeros(1, 4, 4).long())
    assert classes.tolist() == [0] and len(queries) == 1


def test_missing_mask_outputs_are_an_error():
    out = SegmentationOutput(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="class_logits and .mask_logits"):
        MaskClassificationLoss(3)(out, torch.zeros(1, 4, 4).long())
    out = SegmentationOutput(
        torch.zeros(1, 3, 4, 4),
        torch.zeros(1, 1, 4, 4),
        {},
        torch.zeros(1, 2, 3),
        torch.zeros(1, 2, 4, 4),
    )
    with pytest.raises(ValueError, match="expected num_classes \\+ 1 = 4"):
        MaskClassificationLoss(3)(out, torch.zeros(1, 4, 4).long())


def test_deep_supervision_terms_are_the_sum_over_earlier_layers():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, 0] = IGNORE
    layers = [(torch.randn(2, 5, 4), torch.randn(2, 5, 4, 4)) for _ in range(3)]
    criterion = MaskClassificationLoss(3, IGNORE)

    def output(class_logits, mask_logits, aux):
        return SegmentationOutput(
            torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), {}, class_logits, mask_logits, aux
        )

    terms = criterion(output(*layers[-1], layers[:-1]), labels)
    last = criterion(output(*layers[-1], []), labels)
    earlier = [criterion(output(*layer, []), labels) for layer in layers[:-1]]
    for name in ("mask_ce", "mask_focal", "mask_dice"):
        torch.testing.assert_close(terms[name], last[name])
        torch.testing.assert_close(terms[f"aux_{name}"], earlier[0][name] + earlier[1][name])
    assert "aux_mask_ce" not in last
