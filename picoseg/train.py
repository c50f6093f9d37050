"""Train a segmentation model: ``python -m picoseg.train [group=option ...] [key=value ...]``.

The run directory (``outputs/train/runs/<time>`` by default) receives the checkpoints
(``checkpoints/best.ckpt`` and ``last.ckpt``), the logs, and after training the best
checkpoint's ``per_class_iou.csv``, ``metrics.json`` and ``val_predictions.png``.
Returns the best validation mIoU, so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from picoseg.config import drop_disabled_settings
from picoseg.evaluate import write_report
from picoseg.system import SegmentationSystem

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, validate the best checkpoint and (on rank 0) write the report.

    Returns:
        The validation metrics of the best checkpoint (``miou``, ``accuracy``, per-class ``iou``).
    """
    for key in drop_disabled_settings(cfg):
        log.info("%s is switched off: its settings from the experiment are not used", key)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = instantiate(cfg.dataset.datamodule)
    model: SegmentationSystem = instantiate(cfg.model)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    model.run_config = run_config
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    loggers = [instantiate(c) for c in cfg.get("logger", {}).values() if c is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(run_config)

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.validate(model, datamodule=datamodule, ckpt_path=best or None)
    metrics: dict[str, Any] = {"miou": float(model.last_val_scores["miou"])}
    if trainer.is_global_zero and cfg.get("report", True):
        log.info("best checkpoint: %s", best or "(none: last weights)")
        metrics = write_report(model, datamodule, cfg.dataset, cfg.paths.output_dir)
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return train(cfg)["miou"]


if __name__ == "__main__":
    main()
