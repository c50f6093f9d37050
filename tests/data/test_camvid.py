"""Tests of the CamVid dataset on a tiny tree in the SegNet layout."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from picoseg.data import CamVidDataset, DatasetError, SegmentationDataModule

H, W = 8, 16
NAMES = ("0016E5_07961", "0001TP_006690", "Seq05VD_f00000")


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _labels(seed: int) -> np.ndarray:
    labels = np.random.default_rng(seed).integers(0, 12, (H, W), dtype=np.uint8)
    labels[0, :3] = (0, 10, 11)
    return labels


def _tree(root: Path, split: str = "train") -> Path:
    for i, name in enumerate(NAMES):
        image = np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)
        _write(root / split / f"{name}.png", image)
        _write(root / f"{split}annot" / f"{name}.png", _labels(i))
    return root


def test_listing_and_void(tmp_path: Path) -> None:
    ds = CamVidDataset(_tree(tmp_path), "train")
    assert len(ds) == 3
    assert ds.names == sorted(NAMES)
    item = ds[0]
    assert item["name"] == "0001TP_006690"
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, H, W)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (H, W)
    raw = _labels(1)
    mask = item["mask"].numpy()
    assert mask[0, :3].tolist() == [0, 10, 255]
    assert (mask[raw == 11] == 255).all()
    assert (mask[raw < 11] == raw[raw < 11]).all()


def test_loader(tmp_path: Path) -> None:
    batch = next(iter(DataLoader(CamVidDataset(_tree(tmp_path, "val"), "val"), batch_size=2)))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (2, 3, H, W)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (2, H, W)


def test_missing_root_split_and_empty(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        CamVidDataset(missing, "train")
    root = _tree(tmp_path / "camvid")
    with pytest.raises(DatasetError, match=re.escape(str(root / "test"))):
        CamVidDataset(root, "test")
    (root / "test").mkdir()
    with pytest.raises(DatasetError, match=re.escape(str(root / "testannot"))):
        CamVidDataset(root, "test")
    (root / "testannot").mkdir()
    with pytest.raises(DatasetError, match=re.escape(str(root / "test"))) as info:
        CamVidDataset(root, "test")
    assert "no images" in str(info.value)


def test_image_without_annotation_names_both(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    label = root / "trainannot" / f"{NAMES[1]}.png"
    label.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(label))) as info:
        CamVidDataset(root, "train")
    assert str(root / "train" / f"{NAMES[1]}.png") in str(info.value)


def test_bad_items(tmp_path: Path) -> None:
    ds = CamVidDataset(_tree(tmp_path), "train")
    out_of_range = _write(ds.mask_paths[0], np.full((H, W), 12, dtype=np.uint8))
    with pytest.raises(DatasetError, match=re.escape(str(out_of_range))) as info:
        ds[0]
    assert "[12]" in str(info.value)
    small = _write(ds.mask_paths[1], np.zeros((H, W + 1), dtype=np.uint8))
    with pytest.raises(DatasetError, match=re.escape(str(small))):
        ds[1]
    truncated = ds.image_paths[2]
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(DatasetError, match=re.escape(str(truncated))):
        ds[2]


def test_datamodule_batches(tmp_path: Path) -> None:
    root = _tree(_tree(tmp_path), "val")
    dm = SegmentationDataModule(
        partial(CamVidDataset, root=root), crop_size=(8, 8), batch_size=2, num_workers=0
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (2, 3, 8, 8)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (2, 8, 8)
    assert set(batch["mask"].unique().tolist()) <= set(range(11)) | {255}
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 3, H, W) and val["mask"].shape == (1, H, W)
