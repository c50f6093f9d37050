"""CamVid in the SegNet layout, 11 classes (void = 11 is ignored).

Layout::

    root/{train,val,test}/NAME.png          RGB images
    root/{train,val,test}annot/NAME.png     ids 0..10, 11 = void
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from picoseg.data.folder import PairedDataset, list_pairs, require_dir

__all__ = ["CAMVID_LABEL_MAP", "CamVidDataset"]


def _void_to_ignore() -> np.ndarray:
    table = np.arange(256, dtype=np.uint8)
    table[11] = 255
    return table


CAMVID_LABEL_MAP: np.ndarray = _void_to_ignore()
"""256-entry lookup table: 11 (void) -> 255, every other id unchanged."""


class CamVidDataset(PairedDataset):
    """One split (``train``, ``val`` or ``test``) of CamVid, 11 classes, ignore 255.

    Args:
        root: Directory holding ``{split}/`` and ``{split}annot/``.
        split: Split name.
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
        require_dir(self.root, "CamVid root", f"a directory with {split}/ and {split}annot/")
        image_root = require_dir(self.root / split, "image split directory", f"{split}/ in root")
        label_root = require_dir(
            self.root / f"{split}annot", "annotation split directory", f"{split}annot/ in root"
        )
        pairs = list_pairs(image_root, label_root, "*.png", "NAME.png")
        super().__init__(pairs, 11, 255, transform, CAMVID_LABEL_MAP)
