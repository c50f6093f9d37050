"""Train a segmentation model: ``python -m picoseg.train [group=option ...] [key=value ...]``.

The run directory (``outputs/train/runs/<time>`` by default) receives the checkpoints
(``checkpoints/best.ckpt`` and ``last.ckpt``), the logs, and after training the best
checkpoint's ``per_class_iou.csv``, ``metrics.json`` and ``val_predictions.png``.
Returns the best validation mIoU, so Hydra sweepers can optimise it.

``ckpt_path=<file>`` resumes a run from a checkpoint, ``ckpt_path=last`` from the most recent
``last.ckpt`` (see :func:`resolve_ckpt_path`): weights, optimiser, scheduler, step, memory bank,
skipped-step count and random states are restored, and the new run directory receives the
continued logs and checkpoints. With ``logger=wandb`` the resumed run logs into the checkpoint's
W&B run (unless ``logger.wandb.id`` is set).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from picoseg.checkpoint import AtomicCheckpointIO, load_checkpoint
from picoseg.curves import plot_curves
from picoseg.inference import inference_settings, is_single_whole_pass
from picoseg.preemption import SaveOnPreemption, clear_preemption, preempted_checkpoint
from picoseg.report import write_report
from picoseg.system import SegmentationSystem
from picoseg.wandb_run import checkpoint_wandb_run_id

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """The checkpoint a run resumes from.

    Args:
        ckpt_path: ``None`` (start afresh), a checkpoint file (or a URL, passed on unchecked), or
            ``"last"``: this run directory's ``checkpoints/last.ckpt`` when it exists (resume in
            place with ``hydra.run.dir=<the old run>``), otherwise the most recently written
            ``*/checkpoints/last.ckpt`` among the run directories next to this one (with the
            default layout: the newest run under ``outputs/train/runs/``).
        output_dir: this run's directory.

    Raises:
        FileNotFoundError: the file does not exist, or ``last`` finds no checkpoint.
    """
    if ckpt_path is None:
        return None
    ckpt_path = str(ckpt_path)
    if "://" in ckpt_path:
        return ckpt_path
    if ckpt_path != "last":
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        return ckpt_path
    run_dir = Path(output_dir)
    own = run_dir / "checkpoints" / "last.ckpt"
    if own.is_file():
        return str(own)
    siblings = list(run_dir.parent.glob("*/checkpoints/last.ckpt"))
    if not siblings:
        raise FileNotFoundError(
            f"ckpt_path=last: neither {own} nor any {run_dir.parent}/*/checkpoints/last.ckpt "
            "exists; give the checkpoint file, or hydra.run.dir=<the run to resume>"
        )
    return str(max(siblings, key=lambda p: p.stat().st_mtime))


def _instantiate_logger(config: DictConfig, ckpt_path: str | None) -> Any:
    """A configured logger; a W&B logger without an ``id`` continues the checkpoint's run."""
    is_wandb = str(config.get("_target_", "")).endswith("WandbLogger")
    if is_wandb and ckpt_path is not None and config.get("id") is None:
        run_id = checkpoint_wandb_run_id(ckpt_path)
        if run_id is not None:
            log.info("resuming W&B run %s, the run of %s", run_id, ckpt_path)
            return instantiate(config, id=run_id)
    return instantiate(config)


