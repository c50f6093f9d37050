"""InfoNCE and PixelContrastLoss against naive per-anchor loops written here (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from picoseg.contrast import (
    MemoryBank,
    NegativeSynthesis,
    PixelContrastLoss,
    PixelSampler,
    gathered_similarity,
    info_nce,
    info_nce_indexed,
)
from picoseg.contrast.all_keys import all_keys, fits_fixed_shift
from picoseg.contrast.info_nce import mean_over_valid, per_anchor_info_nce
from picoseg.contrast.key_pool import KeyPool

IGNORE = 255


def naive_info_nce(
    anchors,
    anchor_labels,
    key_sets,
    temperature=0.1,
    base_temperature=0.07,
):
    """``key_sets[i]`` = (positive key vectors, negative key vectors) of anchor i (lists)."""
    losses = []
    for i in range(anchors.shape[0]):
        if anchor_labels[i] < 0:
            continue
        positives, negatives = key_sets[i]
        if not positives or not negatives:
            continue
        negative_exp = sum(torch.exp(anchors[i] @ n / temperature) for n in negatives)
        terms = []
        for p in positives:
            positive_exp = torch.exp(anchors[i] @ p / temperature)
            terms.append(-torch.log(positive_exp / (positive_exp + negative_exp)))
        losses.append(sum(terms) / len(terms))
    if not losses:
        return anchors.sum() * 0.0
    return (temperature / base_temperature) * sum(losses) / len(losses)


def dense_key_sets(anchor_labels, keys, key_labels, exclude_self=False, extra=None, mask=None):
    sets = []
    for i in range(len(anchor_labels)):
        a = int(anchor_labels[i])
        positives = [
            keys[j]
            for j in range(keys.shape[0])
            if int(key_labels[j]) == a and key_labels[j] >= 0 and not (exclude_self and i == j)
        ]
        negatives = [
            keys[j] for j in range(keys.shape[0]) if int(key_labels[j]) != a and key_labels[j] >= 0
        ]
        if extra is not None:
            negatives += [
                extra[i, k] for k in range(extra.shape[1]) if mask is None or bool(mask[i, k])
            ]
        sets.append((positives, negatives))
    return sets


def _case(num_anchors=13, num_keys=29, dim=8, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    anchors = F.normalize(torch.randn(num_anchors, dim, generator=gen, dtype=torch.float64), dim=1)
    keys = F.normalize(torch.randn(num_keys, dim, generator=gen, dtype=torch.float64), dim=1)
    anchor_labels = torch.randint(0, classes, (num_anchors,), generator=gen)
    key_labels = torch.randint(0, classes, (num_keys,), generator=gen)
    anchor_labels[1] = -1
    key_labels[2] = -1
    extra = F.normalize(torch.randn(num_anchors, 5, dim, generator=gen, dtype=torch.float64), dim=2)
    mask = torch.rand(num_anchors, 5, generator=gen) < 0.7
    return anchors, anchor_labels, keys, key_labels, extra, mask


def _leaf(t):
    return t.float().clone().requires_grad_(True)


@pytest.mark.parametrize("chunk_size", [8192, 7])
@pytest.mark.parametrize("with_extra", [False, True])
def test_info_nce_matches_naive_loop(chunk_size, with_extra):
    anchors, anchor_labels, keys, key_labels, extra, mask = _case()
    a64, k64 = anchors.clone().requires_grad_(), keys.clone().requires_grad_()
    e64 = extra.clone().requires_grad_()
    sets = dense_key_sets(
        anchor_labels, k64, key_labels, extra=e64 if with_extra else None, mask=mask
    )
    expected = naive_info_nce(a64, anchor_labels, sets, temperature=0.2, base_temperature=0.1)
    expected.backward()
    a, k, e = _leaf(anchors), _leaf(keys), _leaf(extra)
    got = info_nce(
        a,
        anchor_labels,
        k,
        key_labels,
        temperature=0.2,
        base_temperature=0.1,
        extra_negatives=e if with_extra else None,
        extra_negatives_mask=mask if with_extra else None,
        chunk_size=chunk_size,
    )
    got.backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.grad.double(), a64.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k.grad.double(), k64.grad, atol=1e-5, rtol=1e-5)
    if with_extra:
        torch.testing.assert_close(e.grad.double(), e64.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [8192, 5])
def test_info_nce_exclude_self_matches_naive_loop(chunk_size):
    anchors, anchor_labels, _, _, _, _ = _case(num_anchors=17)
    x64 = anchors.clone().requires_grad_()
    expected = naive_info_nce(
        x64, anchor_labels, dense_key_sets(anchor_labels, x64, anchor_labels, True)
    )
    expected.backward()
    x = _leaf(anchors)
    got = info_nce(x, anchor_labels, x, anchor_labels, exclude_self=True, chunk_size=chunk_size)
    got.backward()
    torch.testing.assert_close(got.double(), expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-5)


def test_chunking_does_not_change_the_result():
    anchors, anchor_labels, keys, key_labels, extra, mask = _case(num_anchors=40, num_keys=300)
    results = []
    for chunk in (10_000, 64, 13):
        a, k = _leaf(anchors), _leaf(keys)
        loss = info_nce(
            a, anchor_labels, k, key_labels, extra_negatives=extra.float(), chunk_size=chunk
        )
        loss.backward()
        results.append((loss.detach(), a.grad, k.grad))
    for loss, ga, gk in results[1:]:
        torch.testing.assert_close(loss, results[0][0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(ga, results[0][1], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(gk, results[0][2], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [8192, 4])
def test_info_nce_is_float32_under_autocast(chunk_size):
    anchors, anchor_labels, keys, key_labels, _, _ = _case()
    reference = info_nce(
        anchors.float(), anchor_labels, keys.float(), key_labels, chunk_size=chunk_size
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = info_nce(
            anchors.bfloat16().float(),
            anchor_labels,
            keys.float(),
            key_labels,
            chunk_size=chunk_size,
        )
        again = info_nce(
            anchors.float(), anchor_labels, keys.float(), key_labels, chunk_size=chunk_size
        )
    assert got.dtype == again.dtype == torch.float32
    torch.testing.assert_close(again, reference, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [8192, 3])
@pytest.mark.parametrize(
    "anchor_labels,key_labels",
    [
        ([0, 0, 0], [0, 0, 0, 0]),  # one class: no negatives
        ([0, 1, 1], [1, 1, 0, 0]),  # fine
        ([-1, -1, -1], [0, 1, 0, 1]),  # no anchors
        ([0, 1, 2], []),  # no keys
        ([0, 1, 2], [-1, -1]),  # only empty key slots
    ],
)
def test_info_nce_edge_cases_are_finite(chunk_size, anchor_labels, key_labels):
    a = _leaf(F.normalize(torch.randn(3, 4), dim=1))
    k = _leaf(F.normalize(torch.randn(len(key_labels), 4), dim=1))
    loss = info_nce(
        a,
        torch.tensor(anchor_labels),
        k,
        torch.tensor(key_labels, dtype=torch.long),
        chunk_size=chunk_size,
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and torch.isfinite(k.grad).all()
    if key_labels != [1, 1, 0, 0]:
        assert loss.item() == 0.0 and loss.requires_grad


def test_info_nce_class_with_one_pixel_has_no_positive():
    x = _leaf(F.normalize(torch.randn(4, 6), dim=1))
    labels = torch.tensor([0, 0, 1, 2])  # classes 1 and 2: a single pixel each
    loss = info_nce(x, labels, x, labels, exclude_self=True)
    loss.backward()
    x64 = x.detach().double().requires_grad_()
    expected = naive_info_nce(x64, labels, dense_key_sets(labels, x64, labels, True))
    torch.testing.assert_close(loss.double(), expected.detach(), atol=1e-6, rtol=1e-6)
    assert torch.isfinite(x.grad).all()
    single = info_nce(x[2:], labels[2:], x[2:], labels[2:], exclude_self=True)
    assert single.item() == 0.0


def test_info_nce_indexed_matches_naive_loop():
    anchors, anchor_labels, keys, key_labels, extra, mask = _case(num_anchors=11, num_keys=40)
    gen = torch.Generator().manual_seed(5)
    index = torch.stack([torch.randperm(40, generator=gen)[:12] for _ in range(11)])
    index_mask = torch.rand(11, 12, generator=gen) < 0.8
    a64, k64, e64 = (t.clone().requires_grad_() for t in (anchors, keys, extra))
    sets = []
    for i in range(11):
        label = int(anchor_labels[i])
        chosen = [
            int(j) for j, m in zip(index[i], index_mask[i], strict=True) if m and key_labels[j] >= 0
        ]
        positives = [k64[j] for j in chosen if int(key_labels[j]) == label]
        negatives = [k64[j] for j in chosen if int(key_labels[j]) != label]
        negatives += [e64[i, k] for k in range(5) if mask[i, k]]
        sets.append((positives, negatives))
    expected = naive_info_nce(a64, anchor_labels, sets)
    expected.backward()
    a, k, e = _leaf(anchors), _leaf(keys), _leaf(extra)
    got = info_nce_indexed(
        a,
        anchor_labels,
        k,
        key_labels,
        index,
        index_mask,
        extra_negatives=e,
        extra_negatives_mask=mask,
    )
    got.backward()
    torch.testing.assert_close(got.double(), expected.detach(), atol=1e-5, rtol=1e-5)
    for mine, ref in ((a, a64), (k, k64), (e, e64)):
        torch.testing.assert_close(mine.grad.double(), ref.grad, atol=1e-5, rtol=1e-5)


def test_gathered_similarity_with_given_values():
    anchors, keys = _leaf(torch.randn(6, 5)), torch.randn(9, 5)
    index = torch.randint(0, 9, (6, 4))
    values = (anchors.detach().unsqueeze(1) * keys[index]).sum(-1)
    computed = gathered_similarity(anchors, keys, index, block_elements=7)
    torch.testing.assert_close(computed, values)
    weights = torch.randn(6, 4)
    (gathered_similarity(anchors, keys, index, values) * weights).sum().backward()
    expected = (weights.unsqueeze(-1) * keys[index]).sum(1)
    torch.testing.assert_close(anchors.grad, expected)


# --------------------------------------------------------------------------------------------------
# PixelContrastLoss
# --------------------------------------------------------------------------------------------------


def _batch(batch=2, dim=6, height=5, width=6, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    projections = torch.randn(batch, dim, height, width, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch, height, width), generator=gen)
    labels[0, 0, :2] = IGNORE
    predictions = torch.where(
        torch.rand(batch, height, width, generator=gen) < 0.7,
        labels,
        torch.randint(0, classes, (batch, height, width), generator=gen),
    )
    return projections, labels, predictions


def _naive_regions(projections, labels, classes):
    regions, region_labels = [], []
    normed = F.normalize(projections.detach(), dim=1)
    for b in range(projections.shape[0]):
        for c in range(classes):
            mask = labels[b] == c
            if mask.any():
                regions.append(F.normalize(normed[b][:, mask].mean(1), dim=0))
                region_labels.append(c)
    return regions, region_labels


def _naive_pixel_contrast(projections, labels, sample, classes, joint, pixel=True, region=True):
    """Naive PiCo loss without memory: in-batch anchors and region keys."""
    anchors = torch.stack(
        [
            F.normalize(projections[b, :, p // labels.shape[2], p % labels.shape[2]], dim=0)
            for b, p in zip(sample.batch.tolist(), sample.pixel.tolist(), strict=True)
        ]
    )
    anchor_labels = sample.labels.tolist()
    regions, region_labels = _naive_regions(projections, labels, classes)
    pixel_sets, region_sets = [], []
    for i, a in enumerate(anchor_labels):
        pixel_sets.append(
            (
                [anchors[j] for j, b in enumerate(anchor_labels) if b == a and j != i and b >= 0],
                [anchors[j] for j, b in enumerate(anchor_labels) if b != a and b >= 0],
            )
        )
        region_sets.append(
            (
                [r for r, c in zip(regions, region_labels, strict=True) if c == a],
                [r for r, c in zip(regions, region_labels, strict=True) if c != a],
            )
        )
    labels_t = torch.tensor(anchor_labels)
    if joint:
        sets = [
            (p[0] * pixel + r[0] * region, p[1] * pixel + r[1] * region)
            for p, r in zip(pixel_sets, region_sets, strict=True)
        ]
        return naive_info_nce(anchors, labels_t, sets)
    total = 0.0
    if pixel:
        total = total + naive_info_nce(anchors, labels_t, pixel_sets)
    if region:
        total = total + naive_info_nce(anchors, labels_t, region_sets)
    return total


@pytest.mark.parametrize("joint", [True, False])
@pytest.mark.parametrize("pixel,region", [(True, True), (True, False), (False, True)])
def test_pixel_contrast_without_memory_matches_naive(joint, pixel, region):
    projections, labels, predictions = _batch()
    sampler = PixelSampler("seg_aware", max_anchors=24, max_views=5, min_pixels=1, seed=3)
    reference_sampler = PixelSampler("seg_aware", max_anchors=24, max_views=5, min_pixels=1, seed=3)
    loss_fn = PixelContrastLoss(
        sampler, num_classes=3, joint_softmax=joint, pixel_to_pixel=pixel, pixel_to_region=region
    )
    mine = projections.float().clone().requires_grad_()
    out = loss_fn(mine, labels, predictions)
    out.loss.backward()
    sample = reference_sampler.sample_anchors(labels, predictions)
    reference = projections.clone().requires_grad_()
    expected = _naive_pixel_contrast(reference, labels, sample, 3, joint, pixel, region)
    expected.backward()
    torch.testing.assert_close(out.loss.double(), expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.grad.double(), reference.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        (out.pixel_loss + out.region_loss).double(), expected.detach(), atol=1e-5, rtol=1e-5
    )
    if not region:
        assert out.region_loss.item() == 0.0
    if not pixel:
        assert out.pixel_loss.item() == 0.0
    assert int(out.num_anchors) == int(sample.valid.sum())
    assert not out.pixel_loss.requires_grad and not out.region_loss.requires_grad


def _filled_memory(classes=3, dim=6, pixel_size=7, region_size=4, seed=0, pixel_counts=None):
    memory = MemoryBank(classes, dim, pixel_size, region_size, 3, ignore_index=IGNORE)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        memory.keys.copy_(F.normalize(torch.randn(memory.keys.shape, generator=gen), dim=-1))
        memory.pixel_count.copy_(torch.tensor(pixel_counts or [pixel_size] * classes))
        memory.region_count.fill_(region_size)
        memory.region_count[1] = 2
    memory.refresh_counts()
    return memory


def test_pixel_contrast_with_memory_hardest_matches_naive():
    """Hardest keys per anchor from the memory, in one softmax with the in-batch keys."""
    projections, labels, predictions = _batch()
    memory = _filled_memory(pixel_counts=[7, 3, 0])
    kwargs = dict(
        key_strategy="hardest",
        max_anchors=20,
        max_views=4,
        min_pixels=1,
        num_positives=3,
        num_negatives=5,
        seed=1,
    )
    loss_fn = PixelContrastLoss(PixelSampler(**kwargs), num_classes=3)
    mine = projections.float().clone().requires_grad_()
    out = loss_fn(mine, labels, predictions, memory)
    out.loss.backward()

    sample = PixelSampler(**kwargs).sample_anchors(labels)
    reference = projections.clone().requires_grad_()
    width = labels.shape[2]
    anchors = torch.stack(
        [
            F.normalize(reference[b, :, p // width, p % width], dim=0)
            for b, p in zip(sample.batch.tolist(), sample.pixel.tolist(), strict=True)
        ]
    )
    memory_keys, memory_labels = [], []
    for c in range(3):
        for s in range(int(memory.pixel_count[c])):
            memory_keys.append(memory.pixel_queue[c, s].double())
            memory_labels.append(c)
        for s in range(int(memory.region_count[c])):
            memory_keys.append(memory.region_queue[c, s].double())
            memory_labels.append(c)
    regions, region_labels = _naive_regions(reference, labels, 3)
    sets = []
    anchor_labels = sample.labels.tolist()
    for i, a in enumerate(anchor_labels):
        sims = [float(anchors[i].detach() @ k) for k in memory_keys]
        pos = sorted([j for j, c in enumerate(memory_labels) if c == a], key=lambda j: sims[j])
        neg = sorted([j for j, c in enumerate(memory_labels) if c != a], key=lambda j: -sims[j])
        positives = [memory_keys[j] for j in pos[:3]]
        negatives = [memory_keys[j] for j in neg[:5]]
        positives += [
            anchors[j] for j, b in enumerate(anchor_labels) if b == a and j != i and b >= 0
        ]
        negatives += [anchors[j] for j, b in enumerate(anchor_labels) if b != a and b >= 0]
        positives += [r for r, c in zip(regions, region_labels, strict=True) if c == a]
        negatives += [r for r, c in zip(regions, region_labels, strict=True) if c != a]
        sets.append((positives, negatives))
    expected = naive_info_nce(anchors, sample.labels, sets)
    expected.backward()
    torch.testing.assert_close(out.loss.double(), expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.grad.double(), reference.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["hardest", "semi_hard", "random", "all"])
@pytest.mark.parametrize("synthesis", [False, True])
@pytest.mark.parametrize("joint", [True, False])
def test_pixel_contrast_with_memory_is_finite(strategy, synthesis, joint):
    projections, labels, predictions = _batch(dim=6, classes=3)
    memory = _filled_memory(pixel_counts=[7, 1, 0])
    sampler = PixelSampler(
        "seg_aware", strategy, max_anchors=20, min_pixels=1, num_positives=4, num_negatives=6
    )
    loss_fn = PixelContrastLoss(
        sampler,
        NegativeSynthesis(4, 4, 5) if synthesis else None,
        joint_softmax=joint,
        in_batch_keys=False,
        chunk_size=5,
    )
    x = projections.float().clone().requires_grad_()
    out = loss_fn(x, labels, predictions, memory)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    if joint:
        torch.testing.assert_close(out.pixel_loss + out.region_loss, out.loss.detach())


def test_all_strategy_equals_dense_info_nce_over_memory():
    """``all`` with in_batch_keys=False is info_nce over the memory's filled slots."""
    projections, labels, _ = _batch()
    memory = _filled_memory(pixel_counts=[7, 3, 1])
    kwargs = dict(key_strategy="all", max_anchors=16, min_pixels=1, seed=2)
    loss_fn = PixelContrastLoss(PixelSampler(**kwargs), in_batch_keys=False, chunk_size=4)
    out = loss_fn(projections.float(), labels, None, memory)
    sample = PixelSampler(**kwargs).sample_anchors(labels)
    anchors = F.normalize(projections.float().flatten(2)[sample.batch, :, sample.pixel], dim=1)
    pixel_keys, pixel_labels = memory.pixel_keys()
    region_keys, region_labels = memory.region_keys()
    expected = info_nce(
        anchors,
        sample.labels,
        torch.cat([pixel_keys, region_keys]),
        torch.cat([pixel_labels, region_labels]),
    )
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "case", ["one_class", "single_pixel_class", "all_ignore", "empty_memory", "no_keys"]
)
def test_pixel_contrast_edge_cases(case):
    projections, labels, predictions = _batch(classes=3)
    memory = None
    in_batch = True
    if case == "one_class":
        labels = torch.zeros_like(labels)
    elif case == "single_pixel_class":
        labels = torch.ones_like(labels)
        labels[0, 2, 2] = 2
    elif case == "all_ignore":
        labels = torch.full_like(labels, IGNORE)
    elif case in ("empty_memory", "no_keys"):
        memory = MemoryBank(3, 6, 5, 5, 2)
        in_batch = case == "empty_memory"
    sampler = PixelSampler("seg_aware", "semi_hard", max_anchors=16, min_pixels=1)
    loss_fn = PixelContrastLoss(
        sampler, NegativeSynthesis(2, 2, 3), num_classes=3, in_batch_keys=in_batch
    )
    x = projections.float().clone().requires_grad_()
    out = loss_fn(x, labels, predictions, memory)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(x.grad).all()
    if case in ("one_class", "all_ignore", "no_keys"):
        assert out.loss.item() == 0.0
    if case == "single_pixel_class":
        # The single pixel of class 2 has no positive; the others still contribute.
        assert out.loss.item() > 0


