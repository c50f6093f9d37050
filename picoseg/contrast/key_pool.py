"""The keys a memory bank offers the loss: :class:`KeyPool`, its filled slots sorted by class.

The memory's layout (per-class ring buffers of pixel and region keys) becomes a list of
contiguous runs of storage rows, so that similarities to all keys are computed with one matrix
product per run, straight from the storage, without copying the keys.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["KeyPool"]


@dataclass
class KeyPool:
    """A class-sorted set of keys, e.g. the filled slots of the memory bank.

    The pool's keys are rows of ``storage``; pool column ``j`` is storage row ``rows[j]``. Columns
    are sorted by class: the keys of class ``c`` are the columns
    ``[class_offset[c], class_offset[c] + class_count[c])``. ``runs`` lists the contiguous stretches
    of storage rows as host integers ``(row_start, length, column_start)`` so that similarities are
    computed with one matrix product per run, straight from the storage (no copy of the keys).

    Attributes:
        storage: (R, D) l2-normalised keys, detached.
        runs: host list of ``(row_start, length, column_start)``.
        size: number of columns M (host int).
        labels: (M,) int64 class of each column.
        rows: (M,) int64 storage row of each column.
        is_region: (M,) bool, True for region keys (only used to split the loss for logging).
        class_offset: (C,) int64 first column of each class.
        class_count: (C,) int64 number of columns of each class.
        max_count: host int, an upper bound of ``class_count`` (the queue capacity).
    """

    storage: Tensor
    runs: list[tuple[int, int, int]]
    size: int
    labels: Tensor
    rows: Tensor
    is_region: Tensor
    class_offset: Tensor
    class_count: Tensor
    max_count: int

    @property
    def num_classes(self) -> int:
        return self.class_count.shape[0]

    @functools.cached_property
    def max_norm(self) -> float:
        """The largest l2 norm of the pool's keys (0 when empty), read from the storage runs on
        first use (a host sync) and kept: a pool describes the memory of one step."""
        return max(
            (float(self.storage[start : start + n].norm(dim=1).max()) for start, n, _ in self.runs),
            default=0.0,
        )

    def storage_rows(self, columns: Tensor) -> Tensor:
        """Storage rows of pool columns (no gather when the columns are the rows)."""
        if self.runs == [(0, self.size, 0)]:
            return columns
        return self.rows[columns]

    @classmethod
    def from_counts(
        cls,
        storage: Tensor,
        slot_counts: Sequence[Sequence[int]],
        part_offsets: Sequence[int],
        part_sizes: Sequence[int],
        part_is_region: Sequence[bool],
        stride: int,
        slot_starts: Sequence[Sequence[int]] | None = None,
    ) -> KeyPool:
        """Builds the pool of the filled slots of per-class ring buffers.

        The storage holds, for every class ``c``, a block of ``stride`` rows starting at row
        ``c * stride``; inside it, part ``p`` (e.g. pixel queue, region queue) occupies the rows
        ``[part_offsets[p], part_offsets[p] + part_sizes[p])``. Its ``slot_counts[p][c]``
        keys are the slots ``slot_starts[p][c], +1, ...`` (mod the part's size); without
        ``slot_starts``, the first slots (a ring buffer fills from slot 0 and, once full, stays
        full). Only host integers are read: no synchronisation.

        Args:
            storage: (C * stride, D) keys.
            slot_counts: per part, the C numbers of keys (host ints).
            part_offsets: first row of each part inside a class block.
            part_sizes: capacity of each part.
            part_is_region: whether each part holds region keys.
            stride: rows per class block.
            slot_starts: per part, the C first slots of the keys (host ints; a stretch that
                passes the end of the part continues at its slot 0). ``None``: all 0.
        """
        device = storage.device
        num_classes = len(slot_counts[0])
        segments: list[tuple[int, int, int, bool]] = []  # (row_start, length, class, is_region)
        counts = []
        for c in range(num_classes):
            class_total = 0
            for p, offset in enumerate(part_offsets):
                length = int(slot_counts[p][c])
                start = int(slot_starts[p][c]) if slot_starts is not None else 0
                first = min(length, int(part_sizes[p]) - start)
                region = bool(part_is_region[p])
                if first > 0:
                    segments.append((c * stride + offset + start, first, c, region))
                if length > first:  # wraps around to the part's slot 0
                    segments.append((c * stride + offset, length - first, c, region))
                class_total += length
            counts.append(class_total)
        runs: list[tuple[int, int, int]] = []
        column = 0
        for row_start, length, _, _ in segments:
            if runs and runs[-1][0] + runs[-1][1] == row_start:
                runs[-1] = (runs[-1][0], runs[-1][1] + length, runs[-1][2])
            else:
                runs.append((row_start, length, column))
            column += length
        size = column
        if size > 0:
            lengths = torch.tensor([s[1] for s in segments], device=device)
            label_tensor = torch.repeat_interleave(
                torch.tensor([s[2] for s in segments], device=device), lengths, output_size=size
            )
            region_tensor = torch.repeat_interleave(
                torch.tensor([s[3] for s in segments], device=device), lengths, output_size=size
            )
            row_tensor = torch.cat([torch.arange(r, r + n, device=device) for r, n, _ in runs])
        else:
            label_tensor = torch.zeros(0, dtype=torch.long, device=device)
            row_tensor = torch.zeros(0, dtype=torch.long, device=device)
            region_tensor = torch.zeros(0, dtype=torch.bool, device=device)
        count_tensor = torch.tensor(counts, dtype=torch.long, device=device)
        return cls(
            storage=storage,
            runs=runs,
            size=size,
            labels=label_tensor,
            rows=row_tensor,
            is_region=region_tensor,
            class_offset=torch.cumsum(count_tensor, 0) - count_tensor,
            class_count=count_tensor,
            max_count=int(sum(part_sizes)),
        )

    @classmethod
    def from_keys(
        cls,
        keys: Tensor,
        labels: Tensor,
        num_classes: int,
        is_region: Tensor | None = None,
    ) -> KeyPool:
        """Builds a pool from arbitrary keys by sorting them by class (copies the keys).

        Meant for tests and small key sets; it reads the class counts on the host.

        Args:
            keys: (M, D) l2-normalised keys.
            labels: (M,) int64 classes in ``[0, num_classes)``.
            num_classes: C.
            is_region: optional (M,) bool.
        """
        order = torch.argsort(labels, stable=True)
        storage = keys[order].detach()
        sorted_labels = labels[order]
        counts = torch.bincount(sorted_labels, minlength=num_classes)
        size = keys.shape[0]
        region = (
            is_region[order]
            if is_region is not None
            else torch.zeros(size, dtype=torch.bool, device=keys.device)
        )
        return cls(
            storage=storage,
            runs=[(0, size, 0)] if size > 0 else [],
            size=size,
            labels=sorted_labels,
            rows=torch.arange(size, device=keys.device),
            is_region=region,
            class_offset=torch.cumsum(counts, 0) - counts,
            class_count=counts,
            max_count=int(counts.max()) if size > 0 else 0,
        )
