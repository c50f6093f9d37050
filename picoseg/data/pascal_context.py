"""PASCAL-Context on VOC2010, the 59-class setting.

Layout (``root`` is ``VOC2010`` or the directory holding ``VOCdevkit/VOC2010``)::

    VOC2010/JPEGImages/NAME.jpg
    VOC2010/SegmentationClassContext/NAME.png             ids 0..58, 255 = ignore
    VOC2010/ImageSets/SegmentationContext/{train,val}.txt one NAME per line

The masks and split lists are not part of the official release: :func:`prepare_pascal_context`
(``python scripts/prepare_pascal_context.py --root ROOT``) makes them once from the official
``trainval_merged.json`` (PASCAL in Detail). That file is assumed to hold:

- ``images``: dicts with ``image_id``, ``file_name`` (``2008_000002.jpg``), ``height``,
  ``width`` and ``phase`` (``"train"`` or ``"val"``);
- ``categories``: dicts with ``category_id`` and ``name`` (459 categories);
- ``annos_segmentation``: dicts with ``image_id``, ``category_id`` and ``segmentation``, a COCO
  RLE (``{"size": [h, w], "counts": str}``; uncompressed ``counts`` lists and polygon lists are
  accepted too).

Annotations are painted in file order, a later one over an earlier one. The 59 classes of
:data:`PASCAL_CONTEXT_CLASSES` are selected by name and become ids 0..58 in that order; the
other categories and unannotated pixels become 255.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from picoseg.data.folder import DatasetError, PairedDataset, require_dir

__all__ = [
    "PASCAL_CONTEXT_CLASSES",
    "PascalContextDataset",
    "find_voc2010",
    "prepare_pascal_context",
]

PASCAL_CONTEXT_CLASSES: tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person",
    "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
)  # fmt: skip
"""The 59 classes, in class-id order 0..58, as named in ``trainval_merged.json``."""

MASK_DIR = "SegmentationClassContext"
SPLIT_DIR = "ImageSets/SegmentationContext"
SPLITS: tuple[str, ...] = ("train", "val")
IGNORE_INDEX = 255
_SCRIPT = "python scripts/prepare_pascal_context.py --root"


def find_voc2010(root: str | Path) -> Path:
    """``root/VOCdevkit/VOC2010`` if it exists, else ``root`` itself (taken to be VOC2010).

    Raises:
        DatasetError: ``root`` is not a directory.
    """
    root = Path(root)
    require_dir(root, "PASCAL-Context root", "VOC2010 or the directory holding VOCdevkit/VOC2010")
    nested = root / "VOCdevkit" / "VOC2010"
    return nested if nested.is_dir() else root


def _mask_api() -> ModuleType:
    """``pycocotools.mask``, or an ImportError that says how to install it."""
    try:
        from pycocotools import mask
    except ImportError as err:
        raise ImportError(
            "preparing PASCAL-Context masks needs the package pycocotools to decode the RLE "
            "masks of trainval_merged.json, and it is not installed: pip install pycocotools "
            '(or pip install -e ".[pascal]")'
        ) from err
    return mask


def _normalise(name: str) -> str:
    return "".join(name.lower().split()).replace("_", "")


def _field(entry: dict[str, Any], key: str, what: str, path: Path) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise DatasetError(
            f"{path}: a {what} entry has no field {key!r} ({str(entry)[:120]}); expected the "
            "PASCAL in Detail trainval_merged.json format"
        )
    return entry[key]


def _class_table(categories: list[dict[str, Any]], path: Path) -> dict[int, int]:
    """Category id -> class id 0..58 or 255, selecting the 59 classes by (normalised) name."""
    by_name: dict[str, int] = {}
    table: dict[int, int] = {}
    for category in categories:
        category_id = int(_field(category, "category_id", "categories", path))
        name = _normalise(str(_field(category, "name", "categories", path)))
        if name in by_name:
            raise DatasetError(
                f"{path}: categories {by_name[name]} and {category_id} have the same name "
                f"{category['name']!r}; expected unique category names"
            )
        by_name[name] = category_id
        table[category_id] = IGNORE_INDEX
    missing = [n for n in PASCAL_CONTEXT_CLASSES if _normalise(n) not in by_name]
    if missing:
        raise DatasetError(
            f"{path}: the category table has no categories named {missing}; expected all 59 "
            "PASCAL-Context classes among its names (is this trainval_merged.json?)"
        )
    for class_id, name in enumerate(PASCAL_CONTEXT_CLASSES):
        table[by_name[_normalise(name)]] = class_id
    return table


def _decode(mask_api: ModuleType, segmentation: Any, height: int, width: int) -> np.ndarray:
    """One annotation's segmentation (RLE dict or polygon list) -> bool (height, width)."""
    if isinstance(segmentation, dict):
        size = [int(v) for v in segmentation.get("size", ())]
        if size != [height, width]:
            raise ValueError(f"RLE of size {size}, expected [{height}, {width}] (the image size)")
        rle = segmentation
        if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = mask_api.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, list):
        rle = mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    else:
        raise ValueError(f"segmentation of type {type(segmentation).__name__}")
    decoded = mask_api.decode(rle)
    if decoded.shape != (height, width):
        raise ValueError(f"decoded to {decoded.shape}, expected ({height}, {width})")
    return decoded.astype(bool)


