"""curves.png from the CSV log, and the learning rate logged for every parameter group."""

from __future__ import annotations

import csv
import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch.utils.data import DataLoader

from picoseg.curves import plot_curves, read_metrics
from picoseg.models import Backbone, Segmentor
from picoseg.models.heads import FCNHead
from picoseg.system import SegmentationSystem

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning")


def _write_csv(path, rows):
    keys = sorted({k for row in rows for k in row})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def test_read_metrics_keeps_each_column_s_steps_and_skips_empty_cells(tmp_path):
    path = tmp_path / "metrics.csv"
    _write_csv(
        path,
        [
            {"epoch": 0, "step": 0, "train/loss": 2.0, "train/lr": 0.1},
            {"epoch": 0, "step": 1, "train/loss": 1.5, "train/lr": 0.05},
            {"epoch": 0, "step": 1, "val/miou": 0.25},
        ],
    )
    series = read_metrics(path)
    assert series == {
        "train/loss": [(0, 2.0), (1, 1.5)],
        "train/lr": [(0, 0.1), (1, 0.05)],
        "val/miou": [(1, 0.25)],
    }
    panels = plot_curves(path, tmp_path / "curves.png")
    assert panels == ["losses", "validation mIoU", "learning rate"]
    with Image.open(tmp_path / "curves.png") as image:
        assert image.size[0] > image.size[1] > 100  # three panels side by side
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="bad.csv"):
        read_metrics(tmp_path / "bad.csv")
    _write_csv(tmp_path / "empty.csv", [{"epoch": 0, "step": 0, "other": 1.0}])
    assert plot_curves(tmp_path / "empty.csv", tmp_path / "none.png") == []
    assert not (tmp_path / "none.png").exists()


def test_every_parameter_group_s_rate_is_logged_and_drawn(tmp_path):
    torch.manual_seed(0)
    network = Segmentor(Backbone("resnet18"), functools.partial(FCNHead, channels=8), 3)
    system = SegmentationSystem(
        network,
        3,
        ["a", "b", "c"],
        functools.partial(torch.optim.SGD, lr=0.1),
        backbone_lr_mult=0.1,
    )
    items = [
        {"image": torch.randn(3, 32, 32), "mask": torch.randint(0, 3, (32, 32))} for _ in range(4)
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=CSVLogger(tmp_path, name="csv", version=""),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(system, train_dataloaders=DataLoader(items, batch_size=2))
    series = read_metrics(tmp_path / "csv" / "metrics.csv")
    backbone = [value for _, value in series["train/lr/backbone"]]
    rest = [value for _, value in series["train/lr/rest"]]
    assert backbone == pytest.approx([0.01, 0.01]) and rest == pytest.approx([0.1, 0.1])
    assert [value for _, value in series["train/lr"]] == rest  # the last group, as before
    panels = plot_curves(tmp_path / "csv" / "metrics.csv", tmp_path / "curves.png")
    assert panels == ["losses", "learning rate"]
