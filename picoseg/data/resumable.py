"""The training data as a pure function of (seed, epoch, sample index), so resumes are exact.

A run resumed from any checkpoint, including one written in the middle of an epoch, must see
the batches the uninterrupted run would have seen next, whatever the number of loader workers.
Three pieces make that hold:

- :class:`EpochSampler` shuffles with a generator seeded from ``seed + epoch`` (as torch's
  ``DistributedSampler`` does, of which it is one, so Lightning never wraps it under DDP) and
  can start an epoch at a given sample. It yields ``(index, epoch)`` keys.
- :class:`SeededItems` reseeds the augmentation pipeline from ``(seed, epoch, index)`` before it
  loads each sample, so a sample's crop, flip and jitter depend on nothing else: not on which
  worker loads it, nor on what that worker loaded before.
- :class:`ResumableLoader` starts its sampler when the first batch is asked for, at the position
  ``batches_done()`` gives then (under Lightning: the batches of the epoch that the restored
  trainer counts as trained). Lightning asks for a loader iterator before it restores the loop
  state and calls ``set_epoch``; a plain loader would fix the epoch and position too early.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["EpochSampler", "ResumableLoader", "SeededItems", "item_seed"]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` of a run seeded with ``seed``.

    NumPy's ``SeedSequence`` mixes the three numbers, so neighbouring samples and epochs get
    unrelated streams. Returns a value in [0, 2**32).
    """
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


class EpochSampler(DistributedSampler):
    """This rank's share of a shuffled epoch, seeded by ``seed + epoch``, from any sample on.

    Lightning calls :meth:`set_epoch` at every epoch start. Setting :attr:`start` makes the
    next iteration skip that many of this rank's samples (those a resumed run has trained on
    already); later iterations start at 0 again.

    Args:
        dataset: The dataset to sample (only its length is used).
        seed: The shuffling seed; epoch ``e`` uses ``torch.Generator().manual_seed(seed + e)``.
        shuffle: Shuffle (True) or keep the dataset order.
        num_replicas: Number of ranks; by default the process group's size, 1 without one.
        rank: This rank; by default the process group's rank, 0 without one.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=int(seed)
        )
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        if not 0 <= start <= len(indices):
            raise ValueError(f"start={start}: expected 0..{len(indices)} (this rank's samples)")
        epoch = self.epoch
        for index in indices[start:]:
            yield index, epoch


class SeededItems(Dataset):
    """A dataset whose items are augmented from a seed of ``(seed, epoch, index)``.

    Takes the keys of :class:`EpochSampler`. A plain integer key (e.g. from the sequential
    sampler Lightning puts in for ``overfit_batches``) loads the item with the transform's
    running generators, as the wrapped dataset alone would.

    Args:
        dataset: A map-style dataset of dicts that calls ``transform`` in ``__getitem__``.
        transform: That dataset's albumentations transform (it has ``set_random_seed``).
        seed: The run's data seed.
    """

    def __init__(self, dataset: Dataset, transform: Any, seed: int) -> None:
        if not hasattr(transform, "set_random_seed"):
            raise TypeError(f"transform={transform!r}: expected one with set_random_seed(seed)")
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            index, epoch = key
            self.transform.set_random_seed(item_seed(self.seed, epoch, index))
            return self.dataset[index]
        return self.dataset[key]

    def __repr__(self) -> str:
        return f"SeededItems({self.dataset!r}, seed={self.seed})"


class ResumableLoader(DataLoader):
    """A ``DataLoader`` of an :class:`EpochSampler` whose iteration starts at the first batch.

    Its iterator builds the real one (and so draws the epoch's order and starts the workers)
    when the first batch is asked for, after setting the sampler's ``start`` to
    ``batches_done() * batch_size``. ``batches_done`` is an attribute, not an argument, so that
    Lightning can rebuild the loader from its arguments; without it the epoch starts at 0.
    """

    batches_done: Callable[[], int] | None = None

    def __iter__(self) -> Iterator[Any]:
        if not isinstance(self.sampler, EpochSampler):
            return super().__iter__()  # e.g. Lightning's sequential sampler for overfit_batches
        return _FirstBatchStarts(self)


class _FirstBatchStarts:
    """The iterator of a :class:`ResumableLoader`: the loader's own, made at the first batch."""

    def __init__(self, loader: ResumableLoader) -> None:
        self.loader = loader
        self.iterator: Iterator[Any] | None = None

    def __iter__(self) -> _FirstBatchStarts:
        return self

    def __len__(self) -> int:
        return len(self.loader)

    def __next__(self) -> Any:
        if self.iterator is None:
            loader = self.loader
            done = int(loader.batches_done()) if loader.batches_done is not None else 0
            loader.sampler.start = done * int(loader.batch_size or 1)
            self.iterator = DataLoader.__iter__(loader)
        return next(self.iterator)
