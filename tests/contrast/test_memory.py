"""MemoryBank FIFO arithmetic against a hand-simulated ring per class, selection and state."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from picoseg.contrast import MemoryBank, MemoryBankCallback, MemoryCandidates, gather_and_push

IGNORE = 255


class RingSimulation:
    """A per-class ring of ``size`` slots written one entry at a time (the FIFO definition)."""

    def __init__(self, classes, size):
        self.slots = [[None] * size for _ in range(classes)]
        self.pointer = [0] * classes
        self.count = [0] * classes
        self.size = size

    def push(self, c, entry):
        self.slots[c][self.pointer[c]] = entry
        self.pointer[c] = (self.pointer[c] + 1) % self.size
        self.count[c] = min(self.count[c] + 1, self.size)


def _random_candidates(gen, batch, classes, per_group, dim, density=0.6):
    pixel_valid = torch.rand(batch, classes, per_group, generator=gen) < density
    region_valid = torch.rand(batch, classes, generator=gen) < density
    pixel_keys = torch.randn(batch, classes, per_group, dim, generator=gen) * pixel_valid[..., None]
    region_keys = torch.randn(batch, classes, dim, generator=gen) * region_valid[..., None]
    return MemoryCandidates(pixel_keys, pixel_valid, region_keys, region_valid)


def _simulate(candidates, pixels, regions):
    batch, classes, per_group, _ = candidates.pixel_keys.shape
    for c in range(classes):
        for b in range(batch):
            for v in range(per_group):
                if candidates.pixel_valid[b, c, v]:
                    pixels.push(c, candidates.pixel_keys[b, c, v])
            if candidates.region_valid[b, c]:
                regions.push(c, candidates.region_keys[b, c])


def _assert_matches(memory, ring, queue, pointer, count):
    assert pointer.tolist() == ring.pointer and count.tolist() == ring.count
    for c, slots in enumerate(ring.slots):
        for s, entry in enumerate(slots):
            if entry is None:
                assert s >= ring.count[c]
            else:
                torch.testing.assert_close(queue[c, s], entry)


@pytest.mark.parametrize("batch", [1, 4, 9])  # 9 images x 3 pixels > 5 slots: overflow in a push
def test_fifo_matches_simulation_across_wrap_around(batch):
    gen = torch.Generator().manual_seed(batch)
    classes, dim, pixel_size, region_size, per_group = 3, 4, 5, 3, 3
    memory = MemoryBank(classes, dim, pixel_size, region_size, per_group)
    pixels, regions = RingSimulation(classes, pixel_size), RingSimulation(classes, region_size)
    for _ in range(7):
        candidates = _random_candidates(gen, batch, classes, per_group, dim)
        memory.push(candidates)
        _simulate(candidates, pixels, regions)
        _assert_matches(
            memory, pixels, memory.pixel_queue, memory.pixel_pointer, memory.pixel_count
        )
        _assert_matches(
            memory, regions, memory.region_queue, memory.region_pointer, memory.region_count
        )
    assert memory.pixel_count[0] > 0  # class 0 has its queue


def test_pushing_more_than_the_capacity_keeps_the_newest():
    memory = MemoryBank(2, 3, pixel_size=4, region_size=2, pixels_per_image=3, use_region=True)
    keys = torch.arange(1, 1 + 3 * 3 * 2 * 3, dtype=torch.float32).view(3, 2, 3, 3)
    valid = torch.ones(3, 2, 3, dtype=torch.bool)
    region_keys = torch.zeros(3, 2, 3)
    region_valid = torch.zeros(3, 2, dtype=torch.bool)
    memory.push(MemoryCandidates(keys, valid, region_keys, region_valid))
    # Class 0 receives 9 entries in (image, pixel) order; a ring of 4 keeps the last 4, with the
    # pointer at 9 % 4 = 1: slots hold entries 8, 5, 6, 7 (0-based order of arrival).
    arrivals = keys[:, 0].reshape(9, 3)
    expected = torch.stack([arrivals[8], arrivals[5], arrivals[6], arrivals[7]])
    torch.testing.assert_close(memory.pixel_queue[0], expected)
    assert memory.pixel_pointer.tolist() == [1, 1] and memory.pixel_count.tolist() == [4, 4]
    assert memory.region_count.tolist() == [0, 0]


def test_empty_slots_are_never_keys():
    memory = MemoryBank(3, 4, pixel_size=6, region_size=2, pixels_per_image=2)
    assert memory.pixel_keys()[0].shape == (0, 4) and memory.key_pool().size == 0
    candidates = _random_candidates(torch.Generator().manual_seed(0), 2, 3, 2, 4, density=1.0)
    candidates.pixel_valid[:, 2] = False  # class 2 gets no pixel
    memory.push(candidates)
    keys, labels = memory.pixel_keys()
    assert keys.shape == (8, 4) and labels.tolist() == [0] * 4 + [1] * 4
    region_keys, region_labels = memory.region_keys()
    assert region_labels.tolist() == [0, 0, 1, 1, 2, 2]
    pool = memory.key_pool()
    assert pool.size == 14
    expected = torch.cat(
        [
            torch.cat(
                [
                    memory.pixel_queue[c, : int(memory.pixel_count[c])],
                    memory.region_queue[c, : int(memory.region_count[c])],
                ]
            )
            for c in range(3)
        ]
    )
    torch.testing.assert_close(pool.storage[pool.rows], expected)
    assert pool.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 2
    assert pool.is_region.tolist() == ([False] * 4 + [True] * 2) * 2 + [True] * 2
    only_pixels = memory.key_pool(pixel=True, region=False)
    assert only_pixels.size == 8 and not only_pixels.is_region.any()
    torch.testing.assert_close(memory.fill_fraction(), torch.tensor([6 / 8, 6 / 8, 2 / 8]))


def test_select_takes_pixels_of_the_right_class():
    """Each pixel's embedding is a scaled one-hot of its position: decode what was pushed."""
    batch, height, width, classes = 2, 3, 4, 3
    positions = batch * height * width
    gen = torch.Generator().manual_seed(0)
    scale = torch.rand(positions, generator=gen) + 0.5
    projections = torch.diag(scale).view(batch, height, width, positions).permute(0, 3, 1, 2)
    labels = torch.tensor(
        [
            [[0, 0, 1, 1], [0, 2, 2, 1], [IGNORE, 0, 0, 0]],
            [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]],
        ]
    )
    memory = MemoryBank(classes, positions, pixel_size=50, region_size=10, pixels_per_image=3)
    candidates = memory.select(projections, labels)
    assert candidates.pixel_keys.shape == (batch, classes, 3, positions)
    flat_labels = labels.reshape(-1)
    for b in range(batch):
        for c in range(classes):
            chosen = candidates.pixel_keys[b, c][candidates.pixel_valid[b, c]]
            available = int((labels[b] == c).sum())
            assert chosen.shape[0] == min(3, available)
            torch.testing.assert_close(chosen.norm(dim=1), torch.ones(chosen.shape[0]))
            where = chosen.argmax(1)
            assert (where // (height * width) == b).all()
            assert (flat_labels[where] == c).all() and len(set(where.tolist())) == len(where)
    assert candidates.region_valid.tolist() == [[True, True, True], [True, True, False]]
    normed = F.normalize(projections, dim=1)
    expected = F.normalize(normed[0][:, labels[0] == 2].mean(1), dim=0)
    torch.testing.assert_close(candidates.region_keys[0, 2], expected)
    memory.push(candidates)
    keys, key_labels = memory.pixel_keys()
    assert (flat_labels[keys.argmax(1)] == key_labels).all()


def test_state_dict_round_trip():
    gen = torch.Generator().manual_seed(3)
    memory = MemoryBank(3, 4, 5, 3, 2)
    for _ in range(4):
        memory.push(_random_candidates(gen, 3, 3, 2, 4))
    state = memory.state_dict()
    assert set(state) == {"keys", "pixel_pointer", "pixel_count", "region_pointer", "region_count"}
    fresh = MemoryBank(3, 4, 5, 3, 2)
    fresh.key_pool()  # cache something that must be invalidated by the load
    fresh.load_state_dict(state)
    for name, tensor in memory.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert fresh.key_pool().size == memory.key_pool().size > 0
    more = _random_candidates(gen, 2, 3, 2, 4)
    memory.push(more)
    fresh.push(more)
    for name, tensor in memory.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_gather_and_push_flattens_the_rank_dim():
    gen = torch.Generator().manual_seed(4)
    memory, reference = MemoryBank(2, 4, 20, 6, 2), MemoryBank(2, 4, 20, 6, 2)
    candidates = _random_candidates(gen, 3, 2, 2, 4)
    gathered = gather_and_push(memory, candidates, lambda t: torch.stack([t, t + 0]))
    assert gathered.pixel_keys.shape[0] == 6 and gathered.pixel_valid.dtype == torch.bool
    doubled = MemoryCandidates(
        *(
            torch.cat([t, t])
            for t in (
                candidates.pixel_keys,
                candidates.pixel_valid,
                candidates.region_keys,
                candidates.region_valid,
            )
        )
    )
    reference.push(doubled)
    assert torch.equal(memory.keys, reference.keys)
    single = MemoryBank(2, 4, 20, 6, 2)
    gather_and_push(single, candidates, lambda t: t)  # single process: unchanged tensors
    assert single.pixel_count.sum() == candidates.pixel_valid.sum()


def test_callback_pushes_after_the_step():
    memory = MemoryBank(3, 5, 10, 4, 2)
    module = SimpleNamespace(memory=memory, all_gather=lambda t: t)
    projections = torch.randn(2, 5, 3, 3)
    labels = torch.randint(0, 3, (2, 3, 3))
    callback = MemoryBankCallback()
    callback.on_train_batch_end(None, module, {"loss": torch.tensor(1.0)}, None, 0)
    assert memory.pixel_count.sum() == 0
    outputs = {"loss": torch.tensor(1.0), "projections": projections, "embedding_labels": labels}
    callback.on_train_batch_end(None, module, outputs, None, 0)
    assert memory.pixel_count.sum() > 0 and memory.region_count.sum() > 0
    callback.on_train_batch_end(None, SimpleNamespace(memory=None), outputs, None, 0)


def test_memory_rejects_bad_config():
    with pytest.raises(ValueError, match="memory=none"):
        MemoryBank(3, 4, use_pixel=False, use_region=False)
    memory = MemoryBank(3, 4, 5, 5, 2, use_region=False)
    assert memory.region_queue.shape == (3, 0, 4) and memory.pixel_queue.shape == (3, 5, 4)
    with pytest.raises(ValueError, match="D=6"):
        memory.select(torch.randn(1, 6, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_the_loss_returns_its_regions_and_select_reuses_them_without_touching_the_memory():
    from picoseg.contrast import PixelContrastLoss, PixelSampler, region_embeddings

    memory = MemoryBank(3, 5, 10, 4, 2)
    projections = torch.randn(2, 5, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    before = {k: v.clone() for k, v in memory.state_dict().items()}
    loss_fn = PixelContrastLoss(
        PixelSampler(max_anchors=8, min_pixels=1), num_classes=3, in_batch_keys=True
    )
    out = loss_fn(projections, labels, None, memory)
    for name, value in memory.state_dict().items():  # the loss only reads the memory
        assert torch.equal(value, before[name]), name
    fresh, fresh_valid = region_embeddings(projections, labels, 3)
    regions, valid = out.regions
    torch.testing.assert_close(regions, fresh)
    assert torch.equal(valid, fresh_valid)
    passed = memory.select(projections.detach(), labels, regions=out.regions)
    computed = memory.select(projections.detach(), labels)
    torch.testing.assert_close(passed.region_keys, computed.region_keys)
    assert torch.equal(passed.region_valid, computed.region_valid)
    # Without in-batch region keys (the memory holds regions), the loss computes none.
    memory_keys_only = PixelContrastLoss(
        PixelSampler(max_anchors=8, min_pixels=1), num_classes=3, in_batch_keys=False
    )
    assert memory_keys_only(projections, labels, None, memory).regions is None
    with pytest.raises(ValueError, match="regions"):
        memory.select(projections, labels, regions=(fresh[:, :2], fresh_valid[:, :2]))


def _pool_keys(pool, c):
    """The keys of class ``c`` in a key pool, as a set of row tuples."""
    start, count = int(pool.class_offset[c]), int(pool.class_count[c])
    rows = pool.storage_rows(torch.arange(start, start + count))
    return {tuple(k.tolist()) for k in pool.storage[rows]}


@pytest.mark.parametrize("max_age", [1, 3])
def test_age_limited_memory_returns_only_keys_of_the_last_pushes(max_age):
    # A naive reference: every entry ever pushed with its push index; usable are the newest
    # `size` entries of a class (the ring keeps those) that are at most `max_age` pushes old.
    gen = torch.Generator().manual_seed(0)
    classes, per_group, dim, pixel_size, region_size = 3, 3, 4, 7, 4
    memory = MemoryBank(
        classes, dim, pixel_size, region_size, per_group, ignore_index=IGNORE, max_age=max_age
    )
    history = {kind: [[] for _ in range(classes)] for kind in ("pixel", "region")}
    for step in range(9):
        candidates = _random_candidates(gen, 2, classes, per_group, dim)
        for c in range(classes):
            for b in range(2):
                for v in range(per_group):
                    if candidates.pixel_valid[b, c, v]:
                        history["pixel"][c].append((step, candidates.pixel_keys[b, c, v]))
                if candidates.region_valid[b, c]:
                    history["region"][c].append((step, candidates.region_keys[b, c]))
        memory.push(candidates)
        pushes = step + 1
        for kind, size in (("pixel", pixel_size), ("region", region_size)):
            pool = memory.key_pool(pixel=kind == "pixel", region=kind == "region")
            for c in range(classes):
                kept = history[kind][c][-size:]
                expected = {tuple(k.tolist()) for s, k in kept if pushes - s <= max_age}
                assert _pool_keys(pool, c) == expected, (step, kind, c)
                keys, labels = memory.pixel_keys() if kind == "pixel" else memory.region_keys()
                assert {tuple(k.tolist()) for k in keys[labels == c]} == expected
    # The ages are part of the state: a copy loaded from the state dict returns the same keys.
    copy = MemoryBank(
        classes, dim, pixel_size, region_size, per_group, ignore_index=IGNORE, max_age=max_age
    )
    copy.load_state_dict(memory.state_dict())
    for c in range(classes):
        assert _pool_keys(copy.key_pool(), c) == _pool_keys(memory.key_pool(), c)
    assert int(copy.pushes) == 9


def test_memory_without_age_limit_keeps_its_state_keys():
    memory = MemoryBank(2, 4, 5, 5, 2, ignore_index=IGNORE)
    assert "stamps" not in memory.state_dict() and "pushes" not in memory.state_dict()
    with pytest.raises(ValueError, match="max_age must be >= 1"):
        MemoryBank(2, 4, 5, 5, 2, max_age=0)
