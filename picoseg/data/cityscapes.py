"""Cityscapes (fine annotations) with the 19 evaluation classes.

Layout::

    root/leftImg8bit/{split}/CITY/STEM_leftImg8bit.png
    root/gtFine/{split}/CITY/STEM_gtFine_labelIds.png        34 label ids, mapped to train ids
    root/gtFine/{split}/CITY/STEM_gtFine_labelTrainIds.png   optional; used as is if present
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from picoseg.data.folder import DatasetError, PairedDataset, require_dir

__all__ = ["CITYSCAPES_LABEL_TO_TRAIN", "CityscapesDataset"]

_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def _label_to_train() -> np.ndarray:
    table = np.full(256, 255, dtype=np.uint8)
    for label_id, train_id in _TRAIN_IDS.items():
        table[label_id] = train_id
    return table


CITYSCAPES_LABEL_TO_TRAIN: np.ndarray = _label_to_train()
"""256-entry lookup table from Cityscapes label ids to the 19 train ids (others -> 255)."""

_IMAGE_SUFFIX = "_leftImg8bit.png"


def _list_images(image_root: Path) -> list[Path]:
    """The ``CITY/STEM_leftImg8bit.png`` files of a split, sorted; hidden entries left out.

    Raises:
        DatasetError: Any other entry (a file directly in the split, a file of another name or a
            directory inside a city).
    """

    def visible(directory: Path) -> list[Path]:
        return sorted(p for p in directory.iterdir() if not p.name.startswith("."))

    images, bad = [], []
    for city in visible(image_root):
        if not city.is_dir():
            bad.append(city)
            continue
        for path in visible(city):
            ok = path.is_file() and path.name.endswith(_IMAGE_SUFFIX)
            (images if ok else bad).append(path)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DatasetError(
            f"unexpected entry {bad[0]}{more} in image split directory {image_root}; expected "
            f"only CITY/STEM{_IMAGE_SUFFIX} files (entries starting with '.' are skipped)"
        )
    return images


class CityscapesDataset(PairedDataset):
    """One split (``train``, ``val`` or ``test``) of Cityscapes, 19 classes, ignore 255.

    Item names are ``CITY/STEM``. Masks are ``*_gtFine_labelTrainIds.png`` when present, else
    ``*_gtFine_labelIds.png`` mapped with :data:`CITYSCAPES_LABEL_TO_TRAIN`.

    Args:
        root: Directory holding ``leftImg8bit/`` and ``gtFine/``.
        split: Split directory name.
        transform: Optional transform, see :class:`picoseg.data.folder.PairedDataset`.

    Raises:
        DatasetError: Missing root or split directory, an empty split, an entry in the split
            that is not ``CITY/STEM_leftImg8bit.png`` (hidden entries are skipped), or an image
            without its label file.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        require_dir(self.root, "Cityscapes root", "a directory with leftImg8bit/ and gtFine/")
        image_root = require_dir(
            self.root / "leftImg8bit" / split, "image split directory", f"leftImg8bit/{split}/"
        )
        label_root = require_dir(
            self.root / "gtFine" / split, "label split directory", f"gtFine/{split}/"
        )
        images = _list_images(image_root)
        if not images:
            raise DatasetError(
                f"image split directory {image_root} contains no images; expected "
                f"CITY/STEM{_IMAGE_SUFFIX} files"
            )
        pairs, names, mapped = [], [], []
        for image in images:
            city, stem = image.parent.name, image.name[: -len(_IMAGE_SUFFIX)]
            train_ids = label_root / city / f"{stem}_gtFine_labelTrainIds.png"
            label_ids = label_root / city / f"{stem}_gtFine_labelIds.png"
            if train_ids.is_file():
                pairs.append((image, train_ids))
                mapped.append(False)
            elif label_ids.is_file():
                pairs.append((image, label_ids))
                mapped.append(True)
            else:
                raise DatasetError(
                    f"image {image} has no label file: expected {label_ids} (or {train_ids})"
                )
            names.append(f"{city}/{stem}")
        self._mapped = mapped
        super().__init__(pairs, 19, 255, transform, CITYSCAPES_LABEL_TO_TRAIN, names)

    def label_map_for(self, index: int) -> np.ndarray | None:
        """Label ids are mapped to train ids; labelTrainIds files are used as they are."""
        return self.label_map if self._mapped[index] else None
