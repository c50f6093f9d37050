"""ADE20K SceneParsing (ADEChallengeData2016), 150 classes.

Layout::

    root/ADEChallengeData2016/images/{training,validation}/NAME.jpg
    root/ADEChallengeData2016/annotations/{training,validation}/NAME.png   ids 0..150, 0 = other

``root`` may also be the ``ADEChallengeData2016`` directory itself. Label 0 ("other") becomes
the ignore label 255 and class k becomes k - 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from picoseg.data.folder import PairedDataset, list_pairs, require_dir

__all__ = ["ADE20K_LABEL_MAP", "ADE20KDataset"]

_SPLITS = {"train": "training", "val": "validation"}


def _reduce_zero_label() -> np.ndarray:
    table = (np.arange(256, dtype=np.int64) - 1) % 256
    table[0] = 255
    return table.astype(np.uint8)


ADE20K_LABEL_MAP: np.ndarray = _reduce_zero_label()
"""256-entry lookup table: 0 -> 255, k -> k - 1 (ids above 150 stay invalid)."""


class ADE20KDataset(PairedDataset):
    """One split of ADE20K (``train``/``training`` or ``val``/``validation``), ignore 255.

    Args:
        root: ``ADEChallengeData2016`` or the directory containing it.
        split: ``train``, ``val``, ``training`` or ``validation``.
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
        require_dir(self.root, "ADE20K root", "ADEChallengeData2016 or the directory holding it")
        base = self.root / "ADEChallengeData2016"
        if not base.is_dir():
            base = self.root
        folder = _SPLITS.get(split, split)
        image_root = require_dir(
            base / "images" / folder, "image split directory", f"images/{folder}/ under {base}"
        )
        label_root = require_dir(
            base / "annotations" / folder,
            "annotation split directory",
            f"annotations/{folder}/ under {base}",
        )
        pairs = list_pairs(image_root, label_root, "*.jpg", "NAME.jpg")
        super().__init__(pairs, 150, 255, transform, ADE20K_LABEL_MAP)
