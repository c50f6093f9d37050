"""The report of a validated run: the per-class IoU table (printed and ``per_class_iou.csv``),
``metrics.json``, the row-normalised confusion matrix (``confusion_matrix.csv`` and ``.png``) and
a picture of a few predictions (``val_predictions.png``). Training writes it at the end of a run,
evaluation for a checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from omegaconf import DictConfig

from picoseg.inference import predict_labels
from picoseg.metrics import (
    format_iou_table,
    normalize_confusion,
    save_confusion_csv,
    save_iou_csv,
)
from picoseg.system import SegmentationSystem
from picoseg.visualize import (
    default_palette,
    denormalize,
    save_confusion_png,
    save_prediction_grid,
)

__all__ = ["draw_predictions", "write_report"]

log = logging.getLogger(__name__)


def write_report(
    model: SegmentationSystem,
    datamodule: L.LightningDataModule,
    dataset_cfg: DictConfig | dict,
    output_dir: str | Path,
    num_visualize: int = 4,
) -> dict[str, Any]:
    """Print and save the last validation scores of ``model``, and draw a few predictions.

    Returns:
        The metrics written to ``metrics.json`` (fractions; per-class IoU by name, ``None`` where
        undefined).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    scores = model.last_val_scores
    names = model.class_names
    print(format_iou_table(names, scores))
    save_iou_csv(output_dir / "per_class_iou.csv", names, scores)
    if "confusion" in scores:
        save_confusion_csv(output_dir / "confusion_matrix.csv", names, scores["confusion"])
        normalized = normalize_confusion(scores["confusion"]).numpy()
        save_confusion_png(output_dir / "confusion_matrix.png", normalized, names)
    metrics = {
        "miou": float(scores["miou"]),
        "accuracy": float(scores["accuracy"]),
        "mean_accuracy": float(scores["mean_accuracy"]),
        "iou": {
            n: (None if v != v else v) for n, v in zip(names, scores["iou"].tolist(), strict=True)
        },
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if num_visualize > 0:
        palette = dataset_cfg.get("palette") or default_palette(len(names))
        path = draw_predictions(
            model, datamodule, palette, output_dir / "val_predictions.png", num_visualize
        )
        log.info("predictions drawn to %s", path)
    return metrics


def draw_predictions(
    model: SegmentationSystem,
    datamodule: L.LightningDataModule,
    palette: list,
    path: Path,
    num_images: int = 4,
) -> Path:
    """Image | ground truth | prediction for the first ``num_images`` validation images."""
    images, labels, preds = [], [], []
    model.eval()
    device = next(model.parameters()).device
    for batch in datamodule.val_dataloader():
        predicted = predict_labels(
            model.network, batch["image"].to(device), **(model.inference or {})
        )
        for i in range(batch["image"].shape[0]):
            images.append(denormalize(batch["image"][i].numpy(), datamodule.mean, datamodule.std))
            labels.append(batch["mask"][i].numpy())
            preds.append(predicted[i].cpu().numpy().astype(np.uint8))
            if len(images) == num_images:
                break
        if len(images) == num_images:
            break
    return save_prediction_grid(path, images, labels, preds, palette, model.class_names)