def test_pixel_contrast_is_float32_under_autocast():
    projections, labels, predictions = _batch()
    loss_fn = PixelContrastLoss(PixelSampler(max_anchors=16, min_pixels=1, seed=0), num_classes=3)
    reference = loss_fn.__class__(PixelSampler(max_anchors=16, min_pixels=1, seed=0), num_classes=3)
    expected = reference(projections.float(), labels).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(projections.float(), labels)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, expected)


def test_pixel_contrast_rejects_misaligned_labels():
    projections, labels, _ = _batch()
    loss_fn = PixelContrastLoss(PixelSampler(), num_classes=3)
    with pytest.raises(ValueError, match="nearest"):
        loss_fn(projections.float(), labels[:, ::2])


def test_temperature_scale():
    anchors, anchor_labels, keys, key_labels, _, _ = _case()
    one = info_nce(anchors.float(), anchor_labels, keys.float(), key_labels, 0.1, 0.1)
    scaled = info_nce(anchors.float(), anchor_labels, keys.float(), key_labels, 0.1, 0.05)
    torch.testing.assert_close(scaled, 2 * one)
    assert math.isfinite(one.item())


# --------------------------------------------------------------------------------------------------
# Key strategy ``all``: every key of a pool (picoseg.contrast.all_keys)
# --------------------------------------------------------------------------------------------------


