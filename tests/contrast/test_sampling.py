"""Anchor samplers and key selection against naive per-group / per-anchor references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from picoseg.contrast import (
    KeyPool,
    PixelSampler,
    region_embeddings,
    sample_anchors,
    sample_group_pixels,
    select_keys,
)

IGNORE = 255


def _labels(batch=3, height=12, width=10, classes=5, seed=0, ignore_fraction=0.1):
    gen = torch.Generator().manual_seed(seed)
    # Long-tailed classes: class c with probability ~ 1/(c+1)^2.
    probs = 1.0 / torch.arange(1, classes + 1).float() ** 2
    labels = torch.multinomial(probs, batch * height * width, True, generator=gen)
    labels = labels.view(batch, height, width)
    labels[torch.rand(batch, height, width, generator=gen) < ignore_fraction] = IGNORE
    return labels


def _groups(labels):
    """Naive (image, class) -> list of flat pixel indices."""
    groups = {}
    batch = labels.shape[0]
    for b in range(batch):
        flat = labels[b].reshape(-1).tolist()
        for p, c in enumerate(flat):
            if c == IGNORE:
                continue
            groups.setdefault((b, c), []).append(p)
    return groups


def _anchors_by_group(sample):
    out = {}
    for b, p, c, v in zip(
        sample.batch.tolist(),
        sample.pixel.tolist(),
        sample.labels.tolist(),
        sample.valid.tolist(),
        strict=True,
    ):
        if v:
            out.setdefault((b, c), []).append(p)
    return out


@pytest.mark.parametrize("min_pixels", [1, 5])
@pytest.mark.parametrize("max_anchors,max_views", [(64, 100), (200, 7), (1000, 3)])
def test_random_anchors_follow_quota(min_pixels, max_anchors, max_views):
    labels = _labels()
    sample = sample_anchors(
        labels, max_anchors=max_anchors, max_views=max_views, min_pixels=min_pixels
    )
    groups = _groups(labels)
    eligible = {g: p for g, p in groups.items() if len(p) >= min_pixels}
    n_view = min(max_anchors // len(eligible), max_views)
    got = _anchors_by_group(sample)
    assert sample.batch.shape == (max_anchors,)
    assert int(sample.valid.sum()) <= max_anchors
    for group, pixels in groups.items():
        expected = min(n_view, len(pixels)) if group in eligible else 0
        chosen = got.get(group, [])
        assert len(chosen) == expected, group
        assert len(set(chosen)) == len(chosen)
        assert set(chosen) <= set(pixels)  # right class, never an ignore pixel
    assert (sample.labels[~sample.valid] == -1).all()
    # The labels reported are the label map's.
    valid = sample.valid
    assert torch.equal(
        labels.view(labels.shape[0], -1)[sample.batch[valid], sample.pixel[valid]],
        sample.labels[valid],
    )


def test_anchor_sampling_is_reproducible_and_random():
    labels = _labels()
    torch.manual_seed(3)
    first = sample_anchors(labels, max_anchors=50)
    torch.manual_seed(3)
    second = sample_anchors(labels, max_anchors=50)
    third = sample_anchors(labels, max_anchors=50)
    assert torch.equal(first.pixel, second.pixel) and torch.equal(first.batch, second.batch)
    assert not torch.equal(first.pixel, third.pixel)
    sampler = PixelSampler(max_anchors=50, seed=7)
    again = PixelSampler(max_anchors=50, seed=7)
    a, b = sampler.sample_anchors(labels, ignore_index=IGNORE), again.sample_anchors(labels)
    assert torch.equal(a.pixel, b.pixel)


def test_all_ignore_labels_give_no_anchor():
    labels = torch.full((2, 4, 4), IGNORE)
    sample = sample_anchors(labels, max_anchors=16)
    assert not sample.valid.any() and (sample.labels == -1).all()


def _seg_aware_case():
    """Image 0: class 1 with 30 correct and 30 wrong pixels; class 2 with 2 wrong, 40 correct;
    class 3 with 40 wrong and 3 correct. Image 1: class 0 everywhere, all correct."""
    labels = torch.zeros(2, 10, 20, dtype=torch.long)
    predictions = torch.zeros(2, 10, 20, dtype=torch.long)
    flat_l, flat_p = labels[0].view(-1), predictions[0].view(-1)
    flat_l[:60], flat_p[:30], flat_p[30:60] = 1, 1, 4
    flat_l[60:102], flat_p[60:62], flat_p[62:102] = 2, 4, 2
    flat_l[102:145], flat_p[102:142], flat_p[142:145] = 3, 4, 3
    flat_l[145:], flat_p[145:] = IGNORE, 0
    return labels, predictions


def test_seg_aware_anchors_are_half_misclassified_and_fill_the_quota():
    labels, predictions = _seg_aware_case()
    sample = sample_anchors(
        labels, predictions, strategy="seg_aware", max_anchors=40, max_views=20, min_pixels=1
    )
    # Groups: (0,1), (0,2), (0,3), (1,0): n_view = min(40 // 4, 20) = 10.
    got = _anchors_by_group(sample)
    wrong = (predictions != labels).view(2, -1)
    counts = {g: sum(bool(wrong[g[0], p]) for p in pix) for g, pix in got.items()}
    assert {g: len(p) for g, p in got.items()} == {(0, 1): 10, (0, 2): 10, (0, 3): 10, (1, 0): 10}
    assert counts[(0, 1)] == 5  # enough of both kinds: exactly half misclassified
    assert counts[(0, 2)] == 2  # only 2 misclassified: correct ones fill the quota
    assert counts[(0, 3)] == 7  # only 3 correct: misclassified ones fill the quota
    assert counts[(1, 0)] == 0  # no misclassified pixel at all
    with pytest.raises(ValueError, match="predictions"):
        sample_anchors(labels, None, strategy="seg_aware")


def test_seg_aware_with_odd_quota():
    labels, predictions = _seg_aware_case()
    sample = sample_anchors(
        labels, predictions, strategy="seg_aware", max_anchors=1000, max_views=7, min_pixels=1
    )
    got = _anchors_by_group(sample)
    wrong = (predictions != labels).view(2, -1)
    assert sum(bool(wrong[0, p]) for p in got[(0, 1)]) == 7 // 2


def test_group_pixels_come_from_their_class():
    labels = _labels(classes=4)
    pixels, valid = sample_group_pixels(labels, num_classes=4, per_group=3, ignore_index=IGNORE)
    groups = _groups(labels)
    assert pixels.shape == valid.shape == (3, 4, 3)
    for b in range(3):
        for c in range(4):
            chosen = pixels[b, c][valid[b, c]].tolist()
            available = groups.get((b, c), [])
            assert len(chosen) == min(3, len(available))
            assert len(set(chosen)) == len(chosen) and set(chosen) <= set(available)


def test_region_embeddings_match_naive_mean():
    labels = _labels(batch=2, height=6, width=5, classes=4)
    projections = torch.randn(2, 8, 6, 5, dtype=torch.float64)
    regions, valid = region_embeddings(projections, labels, 4, IGNORE, max_elements=100)
    normed = F.normalize(projections, dim=1)
    for b in range(2):
        for c in range(4):
            mask = labels[b] == c
            assert bool(valid[b, c]) == bool(mask.any())
            if mask.any():
                mean = normed[b][:, mask].mean(1)
                torch.testing.assert_close(
                    regions[b, c].double(), F.normalize(mean, dim=0), atol=1e-6, rtol=0
                )


# --------------------------------------------------------------------------------------------------
# Key selection
# --------------------------------------------------------------------------------------------------


def _pool_case(num_keys=300, classes=4, anchors=37, dim=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(num_keys, dim, generator=gen), dim=1)
    key_labels = torch.randint(0, classes, (num_keys,), generator=gen)
    pool = KeyPool.from_keys(keys, key_labels, classes)
    anchor = F.normalize(torch.randn(anchors, dim, generator=gen), dim=1)
    anchor_labels = torch.randint(0, classes, (anchors,), generator=gen)
    anchor_labels[0] = -1  # an empty anchor slot
    return pool, anchor, anchor_labels


def _chosen(selection, i, positive):
    mask = selection.valid[i] & (selection.is_positive[i] == positive)
    return selection.columns[i][mask].tolist(), selection.similarity[i][mask]


def _candidates(pool, anchor, label, positive):
    sims = pool.storage @ anchor
    cols = [j for j in range(pool.size) if (int(pool.labels[j]) == label) == positive]
    return cols, sims


@pytest.mark.parametrize("block_elements", [1 << 20, 300 * 5])
def test_hardest_picks_most_similar_negatives_and_least_similar_positives(block_elements):
    pool, anchors, labels = _pool_case()
    selection = select_keys(
        anchors,
        labels,
        pool,
        strategy="hardest",
        num_positives=6,
        num_negatives=20,
        block_elements=block_elements,
    )
    assert not selection.valid[0].any()
    for i in range(1, anchors.shape[0]):
        label = int(labels[i])
        for positive, k in ((True, 6), (False, 20)):
            cols, sims = _candidates(pool, anchors[i], label, positive)
            ordered = sorted(cols, key=lambda j: float(sims[j]), reverse=not positive)
            chosen, chosen_sims = _chosen(selection, i, positive)
            assert set(chosen) == set(ordered[:k])
            torch.testing.assert_close(chosen_sims, sims[chosen], atol=1e-6, rtol=0)


def test_hardest_uses_every_key_when_few():
    pool, anchors, labels = _pool_case(num_keys=30)
    selection = select_keys(
        anchors, labels, pool, strategy="hardest", num_positives=100, num_negatives=100
    )
    for i in range(1, anchors.shape[0]):
        for positive in (True, False):
            cols, _ = _candidates(pool, anchors[i], int(labels[i]), positive)
            assert sorted(_chosen(selection, i, positive)[0]) == sorted(cols)


@pytest.mark.parametrize("num_negatives", [5, 40, 500])
def test_semi_hard_picks_only_from_the_top_fraction(num_negatives):
    pool, anchors, labels = _pool_case(num_keys=400)
    fraction = 0.2
    torch.manual_seed(0)
    selection = select_keys(
        anchors,
        labels,
        pool,
        strategy="semi_hard",
        num_positives=8,
        num_negatives=num_negatives,
        semi_hard_fraction=fraction,
        block_elements=400 * 7,
    )
    for i in range(1, anchors.shape[0]):
        for positive, k in ((True, 8), (False, num_negatives)):
            cols, sims = _candidates(pool, anchors[i], int(labels[i]), positive)
            ordered = sorted(cols, key=lambda j: float(sims[j]), reverse=not positive)
            top = ordered[: math.ceil(fraction * len(cols))]
            chosen, chosen_sims = _chosen(selection, i, positive)
            assert len(chosen) == min(k, len(top)) and len(set(chosen)) == len(chosen)
            assert set(chosen) <= set(top)
            torch.testing.assert_close(chosen_sims, sims[chosen], atol=1e-6, rtol=0)


def test_semi_hard_is_random_within_the_pool():
    pool, anchors, labels = _pool_case(num_keys=400)
    picks = []
    for seed in range(2):
        torch.manual_seed(seed)
        selection = select_keys(
            anchors, labels, pool, strategy="semi_hard", num_positives=2, num_negatives=10
        )
        picks.append(selection.columns)
    assert not torch.equal(picks[0], picks[1])


def test_random_keys_are_distinct_and_of_the_right_class():
    pool, anchors, labels = _pool_case(num_keys=200)
    selection = select_keys(
        anchors, labels, pool, strategy="random", num_positives=5, num_negatives=30
    )
    for i in range(1, anchors.shape[0]):
        for positive, k in ((True, 5), (False, 30)):
            cols, sims = _candidates(pool, anchors[i], int(labels[i]), positive)
            chosen, chosen_sims = _chosen(selection, i, positive)
            assert len(chosen) == min(k, len(cols)) and len(set(chosen)) == len(chosen)
            assert set(chosen) <= set(cols)
            torch.testing.assert_close(chosen_sims, sims[chosen], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "strategy,num_negatives,fraction",
    [("hardest", 30, 0.1), ("hardest", 3, 0.1), ("semi_hard", 30, 0.5), ("semi_hard", 30, 0.01)],
)
def test_hard_negatives_for_synthesis(strategy, num_negatives, fraction):
    """Both paths (from the selection's topk, or a separate one) give the true top H."""
    pool, anchors, labels = _pool_case(num_keys=300)
    selection = select_keys(
        anchors,
        labels,
        pool,
        strategy=strategy,
        num_negatives=num_negatives,
        num_positives=4,
        semi_hard_fraction=fraction,
        num_hard=7,
    )
    for i in range(1, anchors.shape[0]):
        cols, sims = _candidates(pool, anchors[i], int(labels[i]), False)
        ordered = sorted(cols, key=lambda j: float(sims[j]), reverse=True)
        got = selection.hard_columns[i][selection.hard_valid[i]].tolist()
        assert set(got) == set(ordered[:7])
    assert not selection.hard_valid[0].any()


def test_pool_from_partially_filled_queues():
    """Filled prefixes of per-class rings, read straight from the storage."""
    classes, stride, dim = 3, 10, 8
    storage = F.normalize(torch.randn(classes * stride, dim), dim=1)
    pixel_counts, region_counts = [6, 0, 6], [4, 2, 1]
    pool = KeyPool.from_counts(
        storage, [pixel_counts, region_counts], [0, 6], [6, 4], [False, True], stride
    )
    rows = [c * stride + s for c in range(3) for s in range(pixel_counts[c])]
    rows += [c * stride + 6 + s for c in range(3) for s in range(region_counts[c])]
    assert sorted(pool.rows.tolist()) == sorted(rows)
    assert pool.size == len(rows) and pool.max_count == 10
    assert torch.equal(pool.labels, torch.tensor(sorted(r // stride for r in rows)))
    assert pool.is_region.tolist() == [(r % stride) >= 6 for r in pool.rows.tolist()]
    assert pool.class_count.tolist() == [10, 2, 7]
    # Runs reproduce the columns.
    for row_start, length, column in pool.runs:
        assert pool.rows[column : column + length].tolist() == list(
            range(row_start, row_start + length)
        )
    anchors = F.normalize(torch.randn(9, dim), dim=1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    selection = select_keys(anchors, labels, pool, strategy="hardest", num_negatives=4)
    for i in range(9):
        sims = storage[pool.rows] @ anchors[i]
        cols = [j for j in range(pool.size) if int(pool.labels[j]) != int(labels[i])]
        best = sorted(cols, key=lambda j: float(sims[j]), reverse=True)[:4]
        assert set(_chosen(selection, i, False)[0]) == set(best)


def test_empty_pool_selects_nothing():
    pool = KeyPool.from_keys(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 3)
    selection = select_keys(torch.randn(5, 4), torch.zeros(5, dtype=torch.long), pool)
    assert selection.columns.shape == (5, 0)


def test_sampler_rejects_bad_config():
    with pytest.raises(ValueError, match="anchor_strategy"):
        PixelSampler(anchor_strategy="hard")
    with pytest.raises(ValueError, match="key_strategy"):
        PixelSampler(key_strategy="easy")
    with pytest.raises(ValueError, match="semi_hard_fraction"):
        PixelSampler(semi_hard_fraction=0.0)
