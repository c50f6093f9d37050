"""Datasets, transforms and the Lightning data module of picoseg.

The public names are imported lazily on first access, so that light entry points such as
``python -m picoseg.data.scenes`` do not pay for importing Lightning and albumentations.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from picoseg.data.ade20k import ADE20KDataset
    from picoseg.data.camvid import CamVidDataset
    from picoseg.data.cityscapes import CityscapesDataset
    from picoseg.data.coco_stuff import CocoStuffDataset
    from picoseg.data.datamodule import SegmentationDataModule
    from picoseg.data.folder import IMAGE_EXTENSIONS, DatasetError, FolderDataset, PairedDataset
    from picoseg.data.pascal_context import PascalContextDataset
    from picoseg.data.scenes import (
        SCENES_CLASSES,
        SCENES_PALETTE,
        ensure_scenes_dataset,
        generate_scene,
    )
    from picoseg.data.transforms import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        build_eval_transform,
        build_train_transform,
    )

_SOURCES = {
    "ADE20KDataset": "picoseg.data.ade20k",
    "CamVidDataset": "picoseg.data.camvid",
    "CityscapesDataset": "picoseg.data.cityscapes",
    "CocoStuffDataset": "picoseg.data.coco_stuff",
    "SegmentationDataModule": "picoseg.data.datamodule",
    "IMAGE_EXTENSIONS": "picoseg.data.folder",
    "DatasetError": "picoseg.data.folder",
    "FolderDataset": "picoseg.data.folder",
    "PairedDataset": "picoseg.data.folder",
    "PascalContextDataset": "picoseg.data.pascal_context",
    "SCENES_CLASSES": "picoseg.data.scenes",
    "SCENES_PALETTE": "picoseg.data.scenes",
    "ensure_scenes_dataset": "picoseg.data.scenes",
    "generate_scene": "picoseg.data.scenes",
    "IMAGENET_MEAN": "picoseg.data.transforms",
    "IMAGENET_STD": "picoseg.data.transforms",
    "build_eval_transform": "picoseg.data.transforms",
    "build_train_transform": "picoseg.data.transforms",
}

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "SCENES_CLASSES",
    "SCENES_PALETTE",
    "ADE20KDataset",
    "CamVidDataset",
    "CityscapesDataset",
    "CocoStuffDataset",
    "DatasetError",
    "FolderDataset",
    "PairedDataset",
    "PascalContextDataset",
    "SegmentationDataModule",
    "build_eval_transform",
    "build_train_transform",
    "ensure_scenes_dataset",
    "generate_scene",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its submodule on first access (PEP 562)."""
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'picoseg.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
