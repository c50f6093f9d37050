"""A generic segmentation dataset read from a folder tree of images and class-id masks.

Layout::

    root/{image_dir}/{split}/NAME.{png,jpg,jpeg}   RGB (or grey) images
    root/{mask_dir}/{split}/NAME.png               single-channel 8-bit class ids

Masks are paired with images by file stem. Every problem found in the tree raises
:class:`DatasetError` with the offending path(s) and what was expected; nothing is skipped
silently (only hidden files, whose names start with a dot, are not considered).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "FolderDataset",
    "PairedDataset",
    "list_pairs",
    "require_dir",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
"""Accepted image file extensions (compared case-insensitively)."""

_IMAGE_MODES = ("RGB", "RGBA", "L", "LA", "P")
_MASK_MODES = ("L", "P")


class DatasetError(ValueError):
    """A dataset on disk does not have the expected layout or content."""


def _list_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def _load(path: Path, what: str) -> Image.Image:
    """Open and fully decode an image file, turning any decoding failure into DatasetError."""
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(
            f"cannot read {what} file {path}: {err.__class__.__name__}: {err}; expected a valid, "
            "complete image file"
        ) from err


def _check_label_range(num_classes: int, ignore_index: int) -> None:
    if not 1 <= int(num_classes) <= 255:
        raise ValueError(f"num_classes={num_classes}: expected 1..255 for 8-bit masks")
    if not 0 <= int(ignore_index) <= 255:
        raise ValueError(f"ignore_index={ignore_index}: expected 0..255 for 8-bit masks")
    if int(ignore_index) < int(num_classes):
        raise ValueError(
            f"ignore_index={ignore_index} is a class id with num_classes={num_classes}: "
            f"expected ignore_index >= num_classes"
        )


def require_dir(path: Path, what: str, expected: str) -> Path:
    """Return ``path`` if it is a directory, else raise DatasetError naming it and ``expected``."""
    if not path.is_dir():
        raise DatasetError(f"{what} {path} is not a directory; expected {expected}")
    return path


def list_pairs(
    image_root: Path, label_root: Path, pattern: str, expected: str
) -> list[tuple[Path, Path]]:
    """Images matching ``pattern`` in ``image_root`` (sorted, hidden files left out), each paired
    with its annotation ``label_root/STEM.png``.

    Raises:
        DatasetError: no image matches (``expected`` describes the files looked for), or an image
            has no annotation (both paths named).
    """
    images = sorted(p for p in image_root.glob(pattern) if not p.name.startswith("."))
    if not images:
        raise DatasetError(
            f"image split directory {image_root} contains no images; expected {expected} files"
        )
    pairs = []
    for image in images:
        label = label_root / f"{image.stem}.png"
        if not label.is_file():
            raise DatasetError(f"image {image} has no annotation: expected {label}")
        pairs.append((image, label))
    return pairs


class PairedDataset(Dataset):
    """Image/mask pairs already listed on disk, read and checked on every access.

    Items are dicts with ``image`` (float32 tensor (3, H, W)), ``mask`` (int64 tensor (H, W) of
    class ids in [0, num_classes) or ``ignore_index``) and ``name``. Without a transform the
    image is scaled to [0, 1]; with one it is whatever the transform produced (normalised).

    Images of mode RGB, RGBA (alpha dropped), L / LA (grey replicated to three channels) and P
    (palette colours) are accepted; masks must be mode ``L`` or ``P`` (then the palette indices
    are the ids). EXIF orientation is not applied.

    Args:
        pairs: ``(image_path, mask_path)`` per item, in item order.
        num_classes: Number of classes; valid ids are 0..num_classes-1 (1-255).
        ignore_index: Label that marks ignored pixels (0-255, not a class id).
        transform: Optional albumentations-style callable
            ``transform(image=uint8 (H, W, 3), mask=uint8 (H, W)) -> {"image": float tensor
            (3, h, w), "mask": tensor or array (h, w)}``.
        label_map: Optional 256-entry uint8 lookup table applied to the raw mask ids before
            they are checked (e.g. dataset label ids to train ids).
        names: Item names (default: the image file stems).

    Raises:
        ValueError: ``num_classes`` or ``ignore_index`` out of range, ``ignore_index`` a class
            id, a ``label_map`` that is not 256 entries, or ``names`` of the wrong length.
    """

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        num_classes: int,
        ignore_index: int = 255,
        transform: Callable[..., dict[str, Any]] | None = None,
        label_map: np.ndarray | None = None,
        names: list[str] | None = None,
    ) -> None:
        _check_label_range(num_classes, ignore_index)
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.transform = transform
        if label_map is not None:
            label_map = np.asarray(label_map)
            if label_map.shape != (256,) or label_map.min() < 0 or label_map.max() > 255:
                raise ValueError(
                    f"label_map of shape {label_map.shape}: expected 256 entries in 0..255"
                )
            label_map = label_map.astype(np.uint8)
        self.label_map = label_map
        self.image_paths: list[Path] = [Path(p[0]) for p in pairs]
        self.mask_paths: list[Path] = [Path(p[1]) for p in pairs]
        if names is not None and len(names) != len(self.image_paths):
            raise ValueError(
                f"{len(names)} names for {len(self.image_paths)} pairs: expected one each"
            )
        self._names = list(names) if names is not None else None

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def names(self) -> list[str]:
        """Item names (by default the image file stems), in order."""
        if self._names is not None:
            return list(self._names)
        return [p.stem for p in self.image_paths]

    def label_map_for(self, index: int) -> np.ndarray | None:
        """The lookup table applied to the raw ids of item ``index`` (default: ``label_map``)."""
        return self.label_map

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read and check one raw pair, without the transform.

        Args:
            index: Item index in [0, len).

        Returns:
            ``(image, mask)``: uint8 (H, W, 3) RGB and uint8 (H, W) class ids.

        Raises:
            DatasetError: Unreadable file, unsupported mode, size mismatch or bad label ids.
        """
        image_path, mask_path = self.image_paths[index], self.mask_paths[index]
        im = _load(image_path, "image")
        if im.mode not in _IMAGE_MODES:
            raise DatasetError(
                f"image {image_path} has PIL mode {im.mode!r}; expected an 8-bit image of mode "
                f"{', '.join(_IMAGE_MODES)}"
            )
        image = np.array(im.convert("RGB"), dtype=np.uint8)
        mk = _load(mask_path, "mask")
        if mk.mode not in _MASK_MODES:
            hint = (
                " (a colour mask? convert colours to class ids)"
                if mk.mode in ("RGB", "RGBA")
                else ""
            )
            raise DatasetError(
                f"mask {mask_path} has PIL mode {mk.mode!r}{hint}; expected a single-channel "
                "8-bit class-id mask (mode 'L', or 'P' whose palette indices are the ids)"
            )
        mask = np.array(mk, dtype=np.uint8)
        mapped = ""
        label_map = self.label_map_for(index)
        if label_map is not None:
            mask = label_map[mask]
            mapped = " after mapping the dataset's label ids"
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} (HxW) but image "
                f"{image_path} is {image.shape[0]}x{image.shape[1]}; expected equal sizes"
            )
        counts = np.bincount(mask.ravel(), minlength=256)
        counts[: self.num_classes] = 0
        counts[self.ignore_index] = 0
        if counts.any():
            bad = np.flatnonzero(counts).tolist()
            raise DatasetError(
                f"mask {mask_path} contains label ids {bad}{mapped}; expected ids in "
                f"[0, {self.num_classes}) or the ignore label {self.ignore_index}"
            )
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index``: dict of ``image`` (float32 (3, H, W)), ``mask`` (int64 (H, W)), ``name``.

        Raises:
            DatasetError: See :meth:`read`.
            TypeError: The transform returned an image that is not a float tensor (3, h, w) or a
                mask that is not 2-D.
        """
        image, mask = self.read(index)
        name = self._names[index] if self._names is not None else self.image_paths[index].stem
        if self.transform is None:
            image_t = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
            return {"image": image_t, "mask": torch.from_numpy(mask).long(), "name": name}
        out = self.transform(image=image, mask=mask)
        image_t, mask_t = out["image"], out["mask"]
        if (
            not isinstance(image_t, torch.Tensor)
            or image_t.ndim != 3
            or image_t.shape[0] != 3
            or not image_t.is_floating_point()
        ):
            got = (
                f"{type(image_t).__name__} {tuple(image_t.shape)} {image_t.dtype}"
                if hasattr(image_t, "shape")
                else type(image_t).__name__
            )
            raise TypeError(
                f"transform returned image {got} for {self.image_paths[index]}; expected a "
                "float tensor (3, H, W) (end the transform with Normalize and ToTensorV2)"
            )
        mask_t = torch.as_tensor(np.asarray(mask_t) if not torch.is_tensor(mask_t) else mask_t)
        if mask_t.ndim != 2:
            raise TypeError(
                f"transform returned mask of shape {tuple(mask_t.shape)} for "
                f"{self.mask_paths[index]}; expected (H, W)"
            )
        return {"image": image_t.float(), "mask": mask_t.long(), "name": name}

    def __repr__(self) -> str:
        where = f"root={str(self.root)!r}, split={self.split!r}, " if hasattr(self, "root") else ""
        return (
            f"{type(self).__name__}({where}"
            f"items={len(self)}, num_classes={self.num_classes}, ignore_index={self.ignore_index})"
        )


class FolderDataset(PairedDataset):
    """Images and class-id masks of one split, read from a folder tree.

    Items are dicts with ``image`` (float32 tensor (3, H, W)), ``mask`` (int64 tensor (H, W) of
    class ids in [0, num_classes) or ``ignore_index``) and ``name`` (the file stem). Without a
    transform the image is scaled to [0, 1]; with one it is whatever the transform produced
    (normalised).

    The tree is listed and masks are paired with images in ``__init__``; image/mask sizes and
    label ids are checked on every read. Images of mode RGB, RGBA (alpha dropped), L / LA (grey
    replicated to three channels) and P (palette colours) are accepted; masks must be mode ``L``
    or ``P`` (then the palette indices are the class ids). EXIF orientation is not applied.

    Args:
        root: Dataset root directory.
        split: Split sub-directory name, e.g. ``"train"``.
        num_classes: Number of classes; valid ids are 0..num_classes-1 (1-255).
        ignore_index: Label that marks ignored pixels (0-255, not a class id).
        image_dir: Name of the images directory under ``root``.
        mask_dir: Name of the masks directory under ``root``.
        transform: Optional albumentations-style callable
            ``transform(image=uint8 (H, W, 3), mask=uint8 (H, W)) -> {"image": float tensor
            (3, h, w), "mask": tensor or array (h, w)}``.

    Raises:
        DatasetError: Missing directory, empty split, an image without its mask (or a mask
            without its image), two images with the same stem, or a file that is not a
            supported image.
        ValueError: ``num_classes`` or ``ignore_index`` out of range, or ``ignore_index`` a
            class id.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        num_classes: int,
        ignore_index: int = 255,
        image_dir: str = "images",
        mask_dir: str = "masks",
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        _check_label_range(num_classes, ignore_index)
        self.root = Path(root)
        self.split = split
        self.image_root = self.root / image_dir / split
        self.mask_root = self.root / mask_dir / split
        image_paths, mask_paths = self._pair()
        super().__init__(
            list(zip(image_paths, mask_paths, strict=True)), num_classes, ignore_index, transform
        )

    def _pair(self) -> tuple[list[Path], list[Path]]:
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {self.root} is not a directory; expected it to exist")
        for directory, what in ((self.image_root, "image"), (self.mask_root, "mask")):
            if not directory.is_dir():
                raise DatasetError(
                    f"{what} directory {directory} of split '{self.split}' does not exist; "
                    f"expected root/<{what} dir>/<split>/ under {self.root}"
                )
        images: dict[str, Path] = {}
        bad: list[Path] = []
        for path in _list_files(self.image_root):
            if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
                bad.append(path)
                continue
            if path.stem in images:
                raise DatasetError(
                    f"two images with the same name {path.stem!r}: {images[path.stem]} and {path}; "
                    "expected one image per name"
                )
            images[path.stem] = path
        if bad:
            raise DatasetError(
                f"unexpected entries in image directory {self.image_root}: "
                f"{', '.join(str(p) for p in bad[:5])}{' ...' if len(bad) > 5 else ''}; "
                f"expected only image files with extensions {', '.join(IMAGE_EXTENSIONS)}"
            )
        if not images:
            raise DatasetError(
                f"image directory {self.image_root} of split '{self.split}' contains no images; "
                f"expected files with extensions {', '.join(IMAGE_EXTENSIONS)}"
            )
        masks: dict[str, Path] = {}
        bad = []
        for path in _list_files(self.mask_root):
            if not path.is_file() or path.suffix.lower() != ".png":
                bad.append(path)
            else:
                masks[path.stem] = path
        if bad:
            raise DatasetError(
                f"unexpected entries in mask directory {self.mask_root}: "
                f"{', '.join(str(p) for p in bad[:5])}{' ...' if len(bad) > 5 else ''}; "
                "expected only .png mask files"
            )
        missing = [name for name in images if name not in masks]
        if missing:
            name = missing[0]
            more = (
                f" (and {len(missing) - 1} more images without masks)" if len(missing) > 1 else ""
            )
            raise DatasetError(
                f"image {images[name]} has no mask: expected {self.mask_root / (name + '.png')}"
                f"{more}"
            )
        orphans = [masks[name] for name in masks if name not in images]
        if orphans:
            more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
            raise DatasetError(
                f"mask {orphans[0]} has no image: expected "
                f"{self.image_root / orphans[0].stem}{{{','.join(IMAGE_EXTENSIONS)}}}{more}"
            )
        names = sorted(images)
        return [images[n] for n in names], [masks[n] for n in names]