def prepare_pascal_context(
    root: str | Path, annotations: str | Path | None = None
) -> dict[str, int]:
    """Write the 59-class masks and the train/val lists of PASCAL-Context from the json.

    Writes ``VOC2010/SegmentationClassContext/NAME.png`` (mode ``L``, ids 0..58 and 255) for
    every image of phase ``train`` or ``val`` and ``VOC2010/ImageSets/SegmentationContext/
    {train,val}.txt`` (sorted names); existing files are overwritten. Images of other phases
    are left out.

    Args:
        root: ``VOC2010`` or the directory holding ``VOCdevkit/VOC2010``.
        annotations: ``trainval_merged.json`` (default ``VOC2010/trainval_merged.json``).

    Returns:
        Number of images written per split, e.g. ``{"train": 4998, "val": 5105}``.

    Raises:
        ImportError: pycocotools is not installed (the message says how to install it).
        DatasetError: Missing root or json, a json without the expected fields, a missing class
            name, an annotation of an unknown image or category, or a segmentation that does
            not decode to its image's size.
    """
    mask_api = _mask_api()
    base = find_voc2010(root)
    path = Path(annotations) if annotations is not None else base / "trainval_merged.json"
    if not path.is_file():
        raise DatasetError(
            f"annotation file {path} does not exist; expected the official PASCAL-Context "
            "trainval_merged.json (pass its path with --annotations)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read {path} as JSON: {err}") from err
    for key in ("images", "categories", "annos_segmentation"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DatasetError(
                f"{path} has no list {key!r}; expected the PASCAL in Detail trainval_merged.json "
                "with 'images', 'categories' and 'annos_segmentation'"
            )
    table = _class_table(data["categories"], path)

    images: dict[int, dict[str, Any]] = {}
    for image in data["images"]:
        images[int(_field(image, "image_id", "images", path))] = image
    annotations_of: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in data["annos_segmentation"]:
        image_id = int(_field(ann, "image_id", "annos_segmentation", path))
        if image_id not in images:
            raise DatasetError(
                f"{path}: a segmentation annotation refers to image_id {image_id}, which is not "
                "in 'images'; expected annotations of listed images only"
            )
        annotations_of[image_id].append(ann)

    mask_dir = base / MASK_DIR
    split_dir = base / SPLIT_DIR
    mask_dir.mkdir(parents=True, exist_ok=True)
    split_dir.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {split: [] for split in SPLITS}
    for image_id, image in images.items():
        phase = _field(image, "phase", "images", path)
        if phase not in names:
            continue
        stem = Path(str(_field(image, "file_name", "images", path))).stem
        height = int(_field(image, "height", "images", path))
        width = int(_field(image, "width", "images", path))
        mask = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
        for ann in annotations_of.get(image_id, ()):
            category_id = int(_field(ann, "category_id", "annos_segmentation", path))
            if category_id not in table:
                raise DatasetError(
                    f"{path}: an annotation of image {stem} has category_id {category_id}, "
                    "which is not in 'categories'; expected a listed category"
                )
            segmentation = _field(ann, "segmentation", "annos_segmentation", path)
            try:
                region = _decode(mask_api, segmentation, height, width)
            except (ValueError, TypeError, KeyError) as err:
                raise DatasetError(
                    f"{path}: cannot decode the segmentation of category {category_id} in image "
                    f"{stem} ({err}); expected a COCO RLE or polygons of the image's size "
                    f"{height}x{width}"
                ) from err
            mask[region] = table[category_id]
        Image.fromarray(mask).save(mask_dir / f"{stem}.png")
        names[phase].append(stem)
    for split, stems in names.items():
        (split_dir / f"{split}.txt").write_text("".join(f"{s}\n" for s in sorted(stems)))
    return {split: len(stems) for split, stems in names.items()}


class PascalContextDataset(PairedDataset):
    """One split (``train`` or ``val``) of PASCAL-Context, 59 classes, ignore 255.

    Reads ``JPEGImages/NAME.jpg`` and the prepared ``SegmentationClassContext/NAME.png`` for the
    names listed in ``ImageSets/SegmentationContext/{split}.txt``; make the masks and lists once
    with ``python scripts/prepare_pascal_context.py --root ROOT``.

    Args:
        root: ``VOC2010`` or the directory holding ``VOCdevkit/VOC2010``.
        split: Split list name, ``train`` or ``val``.
        transform: Optional transform, see :class:`picoseg.data.folder.PairedDataset`.

    Raises:
        DatasetError: Missing root or image directory, masks or split list not prepared (the
            message says to run the script), an empty split list, or a listed image or mask
            that does not exist. Masks with ids 59..254 are reported when read.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        base = find_voc2010(self.root)
        image_root = require_dir(
            base / "JPEGImages",
            "image directory",
            f"JPEGImages/ under {base} (root is VOC2010 or holds VOCdevkit/VOC2010)",
        )
        run = f"run `{_SCRIPT} {self.root}` to make them from trainval_merged.json"
        mask_root = base / MASK_DIR
        if not mask_root.is_dir():
            raise DatasetError(
                f"mask directory {mask_root} does not exist; expected the prepared 59-class "
                f"masks {MASK_DIR}/NAME.png: {run}"
            )
        split_file = base / SPLIT_DIR / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetError(
                f"split list {split_file} does not exist; expected {SPLIT_DIR}/"
                f"{{{','.join(SPLITS)}}}.txt: {run}"
            )
        stems = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not stems:
            raise DatasetError(
                f"split list {split_file} lists no images; expected one image name per line"
            )
        pairs = []
        for stem in stems:
            image, mask = image_root / f"{stem}.jpg", mask_root / f"{stem}.png"
            if not image.is_file():
                raise DatasetError(
                    f"image {image} listed in {split_file} does not exist; expected NAME.jpg"
                )
            if not mask.is_file():
                raise DatasetError(f"image {image} has no mask: expected {mask}; {run}")
            pairs.append((image, mask))
        super().__init__(pairs, len(PASCAL_CONTEXT_CLASSES), IGNORE_INDEX, transform)
