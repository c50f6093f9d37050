"""The configurable sampler (Hydra group ``sampler``): :class:`PixelSampler` bundles the anchor
strategy (:mod:`picoseg.contrast.anchors`) and the key strategy
(:mod:`picoseg.contrast.key_selection`) with their sizes and its random generator."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from picoseg.contrast.anchors import AnchorSample, AnchorStrategy, sample_anchors
from picoseg.contrast.generators import generator_states, restore_generators
from picoseg.contrast.key_pool import KeyPool
from picoseg.contrast.key_selection import KeySelection, KeyStrategy, select_keys

__all__ = ["PixelSampler"]


class PixelSampler:
    """Anchor sampling and key selection strategies with their sizes (Hydra group ``sampler``).

    Args:
        anchor_strategy: ``random`` (uniform per group) or ``seg_aware`` (half misclassified, half
            correct anchors per group; needs predictions).
        key_strategy: how each anchor's memory keys are chosen: ``hardest``, ``semi_hard``,
            ``random`` or ``all`` (every memory key, as the reference code does; no selection).
            In-batch keys are always used in full.
        max_anchors: anchors per batch (N).
        max_views: anchors per (image, class) group at most.
        min_pixels: smallest (image, class) group that gives anchors.
        num_positives: memory positives per anchor.
        num_negatives: memory negatives per anchor.
        semi_hard_fraction: q, the fraction of candidates that form the semi-hard pool.
        seed: None draws from torch's global generator (reproducible under ``torch.manual_seed``,
            e.g. Lightning's ``seed_everything``); an int gives the sampler its own generator,
            created on first use on the data's device and seeded with it.
    """

    def __init__(
        self,
        anchor_strategy: AnchorStrategy = "random",
        key_strategy: KeyStrategy = "semi_hard",
        max_anchors: int = 1024,
        max_views: int = 100,
        min_pixels: int = 10,
        num_positives: int = 1024,
        num_negatives: int = 2048,
        semi_hard_fraction: float = 0.1,
        seed: int | None = None,
    ) -> None:
        if anchor_strategy not in ("random", "seg_aware"):
            raise ValueError(
                f"PixelSampler: anchor_strategy must be 'random' or 'seg_aware', "
                f"got {anchor_strategy!r}"
            )
        if key_strategy not in ("random", "hardest", "semi_hard", "all"):
            raise ValueError(
                "PixelSampler: key_strategy must be 'random', 'hardest', 'semi_hard' or 'all', "
                f"got {key_strategy!r}"
            )
        if max_anchors < 1 or max_views < 1:
            raise ValueError(
                f"PixelSampler: max_anchors ({max_anchors}) and max_views ({max_views}) "
                "must be >= 1"
            )
        if not 0.0 < semi_hard_fraction <= 1.0:
            raise ValueError(
                f"PixelSampler: semi_hard_fraction must be in (0, 1], got {semi_hard_fraction}"
            )
        self.anchor_strategy: AnchorStrategy = anchor_strategy
        self.key_strategy: KeyStrategy = key_strategy
        self.max_anchors = int(max_anchors)
        self.max_views = int(max_views)
        self.min_pixels = int(min_pixels)
        self.num_positives = int(num_positives)
        self.num_negatives = int(num_negatives)
        self.semi_hard_fraction = float(semi_hard_fraction)
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def __repr__(self) -> str:
        return (
            f"PixelSampler(anchor_strategy={self.anchor_strategy!r}, "
            f"key_strategy={self.key_strategy!r}, max_anchors={self.max_anchors}, "
            f"max_views={self.max_views}, min_pixels={self.min_pixels}, "
            f"num_positives={self.num_positives}, num_negatives={self.num_negatives}, "
            f"semi_hard_fraction={self.semi_hard_fraction}, seed={self.seed})"
        )

    def rng_state(self) -> dict[str, Tensor]:
        """The states of the sampler's own generators by device name (empty without a seed).

        The training system saves them in checkpoints, so that a resumed run draws the anchors
        and keys the uninterrupted run would have drawn (see :meth:`load_rng_state`).
        """
        return generator_states(self._generators)

    def load_rng_state(self, state: Mapping[str, Tensor]) -> None:
        """Restores generators saved by :meth:`rng_state` (a device this machine lacks is
        skipped: its generator starts again from ``seed`` on first use)."""
        self._generators.update(restore_generators(state))

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The sampler's own generator on ``device``, or None (global RNG) without a seed."""
        if self.seed is None:
            return None
        device = torch.device(device)
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def sample_anchors(
        self, labels: Tensor, predictions: Tensor | None = None, ignore_index: int = 255
    ) -> AnchorSample:
        """Draws the anchors of a batch; see :func:`sample_anchors`."""
        return sample_anchors(
            labels,
            predictions,
            strategy=self.anchor_strategy,
            max_anchors=self.max_anchors,
            max_views=self.max_views,
            min_pixels=self.min_pixels,
            ignore_index=ignore_index,
            generator=self.generator(labels.device),
        )

    def select_keys(
        self,
        anchors: Tensor,
        anchor_labels: Tensor,
        pool: KeyPool,
        num_hard: int = 0,
        strategy: KeyStrategy | None = None,
        block_elements: int = 1 << 25,
    ) -> KeySelection:
        """Chooses each anchor's keys in ``pool``; see :func:`select_keys`.

        ``strategy`` overrides ``key_strategy`` (the loss passes ``hardest`` with no keys to get
        only the hard negatives for synthesis when the strategy is ``all``).
        """
        strategy = strategy or self.key_strategy
        num_positives, num_negatives = self.num_positives, self.num_negatives
        if strategy == "all":
            strategy, num_positives, num_negatives = "hardest", 0, 0
        return select_keys(
            anchors,
            anchor_labels,
            pool,
            strategy=strategy,
            num_positives=num_positives,
            num_negatives=num_negatives,
            semi_hard_fraction=self.semi_hard_fraction,
            num_hard=num_hard,
            generator=self.generator(anchors.device),
            block_elements=block_elements,
        )
