"""Tests of the COCO-Stuff 164k dataset on a tiny tree in the official layout."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from picoseg.data import CocoStuffDataset, DatasetError
from picoseg.data.coco_stuff import COCO_STUFF_LABEL_MAP, COCO_STUFF_UNUSED_IDS

H, W = 8, 16
NAMES = ("000000000285", "000000000139", "000000000632")


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _labels(seed: int) -> np.ndarray:
    labels = np.random.default_rng(seed).integers(0, 182, (H, W), dtype=np.uint8)
    labels[0, :5] = (0, 11, 12, 181, 255)
    return labels


def _tree(root: Path, folder: str = "train2017") -> Path:
    for i, name in enumerate(NAMES):
        image = np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)
        _write(root / "images" / folder / f"{name}.jpg", image)
        _write(root / "annotations" / folder / f"{name}.png", _labels(i))
    return root


def test_label_table() -> None:
    table = COCO_STUFF_LABEL_MAP
    assert table.shape == (256,) and table.dtype == np.uint8
    assert (table[0], table[11], table[12], table[181], table[255]) == (0, 255, 11, 170, 255)
    assert all(table[i] == 255 for i in COCO_STUFF_UNUSED_IDS)
    used = [i for i in range(182) if i not in COCO_STUFF_UNUSED_IDS]
    assert table[used].tolist() == list(range(171))


def test_listing_and_mapping(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    for split in ("train", "train2017"):
        ds = CocoStuffDataset(root, split)
        assert len(ds) == 3
        assert ds.names == sorted(NAMES)
    item = ds[1]
    assert item["name"] == "000000000285"
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, H, W)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (H, W)
    assert item["mask"][0, :5].tolist() == [0, 255, 11, 170, 255]
    expected = torch.from_numpy(COCO_STUFF_LABEL_MAP[_labels(0)]).long()
    assert torch.equal(item["mask"], expected)


def test_val_split_and_loader(tmp_path: Path) -> None:
    ds = CocoStuffDataset(_tree(tmp_path, "val2017"), "val")
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (2, 3, H, W)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (2, H, W)


def test_missing_root_split_and_empty(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        CocoStuffDataset(missing, "train")
    root = _tree(tmp_path / "coco")
    with pytest.raises(DatasetError, match=re.escape(str(root / "images" / "val2017"))):
        CocoStuffDataset(root, "val")
    (root / "images" / "val2017").mkdir()
    with pytest.raises(DatasetError, match=re.escape(str(root / "annotations" / "val2017"))):
        CocoStuffDataset(root, "val")
    (root / "annotations" / "val2017").mkdir()
    with pytest.raises(DatasetError, match=re.escape(str(root / "images" / "val2017"))) as info:
        CocoStuffDataset(root, "val")
    assert "no images" in str(info.value)


def test_image_without_annotation_names_both(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    label = root / "annotations" / "train2017" / f"{NAMES[0]}.png"
    label.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(label))) as info:
        CocoStuffDataset(root, "train")
    assert str(root / "images" / "train2017" / f"{NAMES[0]}.jpg") in str(info.value)


def test_bad_items(tmp_path: Path) -> None:
    ds = CocoStuffDataset(_tree(tmp_path), "train")
    out_of_range = _write(ds.mask_paths[0], np.full((H, W), 182, dtype=np.uint8))
    with pytest.raises(DatasetError, match=re.escape(str(out_of_range))) as info:
        ds[0]
    assert "[182]" in str(info.value)
    small = _write(ds.mask_paths[1], np.zeros((H - 1, W), dtype=np.uint8))
    with pytest.raises(DatasetError, match=re.escape(str(small))):
        ds[1]
    truncated = ds.image_paths[2]
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(DatasetError, match=re.escape(str(truncated))):
        ds[2]
