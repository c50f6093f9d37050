"""Tests of the generic folder dataset."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from picoseg.data.folder import DatasetError, FolderDataset


def _image(seed: int, h: int = 8, w: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(seed: int, h: int = 8, w: int = 8, num_classes: int = 9) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, (h, w), dtype=np.uint8)


def _write(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def _tree(root: Path, names: tuple[str, ...] = ("b", "a", "c"), split: str = "train") -> Path:
    for i, name in enumerate(names):
        _write(root / "images" / split / f"{name}.png", _image(i))
        _write(root / "masks" / split / f"{name}.png", _mask(i))
    return root


@contextmanager
def _raises(path: Path, *parts: str) -> Iterator[None]:
    """Expect a DatasetError whose message contains the path and every one of ``parts``."""
    with pytest.raises(DatasetError, match=re.escape(str(path))) as info:
        yield
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_good_items(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    ds = FolderDataset(root, "train", num_classes=9)
    assert len(ds) == 3
    assert ds.names == ["a", "b", "c"]  # sorted
    item = ds[0]  # "a" was written with seed 1
    assert item["name"] == "a"
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 8, 8)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (8, 8)
    img = _image(1)
    expected = torch.tensor(img[2, 5] / 255.0, dtype=torch.float32)
    assert torch.allclose(item["image"][:, 2, 5], expected)
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
    assert torch.equal(item["mask"], torch.from_numpy(_mask(1)).long())


def test_jpeg_and_grey_images(tmp_path: Path) -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    _write(tmp_path / "images" / "val" / "g.png", grey)
    _write(tmp_path / "masks" / "val" / "g.png", _mask(0))
    jpg = tmp_path / "images" / "val" / "j.JPG"
    Image.fromarray(_image(2)).save(jpg, format="JPEG")
    _write(tmp_path / "masks" / "val" / "j.png", _mask(2))
    ds = FolderDataset(tmp_path, "val", num_classes=9)
    g, j = ds[0], ds[1]
    assert g["name"] == "g" and j["name"] == "j"
    # A grey image is replicated to 3 equal channels.
    expected = torch.from_numpy(grey).float() / 255.0
    for ch in range(3):
        assert torch.allclose(g["image"][ch], expected)
    assert j["image"].shape == (3, 8, 8)


def test_palette_mask_uses_indices(tmp_path: Path) -> None:
    _write(tmp_path / "images" / "train" / "p.png", _image(0))
    indices = np.array([[0, 1, 2, 8] * 2] * 8, dtype=np.uint8)
    pal = Image.fromarray(indices, "P")
    # Palette colours unrelated to the indices: index k is drawn as (200 - k, 10 * k, 7).
    pal.putpalette([v for k in range(256) for v in (max(200 - k, 0), (10 * k) % 256, 7)])
    (tmp_path / "masks" / "train").mkdir(parents=True)
    pal.save(tmp_path / "masks" / "train" / "p.png")
    with Image.open(tmp_path / "masks" / "train" / "p.png") as check:
        assert check.mode == "P"
    item = FolderDataset(tmp_path, "train", num_classes=9)[0]
    assert torch.equal(item["mask"], torch.from_numpy(indices).long())


def test_class_zero_and_ignore_are_fine_but_id_out_of_range_is_not(tmp_path: Path) -> None:
    _write(tmp_path / "images" / "train" / "a.png", _image(0))
    ok = np.zeros((8, 8), np.uint8)
    ok[0, :4] = 255
    ok[5, 5] = 8
    mask_path = _write(tmp_path / "masks" / "train" / "a.png", ok)
    item = FolderDataset(tmp_path, "train", num_classes=9)[0]
    assert torch.equal(item["mask"], torch.from_numpy(ok).long())
    assert int((item["mask"] == 0).sum()) == 64 - 5

    bad = ok.copy()
    bad[1, 1] = 9
    bad[2, 2] = 17
    _write(mask_path, bad)
    ds = FolderDataset(tmp_path, "train", num_classes=9)  # ids are checked on read
    with _raises(mask_path, "[9, 17]", "[0, 9)", "255"):
        ds[0]
    # With another ignore label, 255 itself is out of range.
    _write(mask_path, ok)
    with _raises(mask_path, "[255]", "[0, 9)"):
        FolderDataset(tmp_path, "train", num_classes=9, ignore_index=250)[0]


def test_missing_directories(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with _raises(missing):
        FolderDataset(missing, "train", num_classes=3)
    root = _tree(tmp_path / "r")
    with _raises(root / "images" / "val"):
        FolderDataset(root, "val", num_classes=9)
    (root / "images" / "val").mkdir()
    with _raises(root / "masks" / "val"):
        FolderDataset(root, "val", num_classes=9)
    with _raises(root / "pics" / "train"):
        FolderDataset(root, "train", num_classes=9, image_dir="pics")


def test_empty_split(tmp_path: Path) -> None:
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "masks" / "train").mkdir(parents=True)
    with _raises(tmp_path / "images" / "train", "no images"):
        FolderDataset(tmp_path, "train", num_classes=9)


def test_image_without_mask_names_both_paths(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "masks" / "train" / "b.png").unlink()
    with _raises(root / "images" / "train" / "b.png", str(root / "masks" / "train" / "b.png")):
        FolderDataset(root, "train", num_classes=9)


def test_mask_without_image(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "images" / "train" / "c.png").unlink()
    with _raises(root / "masks" / "train" / "c.png", "no image"):
        FolderDataset(root, "train", num_classes=9)


def test_unexpected_files_and_duplicate_names(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    notes = root / "images" / "train" / "notes.txt"
    notes.write_text("hello")
    with _raises(notes, ".png"):
        FolderDataset(root, "train", num_classes=9)
    notes.unlink()
    (root / ".hidden").write_text("dotfiles are not considered")
    dup = root / "images" / "train" / "a.jpg"
    Image.fromarray(_image(5)).save(dup, format="JPEG")
    with pytest.raises(DatasetError, match=re.escape(str(dup))):
        FolderDataset(root, "train", num_classes=9)


def test_size_mismatch_gives_both_sizes(tmp_path: Path) -> None:
    image = _write(tmp_path / "images" / "train" / "a.png", _image(0, 8, 8))
    mask = _write(tmp_path / "masks" / "train" / "a.png", _mask(0, 6, 8))
    ds = FolderDataset(tmp_path, "train", num_classes=9)
    with _raises(mask, "6x8", str(image), "8x8"):
        ds[0]


def test_rgb_mask_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "images" / "train" / "a.png", _image(0))
    mask = _write(tmp_path / "masks" / "train" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with _raises(mask, "'RGB'", "single-channel"):
        FolderDataset(tmp_path, "train", num_classes=9)[0]


def test_truncated_and_corrupt_files(tmp_path: Path) -> None:
    image = _write(tmp_path / "images" / "train" / "a.png", _image(0, 32, 32))
    mask = _write(tmp_path / "masks" / "train" / "a.png", _mask(0, 32, 32))
    good_image, good_mask = image.read_bytes(), mask.read_bytes()
    ds = FolderDataset(tmp_path, "train", num_classes=9)

    image.write_bytes(good_image[: len(good_image) // 2])
    with _raises(image, "cannot read image"):
        ds[0]
    image.write_bytes(good_image)
    mask.write_bytes(good_mask[: len(good_mask) // 2])
    with _raises(mask, "cannot read mask"):
        ds[0]
    mask.write_bytes(b"this is not a png file at all")
    with _raises(mask, "cannot read mask"):
        ds[0]
    mask.write_bytes(good_mask)
    assert ds[0]["mask"].shape == (32, 32)


def test_transform_contract(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    calls = []

    def transform(image: np.ndarray, mask: np.ndarray) -> dict:
        calls.append((image.shape, image.dtype, mask.shape, mask.dtype))
        img = torch.from_numpy(image[:4, :4]).permute(2, 0, 1).float() * 2.0
        return {"image": img, "mask": mask[:4, :4]}  # mask left as a uint8 array

    item = FolderDataset(root, "train", num_classes=9, transform=transform)[1]  # "b", seed 0
    assert calls == [((8, 8, 3), np.uint8, (8, 8), np.uint8)]
    assert item["image"].shape == (3, 4, 4) and item["image"].dtype == torch.float32
    assert torch.equal(item["image"][:, 1, 2], torch.from_numpy(_image(0)[1, 2]).float() * 2.0)
    assert item["mask"].dtype == torch.int64
    assert torch.equal(item["mask"], torch.from_numpy(_mask(0)[:4, :4]).long())

    def numpy_transform(image: np.ndarray, mask: np.ndarray) -> dict:
        return {"image": image, "mask": mask}

    with pytest.raises(TypeError, match="ToTensorV2"):
        FolderDataset(root, "train", num_classes=9, transform=numpy_transform)[0]


def test_bad_arguments(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    with pytest.raises(ValueError, match="ignore_index=3"):
        FolderDataset(root, "train", num_classes=9, ignore_index=3)
    with pytest.raises(ValueError, match="num_classes=0"):
        FolderDataset(root, "train", num_classes=0)
    with pytest.raises(ValueError, match="ignore_index=300"):
        FolderDataset(root, "train", num_classes=9, ignore_index=300)
