"""Continuing a W&B run on resume: the checkpoint records the id of the run that wrote it.

:class:`WandbRunId` writes ``checkpoint["picoseg_wandb_run_id"]`` when the trainer logs to
W&B; ``picoseg.train`` reads it back (:func:`checkpoint_wandb_run_id`) and, unless the logger
config sets an ``id``, logs the resumed training into the same run.
:class:`~picoseg.system.SegmentationSystem` attaches the callback itself.
"""

from __future__ import annotations

from typing import Any

import lightning as L

from picoseg.checkpoint import load_checkpoint

__all__ = ["CHECKPOINT_KEY", "WandbRunId", "checkpoint_wandb_run_id"]

#: Where the run id goes in a checkpoint.
CHECKPOINT_KEY = "picoseg_wandb_run_id"


class WandbRunId(L.Callback):
    """Records the W&B run id of the trainer's W&B logger, if any, in every checkpoint."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for logger in trainer.loggers:
            # By class name, so that W&B need not be importable; on DDP ranks other than 0
            # the experiment is a dummy without a real id.
            if type(logger).__name__ == "WandbLogger" and isinstance(logger.version, str):
                checkpoint[CHECKPOINT_KEY] = logger.version


def checkpoint_wandb_run_id(ckpt_path: str) -> str | None:
    """The id of the W&B run that wrote a picoseg checkpoint, or None (no W&B logger, a URL, or
    a checkpoint from before picoseg recorded it)."""
    if "://" in ckpt_path:
        return None
    run_id = load_checkpoint(ckpt_path).get(CHECKPOINT_KEY)
    return str(run_id) if run_id else None
