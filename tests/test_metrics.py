import math

import pytest
import torch

from picoseg.metrics import (
    confusion_metric,
    format_iou_table,
    iou_from_confusion,
    normalize_confusion,
    save_confusion_csv,
    save_iou_csv,
)
from picoseg.visualize import save_confusion_png


def test_iou_from_hand_made_confusion_with_ignore_pixels():
    # 3 classes + ignore (255). Ground truth / prediction, pixel by pixel:
    labels = torch.tensor([[0, 0, 0, 1, 1, 255, 255, 2]])
    preds = torch.tensor([[0, 0, 1, 1, 0, 2, 2, 1]])
    metric = confusion_metric(num_classes=3, ignore_index=255)
    metric.update(preds, labels)
    confusion = metric.compute()
    # rows: truth, cols: prediction; the two ignore pixels are not counted
    expected = torch.tensor([[2, 1, 0], [1, 1, 0], [0, 1, 0]])
    assert torch.equal(confusion, expected)
    scores = iou_from_confusion(confusion)
    # class 0: tp 2, fp 1, fn 1 -> 2/4; class 1: tp 1, fp 2, fn 1 -> 1/4; class 2: 0/1
    torch.testing.assert_close(scores["iou"], torch.tensor([0.5, 0.25, 0.0]))
    assert math.isclose(float(scores["miou"]), 0.25, rel_tol=1e-6)
    assert math.isclose(float(scores["accuracy"]), 3 / 6, rel_tol=1e-6)
    torch.testing.assert_close(scores["class_accuracy"], torch.tensor([2 / 3, 0.5, 0.0]))


def test_class_absent_everywhere_is_left_out_of_the_mean(tmp_path):
    confusion = torch.tensor([[3, 1, 0], [0, 4, 0], [0, 0, 0]])
    scores = iou_from_confusion(confusion)
    assert math.isnan(float(scores["iou"][2]))
    assert math.isclose(float(scores["miou"]), (3 / 4 + 4 / 5) / 2, rel_tol=1e-6)
    table = format_iou_table(["road", "car", "sky"], scores)
    assert "n/a" in table.splitlines()[4] and "77.50" in table
    save_iou_csv(tmp_path / "t.csv", ["road", "car", "sky"], scores)
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[0] == "class,iou,accuracy"
    assert rows[1] == "road,0.750000,0.750000"
    assert rows[3] == "sky,,"


def test_confusion_csv_rows_are_normalised_and_absent_classes_empty(tmp_path):
    confusion = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 0, 2]])
    normalized = normalize_confusion(confusion)
    assert normalized[0].tolist() == [0.75, 0.25, 0.0] and normalized[1].isnan().all()
    save_confusion_csv(tmp_path / "c.csv", ["a", "b", "c"], confusion)
    rows = (tmp_path / "c.csv").read_text().splitlines()
    assert rows == [
        "ground_truth,a,b,c",
        "a,0.750000,0.250000,0.000000",
        "b,,,",
        "c,0.500000,0.000000,0.500000",
    ]
    with pytest.raises(ValueError, match="c.csv"):
        save_confusion_csv(tmp_path / "c.csv", ["a", "b"], confusion)
    png = save_confusion_png(tmp_path / "c.png", normalized.numpy(), ["a", "b", "c"])
    assert png.stat().st_size > 0
