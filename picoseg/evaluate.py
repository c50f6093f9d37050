"""Evaluate a checkpoint on its validation split: ``python -m picoseg.evaluate ckpt_path=PATH``.

The model and dataset are rebuilt from the run configuration stored in the checkpoint, so the
training overrides need not be repeated. Prints the per-class IoU table and writes, into the run
directory, ``per_class_iou.csv``, ``metrics.json``, ``confusion_matrix.csv`` and ``.png``
(row-normalised, rows = ground truth) and ``val_predictions.png``. The ``inference`` node
chooses whole-image or sliding-window prediction, scales and flips
(:func:`picoseg.inference.predict_probabilities`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from picoseg.checkpoint import load_checkpoint
from picoseg.inference import inference_settings, predict_probabilities
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
        probs = predict_probabilities(
            model.network, batch["image"].to(device), **(model.inference or {})
        )
        for i in range(batch["image"].shape[0]):
            images.append(denormalize(batch["image"][i].numpy(), datamodule.mean, datamodule.std))
            labels.append(batch["mask"][i].numpy())
            preds.append(probs[i].argmax(0).cpu().numpy().astype(np.uint8))
            if len(images) == num_images:
                break
        if len(images) == num_images:
            break
    return save_prediction_grid(path, images, labels, preds, palette, model.class_names)


def load_run(
    ckpt_path: str | Path, dataset_cfg: DictConfig | None = None
) -> tuple[DictConfig, SegmentationSystem]:
    """Rebuild the run configuration and the trained system stored in a picoseg checkpoint.

    The file is opened weights-only (:func:`picoseg.checkpoint.load_checkpoint`): a file holding
    anything but tensors and plain containers is refused before it is unpickled.

    Args:
        ckpt_path: a checkpoint written by ``picoseg.train`` (it holds ``picoseg_config``).
        dataset_cfg: another dataset node with the same number of classes, replacing the
            stored one; ``None`` keeps the training dataset.

    The backbone is rebuilt without its pretrained weights (the checkpoint holds the trained
    ones), so no download or weights package is needed. A replacement dataset that does not set
    the input normalisation gets the one the model was trained with.

    Returns:
        The run configuration (with ``dataset`` replaced if asked, and ``train_crop_size``: the
        (H, W) crop the network was trained on, the default sliding window) and the system with
        its trained weights, in eval mode on the CPU.
    """
    ckpt_path = Path(ckpt_path)
    checkpoint = load_checkpoint(ckpt_path)
    run_cfg = OmegaConf.create(checkpoint["picoseg_config"])
    crop_size = run_cfg.dataset.datamodule.get("crop_size")
    with open_dict(run_cfg):
        run_cfg.train_crop_size = None if crop_size is None else [int(v) for v in crop_size]
    if dataset_cfg is not None:
        if dataset_cfg.num_classes != run_cfg.dataset.num_classes:
            raise ValueError(
                f"dataset {dataset_cfg.name} has {dataset_cfg.num_classes} classes, the model in "
                f"{ckpt_path} was trained for {run_cfg.dataset.num_classes}"
            )
        trained = run_cfg.dataset.datamodule
        normalization = {k: trained[k] for k in ("mean", "std") if trained.get(k) is not None}
        run_cfg.dataset = dataset_cfg
        with open_dict(run_cfg):
            for key, value in normalization.items():
                if run_cfg.dataset.datamodule.get(key) is None:
                    run_cfg.dataset.datamodule[key] = value
    backbone = run_cfg.model.network.backbone
    backbone.pretrained, backbone.weights_path = False, None
    model: SegmentationSystem = instantiate(run_cfg.model)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return run_cfg, model


def pick_device(cfg: DictConfig) -> torch.device:
    """The entry point's ``device`` (``cpu``, ``cuda``, ``cuda:1``, ...); unset or ``null``:
    the GPU when there is one."""
    name = cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild the run of ``cfg.ckpt_path``, validate it and write the report."""
    run_cfg, model = load_run(cfg.ckpt_path, cfg.get("dataset"))
    model.inference = inference_settings(cfg.get("inference"), run_cfg.train_crop_size)
    datamodule = instantiate(run_cfg.dataset.datamodule)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    trainer.validate(model, datamodule=datamodule)
    output_dir = cfg.get("output") or cfg.paths.output_dir
    return write_report(model, datamodule, run_cfg.dataset, output_dir, cfg.num_visualize)


@hydra.main(version_base="1.3", config_path="pkg://picoseg.conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    return evaluate(cfg)["miou"]


if __name__ == "__main__":
    main()
