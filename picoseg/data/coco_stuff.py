"""COCO-Stuff 164k, 171 classes (80 things + 91 stuff).

Layout::

    root/images/{train2017,val2017}/NAME.jpg
    root/annotations/{train2017,val2017}/NAME.png   stuffthingmaps: ids 0..181, 255 unlabelled

The 182 ids include 11 COCO thing ids without annotations; they are ignored (255) and the
other 171 ids are renumbered in order to 0..170.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from picoseg.data.folder import PairedDataset, list_pairs, require_dir

__all__ = ["COCO_STUFF_LABEL_MAP", "COCO_STUFF_UNUSED_IDS", "CocoStuffDataset"]

COCO_STUFF_UNUSED_IDS: tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
"""0-based stuffthingmap ids never used in the annotations."""

_SPLITS = {"train": "train2017", "val": "val2017"}


def _contiguous() -> np.ndarray:
    table = np.arange(256, dtype=np.uint8)  # ids above 181 stay out of range (invalid)
    used = [i for i in range(182) if i not in COCO_STUFF_UNUSED_IDS]
    table[:182] = 255
    table[used] = np.arange(len(used), dtype=np.uint8)
    return table


COCO_STUFF_LABEL_MAP: np.ndarray = _contiguous()
"""256-entry lookup table from stuffthingmap ids to 171 contiguous classes (unused -> 255)."""


class CocoStuffDataset(PairedDataset):
    """One split of COCO-Stuff 164k (``train``/``train2017`` or ``val``/``val2017``).

    Args:
        root: Directory holding ``images/`` and ``annotations/``.
        split: ``train``, ``val``, ``train2017`` or ``val2017``.
        transform: Optional transform, see :class:`picoseg.data.folder.PairedDataset`.

    Raises:
        DatasetError: Missing root or split directory, an empty split, or an image without its
            annotation.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        require_dir(self.root, "COCO-Stuff root", "a directory with images/ and annotations/")
        folder = _SPLITS.get(split, split)
        image_root = require_dir(
            self.root / "images" / folder, "image split directory", f"images/{folder}/ in root"
        )
        label_root = require_dir(
            self.root / "annotations" / folder,
            "annotation split directory",
            f"annotations/{folder}/ in root",
        )
        pairs = list_pairs(image_root, label_root, "*.jpg", "NAME.jpg")
        super().__init__(pairs, 171, 255, transform, COCO_STUFF_LABEL_MAP)
