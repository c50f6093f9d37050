"""The memory bank of PiCo (training only) and the callback that fills it.

:class:`MemoryBank` keeps, for every class (class 0 included; only the ignore label is excluded),
a FIFO ring of pixel embeddings and a FIFO ring of region embeddings. Pushing ``n`` entries into a
class writes them at ``pointer, pointer + 1, ...`` (mod T), overwriting the oldest entries, and
advances the pointer by ``n``; when more than T entries arrive at once, only the newest T are
kept. A ring fills from slot 0 and, once full, stays full, so its filled slots are always
``[0, count)``; empty slots are never returned as keys. With ``max_age``, keys written more than
``max_age`` pushes (training steps) ago are not returned either: they were made by an older
projection head.

:class:`MemoryBankCallback` pushes each training batch after its step (the batch is never in memory
when its own loss is computed), gathering the candidates of all DDP ranks first so that every
rank holds the same memory. The gather-and-push logic is :func:`gather_and_push`, a plain function
that takes the ``all_gather`` callable, testable without Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from picoseg.contrast.anchors import sample_group_pixels
from picoseg.contrast.key_pool import KeyPool
from picoseg.contrast.regions import region_embeddings


@dataclass
class MemoryCandidates:
    """Fixed-size keys selected from a batch, ready for ``all_gather`` and :meth:`MemoryBank.push`.

    Attributes:
        pixel_keys: (B, C, V, D) float32 l2-normalised pixel embeddings, V per class per image.
        pixel_valid: (B, C, V) bool.
        region_keys: (B, C, D) float32 l2-normalised region embeddings.
        region_valid: (B, C) bool.
    """

    pixel_keys: Tensor
    pixel_valid: Tensor
    region_keys: Tensor
    region_valid: Tensor


class MemoryBank(nn.Module):
    """Per-class FIFO queues of pixel and region embeddings.

    Storage: one persistent buffer ``keys`` of shape (C, Tp + Tr, D): in the block of class c, rows
    ``[0, Tp)`` are its pixel queue and rows ``[Tp, Tp + Tr)`` its region queue. (One buffer rather
    than two lets the loss compare anchors with all memory keys in one matrix product per block
    and back-propagate with one ``embedding_bag``, with no copy of the memory per step.)
    ``pixel_queue`` (C, Tp, D) and ``region_queue`` (C, Tr, D) are views of it. The pointers and
    fill counts are persistent (C,) int64 buffers, so the whole state goes into checkpoints.

    The loss reads the fill counts on the host to lay out the filled slots; the module keeps a host
    copy, refreshed by :meth:`push` (which runs after the training step, in the callback) and
    after ``load_state_dict``, so that the training step itself never synchronises.

    Under DDP, all ranks push the same gathered candidates, so their memories stay identical;
    DDP's per-step buffer broadcast (``broadcast_buffers=True``) is then redundant and costs a
    transfer of the whole memory per step: see ``ddp_ignore_names``.

    Args:
        num_classes: C.
        dim: embedding dimension D.
        pixel_size: Tp, pixel slots per class.
        region_size: Tr, region slots per class.
        pixels_per_image: V, pixels pushed per class present in an image.
        use_pixel: keep a pixel queue (Tp = 0 otherwise).
        use_region: keep a region queue (Tr = 0 otherwise).
        ignore_index: label never pushed.
        max_age: keys stay usable for this many pushes (one push per training step); older
            ones are skipped like empty slots. ``None``: until overwritten (the reference).
            Keeps a push counter and a per-slot push index in the state (checkpoints).
    """

    def __init__(
        self,
        num_classes: int,
        dim: int = 256,
        pixel_size: int = 5000,
        region_size: int = 5000,
        pixels_per_image: int = 10,
        use_pixel: bool = True,
        use_region: bool = True,
        ignore_index: int = 255,
        max_age: int | None = None,
    ) -> None:
        super().__init__()
        if max_age is not None and max_age < 1:
            raise ValueError(f"MemoryBank: max_age must be >= 1 or None, got {max_age}")
        if num_classes < 1 or dim < 1:
            raise ValueError(f"MemoryBank: num_classes={num_classes} and dim={dim} must be >= 1")
        if not (use_pixel or use_region):
            raise ValueError("MemoryBank: use_pixel and use_region are both False; use memory=none")
        if (use_pixel and pixel_size < 1) or (use_region and region_size < 1):
            raise ValueError(
                f"MemoryBank: queue sizes must be >= 1, got pixel_size={pixel_size}, "
                f"region_size={region_size}"
            )
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.pixel_size = int(pixel_size) if use_pixel else 0
        self.region_size = int(region_size) if use_region else 0
        self.pixels_per_image = int(pixels_per_image)
        self.use_pixel = use_pixel
        self.use_region = use_region
        self.ignore_index = ignore_index
        stride = self.pixel_size + self.region_size
        self.register_buffer("keys", torch.zeros(num_classes, stride, dim))
        self.register_buffer("pixel_pointer", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("pixel_count", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("region_pointer", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("region_count", torch.zeros(num_classes, dtype=torch.long))
        self.max_age = max_age
        if max_age is not None:
            # Push index of each slot, and the number of pushes so far.
            self.register_buffer("stamps", torch.zeros(num_classes, stride, dtype=torch.long))
            self.register_buffer("pushes", torch.zeros((), dtype=torch.long))
        self._host_counts: tuple[list[int], list[int]] | None = ([0] * num_classes,) * 2
        self._host_starts: tuple[list[int], list[int]] = ([0] * num_classes,) * 2
        self._pools: dict[tuple[bool, bool, int], KeyPool] = {}

    keys: Tensor
    pixel_pointer: Tensor
    pixel_count: Tensor
    region_pointer: Tensor
    region_count: Tensor

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, pixel_size={self.pixel_size}, "
            f"region_size={self.region_size}, pixels_per_image={self.pixels_per_image}, "
            f"max_age={self.max_age}"
        )

    # -- views -------------------------------------------------------------------------------------

    @property
    def pixel_queue(self) -> Tensor:
        """(C, Tp, D) view of the pixel queues."""
        return self.keys[:, : self.pixel_size]

    @property
    def region_queue(self) -> Tensor:
        """(C, Tr, D) view of the region queues."""
        return self.keys[:, self.pixel_size :]

    def holds(self, kind: str) -> bool:
        """Whether the memory keeps ``pixel`` or ``region`` keys."""
        return self.use_pixel if kind == "pixel" else self.use_region

    def ddp_ignore_names(self, prefix: str) -> list[str]:
        """Fully qualified buffer names for DDP's ``_ddp_params_and_buffers_to_ignore``.

        Example: ``module._ddp_params_and_buffers_to_ignore = module.memory.ddp_ignore_names(
        "memory")`` in the LightningModule's ``__init__`` stops DDP from broadcasting the memory
        from rank 0 every step (it is identical on all ranks already).
        """
        names = ["keys", "pixel_pointer", "pixel_count", "region_pointer", "region_count"]
        if self.max_age is not None:
            names += ["stamps", "pushes"]
        return [f"{prefix}.{name}" if prefix else name for name in names]

    # -- selecting what to push --------------------------------------------------------------------

    def select(
        self,
        projections: Tensor,
        labels: Tensor,
        generator: torch.Generator | None = None,
        regions: tuple[Tensor, Tensor] | None = None,
    ) -> MemoryCandidates:
        """Chooses the keys a batch will push, as fixed-size tensors.

        For each image and each class present: V = ``pixels_per_image`` random pixels of that
        class (all of them when it has fewer) and the region embedding.

        Args:
            projections: (B, D, h, w) raw projections (detached and normalised here).
            labels: (B, h, w) int64 classes at the embedding resolution.
            generator: random generator (None: the global one).
            regions: the region embeddings of these projections and labels, (B, C, D) and
                validity (B, C), when the loss already computed them
                (:attr:`ContrastOutput.regions`); computed here when ``None``.

        Returns:
            :class:`MemoryCandidates` with shapes (B, C, V, D), (B, C, V), (B, C, D), (B, C).
        """
        batch, dim, height, width = projections.shape
        if dim != self.dim:
            raise ValueError(f"MemoryBank.select: projections have D={dim}, memory has {self.dim}")
        if labels.shape != (batch, height, width):
            raise ValueError(
                f"MemoryBank.select: labels {tuple(labels.shape)} must be (B, h, w) = "
                f"{(batch, height, width)}"
            )
        device = projections.device
        num_classes = self.num_classes
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            projections = projections.detach()
            if self.use_pixel:
                per_group = self.pixels_per_image
                pixels, pixel_valid = sample_group_pixels(
                    labels, num_classes, per_group, self.ignore_index, generator
                )
                image = torch.arange(batch, device=device).view(batch, 1, 1)
                flat = projections.reshape(batch, dim, height * width)
                pixel_keys = F.normalize(flat[image, :, pixels].float(), dim=-1)
                pixel_keys = pixel_keys * pixel_valid.unsqueeze(-1)
            else:
                pixel_keys = projections.new_zeros(batch, num_classes, 0, dim, dtype=torch.float32)
                pixel_valid = torch.zeros(batch, num_classes, 0, dtype=torch.bool, device=device)
            if self.use_region and regions is not None:
                region_keys, region_valid = regions[0].detach().float(), regions[1]
                if region_keys.shape != (batch, num_classes, dim):
                    raise ValueError(
                        f"MemoryBank.select: regions {tuple(region_keys.shape)} must be "
                        f"(B, C, D) = {(batch, num_classes, dim)}"
                    )
            elif self.use_region:
                region_keys, region_valid = region_embeddings(
                    projections, labels, num_classes, self.ignore_index
                )
            else:
                region_keys = projections.new_zeros(batch, num_classes, dim, dtype=torch.float32)
                region_valid = torch.zeros(batch, num_classes, dtype=torch.bool, device=device)
        return MemoryCandidates(pixel_keys, pixel_valid, region_keys, region_valid)

    # -- pushing -----------------------------------------------------------------------------------

    def _push_part(
        self,
        entries: Tensor,
        valid: Tensor,
        pointer: Tensor,
        count: Tensor,
        capacity: int,
        offset: int,
    ) -> None:
        """Pushes (C, E, D) entries (E per class, in order) into one kind of queue."""
        num_classes = self.num_classes
        valid = valid.bool()
        pushed = valid.sum(1)
        rank = torch.cumsum(valid.long(), 1) - 1
        # Only the newest ``capacity`` entries of a class survive a push.
        keep = valid & (rank >= (pushed - capacity).unsqueeze(1))
        slot = (pointer.unsqueeze(1) + rank) % capacity
        stride = self.pixel_size + self.region_size
        row = torch.arange(num_classes, device=entries.device).unsqueeze(1) * stride + offset + slot
        chosen = keep.nonzero(as_tuple=True)  # host sync: push runs after the step
        storage = self.keys.view(num_classes * stride, self.dim)
        storage.index_copy_(0, row[chosen], entries[chosen].to(storage.dtype))
        if self.max_age is not None:
            self.stamps.view(-1).index_fill_(0, row[chosen], int(self.pushes))
        pointer.copy_((pointer + pushed) % capacity)
        count.copy_(torch.clamp(count + pushed, max=capacity))

    def push(self, candidates: MemoryCandidates) -> None:
        """Pushes candidates (possibly gathered from all ranks: batch dim B * W) into the queues.

        Entries are pushed in batch order; within a class, image b's entries precede image b+1's.
        Vectorised over classes; one host synchronisation (this runs after the training step).
        """
        with torch.no_grad():
            if self.use_pixel and candidates.pixel_keys.shape[2] > 0:
                keys = candidates.pixel_keys.to(self.keys.device)
                batch, num_classes, per_group, dim = keys.shape
                self._check(num_classes, dim)
                entries = keys.permute(1, 0, 2, 3).reshape(num_classes, batch * per_group, dim)
                valid = candidates.pixel_valid.to(self.keys.device).permute(1, 0, 2)
                self._push_part(
                    entries,
                    valid.reshape(num_classes, batch * per_group),
                    self.pixel_pointer,
                    self.pixel_count,
                    self.pixel_size,
                    0,
                )
            if self.use_region:
                keys = candidates.region_keys.to(self.keys.device)
                batch, num_classes, dim = keys.shape
                self._check(num_classes, dim)
                self._push_part(
                    keys.transpose(0, 1),
                    candidates.region_valid.to(self.keys.device).transpose(0, 1),
                    self.region_pointer,
                    self.region_count,
                    self.region_size,
                    self.pixel_size,
                )
            if self.max_age is not None:
                self.pushes += 1
        self.refresh_counts()

    def _check(self, num_classes: int, dim: int) -> None:
        if num_classes != self.num_classes or dim != self.dim:
            raise ValueError(
                f"MemoryBank.push: candidates have C={num_classes}, D={dim}; memory has "
                f"C={self.num_classes}, D={self.dim}"
            )

    # -- reading -----------------------------------------------------------------------------------

    def live_counts(self) -> tuple[Tensor, Tensor]:
        """(C,) pixel and (C,) region keys that are usable now: the filled slots, and with
        ``max_age`` only those written in the last ``max_age`` pushes. They are the newest
        entries of each ring, i.e. the slots just before its pointer."""
        if self.max_age is None:
            return self.pixel_count, self.region_count
        fresh = self.stamps >= self.pushes - self.max_age
        parts = []
        for start, size, count in (
            (0, self.pixel_size, self.pixel_count),
            (self.pixel_size, self.region_size, self.region_count),
        ):
            filled = torch.arange(size, device=self.keys.device) < count.unsqueeze(1)
            parts.append((fresh[:, start : start + size] & filled).sum(1))
        return parts[0], parts[1]

    def live_starts(
        self, live_counts: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """(C,) first slot of the usable keys of each pixel and region ring (0 without
        ``max_age``: the filled slots are ``[0, count)``); ``live_counts`` when already at hand
        (else they are read again)."""
        pixel_live, region_live = self.live_counts() if live_counts is None else live_counts
        if self.max_age is None:
            return torch.zeros_like(pixel_live), torch.zeros_like(region_live)
        return (
            (self.pixel_pointer - pixel_live) % max(1, self.pixel_size),
            (self.region_pointer - region_live) % max(1, self.region_size),
        )

    def refresh_counts(self) -> None:
        """Re-reads the usable key counts on the host (after a push, a load or a manual edit)."""
        pixel, region = self.live_counts()
        self._host_counts = (pixel.tolist(), region.tolist())
        pixel_start, region_start = self.live_starts((pixel, region))
        self._host_starts = (pixel_start.tolist(), region_start.tolist())
        self._pools.clear()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._host_counts = None
        self._pools.clear()

    def key_pool(self, pixel: bool = True, region: bool = True) -> KeyPool:
        """The filled slots of the chosen queues as a class-sorted :class:`KeyPool`.

        No host synchronisation (uses the host copy of the counts); the pool's index tensors are
        cached until the next push.
        """
        if self._host_counts is None:
            self.refresh_counts()
        assert self._host_counts is not None
        pixel = pixel and self.use_pixel
        region = region and self.use_region
        cache_key = (pixel, region, self.keys.data_ptr())
        pool = self._pools.get(cache_key)
        if pool is not None and pool.storage.device == self.keys.device:
            return pool
        counts, starts, offsets, sizes, is_region = [], [], [], [], []
        if pixel:
            counts.append(self._host_counts[0])
            starts.append(self._host_starts[0])
            offsets.append(0)
            sizes.append(self.pixel_size)
            is_region.append(False)
        if region:
            counts.append(self._host_counts[1])
            starts.append(self._host_starts[1])
            offsets.append(self.pixel_size)
            sizes.append(self.region_size)
            is_region.append(True)
        if not counts:
            counts, starts = [[0] * self.num_classes], [[0] * self.num_classes]
            offsets, sizes, is_region = [0], [0], [False]
        stride = self.pixel_size + self.region_size
        storage = self.keys.view(self.num_classes * stride, self.dim)
        pool = KeyPool.from_counts(storage, counts, offsets, sizes, is_region, stride, starts)
        self._pools[cache_key] = pool
        return pool

    def _filled(
        self, start: int, capacity: int, count: Tensor, first: Tensor
    ) -> tuple[Tensor, Tensor]:
        block = self.keys[:, start : start + capacity]
        # Ring position of each slot counted from the first usable one.
        position = (torch.arange(capacity, device=self.keys.device) - first.unsqueeze(1)) % max(
            1, capacity
        )
        filled = position < count.unsqueeze(1)
        labels = torch.arange(self.num_classes, device=self.keys.device).unsqueeze(1)
        return block[filled], labels.expand(-1, capacity)[filled]

    def pixel_keys(self) -> tuple[Tensor, Tensor]:
        """Usable pixel slots: keys (M, D) and labels (M,), sorted by class (data-dependent M)."""
        count, first = self.live_counts()[0], self.live_starts()[0]
        return self._filled(0, self.pixel_size, count, first)

    def region_keys(self) -> tuple[Tensor, Tensor]:
        """Usable region slots: keys (M, D) and labels (M,), sorted by class (data-dependent M)."""
        count, first = self.live_counts()[1], self.live_starts()[1]
        return self._filled(self.pixel_size, self.region_size, count, first)

    def fill_fraction(self) -> Tensor:
        """(C,) float: usable slots (filled, and young enough with ``max_age``) / capacity per
        class, both queues together."""
        capacity = max(1, self.pixel_size + self.region_size)
        pixel, region = self.live_counts()
        return (pixel + region).float() / capacity


# --------------------------------------------------------------------------------------------------
# Gathering across ranks and the callback
# --------------------------------------------------------------------------------------------------


def gather_and_push(
    memory: MemoryBank,
    candidates: MemoryCandidates,
    all_gather: Callable[[Tensor], Tensor] | None = None,
) -> MemoryCandidates:
    """Gathers the candidates of all ranks and pushes them, so all ranks hold the same memory.

    Args:
        memory: the bank.
        candidates: this rank's candidates (fixed shapes, identical on all ranks).
        all_gather: e.g. ``LightningModule.all_gather``: returns the tensor unchanged on a single
            process and stacks the ranks' tensors on a new leading dim (W, ...) otherwise; that
            dim is merged into the batch dim. Booleans are gathered as uint8. None: no gathering.

    Returns:
        The pushed (gathered) candidates, batch dim B * W.
    """
    if all_gather is not None:
        gathered = {}
        for field in fields(candidates):
            tensor = getattr(candidates, field.name)
            is_bool = tensor.dtype == torch.bool
            result = all_gather(tensor.to(torch.uint8) if is_bool else tensor.contiguous())
            if result.dim() == tensor.dim() + 1:
                result = result.flatten(0, 1)
            gathered[field.name] = result.bool() if is_bool else result
        candidates = MemoryCandidates(**gathered)
    memory.push(candidates)
    return candidates


class MemoryBankCallback(L.Callback):
    """Pushes each training batch into ``pl_module.memory`` after the step.

    It reads ``outputs["projections"]`` ((B, D, h, w) raw projections; detached here),
    ``outputs["embedding_labels"]`` ((B, h, w) labels at the embedding resolution) and, when
    present, ``outputs["regions"]`` (the loss's region embeddings, reused) from the dict the
    ``training_step`` returns, selects the candidates, gathers them from all ranks with
    ``pl_module.all_gather`` and pushes. Does nothing when the module has no memory (``None``) or
    the outputs lack those keys.
    """

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        memory = getattr(pl_module, "memory", None)
        if memory is None or not isinstance(outputs, Mapping):
            return
        if "projections" not in outputs or "embedding_labels" not in outputs:
            return
        candidates = memory.select(
            outputs["projections"].detach(),
            outputs["embedding_labels"],
            regions=outputs.get("regions"),
        )
        gather_and_push(memory, candidates, pl_module.all_gather)