def _ring_pool(dim=6, seed=3):
    """4 classes of 5 pixel + 2 region slots; class 2 empty, classes 0 and 3 wrap around."""
    gen = torch.Generator().manual_seed(seed)
    storage = F.normalize(torch.randn(4 * 7, dim, generator=gen), dim=1)
    pool = KeyPool.from_counts(
        storage,
        slot_counts=[[5, 3, 0, 2], [2, 1, 0, 2]],
        part_offsets=[0, 5],
        part_sizes=[5, 2],
        part_is_region=[False, True],
        stride=7,
        slot_starts=[[2, 0, 0, 4], [1, 0, 0, 0]],
    )
    return pool


def _all_keys_loss(anchors, labels, pool, temperature, chunk_size):
    everything = all_keys(anchors, labels, pool, temperature=temperature, chunk_size=chunk_size)
    positive = everything.positive_valid
    loss, group, valid = per_anchor_info_nce(
        anchors=anchors,
        anchor_labels=labels,
        temperature=temperature,
        extra=everything.positive_similarity,
        extra_positive=positive,
        extra_negative=torch.zeros_like(positive),
        extra_group=everything.positive_is_region,
        negative_lse=everything.negative_lse,
    )
    return (temperature / 0.07) * mean_over_valid(loss, valid), group, valid, everything


