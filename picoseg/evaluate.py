"""Evaluate a checkpoint on its validation split: ``python -m picoseg.evaluate ckpt_path=PATH``.

The model and dataset are rebuilt from the run configuration stored in the checkpoint, so the
training overrides need not be repeated. Prints the per-class IoU table and writes, into the run
directory, ``per_class_iou.csv``, ``metrics.json``, ``confusion_matrix.csv`` and ``.png``
(row-normalised, rows = ground truth) and ``val_predictions.png``. The ``inference`` node
chooses whole-image or sliding-window prediction, scales and flips
(:func:`picoseg.inference.predict_probabilities`).
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from picoseg.checkpoint import load_run
from picoseg.inference import pick_device
from picoseg.report import draw_predictions, write_report

# Importable from here as before; they live in picoseg.checkpoint, .inference and .report.
__all__ = ["draw_predictions", "evaluate", "load_run", "pick_device", "write_report"]

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild the run of ``cfg.ckpt_path``, validate it and write the report."""
    run_cfg, model = load_run(cfg.ckpt_path, cfg.get("dataset"), cfg.get("inference"))
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
