"""Tests of the ADE20K dataset on a tiny tree in the official layout."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from picoseg.data import ADE20KDataset, DatasetError

H, W = 8, 16
NAMES = ("ADE_train_00000002", "ADE_train_00000001", "ADE_train_00000003")


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _labels(seed: int) -> np.ndarray:
    labels = np.random.default_rng(seed).integers(0, 151, (H, W), dtype=np.uint8)
    labels[0, :3] = (0, 1, 150)
    return labels


def _tree(root: Path, folder: str = "training") -> Path:
    base = root / "ADEChallengeData2016"
    for i, name in enumerate(NAMES):
        image = np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)
        _write(base / "images" / folder / f"{name}.jpg", image)
        _write(base / "annotations" / folder / f"{name}.png", _labels(i))
    return root


def test_listing_and_reduce_zero_label(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    for ds in (
        ADE20KDataset(root, "train"),
        ADE20KDataset(root, "training"),
        ADE20KDataset(root / "ADEChallengeData2016", "train"),
    ):
        assert len(ds) == 3
        assert ds.names == sorted(NAMES)
    item = ds[1]
    assert item["name"] == "ADE_train_00000002"
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, H, W)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (H, W)
    raw = _labels(0)
    mask = item["mask"].numpy()
    assert mask[0, :3].tolist() == [255, 0, 149]
    assert (mask[raw == 0] == 255).all()
    assert (mask[raw > 0] == raw[raw > 0].astype(np.int64) - 1).all()


def test_val_split_and_loader(tmp_path: Path) -> None:
    ds = ADE20KDataset(_tree(tmp_path, "validation"), "val")
    assert len(ds) == 3
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (3, 3, H, W)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (3, H, W)


def test_missing_root_split_and_empty(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        ADE20KDataset(missing, "train")
    root = _tree(tmp_path / "ade")
    base = root / "ADEChallengeData2016"
    with pytest.raises(DatasetError, match=re.escape(str(base / "images" / "validation"))):
        ADE20KDataset(root, "val")
    (base / "images" / "validation").mkdir()
    with pytest.raises(DatasetError, match=re.escape(str(base / "annotations" / "validation"))):
        ADE20KDataset(root, "val")
    (base / "annotations" / "validation").mkdir()
    with pytest.raises(DatasetError, match=re.escape(str(base / "images" / "validation"))) as info:
        ADE20KDataset(root, "val")
    assert "no images" in str(info.value)


def test_image_without_annotation_names_both(tmp_path: Path) -> None:
    base = _tree(tmp_path) / "ADEChallengeData2016"
    label = base / "annotations" / "training" / f"{NAMES[2]}.png"
    label.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(label))) as info:
        ADE20KDataset(tmp_path, "train")
    assert str(base / "images" / "training" / f"{NAMES[2]}.jpg") in str(info.value)


def test_bad_items(tmp_path: Path) -> None:
    ds = ADE20KDataset(_tree(tmp_path), "train")
    out_of_range = _write(ds.mask_paths[0], np.full((H, W), 151, dtype=np.uint8))
    with pytest.raises(DatasetError, match=re.escape(str(out_of_range))) as info:
        ds[0]
    assert "[150]" in str(info.value)  # 151 - 1 is not a class
    small = _write(ds.mask_paths[1], np.zeros((H - 1, W), dtype=np.uint8))
    with pytest.raises(DatasetError, match=re.escape(str(small))):
        ds[1]
    truncated = ds.image_paths[2]
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(DatasetError, match=re.escape(str(truncated))):
        ds[2]