@pytest.mark.parametrize("chunk_size", [8192, 3])
def test_all_keys_matches_naive_loop(chunk_size):
    pool = _ring_pool()
    keys, key_labels = pool.storage[pool.rows].double(), pool.labels
    gen = torch.Generator().manual_seed(4)
    anchors = F.normalize(torch.randn(12, 6, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 1, 3, -1, 2, 0, 3, 1, 1, 5, 0, 3])  # 2: no keys; 5: no such class
    a64 = anchors.clone().requires_grad_()
    expected = naive_info_nce(a64, labels, dense_key_sets(labels, keys, key_labels))
    expected.backward()
    a = _leaf(anchors)
    got, _, valid, everything = _all_keys_loss(a, labels, pool, 0.1, chunk_size)
    got.backward()
    torch.testing.assert_close(got.double(), expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.grad.double(), a64.grad, atol=1e-5, rtol=1e-5)
    assert valid.tolist() == [c in (0, 1, 3) for c in labels.tolist()]
    # The positives are the anchor's class in the pool, flagged region where the pool says so.
    for i, c in enumerate(labels.tolist()):
        mine = key_labels == c
        count = int(mine.sum())
        assert int(everything.positive_valid[i].sum()) == count
        torch.testing.assert_close(
            everything.positive_similarity[i, :count].double(),
            anchors[i] @ keys[mine].T,
            atol=1e-6,
            rtol=0,
        )
        assert everything.positive_is_region[i, :count].tolist() == pool.is_region[mine].tolist()


