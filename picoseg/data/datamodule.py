"""Lightning data module for semantic segmentation datasets that take ``(split, transform)``."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from picoseg.data.resumable import EpochSampler, ResumableLoader, SeededItems
from picoseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_eval_transform,
    build_train_transform,
)

__all__ = ["SegmentationDataModule"]


def _seed_transforms(dataset: Any, seed: int) -> None:
    """Reseed every albumentations transform found on ``dataset`` (and wrapped datasets)."""
    stack, seen = [dataset], set()
    while stack:
        d = stack.pop()
        if d is None or id(d) in seen:
            continue
        seen.add(id(d))
        transform = getattr(d, "transform", None)
        if transform is not None and hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seed)
        stack.append(getattr(d, "dataset", None))  # torch Subset and similar wrappers
        stack.extend(getattr(d, "datasets", None) or ())  # ConcatDataset


def _worker_init(worker_id: int) -> None:
    """Give each loader worker its own random streams.

    Loader workers are copies of the main process, so without this every worker would draw the
    same augmentations. ``get_worker_info().seed`` differs per worker and follows torch's global
    seed, so runs stay reproducible under ``seed_everything``. Workers are persistent, so this
    runs once per fit. Training items do not depend on these streams: :class:`SeededItems`
    reseeds the augmentations for each item.
    """
    info = get_worker_info()
    if info is None:
        return
    seed = int(info.seed % 2**32)
    random.seed(seed)
    np.random.seed(seed)
    _seed_transforms(info.dataset, seed)


class SegmentationDataModule(L.LightningDataModule):
    """Train/val data loaders of a segmentation dataset with the standard augmentations.

    Batches are dicts: ``image`` float32 (B, 3, H, W), ``mask`` int64 (B, H, W) and ``name``
    (list of B str). Training batches are random crops of ``crop_size``; validation batches are
    full images (so ``val_batch_size`` > 1 needs images of equal size).

    The training order and augmentations are a pure function of (seed, epoch, sample index)
    (:mod:`picoseg.data.resumable`), whatever ``num_workers``. The seed is torch's initial seed at
    :meth:`setup` (``seed_everything``) and goes into every checkpoint (:meth:`state_dict`);
    under a trainer, an epoch starts at the batch the trainer has reached in it, so a fit resumed
    from any checkpoint, even one from the middle of an epoch, trains on exactly the batches an
    uninterrupted one would have.

    Args:
        dataset: Factory called as ``dataset(split=..., transform=...)`` that returns a
            :class:`~torch.utils.data.Dataset` of such dicts, e.g. a ``functools.partial`` of
            :class:`picoseg.data.FolderDataset` with ``root``, ``num_classes`` and
            ``ignore_index`` bound (Hydra ``_partial_: true``).
        crop_size: Training crop (height, width) in pixels; tuple or list.
        scale_range: (min, max) random rescaling factor for training.
        hflip: Random horizontal flips for training.
        color_jitter: Colour jitter strength for training (0 disables it).
        mean: Per-channel RGB normalisation mean (images in [0, 1]).
        std: Per-channel RGB normalisation standard deviation.
        ignore_index: Label of ignored pixels, also used for padding.
        train_split: Name of the training split.
        val_split: Name of the validation split.
        batch_size: Training batch size; the last incomplete batch is dropped.
        val_batch_size: Validation batch size.
        num_workers: Loader worker processes (0 = load in the main process).
        prepare: Optional callable run by :meth:`prepare_data` (once per node), e.g. a partial of
            :func:`picoseg.data.scenes.ensure_scenes_dataset` that generates the data.
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        crop_size: tuple[int, int] | list[int],
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip: bool = True,
        color_jitter: float = 0.2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = 255,
        train_split: str = "train",
        val_split: str = "val",
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 2,
        prepare: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        if not callable(dataset):
            raise TypeError(
                f"dataset={dataset!r}: expected a factory called as dataset(split=..., "
                "transform=...) (with Hydra: _partial_: true)"
            )
        if prepare is not None and not callable(prepare):
            raise TypeError(f"prepare={prepare!r}: expected a callable taking no arguments or None")
        if len(crop_size) != 2:
            raise ValueError(f"crop_size={list(crop_size)!r}: expected (height, width)")
        if int(batch_size) < 1 or int(val_batch_size) < 1:
            raise ValueError(
                f"batch_size={batch_size}, val_batch_size={val_batch_size}: expected >= 1"
            )
        if int(num_workers) < 0:
            raise ValueError(f"num_workers={num_workers}: expected >= 0")
        self.dataset_factory = dataset
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = bool(hflip)
        self.color_jitter = float(color_jitter)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.ignore_index = int(ignore_index)
        self.train_split = train_split
        self.val_split = val_split
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size)
        self.num_workers = int(num_workers)
        self.prepare = prepare
        # Build the transforms now so that bad arguments fail at construction.
        self.train_transform = build_train_transform(
            self.crop_size,
            self.scale_range,
            self.hflip,
            self.color_jitter,
            self.mean,
            self.std,
            self.ignore_index,
        )
        self.eval_transform = build_eval_transform(self.mean, self.std)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.seed: int | None = None

    def prepare_data(self) -> None:
        """Run ``prepare()`` if given (e.g. generate or download the data)."""
        if self.prepare is not None:
            self.prepare()

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets: train and val for ``fit`` (or None), val for ``validate``.

        Raises:
            ValueError: The training split has fewer items than one batch.
        """
        if stage in ("fit", None) and self.train_dataset is None:
            if self.seed is None:  # a resumed fit has the seed of its checkpoint already
                self.seed = int(torch.initial_seed() % 2**31)
            self.train_transform.set_random_seed(self.seed)
            train = self.dataset_factory(split=self.train_split, transform=self.train_transform)
            if len(train) < self.batch_size:
                raise ValueError(
                    f"training split '{self.train_split}' of {train!r} has {len(train)} items, "
                    f"fewer than batch_size={self.batch_size}; expected at least one full batch "
                    "(incomplete batches are dropped)"
                )
            self.train_dataset = SeededItems(train, self.train_transform, self.seed)
        if stage in ("fit", "validate", None) and self.val_dataset is None:
            self.val_dataset = self.dataset_factory(
                split=self.val_split, transform=self.eval_transform
            )

    def _loader(
        self,
        dataset: Dataset | None,
        what: str,
        loader_class: type[DataLoader] = DataLoader,
        **kwargs: Any,
    ) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{what} dataset is not built: call setup() first")
        workers = self.num_workers
        return loader_class(
            dataset,
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init if workers > 0 else None,
            pin_memory=torch.cuda.is_available(),
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training loader of random crops; drops the last incomplete batch.

        A :class:`~picoseg.data.resumable.ResumableLoader` of an
        :class:`~picoseg.data.resumable.EpochSampler` (this rank's share under DDP).
        """
        if self.train_dataset is None:
            raise RuntimeError("training dataset is not built: call setup() first")
        assert self.seed is not None
        loader = self._loader(
            self.train_dataset,
            "training",
            ResumableLoader,
            batch_size=self.batch_size,
            sampler=EpochSampler(self.train_dataset, seed=self.seed),
            drop_last=True,
            # Its own generator for the worker seeds leaves torch's global one alone, so a
            # resumed fit's random draws follow the restored global state as the original's did.
            generator=torch.Generator().manual_seed(self.seed),
        )
        loader.batches_done = self._batches_done
        return loader

    def _batches_done(self) -> int:
        """Batches of the current epoch the trainer counts as trained (0 without a trainer)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def state_dict(self) -> dict[str, Any]:
        """The data seed, for the checkpoint."""
        return {} if self.seed is None else {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the seed of a :meth:`state_dict` (a resumed fit continues its data order)."""
        if "seed" not in state_dict:
            return
        self.seed = int(state_dict["seed"])
        if isinstance(self.train_dataset, SeededItems):  # setup() ran before the restore
            self.train_dataset.seed = self.seed
        # Lightning cannot tell that this loader resumes mid-epoch (its position comes from the
        # restored trainer, not from a loader state), and would warn that it does not.
        warnings.filterwarnings(
            "ignore", message=r".*resuming from a checkpoint that ended before the epoch ended"
        )

    def val_dataloader(self) -> DataLoader:
        """Validation loader of full images, in order."""
        return self._loader(
            self.val_dataset,
            "validation",
            batch_size=self.val_batch_size,
            shuffle=False,
            # A loader draws its workers' seeds when it starts an iteration, from the global
            # generator unless it has its own; and it draws differently for its first iteration
            # than for later ones (persistent workers). A resumed fit's first validation is its
            # process's first, so without this the global random state would part from an
            # uninterrupted run's after it.
            generator=torch.Generator().manual_seed(0),
        )
