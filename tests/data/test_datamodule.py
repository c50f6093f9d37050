"""Tests of the segmentation data module and of the dataset configs."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from picoseg.data import FolderDataset, SegmentationDataModule
from picoseg.data.resumable import EpochSampler
from picoseg.data.scenes import ensure_scenes_dataset

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"
SIZE = {"height": 48, "width": 64}


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated scenes tree: 5 train and 3 val images of 48x64."""
    return ensure_scenes_dataset(
        tmp_path_factory.mktemp("scenes"), num_train=5, num_val=3, seed=0, **SIZE
    )


def _module(root: Path, **kwargs: object) -> SegmentationDataModule:
    defaults: dict = {"crop_size": [32, 40], "batch_size": 2, "val_batch_size": 2, "num_workers": 0}
    factory = functools.partial(FolderDataset, root=root, num_classes=9, ignore_index=255)
    return SegmentationDataModule(factory, **{**defaults, **kwargs})


def test_train_batches_are_crops(scenes_root: Path) -> None:
    dm = _module(scenes_root)
    dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # 5 images, batch 2, last incomplete batch dropped
    names = []
    for batch in batches:
        assert batch["image"].shape == (2, 3, 32, 40) and batch["image"].dtype == torch.float32
        assert batch["mask"].shape == (2, 32, 40) and batch["mask"].dtype == torch.int64
        mask = batch["mask"]
        assert bool((((mask >= 0) & (mask < 9)) | (mask == 255)).all())
        assert isinstance(batch["name"], list) and all(isinstance(n, str) for n in batch["name"])
        names += batch["name"]
    assert len(set(names)) == 4
    assert set(names) <= {f"scene_{i:05d}" for i in range(5)}


def test_val_batches_are_full_images_in_order(scenes_root: Path) -> None:
    dm = _module(scenes_root)
    dm.setup("validate")
    assert dm.train_dataset is None
    batches = list(dm.val_dataloader())
    assert [b["name"] for b in batches] == [["scene_00000", "scene_00001"], ["scene_00002"]]
    assert batches[0]["image"].shape == (2, 3, 48, 64)
    assert batches[0]["mask"].shape == (2, 48, 64)
    # Full images, normalised only: the mask is the file's content.
    with Image.open(scenes_root / "masks" / "val" / "scene_00001.png") as mk:
        expected = torch.from_numpy(np.asarray(mk).copy()).long()
    assert torch.equal(batches[0]["mask"][1], expected)


def test_prepare_is_called_by_prepare_data(tmp_path: Path) -> None:
    root = tmp_path / "gen"
    calls = []

    def prepare() -> None:
        calls.append(1)
        ensure_scenes_dataset(root, num_train=2, num_val=1, **SIZE)

    dm = _module(root, prepare=prepare)
    assert calls == [] and not root.exists()  # nothing happens at construction
    dm.prepare_data()
    assert calls == [1]
    dm.setup("fit")
    assert len(dm.train_dataset) == 2 and len(dm.val_dataset) == 1


def test_loader_settings(scenes_root: Path) -> None:
    dm = _module(scenes_root, num_workers=2)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.drop_last and not val.drop_last
    assert train.persistent_workers and val.persistent_workers
    assert isinstance(train.sampler, EpochSampler) and train.sampler.shuffle
    assert isinstance(val.sampler, torch.utils.data.SequentialSampler)
    dm0 = _module(scenes_root)
    dm0.setup("fit")
    assert not dm0.train_dataloader().persistent_workers


def test_workers_draw_different_augmentations(tmp_path: Path) -> None:
    # Two identical images: without per-worker reseeding, both workers would crop them alike.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for split in ("train", "val"):
        images, masks = tmp_path / "images" / split, tmp_path / "masks" / split
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for name in ("a", "b"):
            Image.fromarray(image).save(images / f"{name}.png")
            Image.fromarray(np.zeros((40, 40), np.uint8)).save(masks / f"{name}.png")
    dm = _module(tmp_path, crop_size=[16, 16], batch_size=1, num_workers=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    first, second = list(loader)
    assert not torch.equal(first["image"], second["image"])


def test_too_small_train_split_is_an_error(scenes_root: Path) -> None:
    dm = _module(scenes_root, batch_size=6)
    with pytest.raises(ValueError, match="batch_size=6"):
        dm.setup("fit")


def test_dataloader_before_setup_is_an_error(scenes_root: Path) -> None:
    with pytest.raises(RuntimeError, match="setup"):
        _module(scenes_root).train_dataloader()


def test_scenes_config_instantiates(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}})
    cfg.dataset = OmegaConf.load(CONF / "scenes.yaml")
    assert cfg.dataset.root == f"{tmp_path}/scenes"
    assert cfg.dataset.num_classes == len(cfg.dataset.class_names) == len(cfg.dataset.palette)
    assert list(cfg.dataset.palette[6]) == [220, 220, 0]
    cfg.dataset.datamodule.prepare.num_train = 2
    cfg.dataset.datamodule.prepare.num_val = 1
    cfg.dataset.datamodule.prepare.height = 48
    cfg.dataset.datamodule.prepare.width = 64
    cfg.dataset.datamodule.num_workers = 0
    cfg.dataset.datamodule.batch_size = 2
    dm = instantiate(cfg.dataset.datamodule)
    assert isinstance(dm, SegmentationDataModule)
    assert dm.crop_size == (128, 128)
    dm.prepare_data()
    assert (tmp_path / "scenes" / "scenes.json").is_file()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 128, 128)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 3, 48, 64)


def test_folder_config_needs_root_and_instantiates(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"paths": {"data_dir": "unused"}})
    cfg.dataset = OmegaConf.load(CONF / "folder.yaml")
    for key in ("root", "num_classes", "class_names"):
        assert OmegaConf.is_missing(cfg.dataset, key)
    assert cfg.dataset.palette is None and cfg.dataset.datamodule.prepare is None
    for split in ("train", "val"):
        for i in range(2):
            for sub, array in (
                ("images", np.full((20, 24, 3), 40 * i, np.uint8)),
                ("masks", np.full((20, 24), i, np.uint8)),
            ):
                (tmp_path / sub / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(tmp_path / sub / split / f"x{i}.png")
    cfg.dataset.root = str(tmp_path)
    cfg.dataset.num_classes = 2
    cfg.dataset.class_names = ["a", "b"]
    cfg.dataset.datamodule.crop_size = [16, 16]
    cfg.dataset.datamodule.batch_size = 2
    cfg.dataset.datamodule.num_workers = 0
    dm = instantiate(cfg.dataset.datamodule)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16)
    val = list(dm.val_dataloader())
    assert len(val) == 2 and val[1]["mask"].shape == (1, 20, 24)
    assert bool((val[1]["mask"] == 1).all())
