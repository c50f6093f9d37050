"""Segmentation metrics from a confusion matrix, and the per-class table."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


def confusion_metric(num_classes: int, ignore_index: int = 255) -> MulticlassConfusionMatrix:
    """A torchmetrics confusion matrix (rows: ground truth, columns: prediction) that skips
    ``ignore_index`` pixels and synchronises across DDP ranks."""
    return MulticlassConfusionMatrix(
        num_classes=num_classes, ignore_index=ignore_index, validate_args=False
    )


def iou_from_confusion(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scores from a (C, C) confusion matrix with rows = ground truth, columns = prediction.

    IoU_c = TP_c / (TP_c + FP_c + FN_c). A class that appears neither in the ground truth nor in
    the predictions has no IoU (NaN) and is left out of the mean, the usual convention of
    Cityscapes-style evaluation; a class predicted but absent from the ground truth scores 0.

    Returns:
        ``iou`` (C,), ``miou`` (scalar, mean over classes with a defined IoU), ``accuracy``
        (overall pixel accuracy), ``class_accuracy`` (C,) recall per class (NaN when the class is
        absent from the ground truth) and ``mean_accuracy``.
    """
    confusion = confusion.double()
    tp = confusion.diagonal()
    gt = confusion.sum(dim=1)
    pred = confusion.sum(dim=0)
    union = gt + pred - tp
    nan = torch.tensor(float("nan"), dtype=confusion.dtype, device=confusion.device)
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    class_accuracy = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
    return {
        "iou": iou.float(),
        "miou": iou.nanmean().float(),
        "accuracy": (tp.sum() / confusion.sum().clamp_min(1)).float(),
        "class_accuracy": class_accuracy.float(),
        "mean_accuracy": class_accuracy.nanmean().float(),
    }


def format_iou_table(class_names: Sequence[str], scores: dict[str, torch.Tensor]) -> str:
    """A plain-text table of per-class IoU and accuracy (in %) with the means at the bottom."""
    width = max(12, *(len(n) for n in class_names))
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]
    for name, iou, acc in zip(
        class_names, scores["iou"].tolist(), scores["class_accuracy"].tolist(), strict=True
    ):
        lines.append(f"{name:<{width}}  {_pct(iou)}  {_pct(acc)}")
    lines.append("-" * (width + 16))
    lines.append(f"{'mean':<{width}}  {_pct(scores['miou'])}  {_pct(scores['mean_accuracy'])}")
    lines.append(f"{'pixel acc':<{width}}  {_pct(scores['accuracy'])}")
    return "\n".join(lines)


def save_iou_csv(path: str | Path, class_names: Sequence[str], scores: dict) -> None:
    """Write ``class,iou,accuracy`` rows (fractions, empty when undefined) plus a ``mean`` row."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "iou", "accuracy"])
        rows = zip(
            class_names, scores["iou"].tolist(), scores["class_accuracy"].tolist(), strict=True
        )
        for name, iou, acc in rows:
            writer.writerow([name, _num(iou), _num(acc)])
        writer.writerow(["mean", _num(float(scores["miou"])), _num(float(scores["mean_accuracy"]))])


def normalize_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Row-normalise a (C, C) confusion matrix (rows: ground truth, columns: prediction).

    Returns:
        (C, C) float64: row ``c`` is the distribution of predictions for ground-truth class ``c``
        (sums to 1), NaN for a class absent from the ground truth.
    """
    confusion = confusion.double()
    totals = confusion.sum(dim=1, keepdim=True)
    return torch.where(totals > 0, confusion / totals.clamp_min(1), float("nan"))


def save_confusion_csv(
    path: str | Path, class_names: Sequence[str], confusion: torch.Tensor
) -> None:
    """Write the row-normalised (C, C) confusion matrix: a header ``ground_truth,<classes>``
    then one row per ground-truth class (fractions; empty when the class is absent)."""
    if confusion.shape != (len(class_names), len(class_names)):
        raise ValueError(
            f"{path}: confusion matrix of shape {tuple(confusion.shape)} does not match "
            f"{len(class_names)} class names"
        )
    normalized = normalize_confusion(confusion)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ground_truth", *class_names])
        for name, row in zip(class_names, normalized.tolist(), strict=True):
            writer.writerow([name, *(_num(v) for v in row)])


def _pct(value: float | torch.Tensor) -> str:
    value = float(value)
    return f"{'n/a':>6}" if value != value else f"{100 * value:6.2f}"


def _num(value: float) -> str:
    return "" if value != value else f"{value:.6f}"
