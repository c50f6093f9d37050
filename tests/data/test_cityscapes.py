"""Tests of the Cityscapes dataset on a tiny tree in the official layout."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from picoseg.data import CityscapesDataset, DatasetError
from picoseg.data.cityscapes import CITYSCAPES_LABEL_TO_TRAIN

H, W = 8, 16
# label ids with their expected train ids: every train id plus unlabelled/void ids
LABEL_IDS = np.array([0, 1, 4, 6, 7, 8, 9, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27,
                      28, 29, 30, 31, 32, 33, 34, 3, 5, 10, 14, 15], dtype=np.uint8)  # fmt: skip


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _label_ids(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(LABEL_IDS[:27], (H, W)).astype(np.uint8)


def _tree(root: Path, split: str = "train") -> Path:
    items = [("zurich", "zurich_000001_000019"), ("aachen", "aachen_000000_000019"),
             ("aachen", "aachen_000001_000019")]  # fmt: skip
    for i, (city, stem) in enumerate(items):
        image = np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)
        _write(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
        _write(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", _label_ids(i))
        _write(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", image)
    return root


def test_label_table() -> None:
    table = CITYSCAPES_LABEL_TO_TRAIN
    assert table.shape == (256,) and table.dtype == np.uint8
    assert (table[7], table[26], table[0], table[33], table[8], table[31]) == (
        0,
        13,
        255,
        18,
        1,
        16,
    )
    assert sorted(set(table.tolist()) - {255}) == list(range(19))
    assert all(table[i] == 255 for i in (1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34))


def test_listing_and_mapping(tmp_path: Path) -> None:
    ds = CityscapesDataset(_tree(tmp_path), "train")
    assert len(ds) == 3
    assert ds.names == [
        "aachen/aachen_000000_000019",
        "aachen/aachen_000001_000019",
        "zurich/zurich_000001_000019",
    ]
    item = ds[2]
    assert item["name"] == "zurich/zurich_000001_000019"
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, H, W)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (H, W)
    expected = CITYSCAPES_LABEL_TO_TRAIN[_label_ids(0)]
    assert torch.equal(item["mask"], torch.from_numpy(expected).long())
    raw = _label_ids(0)
    assert (item["mask"].numpy()[raw == 7] == 0).all()
    assert (item["mask"].numpy()[raw == 26] == 13).all()
    assert (item["mask"].numpy()[raw == 33] == 18).all()
    assert (item["mask"].numpy()[raw == 0] == 255).all()


def test_train_ids_used_when_present(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    train_ids = np.full((H, W), 5, dtype=np.uint8)
    train_ids[0, :4] = 255
    _write(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png", train_ids)
    ds = CityscapesDataset(root, "train")
    assert ds.mask_paths[0].name.endswith("_gtFine_labelTrainIds.png")
    assert torch.equal(ds[0]["mask"], torch.from_numpy(train_ids).long())
    assert ds.mask_paths[1].name.endswith("_gtFine_labelIds.png")  # others still mapped
    assert torch.equal(ds[1]["mask"], torch.from_numpy(CITYSCAPES_LABEL_TO_TRAIN[_label_ids(2)]))


def test_loader(tmp_path: Path) -> None:
    batch = next(iter(DataLoader(CityscapesDataset(_tree(tmp_path), "train"), batch_size=2)))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (2, 3, H, W)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (2, H, W)
    assert len(batch["name"]) == 2


def test_missing_root_and_split(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        CityscapesDataset(missing, "train")
    root = _tree(tmp_path / "cs")
    with pytest.raises(DatasetError, match=re.escape(str(root / "leftImg8bit" / "val"))):
        CityscapesDataset(root, "val")
    (root / "leftImg8bit" / "val").mkdir()
    with pytest.raises(DatasetError, match=re.escape(str(root / "gtFine" / "val"))):
        CityscapesDataset(root, "val")
    (root / "gtFine" / "val" / "bonn").mkdir(parents=True)
    with pytest.raises(DatasetError, match=re.escape(str(root / "leftImg8bit" / "val"))) as info:
        CityscapesDataset(root, "val")
    assert "no images" in str(info.value)


def test_image_without_label_names_both(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    label = root / "gtFine/train/zurich/zurich_000001_000019_gtFine_labelIds.png"
    label.unlink()
    image = root / "leftImg8bit/train/zurich/zurich_000001_000019_leftImg8bit.png"
    with pytest.raises(DatasetError, match=re.escape(str(image))) as info:
        CityscapesDataset(root, "train")
    assert str(label) in str(info.value)


def test_bad_items(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    ds = CityscapesDataset(root, "train")
    small = _write(ds.mask_paths[0], np.zeros((H, W - 1), dtype=np.uint8))
    with pytest.raises(DatasetError, match=re.escape(str(small))):
        ds[0]
    train_ids = root / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelTrainIds.png"
    _write(train_ids, np.full((H, W), 19, dtype=np.uint8))  # train id out of range
    ds = CityscapesDataset(root, "train")
    with pytest.raises(DatasetError, match=re.escape(str(train_ids))):
        ds[1]
    truncated = ds.image_paths[2]
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(DatasetError, match=re.escape(str(truncated))):
        ds[2]


@pytest.mark.parametrize(
    "entry",
    [
        "aachen/aachen_000000_000019_leftImg8bit.jpg",  # wrong extension
        "aachen/aachen_000000_000019_rightImg8bit.png",  # wrong suffix
        "aachen/notes.txt",
        "README.md",  # a file directly in the split, not in a city
        "aachen/extra/",  # a directory inside a city
    ],
)
def test_unexpected_entry_in_image_split_names_it(tmp_path: Path, entry: str) -> None:
    root = _tree(tmp_path)
    path = root / "leftImg8bit" / "train" / entry
    if entry.endswith("/"):
        path.mkdir()
    else:
        path.write_bytes(b"x")
    with pytest.raises(DatasetError, match=re.escape(str(path))) as info:
        CityscapesDataset(root, "train")
    assert "CITY/STEM_leftImg8bit.png" in str(info.value)


def test_hidden_entries_in_image_split_are_skipped(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    split = root / "leftImg8bit" / "train"
    (split / ".DS_Store").write_bytes(b"x")
    (split / "aachen" / "._aachen_000000_000019_leftImg8bit.png").write_bytes(b"x")
    (split / ".cache" / "x").mkdir(parents=True)
    ds = CityscapesDataset(root, "train")
    assert len(ds) == 3 and ds.names[0] == "aachen/aachen_000000_000019"