def test_all_keys_negative_sum_keeps_precision_far_below_the_positives():
    """Own class identical to the anchor, negatives opposite: the negatives' exp-sum is ~1e-25 of
    the positives' and must still come out right (no subtraction of the own class)."""
    direction = F.normalize(torch.randn(5), dim=0)
    storage = torch.cat([direction.expand(6, 5), -direction.expand(6, 5)])
    pool = KeyPool.from_keys(storage, torch.tensor([0] * 6 + [1] * 6), 2)
    anchors = direction.expand(3, 5).clone()
    everything = all_keys(anchors, torch.zeros(3, dtype=torch.long), pool, temperature=0.05)
    expected = math.log(6.0) - 1.0 / 0.05  # six negatives at similarity -1
    torch.testing.assert_close(
        everything.negative_lse, torch.full((3,), expected), atol=1e-4, rtol=0
    )


def test_fits_fixed_shift_bounds_the_exponent_range():
    pool = _ring_pool()
    anchors = F.normalize(torch.randn(4, 6), dim=1)
    assert fits_fixed_shift(anchors, pool, temperature=0.07)
    assert not fits_fixed_shift(anchors, pool, temperature=0.02)  # 2 / t = 100 > 80


@pytest.mark.parametrize("temperature", [0.1, 0.07])
def test_all_strategy_loss_equals_the_dense_path(monkeypatch, temperature):
    """The loss's ``all`` path (pool passes) gives the loss, its pixel / region parts and the
    gradient of one dense InfoNCE over in-batch + memory keys (the path it replaced, still used
    for a tiny temperature)."""
    import picoseg.contrast.loss as loss_module

    projections, labels, _ = _batch()
    memory = _filled_memory(pixel_counts=[7, 3, 1])
    results = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(loss_module, "fits_fixed_shift", lambda *args: False)
        sampler = PixelSampler(key_strategy="all", max_anchors=16, min_pixels=1, seed=2)
        loss_fn = PixelContrastLoss(sampler, temperature=temperature, in_batch_keys=True)
        x = projections.float().clone().requires_grad_()
        out = loss_fn(x, labels, None, memory)
        out.loss.backward()
        results.append((out.loss, out.pixel_loss, out.region_loss, x.grad))
    for mine, reference in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5)
