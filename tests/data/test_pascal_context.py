"""Tests of PASCAL-Context preparation (from a tiny trainval_merged.json) and the dataset."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from picoseg.data import DatasetError, PascalContextDataset
from picoseg.data.pascal_context import PASCAL_CONTEXT_CLASSES, prepare_pascal_context

mask_api = pytest.importorskip("pycocotools.mask")

H, W = 6, 8
REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "conf" / "dataset" / "pascal_context.yaml"
# The 59 classes' category ids in the official 459-category table (alphabetical there too).
REAL_IDS = (2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104,
            105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295,
            296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427,
            440, 445, 454, 458)  # fmt: skip
CATEGORY_IDS = dict(zip(PASCAL_CONTEXT_CLASSES, REAL_IDS, strict=True))
CAT, SKY, PERSON, WOOD = (CATEGORY_IDS[n] for n in ("cat", "sky", "person", "wood"))
ACCORDION = 1  # not one of the 59: must become 255


def _rle(region: np.ndarray) -> dict:
    rle = mask_api.encode(np.asfortranarray(region.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _box(rows: slice, cols: slice) -> np.ndarray:
    region = np.zeros((H, W), dtype=bool)
    region[rows, cols] = True
    return region


def _annotations() -> dict:
    categories = [{"category_id": ACCORDION, "name": "accordion", "supercategory": "object"}]
    categories += [
        {"category_id": i, "name": n, "supercategory": "object"}
        for i, n in zip(REAL_IDS, PASCAL_CONTEXT_CLASSES, strict=True)
    ]
    images = [
        {"image_id": 2008000002, "file_name": "2008_000002.jpg", "height": H, "width": W,
         "phase": "train"},
        {"image_id": 2008000003, "file_name": "2008_000003.jpg", "height": H, "width": W,
         "phase": "val"},
        {"image_id": 2008000001, "file_name": "2008_000001.jpg", "height": H, "width": W,
         "phase": "train"},
    ]  # fmt: skip
    annos = [
        {"id": 1, "image_id": 2008000002, "category_id": CAT, "segmentation": _rle(_box(
            slice(0, 3), slice(0, 4)))},
        # an unrelated category painted over part of the cat: ignored there
        {"id": 2, "image_id": 2008000002, "category_id": ACCORDION, "segmentation": _rle(_box(
            slice(1, 4), slice(2, 6)))},
        # polygon (pixel-corner coordinates): rows 4..5, all columns
        {"id": 3, "image_id": 2008000002, "category_id": SKY,
         "segmentation": [[0, 4, 8, 4, 8, 6, 0, 6]]},
        # uncompressed RLE (column-major runs): the last column
        {"id": 4, "image_id": 2008000002, "category_id": WOOD,
         "segmentation": {"size": [H, W], "counts": [H * (W - 1), H]}},
        {"id": 5, "image_id": 2008000003, "category_id": PERSON, "segmentation": _rle(_box(
            slice(2, 5), slice(1, 3)))},
    ]  # fmt: skip
    return {"images": images, "categories": categories, "annos_segmentation": annos}


def _expected(name: str) -> np.ndarray:
    """The masks by hand: 255 where nothing of the 59 classes is annotated."""
    mask = np.full((H, W), 255, dtype=np.uint8)
    if name == "2008_000002":
        mask[0:3, 0:4] = 14  # cat
        mask[1:4, 2:6] = 255  # accordion over it
        mask[4:6, :] = 46  # sky polygon
        mask[:, W - 1] = 58  # wood
    elif name == "2008_000003":
        mask[2:5, 1:3] = 36  # person
    return mask


def _tree(root: Path, annotations: dict | None = None) -> Path:
    """``root/VOCdevkit/VOC2010`` with three JPEGs and trainval_merged.json; returns VOC2010."""
    base = root / "VOCdevkit" / "VOC2010"
    (base / "JPEGImages").mkdir(parents=True)
    for i, name in enumerate(("2008_000001", "2008_000002", "2008_000003")):
        image = np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg")
    data = _annotations() if annotations is None else annotations
    (base / "trainval_merged.json").write_text(json.dumps(data))
    return base


def test_class_names_match_config() -> None:
    assert len(PASCAL_CONTEXT_CLASSES) == 59 == len(set(PASCAL_CONTEXT_CLASSES))
    assert PASCAL_CONTEXT_CLASSES[:3] == ("aeroplane", "bag", "bed")
    assert PASCAL_CONTEXT_CLASSES[14] == "cat" and PASCAL_CONTEXT_CLASSES[58] == "wood"
    assert list(PASCAL_CONTEXT_CLASSES) == sorted(PASCAL_CONTEXT_CLASSES)
    config = OmegaConf.load(CONFIG)
    assert list(config.class_names) == list(PASCAL_CONTEXT_CLASSES)
    assert config.num_classes == 59 and list(config.datamodule.crop_size) == [480, 480]
    assert len({tuple(c) for c in config.palette}) == 59


def test_prepare_writes_hand_computed_masks_and_splits(tmp_path: Path) -> None:
    base = _tree(tmp_path)
    assert prepare_pascal_context(tmp_path) == {"train": 2, "val": 1}
    lists = base / "ImageSets" / "SegmentationContext"
    assert (lists / "train.txt").read_text() == "2008_000001\n2008_000002\n"
    assert (lists / "val.txt").read_text() == "2008_000003\n"
    for name in ("2008_000001", "2008_000002", "2008_000003"):
        with Image.open(base / "SegmentationClassContext" / f"{name}.png") as im:
            assert im.mode == "L"
            np.testing.assert_array_equal(np.array(im), _expected(name), err_msg=name)


def test_dataset_reads_prepared_split_and_loads(tmp_path: Path) -> None:
    base = _tree(tmp_path)
    prepare_pascal_context(base, base / "trainval_merged.json")  # root = VOC2010 itself
    ds = PascalContextDataset(tmp_path, "train")
    assert len(ds) == 2 and ds.names == ["2008_000001", "2008_000002"]
    assert ds.num_classes == 59 and ds.ignore_index == 255
    item = ds[1]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, H, W)
    assert torch.equal(item["mask"], torch.from_numpy(_expected("2008_000002")).long())
    val = PascalContextDataset(base, "val")
    assert val.names == ["2008_000003"]
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, H, W) and batch["mask"].shape == (2, H, W)
    assert batch["mask"].dtype == torch.int64 and batch["name"] == ds.names


def test_script_defaults_to_json_in_voc2010(tmp_path: Path, capsys, load_script) -> None:
    base = _tree(tmp_path)
    script = load_script("prepare_pascal_context")
    assert script.main(["--root", str(tmp_path)]) == 0
    assert "3 masks" in capsys.readouterr().out
    with Image.open(base / "SegmentationClassContext" / "2008_000003.png") as im:
        np.testing.assert_array_equal(np.array(im), _expected("2008_000003"))
    assert script.main(["--root", str(tmp_path / "nope")]) == 1
    assert str(tmp_path / "nope") in capsys.readouterr().err


def test_missing_pycocotools_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    _tree(tmp_path)
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    with pytest.raises(ImportError, match="pycocotools") as info:
        prepare_pascal_context(tmp_path)
    assert "pip install pycocotools" in str(info.value)
    assert not (tmp_path / "VOCdevkit/VOC2010/SegmentationClassContext").exists()


def test_bad_annotation_files(tmp_path: Path) -> None:
    data = _annotations()
    data["categories"] = [c for c in data["categories"] if c["name"] != "tvmonitor"]
    base = _tree(tmp_path / "a", data)
    with pytest.raises(DatasetError, match="tvmonitor") as info:
        prepare_pascal_context(base)
    assert str(base / "trainval_merged.json") in str(info.value)
    data = _annotations()
    data["annos_segmentation"][0]["segmentation"] = _rle(np.zeros((H + 1, W), dtype=bool))
    base = _tree(tmp_path / "b", data)
    with pytest.raises(DatasetError, match="2008_000002") as info:
        prepare_pascal_context(base)
    assert f"{H}x{W}" in str(info.value)
    data = _annotations()
    data["annos_segmentation"][0]["category_id"] = 999
    with pytest.raises(DatasetError, match="category_id 999"):
        prepare_pascal_context(_tree(tmp_path / "c", data))
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "d.json"))):
        prepare_pascal_context(base, tmp_path / "d.json")


def test_missing_root_masks_and_empty_split(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        PascalContextDataset(missing, "train")
    base = _tree(tmp_path)
    with pytest.raises(DatasetError, match=re.escape(str(base / "SegmentationClassContext"))) as e:
        PascalContextDataset(tmp_path, "train")
    assert f"python scripts/prepare_pascal_context.py --root {tmp_path}" in str(e.value)
    prepare_pascal_context(tmp_path)
    split = base / "ImageSets" / "SegmentationContext" / "val.txt"
    split.write_text("\n")
    with pytest.raises(DatasetError, match=re.escape(str(split))) as e:
        PascalContextDataset(tmp_path, "val")
    assert "lists no images" in str(e.value)
    with pytest.raises(DatasetError, match="prepare_pascal_context.py"):
        PascalContextDataset(tmp_path, "test")  # no such split list
    mask = base / "SegmentationClassContext" / "2008_000001.png"
    mask.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(mask))):
        PascalContextDataset(tmp_path, "train")


@pytest.mark.parametrize("bad_id", [59, 254])
def test_label_id_out_of_range_names_file(tmp_path: Path, bad_id: int) -> None:
    _tree(tmp_path)
    prepare_pascal_context(tmp_path)
    ds = PascalContextDataset(tmp_path, "train")
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[0, 0] = bad_id
    labels[1, 1] = 255
    Image.fromarray(labels).save(ds.mask_paths[0])
    with pytest.raises(DatasetError, match=re.escape(str(ds.mask_paths[0]))) as info:
        ds[0]
    assert f"[{bad_id}]" in str(info.value)
    assert torch.equal(ds[1]["mask"], torch.from_numpy(_expected("2008_000002")).long())
