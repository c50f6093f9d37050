"""The training data as a pure function of (seed, epoch, index): the sampler's order, the
per-item augmentation seed, independence from the worker count, and the data module's resume
position."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from picoseg.data import FolderDataset, SegmentationDataModule
from picoseg.data.resumable import EpochSampler, SeededItems, item_seed
from picoseg.data.transforms import build_train_transform


def test_the_order_is_a_seeded_permutation_of_each_epoch_from_any_start():
    data = list(range(10))
    sampler = EpochSampler(data, seed=7)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(7 + epoch)).tolist()
        assert list(sampler) == [(i, epoch) for i in expected]
    sampler.start = 4
    assert list(sampler) == [(i, 3) for i in expected[4:]]
    assert len(list(sampler)) == 10  # the start applies once
    sampler.start = 11
    with pytest.raises(ValueError, match="start=11"):
        list(sampler)


def test_two_ranks_share_an_epoch_without_overlap():
    ranks = [EpochSampler(list(range(8)), seed=0, num_replicas=2, rank=r) for r in (0, 1)]
    indices = [[i for i, _ in sampler] for sampler in ranks]
    assert len(indices[0]) == len(indices[1]) == 4
    assert sorted(indices[0] + indices[1]) == list(range(8))


def test_item_seed_mixes_all_three_numbers():
    seeds = {item_seed(s, e, i) for s in (0, 1) for e in (0, 1) for i in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**32 for s in seeds)


class _Images(torch.utils.data.Dataset):
    """One fixed random image, augmented by the given transform at every index."""

    def __init__(self, transform):
        rng = np.random.default_rng(0)
        self.image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        self.mask = rng.integers(0, 3, (40, 48), dtype=np.uint8)
        self.transform = transform

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> dict:
        return self.transform(image=self.image, mask=self.mask)


def test_an_item_depends_on_its_seed_epoch_and_index_only():
    transform = build_train_transform([16, 16], scale_range=[0.5, 1.5])
    items = SeededItems(_Images(transform), transform, seed=5)
    first = items[(2, 1)]
    items[(3, 1)]  # other items in between move the transform's generators on
    items[(4, 0)]
    again = items[(2, 1)]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    assert not torch.equal(first["image"], items[(2, 2)]["image"])  # another epoch
    assert not torch.equal(first["image"], items[(1, 1)]["image"])  # another index
    other_seed = SeededItems(_Images(transform), transform, seed=6)
    assert not torch.equal(first["image"], other_seed[(2, 1)]["image"])
    # A plain index (Lightning's sequential sampler for overfit_batches) uses the running streams.
    assert not torch.equal(items[2]["image"], items[2]["image"])
    with pytest.raises(TypeError, match="set_random_seed"):
        SeededItems(_Images(transform), object(), seed=0)


@pytest.fixture
def tree(tmp_path: Path, folder_tree) -> Path:
    """8 train and 2 val random 40 x 48 images with 3 classes (the shared folder-tree writer)."""
    return folder_tree(tmp_path / "tree", num_train=8, num_val=2, size=(40, 48), num_classes=3)


def _module(root: Path, workers: int = 0) -> SegmentationDataModule:
    factory = functools.partial(FolderDataset, root=root, num_classes=3, ignore_index=255)
    return SegmentationDataModule(
        factory, crop_size=[24, 24], batch_size=2, num_workers=workers, color_jitter=0.3
    )


def _epoch(module: SegmentationDataModule, epoch: int) -> list[dict]:
    loader = module.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return list(loader)


def _assert_same_batches(actual: list[dict], expected: list[dict]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a["name"] == e["name"]
        assert torch.equal(a["image"], e["image"]) and torch.equal(a["mask"], e["mask"])


def test_batches_do_not_depend_on_the_worker_count(tree):
    torch.manual_seed(3)
    inline = _module(tree, workers=0)
    inline.setup("fit")
    torch.manual_seed(3)
    workers = _module(tree, workers=2)
    workers.setup("fit")
    assert inline.seed == workers.seed == 3
    epochs = [_epoch(inline, epoch) for epoch in (0, 1)]
    for epoch in (0, 1):
        _assert_same_batches(_epoch(workers, epoch), epochs[epoch])
    assert [b["name"] for b in epochs[0]] != [b["name"] for b in epochs[1]]


def _trainer_at(batches: int) -> SimpleNamespace:
    """What the data module reads of a trainer: the batches of the epoch counted as trained."""
    current = SimpleNamespace(ready=batches)
    return SimpleNamespace(
        fit_loop=SimpleNamespace(
            epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=current))
        )
    )


def test_a_resumed_epoch_starts_at_the_trained_batches_with_the_checkpointed_seed(tree):
    torch.manual_seed(4)
    module = _module(tree)
    module.setup("fit")
    full = _epoch(module, 1)
    assert len(full) == 4  # 8 images, batch 2
    state = module.state_dict()
    assert state == {"seed": 4}

    torch.manual_seed(99)  # another process, another initial seed: the checkpoint's seed wins
    resumed = _module(tree, workers=2)
    resumed.setup("fit")  # Lightning sets up the data before it restores the checkpoint
    resumed.load_state_dict(state)
    resumed.trainer = _trainer_at(0)
    loader = resumed.train_dataloader()
    iterator = iter(loader)  # as Lightning does before it restores the loops
    resumed.trainer = _trainer_at(3)  # the restored trainer has trained 3 batches of epoch 1
    loader.sampler.set_epoch(1)
    _assert_same_batches(list(iterator), full[3:])
    resumed.trainer = _trainer_at(0)  # the next epoch: from its start
    _assert_same_batches(_epoch(resumed, 2), _epoch(module, 2))