def _write_metrics(cfg: DictConfig, trainer: L.Trainer, metrics: dict[str, Any]) -> None:
    if trainer.is_global_zero and cfg.get("report", True):
        output = Path(cfg.paths.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        (output / "metrics.json").write_text(json.dumps({**metrics, "miou": None}, indent=2))


def _report_preempted(cfg: DictConfig, trainer: L.Trainer) -> dict[str, Any]:
    """What a run stopped by SIGTERM reports: no scores, where it stopped and how to go on."""
    message = (
        f"stopped by SIGTERM at step {trainer.global_step} (epoch {trainer.current_epoch}); "
        f"checkpoints/last.ckpt holds the state: run again with hydra.run.dir="
        f"{cfg.paths.output_dir} to resume"
    )
    metrics: dict[str, Any] = {
        "miou": float("nan"),
        "preempted": True,
        "global_step": int(trainer.global_step),
        "note": message,
    }
    _write_metrics(cfg, trainer, metrics)
    return metrics


def _report_without_validation(cfg: DictConfig, trainer: L.Trainer) -> dict[str, Any]:
    """What a run without any validation batch reports: no scores, and why (``metrics.json``
    says ``"validated": false``); the last weights are in ``checkpoints/last.ckpt``."""
    message = (
        f"no validation ran (trainer.limit_val_batches={trainer.limit_val_batches}): no "
        "scores and no best checkpoint; the final weights are checkpoints/last.ckpt"
    )
    log.warning(message)
    metrics: dict[str, Any] = {"miou": float("nan"), "validated": False, "note": message}
    _write_metrics(cfg, trainer, metrics)
    return metrics


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, validate the best checkpoint and (on rank 0) write the report.

    Returns:
        The validation metrics of the best checkpoint (``miou``, ``accuracy``, per-class ``iou``);
        without any validation batch (``trainer.limit_val_batches=0``), ``miou`` NaN and
        ``validated`` False; stopped by SIGTERM (:mod:`picoseg.preemption`), ``miou`` NaN and
        ``preempted`` True (``checkpoints/last.ckpt`` holds the state; the same run directory
        resumes from it without ``ckpt_path``).
    """
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = instantiate(cfg.dataset.datamodule)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    inference = inference_settings(cfg.get("inference"), cfg.dataset.datamodule.get("crop_size"))
    # The run configuration goes in as a plain argument: passed to instantiate, its _target_
    # nodes would be built too. One whole-image pass is the plain forward: keep its logits (and
    # val/ce) in validation.
    build_model = instantiate(cfg.model, _partial_=True)
    model: SegmentationSystem = build_model(
        run_config=run_config, inference=None if is_single_whole_pass(inference) else inference
    )
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    output_dir = Path(cfg.paths.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    callbacks.append(SaveOnPreemption(checkpoint_dir))
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    preempted = preempted_checkpoint(checkpoint_dir) if ckpt_path is None else None
    if preempted is not None:
        ckpt_path = preempted["checkpoint"]
        log.info(
            "this run directory was stopped by SIGTERM at step %d: resuming from its last.ckpt",
            preempted["global_step"],
        )
    if ckpt_path is not None and "://" not in ckpt_path:
        load_checkpoint(ckpt_path)  # weights-only: an unsafe or broken file stops here, clearly
    loggers = [
        _instantiate_logger(c, ckpt_path) for c in cfg.get("logger", {}).values() if c is not None
    ]
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    for logger in loggers:
        logger.log_hyperparams(run_config)

    if ckpt_path is not None:
        log.info("resuming from %s", ckpt_path)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        metrics = _report_preempted(cfg, trainer)
    else:
        if trainer.is_global_zero:
            clear_preemption(checkpoint_dir)
        metrics = _validate_and_report(cfg, trainer, model, datamodule)
    if trainer.is_global_zero and cfg.get("report", True):
        _draw_curves(loggers, output_dir)
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()
    return metrics


def _draw_curves(loggers: list[Any], output_dir: Path) -> None:
    """``curves.png`` from the CSV log, or a line saying why there is none."""
    csv_logs = [Path(lg.log_dir) / "metrics.csv" for lg in loggers if isinstance(lg, CSVLogger)]
    if not csv_logs or not csv_logs[0].is_file():
        log.info("no curves.png: it is drawn from the csv logger's metrics.csv (logger=csv)")
        return
    panels = plot_curves(csv_logs[0], output_dir / "curves.png")
    log.info(
        "curves (%s) drawn to %s", ", ".join(panels) or "none logged", output_dir / "curves.png"
    )


def _validate_and_report(
    cfg: DictConfig, trainer: L.Trainer, model: SegmentationSystem, datamodule: Any
) -> dict[str, Any]:
    """Validate the best checkpoint (the last weights without one) and write the report."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.validate(model, datamodule=datamodule, ckpt_path=best or None)
    if getattr(model, "last_val_scores", None) is None:
        return _report_without_validation(cfg, trainer)
    if trainer.is_global_zero and cfg.get("report", True):
        log.info("best checkpoint: %s", best or "(none: last weights)")
        return write_report(model, datamodule, cfg.dataset, cfg.paths.output_dir)
    return {"miou": float(model.last_val_scores["miou"])}


@hydra.main(version_base="1.3", config_path="pkg://picoseg.conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return train(cfg)["miou"]


if __name__ == "__main__":
    main()
