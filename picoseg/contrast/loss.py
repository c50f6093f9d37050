"""PiCo's contrast loss module: :class:`PixelContrastLoss`, from the raw projection map to a
:class:`ContrastOutput`, with the pixel-to-pixel and pixel-to-region terms.

It samples anchors (:mod:`picoseg.contrast.sampling`), gathers each term's keys (in-batch keys,
the memory's :class:`~picoseg.contrast.key_pool.KeyPool`), selects each anchor's memory keys,
adds synthesised hard negatives (:mod:`picoseg.contrast.synthesis`) and evaluates the InfoNCE of
:mod:`picoseg.contrast.info_nce`, whose docstring gives the formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from picoseg.contrast.all_keys import all_keys, fits_fixed_shift
from picoseg.contrast.info_nce import (
    gathered_similarity,
    label_masks,
    mean_over_valid,
    per_anchor_info_nce,
)
from picoseg.contrast.key_pool import KeyPool
from picoseg.contrast.key_selection import KeySelection
from picoseg.contrast.memory import MemoryBank
from picoseg.contrast.regions import region_embeddings
from picoseg.contrast.sampling import PixelSampler
from picoseg.contrast.synthesis import NegativeSynthesis

# --------------------------------------------------------------------------------------------------
# The module the training system calls
# --------------------------------------------------------------------------------------------------


@dataclass
class ContrastOutput:
    """What :class:`PixelContrastLoss` returns.

    Attributes:
        loss: scalar, attached to the graph (multiply by lambda outside).
        pixel_loss: detached scalar, the pixel-to-pixel part (0 when off).
        region_loss: detached scalar, the pixel-to-region part (0 when off).
        num_anchors: int64 scalar tensor, anchors sampled in the batch.
        regions: the batch's region embeddings, (B, C, D) detached, and their validity (B, C),
            when the loss computed them (in-batch region keys); ``None`` otherwise. The step
            passes them on to :meth:`MemoryBank.select`, which would compute the same.
    """

    loss: Tensor
    pixel_loss: Tensor
    region_loss: Tensor
    num_anchors: Tensor
    regions: tuple[Tensor, Tensor] | None = None


@dataclass
class _Keys:
    """Keys of one loss term: dense in-batch keys plus an optional memory pool."""

    dense: list[Tensor]
    dense_labels: list[Tensor]
    dense_group: list[Tensor]
    exclude_self: bool
    pool: KeyPool | None


class PixelContrastLoss(nn.Module):
    """PiCo's contrast loss, from the raw projection map to the loss.

    Steps: sample anchors (``sampler``), l2-normalise only the anchors (not the whole map), build
    the keys, select each anchor's memory keys (``sampler.key_strategy``), optionally synthesise
    hard negatives, and evaluate the InfoNCE.

    Keys of the pixel-to-pixel term: the in-batch anchors themselves (an anchor is never its own
    positive) and, with a memory holding pixels, that memory's pixel queue. Keys of the
    pixel-to-region term: the in-batch region embeddings (mean of the l2-normalised embeddings of a
    class in an image, l2-normalised; computed without gradient, like memory keys) and the memory's
    region queue. When the memory holds a kind of key, in-batch keys of that kind are added only
    if ``in_batch_keys``; when it does not (no memory, or e.g. a pixel-only memory for the region
    term), the in-batch keys are used.

    ``joint_softmax=True`` (default, as the reference code) puts every key of both terms in one
    softmax: positives are pixel and region keys of the anchor's class, and the denominators hold
    both kinds of negatives. ``pixel_loss`` and ``region_loss`` then split that one loss by the
    kind of positive (they add up to ``loss``). ``joint_softmax=False`` evaluates two InfoNCE terms
    and sums them.

    Memory keys are chosen per anchor by the sampler (hardest / semi-hard / random subsets, or
    ``all``); in-batch keys are always used in full. Synthesised negatives (``synthesis``) are
    built from each anchor's hardest negatives of the term (in-batch and memory), detached, and
    join the denominators.

    Args:
        sampler: anchor and key strategies.
        synthesis: hard negative synthesis, or None.
        temperature: t.
        base_temperature: scale ``t / base_t`` of the reference code.
        pixel_to_pixel: enable the pixel-to-pixel term.
        pixel_to_region: enable the pixel-to-region term.
        in_batch_keys: with memory, add the in-batch keys too.
        ignore_index: unlabelled pixels: never anchors, never keys.
        num_classes: number of classes, needed for in-batch region keys (taken from the memory
            when one is given).
        joint_softmax: one softmax over pixel and region keys (True) or two summed terms.
        chunk_size: dense keys above which the InfoNCE walks them in chunks. Key strategy
            ``all`` passes the memory through :func:`~picoseg.contrast.all_keys.all_keys`
            (chunked on its own) while the in-batch keys fit in one chunk and the temperature
            allows (:func:`~picoseg.contrast.all_keys.fits_fixed_shift`); otherwise the memory
            joins the dense keys.
        block_elements: bound on the (anchors x memory keys) similarity block of the selection.
    """

    def __init__(
        self,
        sampler: PixelSampler,
        synthesis: NegativeSynthesis | None = None,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        pixel_to_pixel: bool = True,
        pixel_to_region: bool = True,
        in_batch_keys: bool = True,
        ignore_index: int = 255,
        num_classes: int | None = None,
        joint_softmax: bool = True,
        chunk_size: int = 8192,
        block_elements: int = 1 << 25,
    ) -> None:
        super().__init__()
        if not (pixel_to_pixel or pixel_to_region):
            raise ValueError("PixelContrastLoss: enable pixel_to_pixel and/or pixel_to_region")
        if temperature <= 0 or base_temperature <= 0:
            raise ValueError(
                f"PixelContrastLoss: temperatures must be > 0, got {temperature}, "
                f"{base_temperature}"
            )
        self.sampler = sampler
        self.synthesis = synthesis
        self.temperature = float(temperature)
        self.base_temperature = float(base_temperature)
        self.pixel_to_pixel = pixel_to_pixel
        self.pixel_to_region = pixel_to_region
        self.in_batch_keys = in_batch_keys
        self.ignore_index = ignore_index
        self.num_classes = num_classes
        self.joint_softmax = joint_softmax
        self.chunk_size = chunk_size
        self.block_elements = block_elements

    def extra_repr(self) -> str:
        return (
            f"sampler={self.sampler!r}, temperature={self.temperature}, "
            f"base_temperature={self.base_temperature}, pixel_to_pixel={self.pixel_to_pixel}, "
            f"pixel_to_region={self.pixel_to_region}, in_batch_keys={self.in_batch_keys}, "
            f"joint_softmax={self.joint_softmax}"
        )

    def forward(
        self,
        projections: Tensor,
        labels: Tensor,
        predictions: Tensor | None = None,
        memory: MemoryBank | None = None,
    ) -> ContrastOutput:
        """Computes the contrast loss of a batch.

        Args:
            projections: (B, D, h, w) raw projection-head output (not normalised).
            labels: (B, h, w) int64 classes at the embedding resolution (nearest-resized).
            predictions: (B, h, w) int64 argmax of the segmentation logits at the embedding
                resolution (``seg_aware`` anchors only).
            memory: the memory bank, or None. Read only: pushing is the callback's job, after
                the step.

        Returns:
            A :class:`ContrastOutput`.
        """
        batch, dim, height, width = projections.shape
        if labels.shape != (batch, height, width):
            raise ValueError(
                f"PixelContrastLoss: labels {tuple(labels.shape)} must match the embedding grid "
                f"(B, h, w) = {(batch, height, width)}; resize them with nearest first"
            )
        device = projections.device
        with torch.autocast(device_type=device.type, enabled=False):
            sample = self.sampler.sample_anchors(labels, predictions, self.ignore_index)
            raw = projections.reshape(batch, dim, height * width)[sample.batch, :, sample.pixel]
            anchors = F.normalize(raw.float(), dim=1)
            anchor_labels = sample.labels
            terms, regions = self._collect_keys(projections, labels, anchors, anchor_labels, memory)
            scale = self.temperature / self.base_temperature
            zero = raw.sum() * 0.0
            results = []
            for kinds, keys in terms:
                loss_i, group_i, valid = self._term(anchors, anchor_labels, keys)
                results.append(
                    (
                        kinds,
                        scale * mean_over_valid(loss_i, valid),
                        scale * mean_over_valid(group_i, valid).detach(),
                    )
                )
        pixel_loss = torch.zeros((), device=device)
        region_loss = torch.zeros((), device=device)
        loss = zero
        for kinds, term_loss, region_part in results:
            loss = loss + term_loss
            if kinds == ("pixel", "region"):
                region_loss = region_loss + region_part
                pixel_loss = pixel_loss + term_loss.detach() - region_part
            elif kinds == ("pixel",):
                pixel_loss = pixel_loss + term_loss.detach()
            else:
                region_loss = region_loss + term_loss.detach()
        return ContrastOutput(
            loss=loss,
            pixel_loss=pixel_loss,
            region_loss=region_loss,
            num_anchors=sample.valid.sum(),
            regions=regions,
        )

    # -- keys --------------------------------------------------------------------------------------

    def _collect_keys(
        self,
        projections: Tensor,
        labels: Tensor,
        anchors: Tensor,
        anchor_labels: Tensor,
        memory: MemoryBank | None,
    ) -> tuple[list[tuple[tuple[str, ...], _Keys]], tuple[Tensor, Tensor] | None]:
        """The keys of each softmax term, and the in-batch region embeddings when computed."""
        kinds = [
            k for k, on in (("pixel", self.pixel_to_pixel), ("region", self.pixel_to_region)) if on
        ]
        from_memory = {k: memory is not None and memory.holds(k) for k in kinds}
        from_batch = {k: (not from_memory[k]) or self.in_batch_keys for k in kinds}
        batch_keys: dict[str, tuple[Tensor, Tensor]] = {}
        computed_regions = None
        if "pixel" in kinds and from_batch["pixel"]:
            batch_keys["pixel"] = (anchors, anchor_labels)
        if "region" in kinds and from_batch["region"]:
            num_classes = self.num_classes or (memory.num_classes if memory is not None else None)
            if num_classes is None:
                raise ValueError(
                    "PixelContrastLoss: in-batch region keys need num_classes (set it in the "
                    "loss config or pass a memory bank)"
                )
            with torch.no_grad():
                regions, region_valid = region_embeddings(
                    projections.detach(), labels, num_classes, self.ignore_index
                )
            computed_regions = (regions, region_valid)
            class_ids = torch.arange(num_classes, device=anchors.device).expand(regions.shape[:2])
            region_labels = torch.where(region_valid, class_ids, -1).reshape(-1)
            batch_keys["region"] = (regions.reshape(-1, regions.shape[-1]), region_labels)
        groups = [tuple(kinds)] if self.joint_softmax else [(k,) for k in kinds]
        terms = []
        for group in groups:
            dense, dense_labels, dense_group = [], [], []
            for kind in group:  # pixel first: exclude_self indexes the first N keys
                if kind in batch_keys:
                    keys, key_labels = batch_keys[kind]
                    dense.append(keys)
                    dense_labels.append(key_labels)
                    dense_group.append(torch.full_like(key_labels, kind == "region", dtype=bool))
            memory_kinds = [k for k in group if from_memory[k]]
            pool = None
            if memory is not None and memory_kinds:
                pool = memory.key_pool(
                    pixel="pixel" in memory_kinds, region="region" in memory_kinds
                )
            terms.append(
                (
                    group,
                    _Keys(
                        dense,
                        dense_labels,
                        dense_group,
                        "pixel" in batch_keys and "pixel" in group,
                        pool,
                    ),
                )
            )
        return terms, computed_regions

    # -- one InfoNCE term --------------------------------------------------------------------------

    def _term(
        self, anchors: Tensor, anchor_labels: Tensor, keys: _Keys
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-anchor loss, its region-positive part and validity for one softmax.

        Dense keys: the in-batch keys (and, for key strategy ``all``, every memory key). Memory
        keys otherwise enter as gathered similarities of the selected columns; synthetic
        negatives as similarities computed from the mixing plan.
        """
        device = anchors.device
        dense = torch.cat(keys.dense) if keys.dense else anchors.new_zeros(0, anchors.shape[1])
        dense_labels = (
            torch.cat(keys.dense_labels)
            if keys.dense
            else torch.zeros(0, dtype=torch.long, device=device)
        )
        dense_group = (
            torch.cat(keys.dense_group)
            if keys.dense
            else torch.zeros(0, dtype=torch.bool, device=device)
        )
        num_batch_keys = dense.shape[0]
        pool = keys.pool if keys.pool is not None and keys.pool.size > 0 else None
        num_hard = self.synthesis.hard_pool if self.synthesis is not None else 0
        extras: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # sims, positive, negative, group
        negative_lse = None  # every key of the pool (key strategy ``all``)
        selection = None
        if pool is not None:
            strategy = self.sampler.key_strategy
            if strategy != "all" or num_hard > 0:
                selection = self.sampler.select_keys(
                    anchors,
                    anchor_labels,
                    pool,
                    num_hard=num_hard,
                    block_elements=self.block_elements,
                )
            if strategy == "all" and (
                num_batch_keys <= self.chunk_size
                and fits_fixed_shift(anchors, pool, self.temperature)
            ):
                everything = all_keys(anchors, anchor_labels, pool, temperature=self.temperature)
                negative_lse = everything.negative_lse
                positive = everything.positive_valid
                extras.append(
                    (
                        everything.positive_similarity,
                        positive,
                        torch.zeros_like(positive),
                        everything.positive_is_region,
                    )
                )
            elif strategy == "all":  # many in-batch keys or a tiny temperature: one dense set
                dense = torch.cat([dense, pool.storage[pool.rows]])
                dense_labels = torch.cat([dense_labels, pool.labels])
                dense_group = torch.cat([dense_group, pool.is_region])
            else:
                assert selection is not None
                rows = pool.storage_rows(selection.columns)
                sims = gathered_similarity(anchors, pool.storage, rows, selection.similarity)
                extras.append(
                    (
                        sims,
                        selection.is_positive & selection.valid,
                        ~selection.is_positive & selection.valid,
                        pool.is_region[selection.columns] & selection.valid,
                    )
                )
        if self.synthesis is not None and num_hard > 0:
            hard, hard_valid = self._hard_negatives(
                anchors,
                anchor_labels,
                dense[:num_batch_keys],
                dense_labels[:num_batch_keys],
                pool,
                selection,
                num_hard,
            )
            if hard.shape[1] > 0:
                sims, valid = self.synthesis.similarities(anchors, hard, hard_valid)
                no = torch.zeros_like(valid)
                extras.append((sims, no, valid, no))
        if extras:
            extra = torch.cat([e[0] for e in extras], 1)
            extra_positive = torch.cat([e[1] for e in extras], 1)
            extra_negative = torch.cat([e[2] for e in extras], 1)
            extra_group = torch.cat([e[3] for e in extras], 1)
        else:
            extra = extra_positive = extra_negative = extra_group = None
        return per_anchor_info_nce(
            anchors=anchors,
            anchor_labels=anchor_labels,
            keys=dense,
            key_labels=dense_labels,
            key_group=dense_group,
            exclude_self=keys.exclude_self,
            extra=extra,
            extra_positive=extra_positive,
            extra_negative=extra_negative,
            extra_group=extra_group,
            negative_lse=negative_lse,
            temperature=self.temperature,
            chunk_size=self.chunk_size,
        )

    def _hard_negatives(
        self,
        anchors: Tensor,
        anchor_labels: Tensor,
        batch_keys: Tensor,
        batch_labels: Tensor,
        pool: KeyPool | None,
        selection: KeySelection | None,
        num_hard: int,
    ) -> tuple[Tensor, Tensor]:
        """Each anchor's ``num_hard`` most similar negatives among the term's in-batch and memory
        keys: vectors (N, H, D) (detached) and validity (N, H)."""
        anchors_d = anchors.detach()
        num_anchors, dim = anchors.shape
        candidates = []  # (similarity, -inf where invalid; source; row)
        with torch.no_grad():
            if batch_keys.shape[0] > 0:
                _, negative = label_masks(anchor_labels, batch_labels, 0, False)
                sims = torch.where(negative, anchors_d @ batch_keys.detach().T, -math.inf)
                values, index = torch.topk(sims, min(num_hard, sims.shape[1]), dim=1, sorted=False)
                candidates.append((values, torch.zeros_like(index), index))
            if pool is not None and selection is not None and selection.hard_columns.shape[1] > 0:
                values = torch.where(selection.hard_valid, selection.hard_similarity, -math.inf)
                rows = pool.storage_rows(selection.hard_columns)
                candidates.append((values, torch.ones_like(rows), rows))
            if not candidates:
                return anchors_d.new_zeros(num_anchors, 0, dim), torch.zeros(
                    num_anchors, 0, dtype=torch.bool, device=anchors.device
                )
            if len(candidates) == 1:
                values, source, rows = candidates[0]
            else:
                values = torch.cat([c[0] for c in candidates], 1)
                values, pick = torch.topk(values, num_hard, dim=1, sorted=False)
                source = torch.gather(torch.cat([c[1] for c in candidates], 1), 1, pick)
                rows = torch.gather(torch.cat([c[2] for c in candidates], 1), 1, pick)
            hard_valid = values > -math.inf
            storages = [batch_keys.detach() if batch_keys.shape[0] > 0 else None]
            storages.append(pool.storage if pool is not None else None)
            vectors = None
            for index, storage in enumerate(storages):
                if storage is None:
                    continue
                here = (source == index) & hard_valid
                part = F.embedding(torch.where(here, rows, 0), storage)
                vectors = (
                    part if vectors is None else torch.where(here.unsqueeze(-1), part, vectors)
                )
            assert vectors is not None
        return vectors, hard_valid
